"""The WebSocket protocol against a real in-process daemon and a real trio-websocket client."""

from __future__ import annotations

import collections
import json

import pytest
import trio
import trio.testing
from helpers import MINT, T0, ev
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from contextuate_trio.core import events
from contextuate_trio.web.ws_protocol import CLOSE_TOO_SLOW, b64url_token


def base(d) -> int:
    """The number before this run's first event (numbers continue across runs)."""
    return d.broker.started_ms * 1000


async def recv(ws, timeout: float = 5.0) -> dict:
    with trio.fail_after(timeout):
        return json.loads(await ws.get_message())


async def recv_type(ws, kind: str, timeout: float = 5.0) -> dict:
    with trio.fail_after(timeout):
        while True:
            m = await recv(ws, timeout)
            if m["type"] == kind:
                return m


async def recv_events(ws, n: int, timeout: float = 10.0) -> list[tuple[int, dict]]:
    """(seq, event) pairs from live event/events messages, until n of them."""
    out: list[tuple[int, dict]] = []
    with trio.fail_after(timeout):
        while len(out) < n:
            m = await recv(ws, timeout)
            if m["type"] == "event":
                out.append((m["seq"], m["event"]))
            elif m["type"] == "events":
                last = m["seq"]
                k = len(m["events"])
                out.extend((last - k + 1 + i, e) for i, e in enumerate(m["events"]))
    return out


async def test_snapshot_then_live_events(live_daemon):
    d = await live_daemon()
    for i in range(3):
        await d.submit(ev(i))
    async with open_websocket_url(d.ws_url) as ws:
        snap = await recv(ws)
        assert snap["type"] == "snapshot"
        assert snap["seq"] == base(d) + 3 and snap["epoch"]
        assert [s["sessionId"] for s in snap["sessions"]] == ["s1"]
        assert [e["timestamp"] for e in snap["events"]] == [T0, T0 + 1, T0 + 2]
        await d.submit(ev(3))
        await d.submit(ev(4))
        got = await recv_events(ws, 2)
        assert [s for s, _ in got] == [base(d) + 4, base(d) + 5]
        assert got[0][1]["data"]["tool_input"]["command"] == "echo 3"
        upd = await recv_type(ws, "session_update")
        assert upd["session"]["sessionId"] == "s1" and upd["session"]["eventCount"] >= 4


async def test_many_events_at_once_are_batched(live_daemon):
    d = await live_daemon()
    async with open_websocket_url(d.ws_url) as ws:
        await recv(ws)
        from contextuate_trio.core import events
        from contextuate_trio.runtime.clock import SYSTEM_MINT

        batch = [await d.broker.submit(events.from_object(ev(i), mint=SYSTEM_MINT), track=True) for i in range(300)]
        for b in batch:
            await b.done.wait()
        kinds = collections.Counter()
        seqs = []
        with trio.fail_after(5):
            while len(seqs) < 300:
                m = await recv(ws)
                kinds[m["type"]] += 1
                if m["type"] == "events":
                    seqs.extend(range(m["seq"] - len(m["events"]) + 1, m["seq"] + 1))
                elif m["type"] == "event":
                    seqs.append(m["seq"])
        assert seqs == list(range(base(d) + 1, base(d) + 301))
        assert kinds["events"] >= 1 and kinds["events"] + kinds["event"] < 300


async def test_resume_exactly_once_while_events_keep_arriving(live_daemon):
    d = await live_daemon()
    submitted: list[str] = []

    async def producer(n: int, task_status=trio.TASK_STATUS_IGNORED):
        task_status.started()
        for i in range(n):
            e = ev(i, session=f"s{i % 3}")
            submitted.append(e["id"])
            await d.submit(e)
            if i % 7 == 0:
                await trio.sleep(0.001)

    seen: list[tuple[int, dict]] = []
    async with trio.open_nursery() as nursery:
        async with open_websocket_url(d.ws_url) as ws:
            snap = await recv(ws)
            epoch, last = snap["epoch"], snap["seq"]
            await nursery.start(producer, 400)
            seen += await recv_events(ws, 50)
            last = seen[-1][0]
        # Disconnected: the producer keeps going. Reconnect with what we saw.
        await trio.sleep(0.05)
        async with open_websocket_url(f"{d.ws_url}?since={last}&epoch={epoch}") as ws:
            first = await recv(ws)
            assert first["type"] == "resume" and first["since"] == last
            assert {s["sessionId"] for s in first["sessions"]} >= {"s0", "s1"}
            seen += await recv_events(ws, 400 - len(seen), timeout=20)
    seqs = [s for s, _ in seen]
    assert seqs == list(range(base(d) + 1, base(d) + 401)), "a gap or a duplicate"
    assert [e["id"] for _, e in seen] == submitted


async def test_resume_from_disk_beyond_the_memory_and_across_a_restart(live_daemon, home):
    d = await live_daemon()
    d.broker.fanout.replay = collections.deque(d.broker.replay, maxlen=10)
    sent = [ev(i, session=f"s{i % 4}") for i in range(30)]
    for e in sent:
        await d.submit(e)
    first = base(d)
    async with open_websocket_url(f"{d.ws_url}?since={first + 2}&epoch={d.daemon.ws.epoch}") as ws:
        m = await recv(ws)
        assert m["type"] == "resume" and m["since"] == first + 2
        got = await recv_events(ws, 28)  # 18 from disk, 10 from memory: each once, in order
        assert [s for s, _ in got] == list(range(first + 3, first + 31))
        assert [e["id"] for _, e in got] == [e["id"] for e in sent[2:]]
        await d.submit(ev(30))  # then live
        assert [s for s, _ in await recv_events(ws, 1)] == [first + 31]
    assert d.daemon.ws.counters["caught_up_from_disk"] == 18
    await d.stop()
    # Numbers go on across runs: a client of the last run resumes from disk.
    d2 = await live_daemon(home_dir=home)
    assert d2.broker.seq == first + 31
    await d2.submit(ev(31))
    async with open_websocket_url(f"{d2.ws_url}?since={first + 28}&epoch=the-last-run") as ws:
        assert (await recv(ws))["type"] == "resume"
        assert [s for s, _ in await recv_events(ws, 4)] == list(range(first + 29, first + 33))


async def test_resume_resets_when_the_number_is_not_held(live_daemon, home):
    d = await live_daemon({"persistence": {"enabled": False}})  # memory only: no disk to fall back on
    d.broker.fanout.replay = collections.deque(d.broker.replay, maxlen=10)
    for i in range(30):
        await d.submit(ev(i))
    async with open_websocket_url(f"{d.ws_url}?since={base(d) + 2}&epoch={d.daemon.ws.epoch}") as ws:
        m = await recv(ws)
        assert m["type"] == "reset" and m["reason"] == "too old"
        snap = await recv(ws)
        assert snap["type"] == "snapshot" and snap["seq"] == base(d) + 30 and len(snap["events"]) == 10
    async with open_websocket_url(f"{d.ws_url}?since={base(d) + 2}&epoch=another-run") as ws:
        m = await recv(ws)
        assert m["type"] == "reset" and m["reason"] == "daemon restarted"
        assert (await recv(ws))["type"] == "snapshot"
    # Ahead of us, or a number from an earlier run: numbers of each run start above
    # every earlier run's, so either way it is a reset, never a gap.
    async with open_websocket_url(f"{d.ws_url}?since={base(d) + 999}") as ws:
        assert (await recv(ws))["type"] == "reset"
    async with open_websocket_url(f"{d.ws_url}?since=25") as ws:
        assert (await recv(ws))["type"] == "reset"
    # Up to date: nothing to replay, then live.
    async with open_websocket_url(f"{d.ws_url}?since={base(d) + 30}&epoch={d.daemon.ws.epoch}") as ws:
        m = await recv(ws)
        assert m["type"] == "resume" and m["seq"] == base(d) + 30
        await d.submit(ev(99))
        assert [s for s, _ in await recv_events(ws, 1)] == [base(d) + 31]


async def test_filters_in_url_and_messages(live_daemon):
    d = await live_daemon()
    await d.submit(ev(0, session="a", machine="m1"))
    await d.submit(ev(1, session="b", machine="m2", etype="user_prompt", tool=None))
    async with open_websocket_url(f"{d.ws_url}?machines=m2") as ws:
        snap = await recv(ws)
        assert [e["sessionId"] for e in snap["events"]] == ["b"]
        assert [s["sessionId"] for s in snap["sessions"]] == ["b"]
        await d.submit(ev(2, session="a", machine="m1"))
        await d.submit(ev(3, session="b", machine="m2"))
        got = await recv_events(ws, 1)
        assert got[0][1]["sessionId"] == "b" and got[0][1]["timestamp"] == T0 + 3

        await ws.send_message(json.dumps({"type": "filter", "eventTypes": ["user_prompt"], "requestId": 7}))
        ack = await recv_type(ws, "filter")
        assert ack["filter"]["eventTypes"] == ["user_prompt"] and ack["requestId"] == 7
        await d.submit(ev(4, session="a"))
        await d.submit(ev(5, session="b", etype="user_prompt", tool=None))
        got = await recv_events(ws, 1)
        assert got[0][1]["timestamp"] == T0 + 5

        # The original monitor's messages.
        await ws.send_message(json.dumps({"type": "filter"}))
        await recv_type(ws, "filter")
        await ws.send_message(json.dumps({"type": "subscribe", "sessionIds": ["a"]}))
        assert (await recv_type(ws, "subscribed"))["sessionIds"] == ["a"]
        await d.submit(ev(6, session="b"))
        await d.submit(ev(7, session="a"))
        got = await recv_events(ws, 1)
        assert got[0][1]["sessionId"] == "a"
        await ws.send_message(json.dumps({"type": "unsubscribe", "sessionIds": ["a"]}))
        await recv_type(ws, "unsubscribed")
        await ws.send_message(json.dumps({"type": "subscribe", "sessionIds": []}))
        assert (await recv_type(ws, "subscribed"))["sessionIds"] is None

        await ws.send_message(json.dumps({"type": "get_sessions"}))
        assert {s["sessionId"] for s in (await recv_type(ws, "sessions"))["sessions"]} == {"a", "b"}
        await ws.send_message(json.dumps({"type": "get_events", "sessionId": "a", "limit": 2}))
        hist = await recv_type(ws, "history")
        assert [e["timestamp"] for e in hist["events"]] == [T0 + 4, T0 + 7] and hist["hasMore"]
        await ws.send_message(json.dumps({"type": "get_events", "sessionId": "a", "before": T0 + 4}))
        hist = await recv_type(ws, "history")
        assert [e["timestamp"] for e in hist["events"]] == [T0, T0 + 2]
        await ws.send_message(json.dumps({"type": "get_all_recent_events", "limit": 3}))
        rec = await recv_type(ws, "recent_events")
        assert [e["timestamp"] for e in rec["events"]] == [T0 + 5, T0 + 6, T0 + 7]
        eid = rec["events"][0]["id"]
        await ws.send_message(json.dumps({"type": "get_event_detail", "eventId": eid}))
        det = await recv_type(ws, "event_detail")
        assert det["event"]["id"] == eid and det["event"]["data"]["tool_input"]


async def test_large_event_is_trimmed_live_and_whole_on_request(live_daemon):
    d = await live_daemon()
    async with open_websocket_url(d.ws_url) as ws:
        await recv(ws)
        big = ev(0, data={"tool_response": "x" * 300_000})
        await d.submit(big)
        ((_, got),) = await recv_events(ws, 1)
        assert got["truncated"] is True and len(got["data"]["tool_response"]) < 10_000
        await ws.send_message(
            json.dumps(
                {"type": "get_event_detail", "eventId": big["id"], "sessionId": "s1", "timestamp": big["timestamp"]}
            )
        )
        det = await recv_type(ws, "event_detail")
        assert len(det["event"]["data"]["tool_response"]) == 300_000


async def test_bad_messages_get_errors_and_the_connection_stays(live_daemon):
    d = await live_daemon()
    await d.submit(ev(0))
    async with open_websocket_url(d.ws_url) as ws:
        await recv(ws)
        for bad, words in (
            ("not json", "not JSON"),
            ("[1, 2]", "JSON object"),
            (json.dumps({"type": "nope"}), "unknown message type"),
            (json.dumps({"no": "type"}), "unknown message type"),
            (json.dumps({"type": "get_events"}), "sessionId"),
            (json.dumps({"type": "get_events", "sessionId": "missing"}), "no such session"),
            (json.dumps({"type": "get_events", "sessionId": "s1", "limit": -1}), "limit"),
            (json.dumps({"type": "filter", "machines": "m1"}), None),  # a string is a list of one
            (json.dumps({"type": "filter", "machines": [1]}), "list of strings"),
            (json.dumps({"type": "session_action", "action": "explode", "sessionId": "x"}), "unknown action"),
            (json.dumps({"type": "get_event_detail", "eventId": "nope"}), "no such event"),
        ):
            await ws.send_message(bad)
            m = await recv(ws)
            if words is None:
                assert m["type"] == "filter"
            else:
                assert m["type"] == "error" and words in m["message"], (bad, m)
        await ws.send_message(b"\x00binary")
        assert (await recv(ws))["type"] == "error"
        await ws.send_message(json.dumps({"type": "ping"}))
        assert (await recv(ws))["type"] == "pong"
    # Over the size limit: the connection is closed with 1009 (Message Too Big).
    async with open_websocket_url(d.ws_url) as ws:
        await recv(ws)
        await ws.send_message(json.dumps({"type": "ping", "pad": "x" * 100_000}))
        with pytest.raises(ConnectionClosed) as info:
            with trio.fail_after(5):
                while True:
                    await ws.get_message()
        assert info.value.reason.code == 1009


async def test_session_actions_are_broadcast_and_survive_a_restart(live_daemon, home):
    d = await live_daemon()
    await d.submit(ev(0, session="parent"))
    await d.submit(ev(1, session="child"))
    await d.submit(ev(2, session="gone"))
    async with open_websocket_url(d.ws_url) as a, open_websocket_url(d.ws_url) as b:
        await recv(a)
        await recv(b)

        async def act(action, sid, value=None):
            await a.send_message(
                json.dumps({"type": "session_action", "action": action, "sessionId": sid, "value": value})
            )
            return await recv_type(a, "action_done")

        await act("rename", "parent", "  Checkout   fix ")
        upd = await recv_type(b, "session_update")
        assert upd["session"]["name"] == "Checkout fix"
        await act("pin", "parent")
        await act("hide", "child")
        await act("set_parent", "child", "parent")
        await act("delete", "gone")
        deleted = await recv_type(b, "session_deleted")
        assert deleted["sessionId"] == "gone"
        # A cycle is refused with an error, the connection stays.
        await a.send_message(
            json.dumps({"type": "session_action", "action": "set_parent", "sessionId": "parent", "value": "child"})
        )
        err = await recv_type(a, "error")
        assert "itself" in err["message"]
    # A later event naming no parent does not undo the person's choice.
    await d.submit(ev(3, session="child"))
    await d.stop()

    d2 = await live_daemon(home_dir=home)
    s = d2.broker.manager.sessions
    assert "gone" not in s
    assert s["parent"].name == "Checkout fix" and s["parent"].pinned
    assert s["child"].hidden and s["child"].parent_session_id == "parent"
    assert s["parent"].child_session_ids == ["child"]
    async with open_websocket_url(d2.ws_url) as ws:
        snap = await recv(ws)
        by_id = {x["sessionId"]: x for x in snap["sessions"]}
        assert by_id["parent"]["pinned"] and by_id["child"]["parentSessionId"] == "parent"
        await ws.send_message(json.dumps({"type": "session_action", "action": "remove_parent", "sessionId": "child"}))
        await recv_type(ws, "action_done")
    assert s["child"].parent_session_id is None and s["parent"].child_session_ids == []
    await ws_unhide_and_check(d2)


async def ws_unhide_and_check(d):
    async with open_websocket_url(d.ws_url) as ws:
        await recv(ws)
        await ws.send_message(json.dumps({"type": "session_action", "action": "unhide", "sessionId": "child"}))
        await recv_type(ws, "action_done")
        await ws.send_message(json.dumps({"type": "session_action", "action": "rename", "sessionId": "parent"}))
        await recv_type(ws, "action_done")
    assert not d.broker.manager.sessions["child"].hidden
    assert d.broker.manager.sessions["parent"].name is None


async def test_flood_a_reader_gets_every_event_once_a_stalled_client_is_dropped(live_daemon, caplog):
    # A small queue: the reader falls out of it again and again and catches up from
    # memory and disk; the stalled one's socket fills and its send times out.
    d = await live_daemon(queue_size=50, send_timeout=1.0)
    d.broker.fanout.replay = collections.deque(d.broker.replay, maxlen=100)
    payload = "y" * 60_000  # 36 MB in all: more than the stalled client's socket buffers hold
    n = 600
    async with open_websocket_url(d.ws_url) as stalled, open_websocket_url(d.ws_url) as reader:
        await recv(stalled)
        await recv(reader)
        got: list[int] = []

        async def read_all():
            with trio.fail_after(60):
                while len(got) < n:
                    got.extend(s for s, _ in await recv_events(reader, 1, timeout=30))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            with trio.fail_after(20):  # ingest never waits on either client
                for i in range(n):
                    await d.submit(ev(i, data={"tool_response": payload}))
        assert got == list(range(base(d) + 1, base(d) + n + 1)), "a gap or a duplicate"
        ws = d.daemon.ws
        assert ws.counters["caught_up"] >= 1 and ws.counters["caught_up_from_disk"] > 0
        with trio.fail_after(10):
            while ws.counters["dropped"] < 1:
                await trio.sleep(0.05)
        assert ws.counters["dropped"] == 1  # the stalled one only
        assert any("dropping WebSocket client" in r.getMessage() for r in caplog.records)
        # The stalled one, when it finally reads, finds its connection closed.
        with pytest.raises(ConnectionClosed) as info:
            with trio.fail_after(10):
                while True:
                    await stalled.get_message()
        assert info.value.reason.code in (CLOSE_TOO_SLOW, 1006)
    with trio.fail_after(10):  # both connections are gone: the server forgets them
        while d.daemon.ws.clients:
            await trio.sleep(0.01)


async def test_keepalive_pings_are_answered(live_daemon):
    d = await live_daemon(ping_interval=0.1, ping_timeout=2)
    async with open_websocket_url(d.ws_url) as ws:
        await recv(ws)
        await trio.sleep(0.5)  # several pings; the client's library answers them
        await ws.send_message(json.dumps({"type": "ping"}))
        assert (await recv(ws))["type"] == "pong"
    assert d.daemon.ws.counters["keepalive_timeouts"] == 0


async def rejected_status(url: str, **kw) -> int:
    status = 101
    try:
        async with open_websocket_url(url, **kw):
            pass
    except* ConnectionRejected as group:  # a bare one arrives wrapped in a group here
        status = group.exceptions[0].status_code
    return status


async def test_origin_refused_unless_the_dashboards(live_daemon):
    d = await live_daemon()
    assert await rejected_status(d.ws_url, extra_headers=[(b"Origin", b"http://evil.example")]) == 403
    assert await rejected_status(d.ws_url, extra_headers=[(b"Origin", b"http://127.0.0.1:1")]) == 403
    assert await rejected_status(d.ws_url, extra_headers=[(b"Origin", b"null")]) == 403
    own = f"http://127.0.0.1:{d.port}".encode()
    assert await rejected_status(d.ws_url, extra_headers=[(b"Origin", own)]) == 101
    own = f"http://localhost:{d.port}".encode()
    assert await rejected_status(d.ws_url, extra_headers=[(b"Origin", own)]) == 101
    assert d.daemon.ws.counters["refused_403"] == 3


async def raw_handshake(port: int, host: str) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            f"GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        with trio.fail_after(5):
            return await stream.receive_some(4096)


async def test_foreign_host_header_refused(live_daemon):
    d = await live_daemon({"server": {"allowedHosts": ["monitor.lan"]}})
    assert (await raw_handshake(d.ws_port, "evil.example:80")).startswith(b"HTTP/1.1 403")
    assert (await raw_handshake(d.ws_port, f"127.0.0.1:{d.ws_port}")).startswith(b"HTTP/1.1 101")
    assert (await raw_handshake(d.ws_port, "monitor.lan")).startswith(b"HTTP/1.1 101")
    assert (await raw_handshake(d.ws_port, "[::1]:3848")).startswith(b"HTTP/1.1 101")


async def test_token_required_by_header_or_subprotocol(live_daemon):
    d = await live_daemon({"server": {"token": "s3cret/+="}})
    assert await rejected_status(d.ws_url) == 401
    assert await rejected_status(d.ws_url, extra_headers=[(b"Authorization", b"Bearer wrong")]) == 401
    assert (
        await rejected_status(d.ws_url, subprotocols=["contextuate", "contextuate.bearer." + b64url_token("no")]) == 401
    )
    async with open_websocket_url(d.ws_url, extra_headers=[(b"Authorization", b"Bearer s3cret/+=")]) as ws:
        assert (await recv(ws))["type"] == "snapshot"
    protos = ["contextuate", "contextuate.bearer." + b64url_token("s3cret/+=")]
    async with open_websocket_url(d.ws_url, subprotocols=protos) as ws:
        assert ws.subprotocol == "contextuate"  # the token is never echoed
        assert (await recv(ws))["type"] == "snapshot"


async def test_a_flood_of_requests_stalls_neither_ingest_nor_others(live_daemon):
    d = await live_daemon()
    for i in range(300):
        await d.submit(ev(i, session="hist"))
    async with open_websocket_url(d.ws_url) as flooder, open_websocket_url(d.ws_url) as watcher:
        await recv_type(flooder, "snapshot")
        await recv_type(watcher, "snapshot")
        replies = 0

        async def drain():
            nonlocal replies
            while True:
                m = json.loads(await flooder.get_message())
                if m["type"] == "recent_events":
                    replies += 1

        async with trio.open_nursery() as n:
            n.start_soon(drain)
            request = json.dumps({"type": "get_all_recent_events", "limit": 50})

            async def flood():
                for _ in range(500):  # as fast as the socket takes them
                    await flooder.send_message(request)

            n.start_soon(flood)
            while replies < 50:  # the flood is under way
                await trio.sleep(0.01)
            # Meanwhile ingest and another client go on at their normal pace.
            for i in range(20):
                with trio.fail_after(1.0):
                    await d.submit(ev(1000 + i, session="live"))
            got = await recv_events(watcher, 20, timeout=3.0)
            assert [e["id"] for _, e in got][-1].startswith("e-live-1019")
            # The flooder is still served, at its own pace (past its burst it waits
            # for its own budget), and not disconnected.
            with trio.fail_after(30):
                while replies < 400:
                    await trio.sleep(0.05)
            assert d.daemon.ws.counters["throttled"] > 0
            n.cancel_scope.cancel()


async def test_connections_reset_mid_handshake_do_not_harm_the_daemon(live_daemon):
    import socket as stdsocket
    import struct

    d = await live_daemon()
    hello = (
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    for i in range(30):
        s = stdsocket.socket()
        s.connect(("127.0.0.1", d.ws_port))
        s.sendall(hello if i % 3 else hello[:20])
        s.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # RST, maybe before the daemon even looked at the request
        await trio.sleep(0.005)
    await trio.sleep(0.3)
    async with open_websocket_url(d.ws_url) as ws:
        await recv_type(ws, "snapshot")
        await d.submit(ev(1))
        got = await recv_events(ws, 1)
        assert got[0][1]["id"].startswith("e-s1-1-")


async def test_every_action_on_a_session_reaches_clients_after_its_events(live_daemon):
    d = await live_daemon()
    async with open_websocket_url(d.ws_url) as ws:
        await recv(ws)
        await d.submit(ev(0, session="s"))
        assert (await recv_type(ws, "session_update"))["session"]["sessionId"] == "s"
        for name in ("first", "second"):  # the same session, the same seq: never a stale text
            d.broker.session_action("rename", "s", name)
            assert (await recv_type(ws, "session_update"))["session"]["name"] == name


async def test_a_client_that_overflowed_gets_the_sessions_as_they_are_once_caught_up(live_daemon):
    d = await live_daemon(queue_size=5)
    async with open_websocket_url(d.ws_url) as ws:
        sessions = {s["sessionId"]: s for s in (await recv(ws))["sessions"]}
        sent = [ev(i, session=f"s{i % 4}") for i in range(40)]
        # Far more than its queue holds, in one pipeline batch (it cannot keep up with
        # that however fast it sends): it is caught up from memory.
        batch = [events.from_object(e, source="socket", mint=MINT) for e in sent]
        await d.broker.submit_many(batch, wait=True)
        d.broker.session_action("delete", "s3")
        got, caught_up = [], 0
        with trio.fail_after(10):
            while len(got) < 40 or not caught_up or "s3" in sessions:
                m = await recv(ws)
                if m["type"] in ("event", "events"):
                    got += [m["event"]] if m["type"] == "event" else m["events"]
                elif m["type"] == "caught_up":
                    caught_up += 1
                    assert m["seq"] <= d.broker.seq
                    sessions = {s["sessionId"]: s for s in m["sessions"]}
                elif m["type"] == "session_update":
                    sessions[m["session"]["sessionId"]] = m["session"]
                elif m["type"] == "session_deleted":
                    sessions.pop(m["sessionId"], None)
        assert [e["id"] for e in got] == [e["id"] for e in sent]  # each once, in order
        assert set(sessions) == {"s0", "s1", "s2"}
        assert {s: sessions[s]["eventCount"] for s in sessions} == {"s0": 10, "s1": 10, "s2": 10}
    assert d.daemon.ws.counters["caught_up"] >= 1


def test_a_long_send_is_cut_into_writes_each_under_its_own_timeout():
    """A catch-up of several MB to a slow link that keeps reading is many writes,
    each timed alone, not one message that 'took over' the send timeout."""
    from contextuate_trio.web.ws_server import _groups

    texts = ["a" * 100, "b" * 100, "c" * 300, "d" * 50, "e" * 60]
    assert _groups(texts, 250) == [texts[:2], texts[2:3], texts[3:]]
    assert _groups([], 10) == [] and _groups(["x" * 20], 10) == [["x" * 20]]


async def test_frames_written_on_a_full_socket_arrive_whole_and_in_order():
    """``_write_all`` writes on while the kernel takes the frames and waits when the
    socket is full: over a real socket with a small send buffer and a slow reader,
    many frames of every size arrive whole, in order, none twice."""
    import socket as stdlib_socket

    from contextuate_trio.web.ws_server import _write_all

    frames = [bytes([65 + i % 26]) * size for i, size in enumerate([1, 5000, 300_000, 7, 70_000] * 40)]
    frames += [b"z"] * 3000  # more buffers than one writev takes
    a, b = trio.socket.socketpair(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    a.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_SNDBUF, 4096)
    got = bytearray()

    async def read_slowly() -> None:
        while len(got) < sum(map(len, frames)):
            got.extend(await b.recv(16384))  # (a turn of the loop each: the writer waits)

    with a, b, trio.fail_after(30):
        async with trio.open_nursery() as n:
            n.start_soon(read_slowly)
            await _write_all(trio.SocketStream(a), frames)
    assert bytes(got) == b"".join(frames)


async def test_a_write_to_a_closed_peer_fails_as_closed():
    import socket as stdlib_socket

    from contextuate_trio.web.ws_server import _write_all

    a, b = trio.socket.socketpair(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    b.close()
    with a, pytest.raises(OSError):
        await _write_all(trio.SocketStream(a), [b"x" * 100_000] * 10)


async def test_empty_frames_are_written_past(monkeypatch):
    import os
    import socket as stdlib_socket

    from contextuate_trio.web import ws_server

    calls: list[int] = []
    real_writev = os.writev

    def writev(fd, buffers):
        calls.append(len(buffers))
        if len(calls) > 10:  # a loop that never moves on (it would never yield either)
            raise RuntimeError("writev called again and again")
        return real_writev(fd, buffers)

    monkeypatch.setattr(ws_server.os, "writev", writev)
    a, b = trio.socket.socketpair(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    with a, b, trio.fail_after(5):
        await ws_server._write_all(trio.SocketStream(a), [b"abc", b"", b"", b"d", b""])
        assert await b.recv(100) == b"abcd" and len(calls) == 1


async def test_frames_are_written_directly_only_on_a_plain_socket(live_daemon):
    """trio-websocket's server connection has the parts ``_send_frames`` writes
    through (were they renamed, every send would quietly take the slow path); a
    stream that is no plain socket (TLS) takes trio-websocket's own sends."""
    from contextuate_trio.web.ws_server import _frames_writable

    d = await live_daemon()
    async with open_websocket_url(d.ws_url) as ws:
        await recv(ws)
        (client,) = d.daemon.ws.clients
        assert _frames_writable(client.ws)
        real = client.ws._stream
        try:
            client.ws._stream = trio.StapledStream(real, real)  # (any stream but a socket's)
            assert not _frames_writable(client.ws)
        finally:
            client.ws._stream = real


class FakeWs:
    """The parts of a trio-websocket connection ``_send_frames`` writes through."""

    def __init__(self, sock) -> None:
        self._stream_lock = trio.StrictFIFOLock()
        self._stream = trio.SocketStream(sock)
        self._close_reason = None
        self.aborted = False

    async def _abort_web_socket(self) -> None:
        self.aborted = True


async def test_a_task_cancelled_while_waiting_for_the_send_lock_writes_nothing():
    """A sender cut off mid-frame hands the lock on; the next in line, whose client
    is being dropped (its scope cancelled), must not write after the torn frame."""
    import socket as stdlib_socket

    from contextuate_trio.web.ws_server import _send_frames

    a, b = trio.socket.socketpair(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    with a, b:
        ws = FakeWs(a)
        await ws._stream_lock.acquire()  # a send under way
        async with trio.open_nursery() as n:
            waiter = trio.CancelScope()

            async def reply() -> None:
                with waiter:
                    await _send_frames(ws, [b"REPLY"])

            n.start_soon(reply)
            await trio.testing.wait_all_tasks_blocked()
            ws._stream_lock.release()  # the torn send lets go of the lock (handed on)...
            waiter.cancel()  # ...and then drops the client
        a.close()
        assert await b.recv(100) == b""  # the end of the stream, and nothing before it


async def test_a_close_while_waiting_for_the_lock_or_a_gone_peer_is_connection_closed():
    import socket as stdlib_socket

    from contextuate_trio.web.ws_server import _send_frames

    a, b = trio.socket.socketpair(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    with a, b:
        ws = FakeWs(a)
        await ws._stream_lock.acquire()
        async with trio.open_nursery() as n:
            failed: list[BaseException] = []

            async def send() -> None:
                try:
                    await _send_frames(ws, [b"DATA"])
                except ConnectionClosed as exc:
                    failed.append(exc)

            n.start_soon(send)
            await trio.testing.wait_all_tasks_blocked()
            ws._close_reason = "closed by the peer"  # (trio-websocket sent its Close frame)
            ws._stream_lock.release()
        assert failed and not ws.aborted
        b.close()
        ws._close_reason = None
        with pytest.raises(ConnectionClosed):
            await _send_frames(ws, [b"x" * 100_000] * 10)
        assert ws.aborted


async def test_two_lagging_clients_share_what_is_read_from_disk(live_daemon, monkeypatch):
    """Two clients behind by more than the memory holds are served from disk: each
    gets every event once, in order; the chunks they both need are read once (and let
    go when they are live again)."""
    from contextuate_trio.web import ws_protocol

    monkeypatch.setattr(ws_protocol, "CATCH_UP_CHUNK", 10)
    d = await live_daemon(queue_size=5)
    d.broker.fanout.replay = collections.deque(d.broker.replay, maxlen=10)
    backend = d.daemon.ws.protocol.backend
    reads: list[tuple[int, int]] = []
    real = backend.stored_after
    monkeypatch.setattr(backend, "stored_after", lambda since, upto: reads.append((since, upto)) or real(since, upto))
    n = 200
    async with open_websocket_url(d.ws_url) as one, open_websocket_url(d.ws_url) as two:
        await recv(one)
        await recv(two)
        batch = [events.from_object(ev(i), source="socket", mint=MINT) for i in range(n)]
        await d.broker.submit_many(batch, wait=True)  # one batch: neither can keep up
        got = [[s for s, _ in await recv_events(ws, n)] for ws in (one, two)]
    want = list(range(base(d) + 1, base(d) + n + 1))
    assert got == [want, want], "a gap or a duplicate"
    assert d.daemon.ws.counters["caught_up_from_disk"] > n  # both were served from disk...
    assert len(set(reads)) == len(reads)  # ...each chunk read once
    assert not d.daemon.ws.protocol._chunks  # let go once both are past them
