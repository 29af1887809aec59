"""Normalisation of hook payloads and producers' objects (sans-IO)."""

from __future__ import annotations

import json

import pytest
from helpers import MINT, fixed_mint
from hypothesis import given, settings
from hypothesis import strategies as st

from contextuate_trio.core import events
from contextuate_trio.core.events import EventError, from_object, from_payload

HOOKS = {
    "SessionStart": "session_start",
    "SessionEnd": "session_end",
    "UserPromptSubmit": "user_prompt",
    "PreToolUse": "tool_call",
    "PermissionRequest": "permission_request",
    "PostToolUse": "tool_result",
    "PostToolUseFailure": "tool_error",
    "PostToolBatch": "tool_batch",
    "Notification": "notification",
    "Stop": "stop",
    "StopFailure": "stop_failure",
    "SubagentStart": "subagent_start",
    "SubagentStop": "subagent_stop",
    "PreCompact": "pre_compact",
    "PostCompact": "post_compact",
    "TaskCreated": "task_created",
    "TaskCompleted": "task_completed",
}


def norm(payload, **kw):
    return from_payload(payload, event_id="e1", timestamp=1000, machine_id="m", **kw)


@pytest.mark.parametrize("hook,etype", sorted(HOOKS.items()))
def test_every_documented_hook_maps(hook, etype):
    ev = norm({"session_id": "s", "hook_event_name": hook, "cwd": "/w"})
    assert ev.event_type == etype and ev.hook_type == hook
    assert ev.session_id == "s" and ev.working_directory == "/w"


def test_unknown_hook_kept_in_snake_case():
    ev = norm({"session_id": "s", "hook_event_name": "WorktreeCreate", "name": "bold-oak"})
    assert ev.event_type == "worktree_create"
    assert ev.data["name"] == "bold-oak"
    assert norm({"session_id": "s"}).event_type == "unknown"


def test_tool_fields_pulled_out_and_payload_kept_whole():
    p = {
        "session_id": "s",
        "hook_event_name": "PostToolUse",
        "tool_name": "Bash",
        "tool_input": {"command": "pytest -q"},
        "tool_use_id": "toolu_1",
        "tool_response": {"stdout": "ok"},
        "duration_ms": 12,
        "agent_id": "a1",
        "agent_type": "Explore",
        "future_field": [1, 2],
    }
    ev = norm(p)
    assert (ev.tool_name, ev.tool_use_id, ev.duration_ms) == ("Bash", "toolu_1", 12)
    assert (ev.agent_id, ev.agent_type) == ("a1", "Explore")
    assert ev.tool_input() == {"command": "pytest -q"}
    assert ev.tool_output() == {"stdout": "ok"}
    assert ev.summary == "Bash pytest -q"
    d = events.to_dict(ev)
    assert d["data"] == p  # everything Claude Code sent, untouched
    assert d["toolName"] == "Bash" and d["eventType"] == "tool_result"


def test_tool_response_sent_as_json_string_is_parsed():
    ev = norm(
        {
            "session_id": "s",
            "hook_event_name": "PostToolUse",
            "tool_name": "Agent",
            "tool_response": json.dumps({"agentId": "abc", "totalTokens": 5}),
        }
    )
    assert ev.tool_output()["agentId"] == "abc"


def test_error_prompt_message_notification():
    ev = norm(
        {
            "session_id": "s",
            "hook_event_name": "PostToolUseFailure",
            "tool_name": "Bash",
            "tool_input": {"command": "make"},
            "error": "Exit code 2",
        }
    )
    assert ev.summary == "Bash make — Exit code 2"
    ev = norm({"session_id": "s", "hook_event_name": "UserPromptSubmit", "prompt": "fix  it\nnow"})
    assert ev.summary == "fix it now"
    ev = norm(
        {
            "session_id": "s",
            "hook_event_name": "Notification",
            "message": "needs you",
            "notification_type": "permission_prompt",
        }
    )
    assert ev.notification_type == "permission_prompt" and ev.summary == "needs you"


def test_not_an_object_is_an_invalid_event_with_raw_text():
    ev = norm("garbage")
    assert ev.event_type == "invalid" and ev.data == {"raw": "garbage"}
    assert ev.session_id == "unknown"


def test_envelope_and_complete_event_and_bare_payload():
    env = {
        "kind": "hook",
        "id": "i1",
        "timestamp": 5,
        "machineId": "mx",
        "ack": True,
        "parentSessionId": "p",
        "payload": {"session_id": "s", "hook_event_name": "Stop"},
    }
    ev = from_object(env, "socket", mint=MINT)
    assert (ev.id, ev.timestamp, ev.machine_id, ev.parent_session_id, ev.source) == ("i1", 5, "mx", "p", "socket")
    assert ev.from_hook
    complete = {
        "id": "c1",
        "timestamp": 7,
        "sessionId": "s2",
        "machineId": "m2",
        "eventType": "tool_call",
        "data": {"x": 1},
        "customField": "kept",
    }
    ev = from_object(complete, mint=MINT)
    assert not ev.from_hook and ev.session_id == "s2"
    assert events.to_dict(ev)["customField"] == "kept"
    mint = fixed_mint(start_ms=4242)
    bare = from_object({"session_id": "s3", "hook_event_name": "Stop"}, mint=mint)
    assert bare.session_id == "s3" and bare.id == "id-1" and bare.timestamp == 4242
    for bad in ([1], {"foo": 1}, {"eventType": "x"}, {"kind": "hook", "payload": {}}):
        with pytest.raises(EventError):
            from_object(bad, mint=MINT)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
payload_fields = st.fixed_dictionaries(
    {},
    optional={
        "session_id": json_values,
        "hook_event_name": st.sampled_from(list(HOOKS) + ["X"]) | json_values,
        "tool_name": json_values,
        "tool_input": json_values,
        "tool_response": json_values,
        "agent_id": json_values,
        "duration_ms": json_values,
        "cwd": json_values,
        "prompt": json_values,
        "notification_type": json_values,
    },
)


@settings(max_examples=300, deadline=None)
@given(payload=st.one_of(payload_fields, json_values))
def test_any_payload_normalises_and_round_trips(payload):
    ev = norm(payload)
    line = events.dumps(ev)
    back = from_object(json.loads(line), mint=MINT)
    assert back.id == ev.id and back.event_type == ev.event_type
    assert back.session_id == ev.session_id
    if isinstance(payload, dict):
        assert json.loads(line)["data"] == json.loads(json.dumps(payload))


def test_ack_request_is_not_stored_with_a_complete_event():
    ev = from_object(
        mint=MINT,
        obj={
            "id": "a",
            "timestamp": 1,
            "sessionId": "s",
            "machineId": "m",
            "eventType": "stop",
            "ack": True,
            "mine": 1,
        },
    )
    d = events.to_dict(ev)
    assert "ack" not in d and d["mine"] == 1


def test_a_stored_line_holds_no_more_memory_than_its_bytes():
    """Lines stay in the resume window: orjson's own bytes kept the capacity they grew
    to (16 KB for a 1 KB line), 8 MB of RSS after 20,000 events."""
    import tracemalloc

    from contextuate_trio.core import events as ev_mod

    e = ev_mod.Event(
        id="e1", timestamp=1, session_id="s", machine_id="m", event_type="tool_call", data={"x": "y" * 1000}
    )
    tracemalloc.start()
    try:
        lines = [ev_mod.encode_line(e) for _ in range(200)]
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lines[0].endswith(b"\n")
    assert held / len(lines) < 2 * len(lines[0]), held / len(lines)
