"""The broker over a real file store: batching, acknowledgements, retries, dedupe,
recovery, actions."""

from __future__ import annotations

import json
import os

import trio
import trio.testing
from helpers import MINT, append_events

from contextuate_trio.core import events
from contextuate_trio.core.events import Event
from contextuate_trio.core.sessions import SessionManager
from contextuate_trio.runtime.broker import Broker
from contextuate_trio.runtime.store import FileStore


def read_call(session_id: str, event_id: str, timestamp: int = 1000) -> Event:
    """A PreToolUse (Read) hook event of ``session_id``."""
    payload = {"session_id": session_id, "hook_event_name": "PreToolUse", "tool_name": "Read"}
    return events.from_payload(payload, event_id=event_id, timestamp=timestamp, machine_id="m")


def fail_appends(store: FileStore, n: int) -> list:
    """From now on ``store.append`` raises StoreError ``n`` times, then works again;
    the failures still to come (empty once all were raised)."""
    from contextuate_trio.runtime.store import StoreError

    failures = [StoreError("disk full")] * n
    real_append = store.append

    def append(batch):
        if failures:
            raise failures.pop()
        real_append(batch)

    store.append = append  # type: ignore[method-assign]
    return failures


async def test_crash_after_events_before_meta_is_recovered(tmp_path):
    """Events on disk that the meta does not count (kill -9 between the two writes)."""
    st = FileStore(str(tmp_path))
    b = Broker(st)
    b.load(MINT)
    async with trio.open_nursery() as n:
        await n.start(b.run)
        for i in range(10):
            await b.submit(read_call("s1", f"e{i}", 1000 + i), wait=True)
        n.cancel_scope.cancel()
    meta_path = tmp_path / "sessions" / "s1" / "meta.json"
    good_meta = meta_path.read_text()
    # Append 5 more events behind the meta's back, as if the daemon died before saving.
    append_events(
        st,
        [
            Event(id=f"late-{i}", timestamp=2000 + i, session_id="s1", machine_id="m", event_type="tool_call")
            for i in range(5)
        ],
    )
    meta_path.write_text(good_meta)
    st.close()
    b2 = Broker(FileStore(str(tmp_path)))
    b2.load(MINT)
    s = b2.manager.get("s1")
    assert s.event_count == 15 and s.tool_count == 15
    assert "late-4" in b2.recent and "e0" in b2.recent
    # A corrupt meta is rebuilt from the events.
    meta_path.write_text("{corrupt")
    b3 = Broker(FileStore(str(tmp_path)))
    b3.load(MINT)
    assert b3.manager.get("s1").event_count == 15


async def test_unwritable_store_keeps_events_and_recovers(tmp_path):
    data = tmp_path / "data"
    st = FileStore(str(data))
    b = Broker(st)
    b.load(MINT)
    async with trio.open_nursery() as n:
        await n.start(b.run)
        os.chmod(data / "sessions", 0o500)
        try:
            if os.access(data / "sessions", os.W_OK):  # root ignores modes: use a file instead
                os.chmod(data / "sessions", 0o700)
                os.rename(data / "sessions", data / "moved")
                (data / "sessions").write_text("not a directory")
            d = await b.submit(
                track=True,
                event=events.from_payload(
                    {"session_id": "s9", "hook_event_name": "Stop"}, event_id="x", timestamp=1, machine_id="m"
                ),
            )
            with trio.move_on_after(0.5):
                await d.done.wait()
            assert not d.done.is_set() and b.last_error
        finally:
            if (data / "moved").exists():
                (data / "sessions").unlink()
                os.rename(data / "moved", data / "sessions")
            os.chmod(data / "sessions", 0o700)
        await d.done.wait()
        assert d.ok and b.last_error is None
        n.cancel_scope.cancel()
    assert st.events("s9", 10)[0]["id"] == "x"


async def test_deleting_a_session_deletes_its_sub_agents(tmp_path):
    b = Broker(FileStore(str(tmp_path)))
    b.load(MINT)
    async with trio.open_nursery() as n:
        await n.start(b.run)
        for i, p in enumerate(
            [
                {"session_id": "top", "hook_event_name": "SessionStart"},
                {"session_id": "top", "hook_event_name": "PreToolUse", "tool_name": "Read", "agent_id": "a"},
                {"session_id": "other", "hook_event_name": "SessionStart"},
            ]
        ):
            await b.submit(
                events.from_payload(p, event_id=f"d{i}", timestamp=10**12 * 2 + i, machine_id="m"), wait=True
            )
        n.cancel_scope.cancel()
    assert b.delete_session("top")
    assert set(b.manager.sessions) == {"other"}
    assert sorted(os.listdir(tmp_path / "sessions")) == ["other"]
    assert not b.delete_session("top")


class FailsOnBoom(SessionManager):
    """A bug triggered by one event, stood in for: the session machine fails on "boom"."""

    def apply(self, ev):
        if ev.session_id == "boom":
            raise RuntimeError("bug")
        return super().apply(ev)


async def test_an_event_the_pipeline_fails_on_is_refused_and_the_rest_goes_on(tmp_path):
    """A bug triggered by one event (stood in for by a manager that fails on one
    session) must not take the daemon's single pipeline task down."""
    from contextuate_trio.sources import spool as spool_source

    b = Broker(FileStore(str(tmp_path / "data")), FailsOnBoom())
    b.load(MINT)
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    env = {
        "kind": "hook",
        "id": "sp-1",
        "timestamp": 5,
        "machineId": "m",
        "payload": {"session_id": "boom", "hook_event_name": "Stop"},
    }
    (spool_dir / "0000000000005-sp-1.json").write_text(json.dumps(env))
    async with trio.open_nursery() as n:
        await n.start(b.run)
        bad = await b.submit(
            events.from_payload(
                {"session_id": "boom", "hook_event_name": "Stop"}, event_id="x1", timestamp=1, machine_id="m"
            ),
            wait=True,
        )
        assert not bad.ok and bad.error.startswith("rejected: RuntimeError")
        good = await b.submit(
            events.from_payload(
                {"session_id": "fine", "hook_event_name": "Stop"}, event_id="x2", timestamp=2, machine_id="m"
            ),
            wait=True,
        )
        assert good.ok
        assert await spool_source.drain_once(b, str(spool_dir)) == 0
        n.cancel_scope.cancel()
    assert not list(spool_dir.glob("*.json"))
    assert (spool_dir / "corrupt" / "0000000000005-sp-1.json").exists()
    assert b.counters["rejected"] == 2 and "fine" in b.manager.sessions


async def test_a_copy_of_a_refused_event_in_the_same_batch_is_refused_too(tmp_path):
    """Two copies in one batch: the second is a copy of the first; when the first is
    refused (a bug), the copy must not be acknowledged as stored."""

    b = Broker(FileStore(str(tmp_path / "data")), FailsOnBoom())
    b.load(MINT)

    def copy(sid: str, eid: str) -> events.Event:
        return events.from_payload(
            {"session_id": sid, "hook_event_name": "Stop"}, event_id=eid, timestamp=1, machine_id="m"
        )

    async with trio.open_nursery() as n:
        await n.start(b.run)
        first, second, other, again = await b.submit_many(
            [copy("boom", "x1"), copy("boom", "x1"), copy("fine", "x2"), copy("fine", "x2")], wait=True
        )
        n.cancel_scope.cancel()
    assert not first.ok and not second.ok and second.rejected
    assert other.ok and again.ok and b.counters["duplicates"] == 2


async def test_a_refusal_is_told_once_its_batch_is_stored(tmp_path, monkeypatch):
    """A source that moves on when the last event it handed over is done (a Redis
    checkpoint) must not pass events the store still holds in memory: the refused
    last event of a batch is told after the others are written, not before."""
    from contextuate_trio.runtime import broker as broker_mod

    store = FileStore(str(tmp_path / "data"))
    b = Broker(store, FailsOnBoom())
    b.load(MINT)
    monkeypatch.setattr(broker_mod, "RETRY_FIRST_S", 0.01)
    failures = fail_appends(store, 2)
    told: list[str] = []

    def one(sid: str, eid: str) -> events.Event:
        return events.from_payload(
            {"session_id": sid, "hook_event_name": "Stop"}, event_id=eid, timestamp=1, machine_id="m"
        )

    async with trio.open_nursery() as n:
        await n.start(b.run)
        good, bad = await b.submit_many(
            [one("fine", "x1"), one("boom", "x2")], wait=True, on_done=lambda d: told.append(d.event.id)
        )
        n.cancel_scope.cancel()
    assert good.ok and not bad.ok and bad.rejected
    assert told == ["x1", "x2"] and not failures  # the refusal after the write that succeeded


async def test_a_claim_left_by_a_dead_hook_is_ingested(tmp_path, monkeypatch):
    from contextuate_trio.hook import spool as hook_spool
    from contextuate_trio.sources import spool as spool_source

    monkeypatch.setattr(hook_spool, "STALE_CLAIM_SECONDS", 0)  # "long ago", without waiting a minute
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    env = {
        "kind": "hook",
        "id": "cl-1",
        "timestamp": 10**12 * 2,
        "machineId": "m",
        "payload": {"session_id": "claimed", "hook_event_name": "Stop"},
    }
    (spool_dir / ".claim-0000000000009-cl-1.json").write_text(json.dumps(env))
    b = Broker(FileStore(str(tmp_path / "data")))
    b.load(MINT)
    async with trio.open_nursery() as n:
        await n.start(b.run)
        assert await spool_source.drain_once(b, str(spool_dir)) == 1
        n.cancel_scope.cancel()
    assert "claimed" in b.manager.sessions and not list(spool_dir.iterdir())


async def test_a_copy_arriving_after_its_id_was_forgotten_is_still_one_event(tmp_path):
    b = Broker(FileStore(str(tmp_path)), recent_ids=10, started_ms=1000)
    b.load(MINT)

    def mk(eid, ts, sid="s"):
        return events.from_payload(
            {"session_id": sid, "hook_event_name": "Stop"}, event_id=eid, timestamp=ts, machine_id="m"
        )

    async with trio.open_nursery() as n:
        await n.start(b.run)
        await b.submit(mk("live", 5000), wait=True)
        for i in range(30):  # push "live" out of the remembered ids
            await b.submit(mk(f"other-{i}", 6000 + i), wait=True)
        assert "live" not in b.recent
        again = await b.submit(mk("live", 5000), wait=True)  # e.g. the stream's copy
        assert again.ok
        n.cancel_scope.cancel()
    assert [e["id"] for e in b.store.events("s", 100)].count("live") == 1
    assert b.counters["duplicates"] == 1


async def test_a_batch_that_fails_half_way_is_not_written_twice(tmp_path):
    """Session A's lines land, session B's write fails (a file where its directory
    should be): the retry writes B only."""
    b = Broker(FileStore(str(tmp_path)))
    b.load(MINT)
    blocker = tmp_path / "sessions" / "sB"
    blocker.write_text("not a directory")

    def mk(eid, sid):
        return events.from_payload(
            {"session_id": sid, "hook_event_name": "Stop"}, event_id=eid, timestamp=10**12 * 2, machine_id="m"
        )

    async with trio.open_nursery() as n:
        # Both queued before the pipeline runs: one batch, A's write then B's.
        _da, db = await b.submit(track=True, event=mk("a1", "sA")), await b.submit(track=True, event=mk("b1", "sB"))
        await n.start(b.run)
        with trio.move_on_after(0.5):
            await db.done.wait()
        assert not db.done.is_set() and b.last_error
        blocker.unlink()
        await db.done.wait()
        n.cancel_scope.cancel()
    assert [e["id"] for e in b.store.events("sA", 10)] == ["a1"]
    assert [e["id"] for e in b.store.events("sB", 10)] == ["b1"]


async def test_a_secret_is_masked_before_a_sub_agent_in_the_same_batch_copies_it(tmp_path):
    """The Agent call and its SubagentStart in one batch: the child takes the call's
    description, which must already be masked (masking precedes the session machine)."""
    from contextuate_trio.runtime.broker import Delivery

    secret = "sk-ant-" + "A" * 40

    def hook(name: str, n: int, **fields) -> Event:
        payload = {"session_id": "root", "hook_event_name": name, "cwd": "/w", **fields}
        return events.from_payload(payload, event_id=f"e{n}", timestamp=10**12 + n, machine_id="m1")

    b = Broker(FileStore(str(tmp_path)), started_ms=1)
    b.load(MINT)
    call = hook(
        "PreToolUse",
        1,
        tool_name="Agent",
        tool_use_id="call-A",
        tool_input={"subagent_type": "Explore", "description": f"deploy with {secret}"},
    )
    await b.process([Delivery(call), Delivery(hook("SubagentStart", 2, agent_id="a1", agent_type="Explore"))])
    b.flush_sessions()
    child = b.manager.get("root:agent-a1")
    assert child is not None and child.description == "deploy with [REDACTED:anthropic-key]"
    for root, _, files in os.walk(tmp_path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:  # noqa: ASYNC230 (a test's one look)
                assert secret.encode() not in f.read(), name


async def test_an_empty_store_at_start_is_not_searched_for_a_catch_ups_events(tmp_path, monkeypatch):
    """Events older than the start (a Redis catch-up, a spool) into a store that held
    nothing at start are not looked for on disk one by one; a copy of one stored in
    this run is still a copy; into a store that held events, the disk is asked."""

    def mk(eid: str, ts: int) -> events.Event:
        return events.from_payload(
            {"session_id": "s", "hook_event_name": "Stop"}, event_id=eid, timestamp=ts, machine_id="m"
        )

    for name, held, looks_wanted in (("empty", [], ["early"]), ("held", [mk("old", 10)], ["a", "early", "early"])):
        store = FileStore(str(tmp_path / name))
        append_events(store, held)
        b = Broker(store, SessionManager(), started_ms=1000)
        b.load(MINT)
        looks: list[str] = []
        real = store.contains
        monkeypatch.setattr(
            store, "contains", lambda sid, eid, *a, looks=looks, real=real: looks.append(eid) or real(sid, eid, *a)
        )
        async with trio.open_nursery() as n:
            await n.start(b.run)
            await b.submit(mk("a", 400), wait=True)  # (its session known from here on)
            first = await b.submit(mk("early", 500), wait=True)
            b.recent.discard("early")  # (forgotten by the ring; the Bloom filter knows it)
            copy = await b.submit(mk("early", 500), wait=True)
            n.cancel_scope.cancel()
        assert first.ok and copy.ok and b.counters["duplicates"] == 1, name
        assert [e["id"] for e in store.events("s", 100)].count("early") == 1, name
        assert looks == looks_wanted, name


async def test_changed_metadata_is_written_after_the_delay_with_no_more_events(tmp_path, autojump_clock):
    """A session's meta.json follows its events by META_DELAY even when no event comes
    after them (the pipeline's timer wakes it), and not before; a second change starts
    the count again."""
    from contextuate_trio.runtime.broker import META_DELAY

    st = FileStore(str(tmp_path))
    b = Broker(st)
    b.load(MINT)
    meta = tmp_path / "sessions" / "s1" / "meta.json"

    async with trio.open_nursery() as n:
        await n.start(b.run)
        await b.submit(read_call("s1", "e1", 1001), wait=True)
        t0 = trio.current_time()
        assert not meta.exists()
        await trio.sleep(META_DELAY * 0.9)
        assert not meta.exists()  # not before the delay
        await trio.sleep(META_DELAY * 0.2)
        assert json.loads(meta.read_text())["eventCount"] == 1
        await trio.sleep(META_DELAY * 5)  # nothing changed: nothing more to do
        await b.submit(read_call("s1", "e2", 1002), wait=True)
        await trio.sleep(META_DELAY * 0.9)
        assert json.loads(meta.read_text())["eventCount"] == 1
        await trio.sleep(META_DELAY * 0.2)
        assert json.loads(meta.read_text())["eventCount"] == 2
        assert trio.current_time() - t0 < META_DELAY * 10
        n.cancel_scope.cancel()


async def test_metadata_that_cannot_be_written_is_tried_again_later_not_in_a_loop(
    tmp_path, autojump_clock, monkeypatch
):
    """While meta.json cannot be written the timer asks again a META_DELAY later (not
    over and over: the pipeline is woken a few times, not thousands), and the write
    lands once the disk takes it."""
    from contextuate_trio.runtime.broker import META_DELAY
    from contextuate_trio.runtime.store import StoreError

    st = FileStore(str(tmp_path))
    b = Broker(st)
    b.load(MINT)
    tries: list[float] = []
    real_save = st.save_sessions

    def save(sessions):
        tries.append(trio.current_time())
        if len(tries) <= 3:
            raise StoreError("disk full")
        real_save(sessions)

    monkeypatch.setattr(st, "save_sessions", save)
    async with trio.open_nursery() as n:
        await n.start(b.run)
        t0 = trio.current_time()
        await b.submit(read_call("s1", "e1"), wait=True)
        await trio.sleep(META_DELAY * 10)
        n.cancel_scope.cancel()
    gaps = [round(b2 - a, 3) for a, b2 in zip([t0, *tries], tries, strict=False)]
    assert len(tries) == 4, tries  # 3 failures, then the write (the last flush finds nothing to do)
    assert all(g >= META_DELAY for g in gaps), gaps
    assert (tmp_path / "sessions" / "s1" / "meta.json").exists()
    assert b.counters["store_errors"] == 3


async def test_the_metadata_timer_waits_for_a_pipeline_held_up_by_store_retries(tmp_path, autojump_clock, monkeypatch):
    """The metadata falls due while the pipeline sleeps between retries of a failed
    append: the timer wakes it once and waits (it must not send wake-ups in a loop
    meanwhile); the metadata is written once the batch is stored."""
    from contextuate_trio.runtime import broker as broker_mod

    monkeypatch.setattr(broker_mod, "RETRY_FIRST_S", broker_mod.META_DELAY * 1.5)
    st = FileStore(str(tmp_path))
    b = Broker(st)
    b.load(MINT)

    class CountingChannel:
        def __init__(self, channel):
            self.channel, self.wakeups = channel, 0

        def send_nowait(self, items):
            if not items:
                self.wakeups += 1
                assert self.wakeups < 100, "the timer sends wake-ups in a loop"
            self.channel.send_nowait(items)

    counting = b.send_channel = CountingChannel(b.send_channel)
    async with trio.open_nursery() as n:
        await n.start(b.run)
        await b.submit(read_call("s1", "e1"), wait=True)
        failures = fail_appends(st, 2)
        d = await b.submit(read_call("s1", "e2", 1001), track=True)
        await d.done.wait()
        await trio.sleep(broker_mod.META_DELAY * 3)
        n.cancel_scope.cancel()
    assert d.ok and not failures and counting.wakeups <= 2
    assert json.loads((tmp_path / "sessions" / "s1" / "meta.json").read_text())["eventCount"] == 2


async def test_a_stop_while_metadata_is_due_drains_and_stores_everything(tmp_path, autojump_clock):
    """The daemon stops (closes the channel) while the pipeline retries an append and
    the metadata falls due: the timer's wake-up finds the channel closed, which must
    not end the pipeline; the events are stored, the metadata written at the end."""
    from contextuate_trio.runtime import broker as broker_mod

    st = FileStore(str(tmp_path))
    b = Broker(st)
    b.load(MINT)
    async with trio.open_nursery() as n:
        await n.start(b.run)
        await b.submit(read_call("s1", "e1"), wait=True)
        failures = fail_appends(st, 5)  # retries 0.1 + 0.2 + 0.4 + 0.8 + 1.6 s
        d = await b.submit(read_call("s1", "e2", 1001), track=True)
        await trio.sleep(broker_mod.META_DELAY / 4)
        b.stop_taking()  # what the daemon does on SIGTERM
        await b.finished.wait()
    assert d.ok and not failures
    assert [e["id"] for e in st.events("s1", 10)] == ["e1", "e2"]
    assert json.loads((tmp_path / "sessions" / "s1" / "meta.json").read_text())["eventCount"] == 2


async def test_the_timer_is_answered_even_when_the_metadata_it_saw_is_gone(tmp_path, autojump_clock, monkeypatch):
    """The timer wakes the pipeline for metadata that is due, but before the pipeline
    takes the wake-up that session is deleted and another one changes (its delay just
    begun): the pipeline still writes (it must answer the timer, which waits for it),
    so the newer metadata is not left unwritten while no more events come."""
    from contextuate_trio.runtime import broker as broker_mod

    monkeypatch.setattr(broker_mod, "RETRY_FIRST_S", broker_mod.META_DELAY * 1.5)
    st = FileStore(str(tmp_path))
    b = Broker(st)
    b.load(MINT)

    async with trio.open_nursery() as n:
        await n.start(b.run)
        await b.submit(read_call("gone", "e1"), wait=True)
        failures = fail_appends(st, 1)
        d = await b.submit(read_call("kept", "e2"), track=True)  # held up in a retry past "gone"'s delay
        await trio.sleep(broker_mod.META_DELAY * 1.2)  # the timer has woken the pipeline, and waits
        assert b.delete_session("gone")
        await d.done.wait()
        await trio.sleep(broker_mod.META_DELAY * 5)
        meta = tmp_path / "sessions" / "kept" / "meta.json"
        assert meta.exists()  # (before the stop, which writes whatever is left)
        n.cancel_scope.cancel()
    assert d.ok and not failures and json.loads(meta.read_text())["eventCount"] == 1


async def test_metadata_is_written_once_a_delay_while_the_pipeline_is_behind(tmp_path, mock_clock):
    """A backlog: the timer's wake-up waits behind a full batch, whose end writes the
    metadata already. The wake-up then finds nothing to ask for: the next batch's
    changes wait their own delay (one write a session every META_DELAY, not two).
    Trio runs the woken timer and pipeline in a random order: 12 rounds see both."""
    for r in range(12):
        await _one_backlog(str(tmp_path / f"r{r}"), mock_clock)


async def _one_backlog(path: str, clock) -> None:
    from contextuate_trio.runtime.broker import MAX_BATCH, META_DELAY

    st = FileStore(path)
    b = Broker(st)
    b.load(MINT)
    saves: list[float] = []
    real_save = st.save_sessions

    def save(sessions):
        saves.append(trio.current_time() - t0)
        real_save(sessions)

    st.save_sessions = save  # type: ignore[method-assign]

    async with trio.open_nursery() as n:
        await n.start(b.run)
        t0 = trio.current_time()
        await b.submit(read_call("A", "e0"), wait=True)
        await trio.testing.wait_all_tasks_blocked()
        await b.submit_many([read_call("A", f"a{i}") for i in range(MAX_BATCH)])
        await b.submit_many([read_call("A", f"b{i}") for i in range(10)])
        clock.jump(META_DELAY)  # due while those wait in the channel
        await trio.testing.wait_all_tasks_blocked()
        assert saves == [META_DELAY]
        clock.jump(META_DELAY)
        await trio.testing.wait_all_tasks_blocked()
        assert saves == [META_DELAY, 2 * META_DELAY]
        n.cancel_scope.cancel()
