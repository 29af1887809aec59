"""The WebSocket protocol without sockets: handshake queries, resume, replies, and the
client's side that ``tail`` uses."""

from __future__ import annotations

import collections
import json

import pytest
from helpers import PRICES

from contextuate_trio.core.actions import ActionError
from contextuate_trio.core.events import from_payload
from contextuate_trio.core.sessions import SessionManager
from contextuate_trio.runtime.fanout import LiveEvent
from contextuate_trio.web import ws_protocol as proto


class FakeBackend:
    """The daemon's side, as plain data (what the broker adapter gives the protocol)."""

    def __init__(self) -> None:
        self.manager = SessionManager()
        self.replay: collections.deque = collections.deque(maxlen=5)
        self.seq = 100
        self.has_store = False
        self.disk: list[dict] = []  # with has_store: every message stored, oldest first
        self.done: list[tuple] = []
        self.deletions = 0  # events removed from the disk (retention, a deletion)
        self.reads: list[tuple[int, int]] = []  # (since, upto) of each read from disk
        self.readable = True  # False: a read from disk fails in part
        self.first_deleted = 0  # the first number of events deleted but still in the seq log

    @property
    def first_on_disk(self) -> int:
        if not self.has_store or not self.disk:
            return 0
        return self.first_deleted or self.disk[0]["seq"]  # (the seq log still names deleted events)

    def stored_after(self, since, upto):
        """As the store: the events, and the number through which they are all it
        holds (the last one it holds at most); None when a read failed."""
        self.reads.append((since, upto))
        if not self.has_store:
            return [], since
        through = max(since, min(upto, self.disk[-1]["seq"])) if self.disk else since
        return [m for m in self.disk if since < m["seq"] <= upto], through if self.readable else None

    @property
    def sessions(self):
        return self.manager.sessions

    def stored_events(self, session_id, limit, before=None, after=None):
        return []

    def session_action(self, action, session_id, value):
        if session_id not in self.sessions:
            raise ActionError(f"no such session {session_id!r}")
        self.done.append((action, session_id, value))

    def store(self, sid: str) -> None:
        ev = from_payload(
            {"session_id": sid, "hook_event_name": "Stop"},
            event_id=f"e{self.seq + 1}",
            timestamp=self.seq,
            machine_id="m",
        )
        self.manager.apply(ev)
        self.seq += 1
        line = json.dumps({"id": ev.id, "sessionId": sid, "eventType": "stop"}).encode() + b"\n"
        self.replay.append({"type": "event", "seq": self.seq, "event": LiveEvent(ev), "line": line})
        self.disk.append(self.replay[-1])


def protocol(backend: FakeBackend) -> proto.WsProtocol:
    return proto.WsProtocol(backend, proto.Encoder(PRICES), epoch="E1", mode="local", now_ms=lambda: 42)


def test_handshake_query_round_trips():
    q = proto.handshake_query(["a", "b"], ["m"], ["stop"], since=7, epoch="E1", limit=3)
    path = "/?" + "&".join(f"{k}={v}" for k, v in q.items())
    hs = proto.parse_handshake(path, default_limit=1000)
    assert hs.filter.sessions == {"a", "b"} and hs.filter.machines == {"m"} and hs.filter.types == {"stop"}
    assert (hs.since, hs.epoch, hs.limit) == (7, "E1", 3)
    with pytest.raises(ValueError):
        proto.parse_handshake("/?since=x", 10)


def test_resume_exactly_once_or_reset():
    b = FakeBackend()
    for i in range(7):
        b.store("s" if i % 2 else "t")  # seqs 101..107; the replay keeps 103..107
    p = protocol(b)
    resume, cursor = p.first_messages(proto.Handshake(proto.Filter(), since=104, epoch="E1", limit=10))
    head = json.loads(resume[0])
    assert head["type"] == "resume" and head["seq"] == 107 and cursor == 107
    sent = json.loads(resume[1])
    assert sent["type"] == "events" and [e["id"] for e in sent["events"]] == ["e105", "e106", "e107"]
    too_old, cursor = p.first_messages(proto.Handshake(proto.Filter(), since=101, epoch="E1", limit=10))
    assert [json.loads(t)["type"] for t in too_old] == ["reset", "snapshot"] and cursor == 107
    assert json.loads(too_old[0])["reason"] == "too old"
    # Persistence off: another run's number means nothing here, even in range.
    other_run, _ = p.first_messages(proto.Handshake(proto.Filter(), since=106, epoch="E0", limit=10))
    assert json.loads(other_run[0])["reason"] == "daemon restarted"
    # On disk, numbers go on across runs: one still there resumes, whatever its run.
    b.has_store = True
    other_run, _ = p.first_messages(proto.Handshake(proto.Filter(), since=106, epoch="E0", limit=10))
    assert json.loads(other_run[0])["type"] == "resume"
    assert p.first_messages(proto.Handshake(proto.Filter(), since=107, epoch=None, limit=10))[0][1:] == []
    assert p.counters["resumes"] == 3 and p.counters["resets"] == 2


def ids_in(texts: list[str]) -> list[str]:
    out = []
    for t in texts:
        m = json.loads(t)
        out += [e["id"] for e in m.get("events", [m.get("event")]) if e] if m["type"] in ("event", "events") else []
    return out


def on_disk(n: int) -> FakeBackend:
    """``n`` events stored (101...), on disk and the newest in memory."""
    b = FakeBackend()
    b.has_store = True
    for i in range(n):
        b.store("s" if i % 2 else "t")
    return b


def catch_up_all(p: proto.WsProtocol, b: FakeBackend, cursor: int) -> tuple[list[str], list[int]]:
    """A lagging client served until it is live: the ids it got, and where each step ended."""
    got, steps = [], []
    while cursor < b.seq:
        texts, cursor = p.catch_up(proto.Filter(), cursor)
        got += ids_in(texts)
        steps.append(cursor)
    return got, steps


def test_resume_from_disk_beyond_the_memory_in_chunks_exactly_once(monkeypatch):
    monkeypatch.setattr(proto, "CATCH_UP_CHUNK", 2)
    b = on_disk(7)  # 101..107 on disk; the memory keeps 103..107
    p = protocol(b)
    first, cursor = p.first_messages(proto.Handshake(proto.Filter(), since=100, epoch="E0", limit=10))
    assert json.loads(first[0])["type"] == "resume" and first[1:] == [] and cursor == 100
    got, steps = catch_up_all(p, b, cursor)
    assert got == [f"e{n}" for n in range(101, 108)]  # each once, in order
    assert steps == [102, 107]  # one chunk from disk, then the memory has the rest
    assert p.counters["caught_up_from_disk"] == 2
    # Past what the disk keeps (retention removed 101..102): a reset and a snapshot.
    del b.disk[:2]
    b.deletions += 1
    texts, cursor = p.catch_up(proto.Filter(), 100)
    assert [json.loads(t)["type"] for t in texts] == ["reset", "snapshot"] and cursor == 107


def test_clients_catching_up_share_the_chunks_read_from_disk(monkeypatch):
    """Clients that fell behind at different numbers end their first step on the same
    chunk boundary, then read (and render) each chunk once between them; a deletion
    on disk, or no client catching up, lets the chunks go."""
    monkeypatch.setattr(proto, "CATCH_UP_CHUNK", 4)
    b = on_disk(15)  # 101..115 on disk; the memory keeps 111..115
    p = protocol(b)
    first, second = catch_up_all(p, b, 100), catch_up_all(p, b, 102)
    assert first == ([f"e{n}" for n in range(101, 116)], [104, 108, 110, 115])
    assert second == ([f"e{n}" for n in range(103, 116)], [104, 108, 110, 115])
    # The second client read only its own first step: 103..104.
    assert b.reads == [(100, 104), (104, 108), (108, 110), (102, 104)]
    again, _ = p.catch_up(proto.Filter(), 104)
    assert again is p.catch_up(proto.Filter(), 104)[0]  # one rendering, shared
    # Events removed from the disk: the chunk is read again (it may have lost some);
    # a chunk ends at its number, however many events are left in it.
    b.reads.clear()
    del b.disk[4:6]  # 105..106
    b.deletions += 1
    texts, cursor = p.catch_up(proto.Filter(), 104)
    assert ids_in(texts) == ["e107", "e108"] and cursor == 108 and b.reads == [(104, 108)]
    # The chunks that start before the lowest lagging client are let go; then all.
    p.forget_chunks(below=105)
    p.catch_up(proto.Filter(), 104)
    assert b.reads == [(104, 108)] * 2
    p.forget_chunks()
    p.catch_up(proto.Filter(), 104)
    assert b.reads == [(104, 108)] * 3
    # A whole chunk of a deleted session's numbers: the step goes on past them (it
    # found no event), not a reset.
    del b.disk[:]
    b.disk += [m for m in b.replay]  # 111..115 left on disk: 101..110 deleted, not compacted
    b.first_deleted = 101
    b.deletions += 1
    texts, cursor = p.catch_up(proto.Filter(), 104)
    assert texts == [] and cursor == 108
    assert catch_up_all(p, b, 108) == (["e111", "e112", "e113", "e114", "e115"], [110, 115])
    # A read that failed in part goes to its client, and is read again for the next.
    b.readable = False
    p.forget_chunks()
    p.catch_up(proto.Filter(), 100)
    p.catch_up(proto.Filter(), 100)
    assert b.reads[-2:] == [(100, 104)] * 2


def test_text_frame_is_what_a_websocket_client_reads():
    """``text_frame`` as wsproto's client side parses it, at each length encoding."""
    from wsproto.frame_protocol import FrameProtocol, Opcode

    for text in ["", "é" * 62, "x" * 125, "x" * 126, "y" * 65_535, "y" * 65_536, "z" * 70_000]:
        reader = FrameProtocol(client=True, extensions=[])
        reader.receive_bytes(proto.text_frame(text))
        (frame,) = list(reader.received_frames())
        assert frame.opcode is Opcode.TEXT and frame.frame_finished and frame.message_finished
        assert frame.payload == text
    assert proto.text_frame("lone \udc80") == b"\x81\x06lone ?"  # valid UTF-8, always


def test_frame_cache_makes_a_shared_texts_frame_once_within_its_budget():
    import sys

    cache = proto.FrameCache(max_bytes=40_000, min_chars=100)
    text = "x" * 3000
    first = cache.frame(text)
    assert first == proto.text_frame(text) and cache.frame(text) is first  # the same bytes
    twin = "".join(["x" * 1500, "x" * 1500])  # equal, another object: its own, right, frame
    assert twin is not text and cache.frame(twin) == first and cache.frame(twin) is not first
    for c in "abcdefgh":
        cache.frame(c * 3000)
        cache.frame(text)  # used last each time: kept while older ones go
    assert cache.frame(text) is first and len(cache._frames) < 10
    assert cache.bytes <= 40_000 and cache.bytes == sum(cost for _, _, cost in cache._frames.values())
    emoji = "\U0001f600" * 1000  # 4 bytes a character in memory: counted so
    cache.frame(emoji)
    assert cache._frames[id(emoji)][2] >= sys.getsizeof(emoji) > 4 * 1000
    big = "y" * 12_000  # over a quarter of the budget: framed, not kept
    assert cache.frame(big) == proto.text_frame(big) and cache.frame(big) is not cache.frame(big)
    small = "s" * 10  # under min_chars: framed each time, never kept
    assert cache.frame(small) == proto.text_frame(small) and id(small) not in cache._frames


def test_replies_filters_and_errors():
    b = FakeBackend()
    b.store("s")
    p = protocol(b)
    client = proto.ClientState(proto.Filter(), "test")
    assert json.loads(p.reply(client, '{"type":"ping","requestId":9}')) == {
        "type": "pong",
        "seq": 101,
        "time": 42,
        "requestId": 9,
    }
    json.loads(p.reply(client, '{"type":"filter","eventTypes":["stop"]}'))
    assert client.filter.types == {"stop"}
    assert json.loads(p.reply(client, '{"type":"unsubscribe","sessionIds":["s"]}'))["sessionIds"] is None
    err = json.loads(p.reply(client, '{"type":"get_events","sessionId":"ghost"}'))
    assert err["type"] == "error" and "no such session" in err["message"]
    assert json.loads(p.reply(client, b"binary"))["type"] == "error"
    assert json.loads(p.reply(client, '{"type":"nope"}'))["message"].startswith("unknown message type")
    done = json.loads(p.reply(client, '{"type":"session_action","action":"pin","sessionId":"s"}'))
    assert done["type"] == "action_done" and b.done == [("pin", "s", None)]
    assert p.counters["bad_messages"] == 3


def test_render_batches_events_and_coalesces_updates():
    b = FakeBackend()
    b.store("s")
    b.store("s")
    p = protocol(b)
    s = b.manager.get("s")
    batch = [
        *b.replay,
        {"type": "session_update", "seq": 102, "session": s},
        {"type": "session_update", "seq": 102, "session": s},
    ]
    texts = [json.loads(t) for t in p.render(proto.Filter(), batch)]
    assert [t["type"] for t in texts] == ["events", "session_update"]
    assert texts[1]["session"]["sessionId"] == "s" and "usage" in texts[1]["session"]
    only_t = p.render(proto.Filter(sessions=frozenset({"t"})), batch)
    assert only_t == []


def test_follower_resumes_and_after_a_reset_shows_only_what_it_missed():
    f = proto.Follower(history=2)
    e = [{"id": f"e{i}", "timestamp": i} for i in range(5)]
    first = f.feed({"type": "snapshot", "seq": 3, "epoch": "E1", "sessions": [{"sessionId": "s"}], "events": e[:3]})
    assert first.first and [x["id"] for x in first.events] == ["e1", "e2"] and "s" in f.sessions
    assert f.query() == {"since": "3", "epoch": "E1"}
    assert [x["id"] for x in f.feed({"type": "event", "seq": 4, "event": e[3]}).events] == ["e3"]
    assert f.feed({"type": "resume", "seq": 4, "epoch": "E1", "sessions": []}).note == "reconnected; nothing missed"
    assert "gap" in f.feed({"type": "reset", "reason": "daemon restarted"}).note
    assert f.query(sessions=["s"]) == {"sessions": "s", "limit": "2"}
    again = f.feed({"type": "snapshot", "seq": 9, "epoch": "E2", "sessions": [], "events": e})
    assert [x["id"] for x in again.events] == ["e4"] and not again.first
