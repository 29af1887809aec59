"""``RedisSource._part`` and ``_hand_over``: what one XREAD gave reaches the broker in
order, in a few submissions (not one per event), with a waiting hook's request on its
event only and an event claiming another machine refused (no Redis needed: the entries
are written out as Redis sends them)."""

from __future__ import annotations

import json

import trio

from contextuate_trio.config import RedisConfig
from contextuate_trio.runtime.broker import Broker
from contextuate_trio.runtime.decisions import Decisions
from contextuate_trio.sources.redis import SUBMIT_CHUNK, RedisSource, Stream


def entry(i: int, machine: str = "a", **extra) -> tuple[bytes, list[bytes]]:
    ev = {"id": f"e{i}", "sessionId": f"s{i % 3}", "machineId": machine, "eventType": "tool_call", "timestamp": i}
    return f"{i + 1}-0".encode(), [b"data", json.dumps({**ev, **extra}).encode()]


async def test_a_read_goes_to_the_broker_in_order_in_chunks(tmp_path):
    broker = Broker(None)
    source = RedisSource(broker, RedisConfig(), str(tmp_path / "checkpoints.json"), Decisions(broker, True, 60_000))
    answered: list[str] = []
    source._request = lambda s, decide, entry_ms: lambda d: answered.append(d.event.id)
    stored: list[str] = []
    broker.on_stored.append(lambda evs: stored.extend(ev.id for ev in evs))
    n = 2 * SUBMIT_CHUNK + 200
    entries = [entry(i, decide=30_000) if i == 700 else entry(i, "b" if i == 900 else "a") for i in range(n)]
    stream = Stream(b"s:{a}", "a", "0", 0)
    part = source._part(stream, entries)
    assert stream.read_id == f"{n}-0" and part.n == n  # the next read starts after these

    last = await source._hand_over([part])

    # SUBMIT_CHUNK events, those up to the waiting one, it alone, SUBMIT_CHUNK, the rest, the last.
    assert broker.send_channel.statistics().current_buffer_used == 6
    assert last is not None and last.event.id == f"e{n - 1}" and last.done is not None
    assert part.spoofed == ["b"]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(broker.run)
        await last.done.wait()
        nursery.cancel_scope.cancel()
    assert stored == [f"e{i}" for i in range(n) if i != 900]
    assert answered == ["e700"]


async def test_a_survey_that_fails_for_now_is_no_refusal(tmp_path):
    """XINFO answered with an error that is not NOPERM (a cluster still coming up says
    CLUSTERDOWN) is asked again at the next survey; it is not reported as a missing
    permission (that report stuck, and health said "degraded", for good)."""
    import redis

    class Client:  # the replies a survey gets, as redis-py gives them (raise_on_error=False)
        def __init__(self, reply: Exception) -> None:
            self.reply = reply

        def smembers(self, key):
            return set()

        def pipeline(self, transaction=False):
            client = self

            class Pipe:
                def xinfo_stream(self, key):
                    pass

                def execute(self, raise_on_error=True):
                    return [client.reply]

            return Pipe()

    broker = Broker(None)
    source = RedisSource(broker, RedisConfig(), str(tmp_path / "checkpoints.json"), None)
    await source._survey(Client(redis.exceptions.ClusterDownError("The cluster is down")))
    assert source.problems() == []
    await source._survey(Client(redis.exceptions.NoPermissionError("NOPERM no xinfo for you")))
    assert any("grant +xinfo" in p for p in source.problems())
    await source._survey(Client(redis.exceptions.ResponseError("no such key")))  # allowed after all
    assert source.problems() == []


def test_events_into_another_machines_session_are_refused_and_the_rest_kept_in_order(tmp_path):
    """``_own`` looks each session up once per read: an event into a session another
    machine owns is refused (counted as spoofed), one into its own or an unknown-machine
    session, or a new one, is kept, in the order read."""
    broker = Broker(None)
    source = RedisSource(broker, RedisConfig(), str(tmp_path / "checkpoints.json"), None)
    for sid, machine in (("s0", "b"), ("s1", "unknown"), ("s2", "a")):
        seed = source._part(Stream(b"s:{x}", machine, "0", 0), [entry(100, machine, sessionId=sid)])
        broker.manager.apply(seed.events[0])
    part = source._part(Stream(b"s:{a}", "a", "0", 0), [entry(i) for i in range(7)] + [entry(7, sessionId="s9")])

    kept = source._own(part)

    assert [ev.id for ev in kept] == ["e1", "e2", "e4", "e5", "e7"]
    assert part.spoofed == ["b (its session s0)", "b (its session s0)", "b (its session s0)"]
