"""Issue 12: ``trio.BusyResourceError`` in the daemon's log when a client kept writing
on a connection hypercorn was closing.

The cause, in hypercorn 0.18's trio ``TCPServer``: ``_close`` calls the stream's
``send_eof`` without the ``send_lock`` its ``protocol_send`` holds for data, and trio's
``send_eof`` keeps the stream marked "sending" across a checkpoint. A client whose
request ended the connection's keep-alive (``Connection: close`` here; the 1,000th
request before the limit was lifted) and that keeps writing makes the reading task
close the connection while the app task streams its answer: the app's next
``send_all`` lands in that checkpoint and raises, and hypercorn logs a traceback."""

from __future__ import annotations

import json
import socket

from http_wire import post_many

EXPORT = b"GET /api/sessions/big/export HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
MORE = b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def export_while_writing(port: int) -> int:
    """Stream an export, writing more requests on every piece read; bytes read."""
    got = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(EXPORT)
        try:
            while data := s.recv(1 << 16):
                got += len(data)
                s.sendall(MORE)
        except OSError:
            pass  # the server closed while we wrote: expected
    return got


def test_a_client_writing_on_a_closing_connection_leaves_no_traceback(daemon):
    d = daemon()
    body = json.dumps(
        {
            "session_id": "big",
            "hook_event_name": "PreToolUse",
            "tool_name": "Bash",
            "tool_input": {"command": "x" * 2000},
        }
    ).encode()
    post_many(d.port, [body] * 1500)
    for _ in range(40):
        assert export_while_writing(d.port) > 0
    log = d.log()
    assert "BusyResourceError" not in log and "Traceback" not in log, log[-3000:]
    assert d.get("/api/health")["status"] in ("ok", "degraded")  # still serving
    post_many(d.port, [body])
