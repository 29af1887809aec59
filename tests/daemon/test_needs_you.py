""" "Needs you" end to end: the real hook into a real daemon; the queue in the API and
in /metrics at once, cleared by the answer, stuck sessions found by the clock, and a
webhook a local server receives within 2 s of the PermissionRequest."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from conftest import run_hook, wait_for


def payload(hook, sid="s-perm", **fields):
    return {"session_id": sid, "hook_event_name": hook, "cwd": "/w", "prompt_id": "p1", **fields}


def metrics(d) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{d.port}/metrics", timeout=5) as r:
        return r.read().decode()


class Receiver:
    """A local webhook endpoint: records what is POSTed, with the time it came."""

    def __init__(self) -> None:
        self.got: list[tuple[float, dict]] = []
        self.arrived = threading.Event()
        rec = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                rec.got.append((time.monotonic(), json.loads(body)))
                rec.arrived.set()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_permission_request_is_queued_at_once_alerted_and_cleared(daemon, home):
    rx = Receiver()
    try:
        d = daemon({"alerts": {"webhooks": [{"url": rx.url, "format": "json"}]}})
        assert d.get("/api/attention")["items"] == []
        sent = time.monotonic()
        r = run_hook(home, payload("PermissionRequest", tool_name="Bash", tool_input={"command": "npm test"}))
        assert r.returncode == 0 and r.stdout == b""
        (item,) = wait_for(lambda: d.get("/api/attention")["items"], timeout=1.0, what="the queue, within 1 s")
        assert item["reason"] == "permission" and item["detail"] == "Bash npm test" and item["requestId"]
        assert d.sessions()["s-perm"]["status"] == "waiting"
        assert 'contextuate_attention_sessions{reason="permission"} 1' in metrics(d)
        assert rx.arrived.wait(2.0), "no webhook within 2 s of the PermissionRequest"
        at, body = rx.got[0]
        assert at - sent < 2.0 and body["sessionId"] == "s-perm" and body["reason"] == "permission"
        # A restart keeps the wait, and does not alert it again; a neutral event on it
        # neither, nor the same wait said again (the Notification ~6 s later).
        d.stop()
        d.start()
        assert [i["sessionId"] for i in d.get("/api/attention")["items"]] == ["s-perm"]
        run_hook(home, payload("MessageDisplay", message_id="m1", delta="Let me run the tests"))
        run_hook(home, payload("Notification", notification_type="permission_prompt", message="needs permission"))
        run_hook(home, payload("PermissionRequest", sid="s-two", tool_name="Write", tool_input={"file_path": "/w/a"}))
        wait_for(lambda: len(rx.got) >= 2, what="the second session's alert")
        assert [b["sessionId"] for _, b in rx.got] == ["s-perm", "s-two"]
        run_hook(home, payload("PreToolUse", tool_name="Bash", tool_use_id="t1"))
        wait_for(lambda: [i["sessionId"] for i in d.get("/api/attention")["items"]] == ["s-two"], what="the answer")
        assert d.sessions()["s-perm"]["status"] == "active" and len(rx.got) == 2
        assert 'contextuate_attention_sessions{reason="permission"} 1' in metrics(d)  # s-two's
    finally:
        rx.close()


def test_stuck_sessions_are_found_by_the_clock(daemon, home):
    d = daemon({"alerts": {"stuckAfterSeconds": 0.5}})
    run_hook(home, payload("UserPromptSubmit", sid="s-busy", prompt="build it"))
    (item,) = wait_for(lambda: d.get("/api/attention")["items"], timeout=5, what="a stuck session")
    assert item["reason"] == "stuck" and item["sessionId"] == "s-busy"
    assert d.get("/api/attention?reason=permission")["items"] == []
    run_hook(home, payload("Stop", sid="s-busy", background_tasks=[]))
    wait_for(lambda: d.get("/api/attention")["items"] == [], what="an idle session is not stuck")


def test_an_unknown_reason_is_a_clear_error(daemon, home):
    import urllib.error

    d = daemon()
    try:
        d.get("/api/attention?reason=nope")
        raise AssertionError("expected 400")
    except urllib.error.HTTPError as exc:
        assert exc.code == 400 and b"unknown reason nope" in exc.read()
