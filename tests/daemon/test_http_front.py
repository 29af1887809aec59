"""The daemon's HTTP port (``daemon/http_front``): hooks answered on the lean path,
everything else handed to hypercorn, on real daemons and real sockets.

A lean answer carries no ``server`` header; hypercorn's say ``server: hypercorn-h11``:
that is how these tests tell which path answered."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import trio
from conftest import wait_for
from http_wire import Wire, hook_request

LEAN = None  # the ``server`` header of a lean answer: none
HYPERCORN = "hypercorn-h11"


def hook(i: int, session: str = "s1", **extra) -> bytes:
    payload = {"session_id": session, "hook_event_name": "PreToolUse", "tool_name": "Bash", "tool_use_id": f"t{i}"}
    payload.update(extra)
    return json.dumps(payload).encode()


def stored(d, headers: dict | None = None) -> int:
    return int(d.get("/api/status", headers=headers)["eventsStored"])


def tool_ids(d, session: str) -> list[str]:
    return [e["toolUseId"] for e in d.events(session)]


# --- keep-alive, pipelining, versions ------------------------------------------------------
def test_five_thousand_hooks_on_one_kept_alive_connection(daemon):
    d = daemon()
    with Wire(d.port) as w:
        for i in range(5_000):
            w.send(hook_request(hook(i)))
            a = w.answer()
            assert a.status == 200 and a.body == b"{}" and not a.closes, (i, a)
            assert a.headers.get("server") is LEAN
    assert stored(d) == 5_000


def test_pipelined_hooks_are_answered_in_order(daemon):
    d = daemon()
    requests = [hook_request(b"  " if i == 25 else hook(i)) for i in range(60)]
    with Wire(d.port) as w:
        w.send(b"".join(requests))  # one write: the daemon reads many requests at once
        statuses = [w.answer().status for _ in requests]
    assert statuses == [400 if i == 25 else 200 for i in range(60)]
    assert tool_ids(d, "s1") == [f"t{i}" for i in range(60) if i != 25]


def test_http_1_0_and_connection_close_are_honoured(daemon):
    d = daemon()
    for version, headers in (("1.0", {}), ("1.1", {"Connection": "close"})):
        with Wire(d.port) as w:
            w.send(hook_request(hook(1), headers=headers, version=version))
            a = w.answer()
            assert a.status == 200 and a.closes
            assert w.closed_by_peer()
    with Wire(d.port) as w:  # HTTP/1.0 asking for keep-alive gets it
        for i in range(3):
            w.send(hook_request(hook(i), headers={"Connection": "keep-alive"}, version="1.0"))
            a = w.answer()
            assert a.status == 200 and a.headers["connection"] == "keep-alive"


def test_expect_100_continue_and_chunked_bodies(daemon):
    d = daemon()
    body = hook(7, cwd="/src")
    with Wire(d.port) as w:
        w.send(hook_request(body, headers={"Expect": "100-continue"})[: -len(body)])
        assert w.answer().status == 100  # the go-ahead, before the body is sent
        w.send(body)
        assert w.answer().status == 200
        head = b"POST /api/hooks HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunked = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(part), part) for part in (body[:5], body[5:20], body[20:]))
        # Two chunked requests in one write, the second with a trailer; then a plain one.
        w.send(head + chunked + b"0\r\n\r\n" + head + chunked + b"0\r\nX-Trailer: yes\r\n\r\n" + hook_request(hook(8)))
        assert [w.answer().status for _ in range(3)] == [200, 200, 200]
    events = d.events("s1")
    assert [e["toolUseId"] for e in events] == ["t7", "t7", "t7", "t8"]
    assert all(e["workingDirectory"] == "/src" for e in events[:3])


def test_machine_and_parent_headers_and_bad_json(daemon):
    d = daemon()
    with Wire(d.port) as w:
        w.send(hook_request(hook(1, "child"), headers={"X-Contextuate-Machine": " m2 ", "X-Contextuate-Parent": "p1"}))
        assert w.answer().status == 200
        w.send(hook_request(b"not json {"))
        assert w.answer().status == 200  # kept, as an invalid event
    s = d.sessions()
    assert s["child"]["machineId"] == "m2" and s["child"]["parentSessionId"] == "p1"
    assert d.events("unknown")[0]["eventType"] == "invalid"


# --- the error answers, on the lean path -----------------------------------------------------
def answer_alone(port: int, request: bytes):
    """Send one request on a new connection; its answer, and whether the server closed."""
    with Wire(port) as w:
        w.send(request)
        a = w.answer()
        return a, a.closes and w.closed_by_peer()


def test_refusals_on_the_lean_path(daemon):
    d = daemon({"server": {"token": "tok"}, "maxLineBytes": 1000})
    auth = {"Authorization": "Bearer tok"}

    def lean(request: bytes, status: int, error: str | None = None, closes: bool = True):
        a, closed = answer_alone(d.port, request)
        assert a.status == status and a.headers.get("server") is LEAN, a
        assert closed == closes
        if error is not None:
            assert json.loads(a.body) == {"error": error}
        return a

    lean(hook_request(hook(1), headers={**auth, "Host": "evil.example"}), 421, "host not allowed")
    lean(hook_request(hook(1), headers={**auth, "Host": "evil.example:3847"}), 421)
    lean(hook_request(hook(1), headers={**auth, "Origin": "http://evil.example"}), 403, "not from another web page")
    lean(hook_request(hook(1), headers={**auth, "Sec-Fetch-Site": "cross-site"}), 403, "not from another web page")
    own = f"http://127.0.0.1:{d.port}"  # the dashboard's own origin passes the guard, not the endpoint
    lean(hook_request(hook(1), headers={**auth, "Origin": own}), 403, "hooks are not accepted from web pages")
    a = lean(hook_request(hook(1)), 401, "missing or wrong token")
    assert a.headers["www-authenticate"] == "Bearer"
    lean(hook_request(hook(1), headers={"Authorization": "Bearer nope"}), 401)
    lean(hook_request(b"x" * 1001, headers=auth), 413, "body over 1000 bytes")
    big_chunk = b"POST /api/hooks HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer tok\r\nTransfer-Encoding: chunked\r\n\r\n"
    lean(big_chunk + b"3e9\r\n" + b"x" * 100, 413)  # announced over the limit: not read further
    ext = b"".join(b"1;" + b"e" * 3000 + b"\r\nx\r\n" for _ in range(30))  # 30 bytes of body, 90 kB of framing
    lean(big_chunk + ext, 413)  # the framing counts: the buffer never grows without bound
    lean(hook_request(b" \n ", headers=auth), 400, "empty body", closes=False)
    lean(hook_request(hook(1), headers={**auth, "Host": f"localhost:{d.port}"}), 200, closes=False)
    assert stored(d, auth) == 1


def test_an_oversized_body_announced_with_expect_gets_no_go_ahead(daemon):
    d = daemon({"maxLineBytes": 1000})
    with Wire(d.port) as w:
        w.send(hook_request(b"", headers={"Content-Length": "5000", "Expect": "100-continue"}))
        a = w.answer()
        assert a.status == 413 and a.closes and w.closed_by_peer()


async def test_not_stored_is_503(live_daemon):
    """Once the broker takes no more events (the daemon stopping), hooks get 503."""
    d = await live_daemon()

    def post() -> tuple[int, bytes]:
        with Wire(d.port) as w:
            w.send(hook_request(hook(1)))
            a = w.answer()
            return a.status, a.body

    assert (await trio.to_thread.run_sync(post))[0] == 200
    d.broker.stop_taking()  # what Daemon.run does when it stops
    status, body = await trio.to_thread.run_sync(post)
    assert status == 503 and json.loads(body) == {"error": "the daemon is stopping"}


# --- hypercorn serves everything else --------------------------------------------------------
def test_a_connection_is_handed_to_hypercorn_at_its_first_other_request(daemon):
    d = daemon()
    with Wire(d.port) as w:
        for i in range(3):
            w.send(hook_request(hook(i)))
            assert w.answer().headers.get("server") is LEAN
        # Pipelined: two more hooks, then the first other request, then a hook again.
        w.send(
            hook_request(hook(3))
            + hook_request(hook(4))
            + b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            + hook_request(hook(5))
        )
        a3, a4, health, a5 = (w.answer() for _ in range(4))
        assert [a3.status, a4.status] == [200, 200] and a3.headers.get("server") is LEAN
        assert health.status == 200 and health.headers["server"] == HYPERCORN
        assert json.loads(health.body)["status"] in ("ok", "degraded")
        # From here on hypercorn serves the connection, hooks included (the app's route).
        assert a5.status == 200 and a5.headers["server"] == HYPERCORN and json.loads(a5.body) == {}
        w.send(b"GET /api/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        sessions = json.loads(w.answer().body)["sessions"]
    assert [s["sessionId"] for s in sessions] == ["s1"]
    assert tool_ids(d, "s1") == [f"t{i}" for i in range(6)]


def test_the_dashboard_websocket_and_http2_still_go_to_hypercorn(daemon):
    d = daemon()
    with Wire(d.port) as w:
        w.send(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        page = w.answer()
        assert page.status == 200 and page.headers["server"] == HYPERCORN and b"<html" in page.body.lower()
    with Wire(d.port) as w:  # no WebSocket route on this port: hypercorn refuses the upgrade, as before
        w.send(
            b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        refused = w.answer()
        assert refused.status == 403 and refused.headers["server"] == HYPERCORN
    with Wire(d.port) as w:  # HTTP/2 with prior knowledge: hypercorn's h2 answers with SETTINGS
        w.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        while len(w.buf) < 9:
            w._more()
        assert w.buf[3] == 0x04  # a SETTINGS frame
    for bad_request in (  # what llhttp cannot parse, or h11 would refuse, goes to hypercorn, which refuses it
        b"POST /api/hooks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        b"POST /api/hooks HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
        b"POST /api/hooks HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\nContent-Length: 2\r\n\r\n{}",
    ):
        with Wire(d.port) as w:
            w.send(bad_request)
            bad = w.answer()
            assert bad.status == 400 and bad.headers["server"] == HYPERCORN, bad_request
    assert d.get("/api/health")["status"] in ("ok", "degraded")


# --- clients that misbehave ------------------------------------------------------------------
def test_a_client_gone_mid_body_loses_nothing_else(daemon):
    d = daemon()
    cut = socket.create_connection(("127.0.0.1", d.port))
    cut.sendall(hook_request(hook(99, "cut"))[:-10])  # the body's end never comes
    with Wire(d.port) as w:
        for i in range(20):
            w.send(hook_request(hook(i)))
            if i == 10:
                cut.close()
            assert w.answer().status == 200
    assert tool_ids(d, "s1") == [f"t{i}" for i in range(20)]
    assert "cut" not in d.sessions()
    assert "Traceback" not in d.log()


@pytest.mark.parametrize("send", ["nothing", "a slow head", "half a body"])
def test_a_connection_waiting_on_its_client_is_closed(daemon, send):
    """Slowloris: hypercorn's keep_alive_timeout (5 s) from the last answer until a
    whole head, and between reads of a body (its read_timeout is unset)."""
    d = daemon()
    s = socket.create_connection(("127.0.0.1", d.port), timeout=15)
    t0 = time.monotonic()
    stop = threading.Event()
    if send == "half a body":
        s.sendall(hook_request(hook(1))[:-20])
    elif send == "a slow head":

        def dribble():  # one byte of head every 0.3 s: never a whole head
            for byte in b"POST /api/hooks HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 100:
                if stop.wait(0.3):
                    return
                try:
                    s.send(bytes([byte]))
                except OSError:
                    return

        threading.Thread(target=dribble, daemon=True).start()
    try:
        assert s.recv(1024) == b""  # closed by the daemon, without an answer
    except ConnectionResetError:
        pass
    waited = time.monotonic() - t0
    stop.set()
    s.close()
    assert 4.5 < waited < 9, waited
    with Wire(d.port) as w:  # the daemon serves on
        w.send(hook_request(hook(2)))
        assert w.answer().status == 200


def test_the_bound_urls_are_what_hypercorn_reported(daemon):
    d = daemon()
    log = wait_for(lambda: "Running on" in d.log() and d.log())
    assert f"Running on http://127.0.0.1:{d.port} (CTRL + C to quit)" in log


async def test_ipv6_bind_and_url(live_daemon, home):
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    from conftest import free_port

    port = free_port()
    d = await live_daemon({"server": {"host": "::1", "port": port}})
    assert d.daemon.web.http_urls == [f"http://[::1]:{port}"]

    def post() -> int:
        with socket.create_connection(("::1", port), timeout=10) as s:
            s.sendall(hook_request(hook(1), headers={"Host": f"[::1]:{port}"}))
            return int(s.recv(1024).split()[1])

    assert await trio.to_thread.run_sync(post) == 200


def test_a_stop_ends_every_connection(daemon):
    """SIGTERM with connections open on both paths: the daemon stops at once and
    cleanly, every connection closed."""
    d = daemon()
    idle, mid_body, handed = Wire(d.port), Wire(d.port), Wire(d.port)
    idle.send(hook_request(hook(1)))
    assert idle.answer().status == 200
    mid_body.send(hook_request(hook(2))[:-5])
    handed.send(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert handed.answer().headers["server"] == HYPERCORN
    t0 = time.monotonic()
    assert d.stop() == 0
    assert time.monotonic() - t0 < 5
    for w in (idle, mid_body, handed):
        assert w.closed_by_peer()
        w.close()
    log = d.log()
    assert "Traceback" not in log and "stopped" in log


def test_a_request_answered_leaves_no_cyclic_garbage():
    """The parser and its message refer to each other until released: left to the
    collector, 2,000 requests/s made young collections that held the loop ~80 ms."""
    import gc

    from contextuate_trio.daemon import http_front

    gc.collect()
    gc.disable()
    try:
        for _ in range(100):
            msg = http_front._Message()
            msg.parser.feed_data(hook_request(hook(1)))
            assert msg.complete and msg.is_hook()
            msg.release()
            del msg
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_an_ingest_token_reports_hooks_and_reads_nothing(daemon):
    """The token Claude Code's settings hold (``hooks install --otel``) may send events
    on the lean path, and nothing else."""
    tokens = [{"name": "otel", "token": "ing-" + "x" * 24, "scopes": ["ingest"]}]
    d = daemon({"server": {"tokens": tokens}})
    auth = {"Authorization": "Bearer ing-" + "x" * 24}
    a, _ = answer_alone(d.port, hook_request(hook(1), headers=auth))
    assert a.status == 200 and a.headers.get("server") is LEAN, a
    with pytest.raises(Exception) as err:
        d.get("/api/sessions", headers=auth)
    assert getattr(err.value, "code", None) == 403
