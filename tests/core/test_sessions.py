"""The session state machine and sub-agent linking (sans-IO, no daemon)."""

from __future__ import annotations

import itertools

import pytest
from conftest import FIXTURE_NAMES, load_expect, load_fixture

from contextuate_trio.core.events import from_payload
from contextuate_trio.core.sessions import SessionManager

_ids = itertools.count()


def feed(m: SessionManager, payload: dict, ts: int | None = None, **kw):
    n = next(_ids)
    ev = from_payload(
        payload,
        event_id=f"e{n}",
        timestamp=ts if ts is not None else 1000 + n,
        machine_id=kw.pop("machine", "m1"),
        **kw,
    )
    return m.apply(ev)


def p(hook, sid="root", **fields):
    return {"session_id": sid, "hook_event_name": hook, "cwd": "/w", **fields}


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixtures_in_process(name):
    m = SessionManager()
    for item in load_fixture(name):
        feed(m, item["stdin"], machine=item["env"]["HOSTNAME"])
    for sid, want in load_expect(name)["sessions"].items():
        s = m.get(sid)
        kids = [m.get(c) for c in s.child_session_ids]
        assert len(kids) == want["children"]
        assert sorted(k.agent_type for k in kids) == want["childAgentTypes"]
        assert s.status != want.get("statusNot")


def test_status_machine():
    m = SessionManager()
    assert feed(m, p("SessionStart")).changed[0].status == "active"
    feed(m, p("PermissionRequest", tool_name="Bash"))
    assert m.get("root").status == "waiting"
    feed(m, p("PreToolUse", tool_name="Bash"))
    assert m.get("root").status == "active"
    feed(m, p("Notification", notification_type="idle_prompt"))
    assert m.get("root").status == "waiting"
    feed(m, p("Notification", notification_type="auth_success"))
    assert m.get("root").status == "waiting"  # says nothing about being busy
    feed(m, p("UserPromptSubmit", prompt="go"))
    feed(m, p("Stop"))
    assert m.get("root").status == "idle"
    feed(m, p("StopFailure", error="rate_limit"))
    assert m.get("root").status == "failed" and m.get("root").end_time
    feed(m, p("SessionStart", source="resume"))
    assert m.get("root").status == "active" and m.get("root").end_time is None
    feed(m, p("SessionEnd", reason="logout"))
    assert m.get("root").status == "ended"
    # A late (spooled) event does not reopen an ended session.
    feed(m, p("PreToolUse", tool_name="Read"), ts=1)
    assert m.get("root").status == "ended"


def test_modern_subagents_interleaved_and_joined_to_their_calls():
    m = SessionManager()
    feed(
        m,
        p(
            "PreToolUse",
            tool_name="Agent",
            tool_use_id="call-A",
            tool_input={"subagent_type": "Explore", "description": "map"},
        ),
    )
    feed(
        m,
        p(
            "PreToolUse",
            tool_name="Agent",
            tool_use_id="call-B",
            tool_input={"subagent_type": "Plan", "description": "plan"},
        ),
    )
    feed(m, p("SubagentStart", agent_id="a1", agent_type="Explore"))
    feed(m, p("SubagentStart", agent_id="b2", agent_type="Plan"))
    for _i in range(3):
        feed(m, p("PreToolUse", tool_name="Read", agent_id="a1", agent_type="Explore"))
        feed(m, p("PreToolUse", tool_name="Grep", agent_id="b2", agent_type="Plan"))
    feed(m, p("PreToolUse", tool_name="Bash"))  # the parent's own call, meanwhile
    a, b, root = m.get("root:agent-a1"), m.get("root:agent-b2"), m.get("root")
    assert (a.spawn_tool_use_id, a.description) == ("call-A", "map")
    assert (b.spawn_tool_use_id, b.description) == ("call-B", "plan")
    assert a.tool_count == 3 and b.tool_count == 3 and root.tool_count == 3
    assert root.child_session_ids == ["root:agent-a1", "root:agent-b2"]
    feed(m, p("SubagentStop", agent_id="b2", agent_type="Plan"))
    assert m.get("root:agent-b2").status == "ended" and m.get("root:agent-a1").status == "active"
    out = feed(
        m,
        p(
            "PostToolUse",
            tool_name="Agent",
            tool_use_id="call-A",
            tool_response={"status": "completed", "agentId": "a1"},
        ),
    )
    assert out.event.session_id == "root"  # the call's result is the parent's event
    assert m.get("root:agent-a1").status == "ended"
    assert [s["toolUseId"] for s in root.pending_spawns] == ["call-B"]
    feed(
        m,
        p(
            "PostToolUse",
            tool_name="Agent",
            tool_use_id="call-B",
            tool_response={"status": "completed", "agentId": "b2"},
        ),
    )
    assert root.pending_spawns == []


def test_agent_id_without_subagent_start_still_a_child():
    m = SessionManager()
    out = feed(m, p("PreToolUse", tool_name="Read", agent_id="zz", agent_type="general-purpose"))
    assert out.event.session_id == "root:agent-zz" and out.event.parent_session_id == "root"
    assert m.get("root:agent-zz").agent_type == "general-purpose"
    assert m.get("root").child_session_ids == ["root:agent-zz"]
    assert out.links == [("root:agent-zz", "root")]


def test_agent_result_links_child_never_seen_before():
    m = SessionManager()
    feed(m, p("PreToolUse", tool_name="Agent", tool_use_id="c1", tool_input={"subagent_type": "Explore"}))
    feed(
        m,
        p("PostToolUse", tool_name="Agent", tool_use_id="c1", tool_response='{"status": "completed", "agentId": "q9"}'),
    )
    child = m.get("root:agent-q9")
    assert child.parent_session_id == "root" and child.spawn_tool_use_id == "c1"
    assert child.agent_type == "Explore" and child.status == "ended"


def test_background_agent_stays_active():
    m = SessionManager()
    feed(m, p("PreToolUse", tool_name="Agent", tool_use_id="c1", tool_input={"subagent_type": "Explore"}))
    feed(
        m,
        p(
            "PostToolUse",
            tool_name="Agent",
            tool_use_id="c1",
            tool_response={"status": "async_launched", "agentId": "bg"},
        ),
    )
    assert m.get("root:agent-bg").status == "active"


def test_legacy_task_window_and_parallel_tasks():
    m = SessionManager()
    feed(m, p("PreToolUse", tool_name="Task", tool_use_id="t1", tool_input={"subagent_type": "Explore"}))
    out = feed(m, p("PreToolUse", tool_name="Glob"))
    assert out.event.session_id == "root:task-t1"
    feed(m, p("SubagentStop"))
    out = feed(m, p("PostToolUse", tool_name="Task", tool_use_id="t1", tool_response={"status": "completed"}))
    assert out.event.session_id == "root"
    out = feed(m, p("PreToolUse", tool_name="Bash"))
    assert out.event.session_id == "root"
    assert m.get("root:task-t1").status == "ended" and m.get("root:task-t1").tool_count == 1
    # An empty Task (no events seen inside) is still a child of its parent.
    feed(m, p("PreToolUse", tool_name="Task", tool_use_id="t2", tool_input={"subagent_type": "Plan"}))
    feed(m, p("PostToolUse", tool_name="Task", tool_use_id="t2", tool_response={"status": "completed"}))
    assert m.get("root").child_session_ids == ["root:task-t1", "root:task-t2"]
    assert m.get("root:task-t2").agent_type == "Plan"


def test_task_tool_in_a_session_that_sends_agent_id_is_not_guessed():
    m = SessionManager()
    feed(m, p("PreToolUse", tool_name="Read", agent_id="x1"))  # session proves it is modern
    feed(m, p("PreToolUse", tool_name="Task", tool_use_id="t1", tool_input={"subagent_type": "Explore"}))
    out = feed(m, p("PreToolUse", tool_name="Bash"))
    assert out.event.session_id == "root"


def test_parent_session_link_from_the_environment():
    m = SessionManager()
    out = feed(m, p("SessionStart", sid="kid"), parent_session_id="boss")
    assert out.event.parent_session_id == "boss"
    assert m.get("boss").child_session_ids == ["kid"]  # placeholder until it reports
    assert m.get("boss").machine_id == "unknown"
    feed(m, p("SessionStart", sid="boss"), machine="m2")
    # The parent's own first event fills in what the placeholder lacked.
    assert m.get("boss").machine_id == "m2" and m.get("boss").event_count == 1


def test_session_end_ends_open_children_and_waiting_propagates():
    m = SessionManager()
    feed(m, p("PreToolUse", tool_name="Read", agent_id="a"))
    feed(m, p("PermissionRequest", tool_name="Bash", agent_id="a"))
    assert m.get("root:agent-a").status == "waiting" and m.get("root").status == "waiting"
    feed(m, p("PostToolUse", tool_name="Bash", agent_id="a"))
    assert m.get("root").status == "active"
    feed(m, p("SessionEnd"))
    assert m.get("root:agent-a").status == "ended"


def test_unknown_and_invalid_never_crash():
    m = SessionManager()
    feed(m, p("SomethingNew", agent_id=123))
    feed(m, "not json at all")
    feed(m, {"hook_event_name": "PreToolUse", "tool_name": "Agent", "tool_input": "weird"})
    feed(m, {"hook_event_name": "PostToolUse", "tool_name": "Agent", "tool_response": [1]})
    assert m.get("unknown").event_count == 3


def test_parent_links_never_make_a_cycle():
    m = SessionManager()
    feed(m, p("SessionStart", sid="A"), parent_session_id="B")
    feed(m, p("SessionStart", sid="B"), parent_session_id="A")  # would close the loop
    assert m.get("A").parent_session_id == "B" and m.get("B").parent_session_id is None
    assert m.would_cycle("B", "A") and not m.would_cycle("A", "B")


def test_subagent_stop_with_no_sub_agent_does_not_end_the_session():
    m = SessionManager()
    feed(m, p("UserPromptSubmit", prompt="go"))
    feed(m, p("PreToolUse", tool_name="Agent", tool_use_id="c1", tool_input={"subagent_type": "Explore"}))
    feed(m, p("SubagentStop"))  # no agent_id, no Task window: nothing to end
    assert m.get("root").status == "active" and m.get("root").end_time is None
