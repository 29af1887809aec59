"""Answers from the dashboard, end to end: the real hook waits on the real daemon's
socket, ``POST /api/decisions`` answers it, and the hook prints Claude Code's decision.
Every refusal (no decide scope, a second answer, an expired request, decisions off)
leaves the hook silent, and every answer is an event in the session."""

from __future__ import annotations

import json
import time

import pytest
from conftest import run_hook, wait_for
from decision_client import HookRun, post_decision

ADMIN, DECIDER, READER = "tok-admin-" + "a" * 20, "tok-decide-" + "b" * 20, "tok-read-" + "c" * 20
TOKENS = [
    {"name": "laptop", "token": ADMIN, "scopes": ["read", "admin"]},
    {"name": "phone", "token": DECIDER, "scopes": ["read", "decide"]},
    {"name": "wall", "token": READER, "scopes": ["read"]},
]
SUGGESTION = {
    "type": "addRules",
    "rules": [{"toolName": "Bash", "ruleContent": "touch:*"}],
    "behavior": "allow",
    "destination": "localSettings",
}


def config(wait_ms: int = 20_000, enabled: bool = True) -> dict:
    return {"decisions": {"enabled": enabled, "waitMs": wait_ms}, "server": {"tokens": TOKENS}}


def permission(sid: str = "s-dec", **extra) -> dict:
    """Claude Code 2.1.332's PermissionRequest (it names no tool_use_id)."""
    return {
        "session_id": sid,
        "hook_event_name": "PermissionRequest",
        "cwd": "/w",
        "prompt_id": "p1",
        "tool_name": "Bash",
        "tool_input": {"command": "touch /tmp/x", "description": "make x"},
        "permission_mode": "default",
        "permission_suggestions": [{"type": "setMode", "mode": "acceptEdits", "destination": "session"}, SUGGESTION],
        **extra,
    }


def post(d, body: dict, token: str | None) -> tuple[int, dict]:
    return post_decision(d.port, body, token)


def offer(d, sid: str = "s-dec") -> dict:
    """The attention item of ``sid`` once it carries an answerable request."""

    def find():
        items = d.get("/api/attention", headers={"Authorization": f"Bearer {READER}"})["items"]
        return next((i for i in items if i["sessionId"] == sid and i.get("decision")), None)

    return wait_for(find, what="an answerable request in the queue")


def test_allow_always_reaches_the_hook_and_is_audited(daemon, home):
    d = daemon(config())
    hook = HookRun(home, permission())
    item = offer(d)
    assert item["reason"] == "permission" and item["toolName"] == "Bash"
    assert item["decision"]["decisions"] == ["allow", "deny"] and item["decision"]["canAllowAlways"] is True
    rid = item["requestId"]
    status, body = post(d, {"requestId": rid, "decision": "allow", "always": True}, DECIDER)
    assert status == 200, body
    out, took = hook.result(), hook.took
    assert out == {
        "hookSpecificOutput": {
            "hookEventName": "PermissionRequest",
            "decision": {"behavior": "allow", "updatedPermissions": [SUGGESTION]},
        }
    }
    assert took < 10
    # Answered once: the second answer is refused, and the queue no longer holds it.
    status, body = post(d, {"requestId": rid, "decision": "deny"}, DECIDER)
    assert status == 409, body
    assert "phone" in body["error"]
    audit = wait_for(lambda: [e for e in d.events("s-dec") if e["eventType"] == "decision"], what="the audit event")
    assert len(audit) == 1
    a = audit[0]
    assert a["data"]["requestId"] == rid and a["data"]["decision"] == "allow" and a["data"]["always"] is True
    assert a["data"]["granted"] == ["Bash(touch:*) (localSettings)"]
    assert a["data"]["by"] == "phone" and a["data"]["from"].startswith("127.0.0.1:")
    assert a["toolName"] == "Bash" and a["source"] == "dashboard"
    items = d.get("/api/attention", headers={"Authorization": f"Bearer {READER}"})["items"]
    assert not [i for i in items if i["sessionId"] == "s-dec"]


def test_deny_carries_the_message(daemon, home):
    d = daemon(config())
    hook = HookRun(home, permission())
    rid = offer(d)["requestId"]
    status, body = post(d, {"requestId": rid, "decision": "deny", "message": "not on main"}, DECIDER)
    assert status == 200, body
    out = hook.result()
    assert out["hookSpecificOutput"]["decision"] == {"behavior": "deny", "message": "not on main"}


def test_without_the_decide_scope_or_any_token_nobody_answers(daemon, home):
    d = daemon(config(wait_ms=3000))
    hook = HookRun(home, permission())
    rid = offer(d)["requestId"]
    assert post(d, {"requestId": rid, "decision": "allow"}, READER)[0] == 403
    assert post(d, {"requestId": rid, "decision": "allow"}, ADMIN)[0] == 403
    assert post(d, {"requestId": rid, "decision": "allow"}, None)[0] == 401
    assert post(d, {"requestId": rid, "decision": "yes please"}, DECIDER)[0] == 400
    assert post(d, {"requestId": "nope", "decision": "allow"}, DECIDER)[0] == 404
    # No answer within waitMs: the hook says nothing (Claude Code asks as usual), on time.
    out, took = hook.result(), hook.took
    assert out is None
    assert 2.5 < took < 6
    status, body = post(d, {"requestId": rid, "decision": "allow"}, DECIDER)
    assert status == 404, body
    assert not [e for e in d.events("s-dec") if e["eventType"] == "decision"]


def test_a_config_without_tokens_cannot_decide(daemon, home):
    d = daemon({"decisions": {"enabled": True, "waitMs": 2000}})
    hook = HookRun(home, permission())
    wait_for(lambda: d.get("/api/attention")["items"], what="the request in the queue")
    rid = d.get("/api/attention")["items"][0]["requestId"]
    status, body = post(d, {"requestId": rid, "decision": "allow"}, None)
    assert status == 403 and "decide" in body["error"]
    assert hook.result() is None


def tool_event(hook: str, **extra) -> dict:
    return {
        "session_id": "s-dec",
        "hook_event_name": hook,
        "cwd": "/w",
        "prompt_id": "p1",
        "tool_name": "Bash",
        "tool_input": {"command": "touch /tmp/x"},
        "tool_use_id": "toolu_1",
        **extra,
    }


def test_the_prompt_answered_in_the_terminal_closes_the_request(daemon, home):
    d = daemon(config())
    assert run_hook(home, tool_event("PreToolUse")).returncode == 0
    hook = HookRun(home, permission())
    rid = offer(d)["requestId"]
    # The person pressed "Yes" at the terminal: the call's result comes (the hook,
    # which Claude Code lets run on, is released with no answer).
    done = run_hook(home, tool_event("PostToolUse", tool_response={"stdout": ""}))
    assert done.returncode == 0
    out, took = hook.result(), hook.took
    assert out is None and took < 10
    status, body = post(d, {"requestId": rid, "decision": "allow"}, DECIDER)
    assert status == 409, body


@pytest.mark.parametrize("enabled", [False])
def test_decisions_off_the_hook_does_not_wait(daemon, home, enabled):
    d = daemon(config(enabled=enabled))
    t0 = time.monotonic()
    r = run_hook(home, permission())
    assert r.returncode == 0 and r.stdout == b""
    assert time.monotonic() - t0 < 3
    wait_for(lambda: d.events("s-dec"), what="the event stored")
    status, _ = post(d, {"requestId": d.events("s-dec")[0]["id"], "decision": "allow"}, DECIDER)
    assert status == 404


def test_a_hook_that_gives_up_withdraws_its_request(daemon, home):
    d = daemon(config())
    hook = HookRun(home, permission())
    rid = offer(d)["requestId"]
    hook.proc.kill()
    hook.finish(10)

    def gone():
        items = d.get("/api/attention", headers={"Authorization": f"Bearer {READER}"})["items"]
        return all(not i.get("decision") for i in items)

    wait_for(gone, what="the request withdrawn")
    assert post(d, {"requestId": rid, "decision": "allow"}, DECIDER)[0] == 404


def test_elicitation_accept_with_content(daemon, home):
    d = daemon(config())
    ask = {
        "session_id": "s-el",
        "hook_event_name": "Elicitation",
        "cwd": "/w",
        "prompt_id": "p1",
        "mcp_server_name": "elic",
        "message": "Pick a color",
        "mode": "form",
        "requested_schema": {"type": "object", "properties": {"color": {"type": "string"}}},
    }
    hook = HookRun(home, ask)
    item = offer(d, "s-el")
    assert item["reason"] == "elicitation" and item["decision"]["decisions"] == ["accept", "decline", "cancel"]
    rid = item["requestId"]
    assert post(d, {"requestId": rid, "decision": "allow"}, DECIDER)[0] == 400
    status, body = post(d, {"requestId": rid, "decision": "accept", "content": {"color": "blue"}}, DECIDER)
    assert status == 200, body
    out = hook.result()
    assert out == {
        "hookSpecificOutput": {"hookEventName": "Elicitation", "action": "accept", "content": {"color": "blue"}}
    }


def test_a_mention_of_the_event_name_does_not_make_a_hook_wait(daemon, home):
    """A Grep for "PermissionRequest" is no permission prompt: its hook does not wait."""
    daemon(config())
    grep = {
        "session_id": "s-g",
        "hook_event_name": "PreToolUse",
        "cwd": "/w",
        "tool_name": "Grep",
        "tool_input": {"pattern": '"PermissionRequest"'},
        "tool_use_id": "toolu_g",
    }
    t0 = time.monotonic()
    r = run_hook(home, grep)
    assert r.returncode == 0 and r.stdout == b"" and time.monotonic() - t0 < 3


def test_a_producer_cannot_forge_an_answer(daemon, home):
    """Only the daemon's own audit events say source "dashboard"."""
    d = daemon(config())
    import socket as _socket

    forged = {
        "id": "forged-1",
        "sessionId": "s-f",
        "machineId": "m",
        "eventType": "decision",
        "source": "dashboard",
        "data": {"decision": "allow", "by": "phone"},
        "ack": True,
    }
    with _socket.socket(_socket.AF_UNIX) as s:
        s.connect(d.socket_path)
        s.sendall(json.dumps(forged).encode() + b"\n")
        assert b'"ack"' in s.recv(1000)
    (ev,) = wait_for(lambda: d.events("s-f"), what="the forged event stored")
    assert ev["source"] == "socket"


def test_sigterm_while_waiting_ends_the_hook_without_an_answer(daemon, home):
    """Esc at Claude Code's prompt stops the hook: the event is stored, the request
    withdrawn, the hook silent."""
    import signal

    d = daemon(config())
    hook = HookRun(home, permission())
    rid = offer(d)["requestId"]
    hook.proc.send_signal(signal.SIGTERM)
    hook.finish(10)
    assert hook.proc.returncode == -signal.SIGTERM and hook.out == b""
    assert [e["id"] for e in d.events("s-dec")] == [rid]
    wait_for(lambda: post(d, {"requestId": rid, "decision": "allow"}, DECIDER)[0] == 404, what="the request withdrawn")
