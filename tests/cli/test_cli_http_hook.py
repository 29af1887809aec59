"""Claude Code http hooks into a real daemon: what ``hooks install --transport http``
writes, posted the way Claude Code posts it (headers with $VAR interpolation)."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

from conftest import clean_env, wait_for
from helpers import run_cli

from contextuate_trio.cli import hooks as cs


def post(url, body, headers=None, timeout=10):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def claude_code_headers(handler: dict, env: dict) -> dict:
    """Claude Code's interpolation: $VAR / ${VAR} from allowedEnvVars, others empty."""
    allowed = set(handler.get("allowedEnvVars") or [])

    def sub(m):
        name = m.group(1) or m.group(2)
        return env.get(name, "") if name in allowed else ""

    return {k: re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, v) for k, v in handler.get("headers", {}).items()}


def test_installed_http_hook_is_accepted_with_machine_token_and_parent(daemon, home, tmp_path):
    d = daemon({"server": {"token": "s3cret"}})
    env = clean_env(home, HOME=str(tmp_path), CONTEXTUATE_MACHINE_ID="laptop-http")
    r = run_cli("hooks", "install", "--transport", "http", env=env)
    assert r.returncode == 0, r.stderr
    settings = json.loads((tmp_path / ".claude" / "settings.json").read_text())
    ours = cs.describe(settings)["ours"]
    assert ours["SessionStart"][0]["type"] == "command"
    handler = ours["PreToolUse"][0]
    assert handler["type"] == "http" and handler["url"] == f"http://127.0.0.1:{d.port}/api/hooks"
    assert handler["headers"]["Authorization"] == "Bearer s3cret"  # --global: the user's own file

    payload = {
        "session_id": "http-1",
        "hook_event_name": "PreToolUse",
        "cwd": "/src/app",
        "tool_name": "Bash",
        "tool_input": {"command": "pytest -q"},
        "tool_use_id": "toolu_1",
    }
    headers = claude_code_headers(handler, {"CONTEXTUATE_PARENT_SESSION": "parent-on-b"})
    status, body = post(handler["url"], payload, headers)
    assert status == 200 and json.loads(body) == {}
    auth = {"Authorization": "Bearer s3cret"}

    def sessions():
        return {s["sessionId"]: s for s in d.get("/api/sessions", headers=auth)["sessions"]}

    s = sessions()["http-1"]  # stored before the answer
    assert s["machineId"] == "laptop-http" and s["parentSessionId"] == "parent-on-b"
    ev = d.get("/api/sessions/http-1/events", headers=auth)["events"][0]
    assert ev["source"] == "http" and ev["data"] == payload and ev["summary"] == "Bash pytest -q"

    # Without the parent variable Claude Code sends an empty header: no link.
    status, _ = post(handler["url"], {**payload, "session_id": "http-2"}, claude_code_headers(handler, {}))
    assert status == 200
    assert sessions()["http-2"]["parentSessionId"] is None


def test_http_hook_refuses_no_token_web_pages_and_keeps_bad_json(daemon):
    d = daemon({"server": {"token": "tok"}})
    url = f"http://127.0.0.1:{d.port}/api/hooks"
    auth = {"Authorization": "Bearer tok"}
    assert post(url, {"session_id": "x", "hook_event_name": "Stop"})[0] == 401
    assert (
        post(url, {"session_id": "x", "hook_event_name": "Stop"}, {**auth, "Origin": "http://evil.example"})[0] == 403
    )
    assert post(url, b"not json {", auth)[0] == 200  # kept, as the command hook keeps it
    assert post(url, b"  ", auth)[0] == 400
    sessions = d.get("/api/sessions", headers=auth)["sessions"]
    assert [s["sessionId"] for s in sessions] == ["unknown"]


def test_http_hook_without_token_or_machine_header(daemon):
    d = daemon()
    url = f"http://127.0.0.1:{d.port}/api/hooks"
    assert post(url, {"session_id": "plain", "hook_event_name": "SessionEnd", "reason": "other"})[0] == 200
    s = wait_for(lambda: d.sessions().get("plain"))
    assert s["status"] == "ended" and s["machineId"]  # the daemon's own machine


def test_a_kept_alive_connection_is_not_closed_after_a_thousand_requests(daemon):
    """hypercorn's default closes a connection after 1,000 requests: a hook sender on a
    kept-alive connection would be made to reconnect for nothing."""
    import http.client

    d = daemon()
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
    try:
        conn.request("GET", "/api/health")
        first = conn.getresponse()
        first.read()
        sock = conn.sock
        for _ in range(1_100):
            conn.request("GET", "/api/health")
            r = conn.getresponse()
            r.read()
            assert r.status == 200 and not r.will_close and r.getheader("connection") != "close"
        assert conn.sock is sock  # the same connection all along
    finally:
        conn.close()
