"""Named tokens with scopes, end to end: a real daemon, the real CLI (``init``,
``token add|list|revoke``, ``open --print``, ``doctor``) and real HTTP/WebSocket
clients."""

from __future__ import annotations

import json
import os
import stat
import typing
import urllib.error
import urllib.request

import pytest
import trio
from conftest import DaemonProc, clean_env, wait_for
from helpers import run_cli
from trio_websocket import ConnectionRejected, open_websocket_url

from contextuate_trio import config as config_mod

TOKENS = {
    "server": {
        "tokens": [
            {"name": "viewer", "token": "read-secret-1", "scopes": ["read"]},
            {"name": "ops", "token": "admin-secret-1", "scopes": ["read", "admin"]},
        ]
    }
}


def call(d: DaemonProc, path: str, token: str | None = None, method: str = "GET", body: dict | None = None) -> int:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{d.port}{path}", data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def ws_status(d: DaemonProc, token: str | None) -> int:
    async def attempt() -> int:
        headers = [("Authorization", f"Bearer {token}")] if token else []
        try:
            async with open_websocket_url(f"ws://127.0.0.1:{d.ws_port}/", extra_headers=headers):
                return 101
        except ConnectionRejected as exc:
            return exc.status_code

    return trio.run(attempt)


def ws_action_reply(d: DaemonProc, token: str) -> dict:
    """The reply to a session action sent over the WebSocket with this token."""

    async def attempt() -> dict:
        headers = [("Authorization", f"Bearer {token}")]
        async with open_websocket_url(f"ws://127.0.0.1:{d.ws_port}/", extra_headers=headers) as ws:
            await ws.send_message(
                json.dumps({"type": "session_action", "action": "rename", "sessionId": "nope", "value": "x"})
            )
            while True:
                msg = json.loads(await ws.get_message())
                if msg.get("type") in ("error", "ack", "result") or "error" in msg:
                    return msg

    return trio.run(attempt)


def test_each_request_needs_its_scope(daemon):
    d = daemon(TOKENS)
    assert call(d, "/api/health") == 200  # never needs a token
    assert call(d, "/api/sessions") == 401
    assert call(d, "/api/sessions", "wrong") == 401
    assert call(d, "/api/sessions", "read-secret-1") == 200
    assert call(d, "/api/config", "read-secret-1") == 403
    assert call(d, "/api/config", "admin-secret-1") == 200
    shown = d.get("/api/config", headers={"Authorization": "Bearer admin-secret-1"})["server"]["tokens"]
    assert [t["token"] for t in shown] == ["***", "***"]
    action = {"action": "rename", "value": "x"}
    assert call(d, "/api/sessions/nope/actions", "read-secret-1", "POST", action) == 403
    assert call(d, "/api/sessions/nope/actions", "admin-secret-1", "POST", action) == 404  # past the guard
    assert ws_status(d, None) == 401
    assert ws_status(d, "read-secret-1") == 101
    # Over the WebSocket too, a session action needs the admin scope.
    assert "lacks the 'admin' scope" in json.dumps(ws_action_reply(d, "read-secret-1"))
    assert "lacks" not in json.dumps(ws_action_reply(d, "admin-secret-1"))
    # The dashboard page is open and says a token is needed, without showing one.
    with urllib.request.urlopen(f"http://127.0.0.1:{d.port}/", timeout=5) as resp:
        page = resp.read().decode()
    assert 'name="contextuate-auth" content="token"' in page and "secret-1" not in page


def test_add_list_revoke_reach_the_running_daemon(daemon, home):
    d = daemon(TOKENS)
    env = clean_env(home)
    p = run_cli("token", "add", "phone", "--scopes", "read,decide", env=env)
    assert p.returncode == 0, p.stderr
    secret = p.stdout.strip()
    assert len(secret) >= 40 and "phone" in p.stderr
    assert stat.S_IMODE(os.stat(d.config_path).st_mode) == 0o600
    wait_for(lambda: call(d, "/api/sessions", secret) == 200, timeout=10, what="the new token accepted")
    assert call(d, "/api/config", secret) == 403  # read and decide, not admin

    listed = run_cli("token", "list", "--json", env=env)
    rows = {r["name"]: r for r in json.loads(listed.stdout)["tokens"]}
    assert rows["phone"]["scopes"] == ["decide", "read"] and set(rows) == {"viewer", "ops", "phone"}
    assert secret not in listed.stdout and "read-secret-1" not in listed.stdout
    assert run_cli("token", "add", "phone", env=env).returncode == 1  # names are unique
    assert run_cli("token", "add", "x", "--scopes", "write", env=env).returncode == 2

    assert run_cli("token", "revoke", "viewer", env=env).returncode == 0
    wait_for(lambda: call(d, "/api/sessions", "read-secret-1") == 401, timeout=10, what="the revoked token refused")
    assert call(d, "/api/sessions", secret) == 200
    assert run_cli("token", "revoke", "viewer", env=env).returncode == 1
    assert "tokens reloaded" in d.log()


def test_init_writes_a_token_the_cli_and_the_dashboard_url_use(home, tmp_path):
    env = clean_env(home, HOME=str(tmp_path))
    p = run_cli("init", env=env)
    assert p.returncode == 0, p.stderr
    path = os.path.join(home, "monitor.config.json")
    cfg = json.loads(open(path).read())
    (tok,) = cfg["server"]["tokens"]
    assert tok["name"] == "default" and tok["scopes"] == ["read", "admin"] and len(tok["token"]) >= 40
    assert not cfg["server"]["token"]  # no token with every scope: decide is given by `token add`
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    d = DaemonProc(home)
    d.config_path = path
    # DaemonProc writes its own config: put the token into it instead.
    cfg["server"].update({"port": d.port, "wsPort": d.ws_port})
    cfg["persistence"]["dir"] = os.path.join(home, "data")
    with open(path, "w") as f:
        json.dump(cfg, f)
    d.start()
    try:
        url = run_cli("open", "--print", env=env).stdout.strip()
        assert url == f"http://127.0.0.1:{d.port}/#token={tok['token']}"
        assert call(d, "/api/sessions") == 401
        st = run_cli("status", "--json", env=env)  # the CLI sends the config's token
        assert json.loads(st.stdout)["status"] in ("ok", "degraded"), st.stderr
        wait_for(lambda: "open the dashboard with its token" in d.log(), timeout=5, what="the URL in the log")
        checks = json.loads(run_cli("doctor", "--json", env=env).stdout)
        (token_check,) = [c for c in checks if c["name"] == "token"]
        assert token_check["status"] == "ok" and tok["token"] not in json.dumps(checks)
    finally:
        d.stop()


def test_no_token_keeps_loopback_open_with_a_warning(daemon, home, tmp_path):
    d = daemon()
    assert call(d, "/api/sessions") == 200
    assert call(d, "/api/sessions/nope/actions", None, "POST", {"action": "rename", "value": "x"}) == 404
    assert "no token" in d.log()
    checks = json.loads(run_cli("doctor", "--json", env=clean_env(home, HOME=str(tmp_path))).stdout)
    (token_check,) = [c for c in checks if c["name"] == "token"]
    assert token_check["status"] == "warn" and "token add" in token_check["fix"]
    assert run_cli("open", "--print", env=clean_env(home)).stdout.strip() == f"http://127.0.0.1:{d.port}/"


INGEST_IN_CONFIG = "ingest" in typing.get_args(config_mod.TokenScope)


def test_token_add_scope_ingest(daemon, home):
    """``token add NAME --scope ingest``: a token that brings events in and reads
    nothing. A config that could not hold it (it would stop the daemon from starting)
    is left as it was."""
    d = daemon(TOKENS)
    env = clean_env(home)
    before = open(d.config_path, "rb").read()
    p = run_cli("token", "add", "otel", "--scope", "ingest", env=env)
    if not INGEST_IN_CONFIG:
        assert p.returncode == 2 and "would not load" in p.stderr
        assert open(d.config_path, "rb").read() == before
        pytest.skip("config.py's TokenScope does not list 'ingest' yet")
    assert p.returncode == 0, p.stderr
    secret = p.stdout.strip()
    rows = {r["name"]: r for r in json.loads(run_cli("token", "list", "--json", env=env).stdout)["tokens"]}
    assert rows["otel"]["scopes"] == ["ingest"]
    logs = json.dumps({"resourceLogs": []}).encode()
    wait_for(lambda: call_raw(d, "/v1/logs", secret, logs) == 200, timeout=10, what="the ingest token accepted")
    assert call(d, "/api/sessions", secret) == 403
    assert call(d, "/metrics", secret) == 403
    assert call(d, "/api/config", secret) == 403
    assert ws_status(d, secret) in (401, 403)  # the WebSocket wants read
    assert call(d, "/api/sessions", "read-secret-1") == 200


def call_raw(d: DaemonProc, path: str, token: str, body: bytes) -> int:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    req = urllib.request.Request(f"http://127.0.0.1:{d.port}{path}", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_open_with_a_named_token(home, tmp_path):
    """``open --token phone``: the page that may answer Claude Code (a decide token)."""
    env = clean_env(home, HOME=str(tmp_path))
    assert run_cli("init", env=env).returncode == 0
    added = run_cli("token", "add", "phone", "--scopes", "read,decide", env=env)
    assert added.returncode == 0, added.stderr
    secret = added.stdout.strip().splitlines()[-1]
    url = run_cli("open", "--print", "--token", "phone", env=env).stdout.strip()
    assert url.endswith("/#token=" + secret)
    missing = run_cli("open", "--print", "--token", "nobody", env=env)
    assert missing.returncode == 2 and "no token named 'nobody'" in missing.stderr
