"""The answer's order in a real daemon (in-process): taken, claimed, recorded, sent.
Waiters that say the hook went, or another monitor answered first, at each step."""

from __future__ import annotations

import pytest
import trio

from contextuate_trio.core import decisions as core
from contextuate_trio.core import events
from contextuate_trio.runtime.clock import SYSTEM_MINT

CONFIG = {"decisions": {"enabled": True, "waitMs": 20_000}}


class Waiter:
    def __init__(self, claim: bool = True, send: bool = True, gone: bool = False) -> None:
        self.claims, self.sends, self.gone = claim, send, gone
        self.sent: list[dict] = []
        self.closed = False
        self.released = 0

    async def claim(self) -> bool:
        if self.gone:
            raise core.Refused(404, "its hook stopped waiting")
        return self.claims

    async def send(self, output: dict) -> bool:
        await trio.lowlevel.checkpoint()
        if self.sends:
            self.sent.append(output)
        return self.sends

    async def release(self) -> None:
        await trio.lowlevel.checkpoint()
        self.released += 1

    def close(self) -> None:
        self.closed = True


async def opened(d, waiter: Waiter, sid: str = "s1"):
    payload = {"session_id": sid, "hook_event_name": "PermissionRequest", "tool_name": "Bash", "tool_input": {}}
    ev = events.from_object(payload, "socket", mint=SYSTEM_MINT)
    assert (await d.broker.submit(ev, wait=True)).ok
    assert d.daemon.decisions.waiting(ev, 20_000, waiter)
    return ev.id


async def test_hook_gone_between_record_and_send_is_recorded_as_not_delivered(live_daemon):
    d = await live_daemon(CONFIG)
    dec = d.daemon.decisions
    rid = await opened(d, Waiter(send=False))
    with pytest.raises(core.Refused) as err:
        await dec.answer(rid, {"decision": "allow"}, "phone", "127.0.0.1:1")
    assert err.value.status == 404 and "not delivered" in err.value.why
    kinds = [(e.data.get("decision"), e.data.get("delivered")) for e in _stored(d, "decision")]
    assert kinds == [("allow", None), (None, False)]
    with pytest.raises(core.Refused) as again:
        await dec.answer(rid, {"decision": "allow"}, "phone", None)
    assert again.value.status == 404


async def test_an_answer_while_the_daemon_stops_is_503_and_leaves_the_request_open(live_daemon):
    d = await live_daemon(CONFIG)
    w = Waiter()
    rid = await opened(d, w)
    d.broker.stop_taking()  # what a stop does first: the pipeline takes no more events
    with pytest.raises(core.Refused) as err:
        await d.daemon.decisions.answer(rid, {"decision": "allow"}, "phone", None)
    assert err.value.status == 503 and "stopping" in err.value.why
    assert w.sent == [] and _stored(d, "decision") == []
    assert d.daemon.decisions.offer(rid) is not None  # not taken: still open to its hook's end


class StopsWhile(Waiter):
    """A hook's side during which the daemon stops: while the answer is claimed, or
    once it is recorded but before the hook takes it (the hook has gone)."""

    def __init__(self, broker, during: str) -> None:
        super().__init__(send=during != "send")
        self.broker, self.during = broker, during

    async def claim(self) -> bool:
        if self.during == "claim":
            self.broker.stop_taking()
        return await super().claim()

    async def send(self, output: dict) -> bool:
        if self.during == "send":
            self.broker.stop_taking()
        return await super().send(output)


async def test_a_stop_while_the_answer_is_claimed_is_503_and_leaves_the_request_open(live_daemon):
    d = await live_daemon(CONFIG)
    w = StopsWhile(d.broker, "claim")
    rid = await opened(d, w)
    with pytest.raises(core.Refused) as err:
        await d.daemon.decisions.answer(rid, {"decision": "allow"}, "phone", None)
    assert err.value.status == 503 and "stopping" in err.value.why
    assert w.sent == [] and _stored(d, "decision") == []
    assert d.daemon.decisions.offer(rid) is not None
    assert w.released == 1  # asked to give its claim back (in Redis mode at a stop the connection is gone first)


async def test_a_stop_after_the_answer_is_recorded_and_the_hook_gone_is_still_404(live_daemon):
    d = await live_daemon(CONFIG)
    rid = await opened(d, StopsWhile(d.broker, "send"))
    with pytest.raises(core.Refused) as err:
        await d.daemon.decisions.answer(rid, {"decision": "allow"}, "phone", None)
    # The answer is recorded (its audit event stored); that it was not delivered no longer can be.
    assert err.value.status == 404 and "the daemon is stopping: not delivered" in err.value.why
    assert [(e.data.get("decision"), e.data.get("delivered")) for e in _stored(d, "decision")] == [("allow", None)]
    assert d.daemon.decisions.offer(rid) is None


async def test_another_monitor_first_is_409_and_records_nothing(live_daemon):
    d = await live_daemon(CONFIG)
    rid = await opened(d, Waiter(claim=False))
    with pytest.raises(core.Refused) as err:
        await d.daemon.decisions.answer(rid, {"decision": "deny"}, "phone", None)
    assert err.value.status == 409
    assert _stored(d, "decision") == []


async def test_a_copy_of_an_answered_event_does_not_reopen_it(live_daemon):
    d = await live_daemon(CONFIG)
    w = Waiter()
    rid = await opened(d, w)
    await d.daemon.decisions.answer(rid, {"decision": "deny"}, "phone", None)
    ev = events.from_object(
        {"session_id": "s1", "hook_event_name": "PermissionRequest", "tool_name": "Bash"}, "socket", mint=SYSTEM_MINT
    )
    ev.id = rid
    assert not d.daemon.decisions.waiting(ev, 20_000, Waiter())
    assert len(w.sent) == 1


seen: list = []


def _stored(d, event_type: str) -> list:
    return [e for e in seen if e.event_type == event_type]


@pytest.fixture(autouse=True)
def _record(monkeypatch):
    """Every event the broker stores, in order (the broker's on_stored, installed as
    the daemon starts: patched in its class)."""
    from contextuate_trio.runtime import broker as broker_mod

    seen.clear()
    real = broker_mod.Broker.process

    async def process(self, batch):
        await real(self, batch)
        seen.extend(dl.event for dl in batch if dl.ok)

    monkeypatch.setattr(broker_mod.Broker, "process", process)
    yield


async def test_a_hook_gone_before_the_claim_is_404_and_records_nothing(live_daemon):
    d = await live_daemon(CONFIG)
    rid = await opened(d, Waiter(gone=True))
    with pytest.raises(core.Refused) as err:
        await d.daemon.decisions.answer(rid, {"decision": "allow"}, "phone", None)
    assert err.value.status == 404
    assert _stored(d, "decision") == []
    assert d.daemon.decisions.offer(rid) is None  # no longer offered to anyone
    with pytest.raises(core.Refused) as again:  # over: not "answered already"
        await d.daemon.decisions.answer(rid, {"decision": "allow"}, "phone", None)
    assert again.value.status == 404
