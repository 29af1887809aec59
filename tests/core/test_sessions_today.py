"""The session machine on what today's Claude Code (2.1.332) sends, and "needs you".

The payloads are shaped as the real CLI sent them (recorded against it: see
tests/e2e); each test is one case of issue 13's list.
"""

from __future__ import annotations

import itertools
import json

from contextuate_trio.core import attention
from contextuate_trio.core.events import EVENT_TYPES, from_payload
from contextuate_trio.core.sessions import SessionManager

_ids = itertools.count()
P1 = "prompt-1"


def feed(m: SessionManager, payload: dict, ts: int | None = None):
    n = next(_ids)
    ev = from_payload(payload, event_id=f"e{n}", timestamp=ts if ts is not None else 1000 + n, machine_id="m1")
    m.apply(ev)
    return ev


def p(hook, sid="root", **fields):
    return {"session_id": sid, "hook_event_name": hook, "cwd": "/w", "prompt_id": P1, **fields}


def agent_call(tool_use_id="toolu_a", agent_id="a1", background=True):
    response = (
        {"status": "async_launched", "agentId": agent_id, "isAsync": True}
        if background
        else {
            "status": "completed",
            "agentId": agent_id,
            "content": [{"type": "text", "text": "report"}],
        }
    )
    return [
        p("PreToolUse", tool_name="Agent", tool_use_id=tool_use_id, tool_input={"description": "look", "prompt": "x"}),
        p("PostToolUse", tool_name="Agent", tool_use_id=tool_use_id, tool_response=response),
    ]


def test_every_hook_event_has_its_own_event_type():
    assert len(EVENT_TYPES) == 34 and len(set(EVENT_TYPES.values())) == 34


def test_message_display_is_the_latest_message_and_changes_no_status():
    m = SessionManager()
    feed(m, p("UserPromptSubmit", prompt="hi"))
    ev = feed(m, p("MessageDisplay", message_id="m-1", index=0, final=False, delta="Hello "))
    feed(m, p("MessageDisplay", message_id="m-1", index=1, final=True, delta="world"))
    s = m.get("root")
    assert ev.summary == "Hello" and s.last_message == "Hello world" and s.status == "active"
    feed(m, p("Stop", last_assistant_message="Hello world!", background_tasks=[]))
    feed(m, p("MessageDisplay", message_id="m-2", index=0, final=True, delta="later"))
    assert m.get("root").status == "idle" and m.get("root").last_message == "later"


def test_cwd_instructions_model_and_expansion_are_followed():
    m = SessionManager()
    feed(m, {**p("SessionStart", source="startup", model="claude-opus-5-5"), "prompt_id": None})
    feed(m, p("InstructionsLoaded", file_path="/w/CLAUDE.md", memory_type="Project", load_reason="session_start"))
    ev = feed(m, p("UserPromptExpansion", expansion_type="slash_command", command_name="hello", command_args="x"))
    feed(m, p("CwdChanged", old_cwd="/w", new_cwd="/w/sub"))
    feed(m, p("PostModelSwitch", from_model="claude-opus-5-5", to_model="claude-haiku-5", source="command"))
    m2 = SessionManager()  # ``-p``: no model at start; the switch says what it was
    feed(m2, p("PostModelSwitch", from_model="claude-opus-5-5", to_model="claude-haiku-5", source="command"))
    assert [x["model"] for x in m2.get("root").models] == ["claude-opus-5-5", "claude-haiku-5"]
    s = m.get("root")
    assert ev.event_type == "prompt_expansion" and ev.summary == "/hello x"
    assert s.working_directory == "/w/sub" and s.instructions == ["/w/CLAUDE.md"]
    assert s.model == "claude-haiku-5" and [x["model"] for x in s.models] == ["claude-opus-5-5", "claude-haiku-5"]
    assert s.prompt_id == P1 and s.status == "active"


def test_compaction_agents_belong_to_the_compaction_not_to_sub_agents():
    m = SessionManager()
    feed(m, p("UserPromptSubmit", prompt="/compact"))
    feed(m, p("PreCompact", trigger="manual", custom_instructions=None))
    ev = feed(m, p("SubagentStop", agent_id="c1", agent_type="", agent_transcript_path="/nope/agent-c1.jsonl"))
    feed(m, p("PostCompact", trigger="manual", compact_summary="sum"))
    s = m.get("root")
    assert ev.event_type == "compaction_agent" and ev.session_id == "root"
    assert s.child_session_ids == [] and s.compactions == 1 and len(m.sessions) == 1
    # Even outside the PreCompact/PostCompact window: no type and never started.
    feed(m, p("SubagentStop", agent_id="c2", agent_type=""))
    assert m.get("root").child_session_ids == []


def test_a_real_sub_agent_stop_is_still_a_sub_agent():
    m = SessionManager()
    feed(m, p("SubagentStart", agent_id="a1", agent_type="general-purpose"))
    feed(m, p("PreCompact", trigger="auto"))  # its parent compacts meanwhile
    ev = feed(m, p("SubagentStop", agent_id="a1", agent_type="general-purpose"))
    assert ev.session_id == "root:agent-a1" and m.get("root:agent-a1").status == "ended"


def test_agent_flag_is_the_sessions_own_agent_not_a_sub_agent():
    m = SessionManager()
    feed(m, {**p("SessionStart", source="startup", agent_type="reviewer"), "prompt_id": None})
    feed(m, p("PreToolUse", tool_name="Bash", tool_use_id="t1", agent_type="reviewer"))
    s = m.get("root")
    assert list(m.sessions) == ["root"] and s.agent_type == "reviewer" and s.tool_count == 1
    assert s.parent_session_id is None


def test_background_agents_keep_the_parent_waiting_on_them_and_report_back():
    m = SessionManager()
    feed(m, p("UserPromptSubmit", prompt="go"))
    for x in agent_call():
        feed(m, x)
    feed(m, p("SubagentStart", agent_id="a1", agent_type="general-purpose"))
    running = [{"id": "a1", "type": "subagent", "status": "running", "description": "look"}]
    feed(m, p("Stop", last_assistant_message="launched", background_tasks=running))
    root = m.get("root")
    assert root.status == "active" and root.background_agents == ["a1"]
    feed(m, p("PreToolUse", tool_name="Bash", tool_use_id="t9", agent_id="a1", agent_type="general-purpose"))
    feed(m, p("SubagentStop", agent_id="a1", agent_type="general-purpose", last_assistant_message="child report"))
    assert m.get("root:agent-a1").status == "ended" and root.background_agents == []
    report = feed(
        m,
        p(
            "UserPromptSubmit",
            prompt_id="prompt-2",
            prompt="<task-notification>\n<task-id>a1</task-id>\n<status>completed</status>\n"
            '<summary>Agent "look" finished</summary>\n<result>child report</result>\n</task-notification>',
        ),
    )
    assert report.event_type == "agent_report" and report.hook_type == "UserPromptSubmit"
    assert report.summary == 'Agent "look" finished: child report'
    assert root.status == "active"
    feed(m, p("Stop", prompt_id="prompt-2", background_tasks=[]))
    assert root.status == "idle"


def test_a_foreground_agent_call_ends_its_child():
    m = SessionManager()
    for x in agent_call(background=False):
        feed(m, x)
    assert m.get("root:agent-a1").status == "ended" and m.get("root").background_agents == []


def test_denied_and_interrupted_calls_are_named_by_the_turns_end():
    m = SessionManager()
    feed(m, p("PreToolUse", tool_name="Bash", tool_use_id="t1", tool_input={"command": "rm -rf x"}))
    feed(m, p("PermissionDenied", tool_name="Bash", tool_use_id="t1", reason="classifier said no"))
    feed(m, p("PreToolUse", tool_name="Write", tool_use_id="t2"))
    feed(m, p("PermissionRequest", tool_name="Write", tool_input={"file_path": "/w/a"}))  # never answered
    feed(m, p("PreToolUse", tool_name="Bash", tool_use_id="t3"))  # Escape: no hook at all
    feed(m, p("PreToolUse", tool_name="Read", tool_use_id="t4"))
    feed(m, p("PostToolUse", tool_name="Read", tool_use_id="t4", tool_response={}))
    stop = feed(m, p("Stop", background_tasks=[]))
    s = m.get("root")
    assert stop.unanswered_calls == {"t2": "denied", "t3": "interrupted"}
    assert s.denied_count == 2 and s.interrupted_count == 1 and s.open_calls == {}
    assert s.status == "idle" and s.attention is None


def test_prompt_id_is_on_every_event_of_a_turn():
    m = SessionManager()
    a = feed(m, p("UserPromptSubmit", prompt="go"))
    b = feed(m, p("PreToolUse", tool_name="Bash", tool_use_id="t1"))
    c = feed(m, p("Stop", prompt_id="prompt-1"))
    assert a.prompt_id == b.prompt_id == c.prompt_id == P1


def test_resume_keeps_the_session_and_reopens_it():
    m = SessionManager()
    feed(m, {**p("SessionStart", source="startup"), "prompt_id": None})
    feed(m, p("SessionEnd", reason="other"))
    feed(m, {**p("SessionStart", source="resume"), "prompt_id": None})
    assert list(m.sessions) == ["root"] and m.get("root").status == "active"


# --- "needs you" ------------------------------------------------------------------------
def test_permission_request_is_in_the_queue_at_once_and_leaves_with_the_answer():
    m = SessionManager()
    ev = feed(m, p("PermissionRequest", tool_name="Bash", tool_input={"command": "npm test"}), ts=5_000)
    s = m.get("root")
    assert s.status == "waiting"
    assert s.attention == {
        "reason": "permission",
        "since": 5_000,
        "detail": "Bash npm test",
        "toolName": "Bash",
        "requestId": ev.id,
    }
    feed(m, p("Notification", notification_type="permission_prompt", message="Claude needs your permission"), ts=11_000)
    assert s.attention["since"] == 5_000  # the same wait, said again ~6 s later
    (item,) = attention.queue(m.sessions.values(), now_ms=20_000, stuck_after_ms=None)
    assert item["reason"] == "permission" and item["waitedMs"] == 15_000 and item["rootSessionId"] == "root"
    feed(m, p("PreToolUse", tool_name="Bash", tool_use_id="t1"), ts=21_000)
    assert s.attention is None and s.status == "active"
    assert attention.queue(m.sessions.values(), now_ms=22_000, stuck_after_ms=None) == []


def test_a_permission_notification_after_the_answer_is_not_a_new_wait():
    m = SessionManager()
    feed(m, p("PreToolUse", tool_name="Bash", tool_use_id="t1"))
    feed(m, p("PermissionRequest", tool_name="Bash"))
    feed(m, p("PostToolUse", tool_name="Bash", tool_use_id="t1", tool_response={}))  # answered within 6 s
    feed(m, p("Notification", notification_type="permission_prompt", message="Claude needs your permission"))
    assert m.get("root").attention is None and m.get("root").status == "active"
    # Older Claude Code (no PermissionRequest wired): the Notification is the wait.
    m = SessionManager()
    feed(m, p("PreToolUse", tool_name="Bash", tool_use_id="t1"))
    feed(m, p("Notification", notification_type="permission_prompt", message="Claude needs your permission"))
    assert m.get("root").attention["reason"] == "permission" and m.get("root").status == "waiting"


def test_each_reason_and_what_answers_it():
    cases = [
        (p("Elicitation", mcp_server_name="db", message="Which table?"), "elicitation", p("ElicitationResult", mcp_server_name="db", action="accept")),
        (p("Notification", notification_type="elicitation_dialog", message="MCP asks"), "elicitation", p("ElicitationResult", mcp_server_name="db", action="decline")),
        (p("Notification", notification_type="idle_prompt", message="Claude is waiting for your input"), "idle", p("UserPromptSubmit", prompt="next")),
        (p("Notification", notification_type="agent_needs_input", message="agent asks"), "input", p("UserPromptSubmit", prompt="answer")),
        (p("StopFailure", error="rate_limit", error_details="429"), "failure", p("UserPromptSubmit", prompt="again")),
        (p("StopFailure", error="billing_error"), "failure", {**p("SessionStart", source="resume"), "prompt_id": None}),
        (p("StopFailure", error="authentication_failed"), "failure", p("SessionEnd", reason="logout")),
    ]  # fmt: skip
    for asks, reason, answers in cases:
        m = SessionManager()
        feed(m, p("UserPromptSubmit", prompt="go"))
        feed(m, asks)
        assert m.get("root").attention["reason"] == reason, asks
        feed(m, p("MessageDisplay", message_id="x", delta="still waiting"))  # neutral: the wait goes on
        assert m.get("root").attention is not None
        feed(m, answers)
        assert m.get("root").attention is None, answers


def test_a_stop_failure_nobody_can_fix_is_not_in_the_queue():
    m = SessionManager()
    feed(m, p("StopFailure", error="overloaded"))
    assert m.get("root").status == "failed" and m.get("root").attention is None


def test_a_sub_agents_permission_is_queued_under_its_own_session_with_its_root():
    m = SessionManager()
    feed(m, p("SubagentStart", agent_id="a1", agent_type="Explore"))
    feed(m, p("PermissionRequest", tool_name="Bash", agent_id="a1", agent_type="Explore"), ts=9_000)
    assert m.get("root").status == "waiting"
    (item,) = attention.queue(m.sessions.values(), now_ms=10_000, stuck_after_ms=None)
    assert item["sessionId"] == "root:agent-a1" and item["rootSessionId"] == "root" and item["agentType"] == "Explore"
    feed(m, p("PostToolUse", tool_name="Bash", tool_use_id="t", agent_id="a1", agent_type="Explore"), ts=9_500)
    assert m.get("root").status == "active" and m.get("root:agent-a1").attention is None


def test_stuck_is_an_active_session_nobody_heard_from():
    m = SessionManager()
    feed(m, p("UserPromptSubmit", prompt="go"), ts=1_000)
    feed(m, p("PreToolUse", tool_name="Bash", tool_use_id="t1", tool_input={"command": "make"}), ts=2_000)
    assert attention.queue(m.sessions.values(), now_ms=2_000 + 599_999, stuck_after_ms=600_000) == []
    (item,) = attention.queue(m.sessions.values(), now_ms=2_000 + 660_000, stuck_after_ms=600_000)
    assert item["reason"] == "stuck" and item["since"] == 2_000 and "11 min" in item["detail"]
    # A sub-agent still working keeps its parent from being stuck.
    feed(m, p("PreToolUse", tool_name="Read", tool_use_id="t2", agent_id="a1"), ts=600_000)
    items = attention.queue(m.sessions.values(), now_ms=2_000 + 660_000, stuck_after_ms=600_000)
    assert [i["sessionId"] for i in items] == []
    feed(m, p("Stop", background_tasks=[]), ts=700_000)
    hidden_idle = attention.queue(m.sessions.values(), now_ms=10_000_000, stuck_after_ms=600_000)
    assert [i["sessionId"] for i in hidden_idle] == ["root:agent-a1"]  # the root is idle now


def test_the_queue_is_longest_wait_first_and_summarised():
    m = SessionManager()
    feed(m, p("Notification", sid="b", notification_type="idle_prompt", message="idle"), ts=3_000)
    feed(m, p("PermissionRequest", sid="a", tool_name="Bash"), ts=1_000)
    items = attention.queue(m.sessions.values(), now_ms=10_000, stuck_after_ms=None)
    assert [i["sessionId"] for i in items] == ["a", "b"]
    summary = attention.summary(items)
    assert summary["count"] == 2 and summary["longestWaitMs"] == 9_000 and summary["byReason"]["idle"] == 1


# --- the recorded sessions of the real CLI (tests/fixtures/real-cli) ----------------------
def replay(name: str, upto: str | None = None, nth: int = 1) -> tuple[SessionManager, list]:
    """Feed a recording to a session machine, up to the ``nth`` ``upto`` hook included."""
    from conftest import FIXTURES

    m = SessionManager()
    evs = []
    seen = 0
    with open(FIXTURES / "real-cli" / f"{name}.jsonl", encoding="utf-8") as f:
        for i, line in enumerate(f):
            payload = json.loads(line)["stdin"]
            evs.append(from_payload(payload, event_id=f"{name}-{i}", timestamp=10_000 + i, machine_id="laptop-a"))
            m.apply(evs[-1])
            if payload["hook_event_name"] == upto:
                seen += 1
                if seen == nth:
                    break
    return m, evs


def roots(m: SessionManager) -> list:
    return [s for s in m.sessions.values() if s.parent_session_id is None]


def test_real_cli_tools_session():
    m, evs = replay("tools")
    (s,) = m.sessions.values()
    assert s.status == "ended" and s.tool_count == 2 and s.error_count == 1 and s.open_calls == {}
    assert all(e.prompt_id for e in evs[1:]) and len({e.prompt_id for e in evs[1:]}) == 1
    assert s.last_message  # from MessageDisplay / Stop


def test_real_cli_foreground_and_parallel_sub_agents():
    m, _ = replay("subagent")
    (root,) = roots(m)
    (child,) = [m.get(c) for c in root.child_session_ids]
    assert child.status == "ended" and child.agent_type and child.tool_count == 1 and root.tool_count == 1
    m, _ = replay("parallel")
    (root,) = roots(m)
    assert len(root.child_session_ids) == 2 and all(m.get(c).status == "ended" for c in root.child_session_ids)


def test_real_cli_background_sub_agent():
    m, _ = replay("background", upto="Stop")
    (root,) = roots(m)
    assert root.status == "active" and len(root.background_agents) == 1
    m, evs = replay("background")
    (root,) = roots(m)
    assert root.background_agents == [] and root.status == "ended"
    assert [e.event_type for e in evs].count("agent_report") == 1
    (report,) = [e for e in evs if e.event_type == "agent_report"]
    assert report.session_id == root.session_id and "finished" in (report.summary or "")


def test_real_cli_compaction_makes_no_sub_agents():
    m, evs = replay("compact")
    (root,) = m.sessions.values()
    assert root.child_session_ids == [] and root.compactions == 1
    assert [e.event_type for e in evs].count("compaction_agent") >= 1


def test_real_cli_denied_call_and_main_agent():
    m, evs = replay("denied")
    (s,) = m.sessions.values()
    assert s.denied_count == 1 and s.open_calls == {}
    assert list(next(e for e in evs if e.event_type == "tool_batch").unanswered_calls.values()) == ["denied"]
    m, _ = replay("main_agent")
    (s,) = m.sessions.values()
    assert s.agent_type == "reviewer" and s.child_session_ids == []


def test_real_cli_resume_continue_fork():
    m, _ = replay("resume")
    assert len(m.sessions) == 2  # resume and continue keep the id; the fork is new


def test_real_cli_needs_you():
    m, _ = replay("permission_prompt", upto="PermissionRequest")
    (s,) = m.sessions.values()
    assert s.status == "waiting" and s.attention["reason"] == "permission" and s.attention["toolName"] == "Bash"
    assert any(c.get("asked") for c in s.open_calls.values())  # joined to its PreToolUse (no tool_use_id)
    m, _ = replay("permission_prompt", upto="PostToolUse")
    assert next(iter(m.sessions.values())).attention is None
    m, _ = replay("idle_prompt", upto="Notification")
    assert next(iter(m.sessions.values())).attention["reason"] == "idle"
    m, _ = replay("stop_failure", upto="StopFailure")
    (s,) = m.sessions.values()
    assert s.status == "failed" and s.attention["reason"] == "failure"


def test_real_cli_instructions_and_slash_command():
    m, _ = replay("instructions")
    assert next(iter(m.sessions.values())).instructions[0].endswith("CLAUDE.md")
    _, evs = replay("slash_command")
    assert any(e.event_type == "prompt_expansion" for e in evs)


# --- cases a review found ---------------------------------------------------------------
def test_an_idle_or_only_started_session_is_never_stuck():
    m = SessionManager()
    feed(m, {**p("SessionStart", source="startup"), "prompt_id": None}, ts=1_000)
    assert attention.queue(m.sessions.values(), now_ms=10_000_000, stuck_after_ms=600_000) == []
    feed(m, p("UserPromptSubmit", prompt="go"), ts=2_000)
    feed(m, p("Stop", background_tasks=[]), ts=3_000)
    feed(m, p("PreCompact", trigger="manual"), ts=4_000)  # compacting an idle session: still idle
    feed(m, p("PostCompact", trigger="manual", compact_summary="s"), ts=5_000)
    assert m.get("root").status == "idle"
    assert attention.queue(m.sessions.values(), now_ms=10_000_000, stuck_after_ms=600_000) == []


def test_a_session_gone_silent_for_a_day_is_gone_not_stuck():
    m = SessionManager()
    feed(m, p("PreToolUse", tool_name="Bash", tool_use_id="t1"), ts=1_000)
    assert attention.queue(m.sessions.values(), now_ms=3_600_000, stuck_after_ms=600_000)[0]["reason"] == "stuck"
    assert attention.queue(m.sessions.values(), now_ms=2 * 86_400_000, stuck_after_ms=600_000) == []


def test_a_permission_refused_at_the_prompt_is_answered():
    m = SessionManager()
    feed(m, p("PreToolUse", tool_name="Bash", tool_use_id="t1", tool_input={"command": "rm -rf /"}))
    feed(m, p("PermissionRequest", tool_name="Bash", tool_input={"command": "rm -rf /"}))
    refused = "The user doesn't want to proceed with this tool use."
    batch = feed(
        m, p("PostToolBatch", tool_calls=[{"tool_name": "Bash", "tool_use_id": "t1", "tool_response": refused}])
    )
    s = m.get("root")
    assert batch.unanswered_calls == {"t1": "denied"} and s.attention is None and s.status == "active"
    feed(m, p("Notification", notification_type="permission_prompt", message="Claude needs your permission"))
    assert s.attention is None and s.status == "active"


def test_a_sub_agents_permission_notification_is_not_the_parents_wait():
    m = SessionManager()
    feed(m, p("PreToolUse", tool_name="Agent", tool_use_id="ta", tool_input={"description": "x", "prompt": "y"}))
    feed(m, p("SubagentStart", agent_id="a1", agent_type="general-purpose"))
    feed(m, p("PreToolUse", tool_name="Bash", tool_use_id="tb", agent_id="a1", agent_type="general-purpose"))
    feed(m, p("PermissionRequest", tool_name="Bash", agent_id="a1", agent_type="general-purpose"))
    feed(m, p("PostToolUse", tool_name="Bash", tool_use_id="tb", agent_id="a1", agent_type="general-purpose"))
    feed(m, p("Notification", notification_type="permission_prompt", message="Claude needs your permission"))
    assert m.get("root").attention is None and m.get("root").status == "active"
    assert attention.queue(m.sessions.values(), now_ms=99_999, stuck_after_ms=None) == []


def test_a_foreground_agent_interrupted_with_its_turn_ends():
    m = SessionManager()
    feed(m, p("PreToolUse", tool_name="Agent", tool_use_id="ta", tool_input={"description": "x", "prompt": "y"}))
    feed(m, p("SubagentStart", agent_id="a1", agent_type="general-purpose"))
    feed(m, p("PreToolUse", tool_name="Bash", tool_use_id="tb", agent_id="a1", agent_type="general-purpose"))
    stop = feed(m, p("Stop", background_tasks=[]))  # Escape: no result for either call
    child = m.get("root:agent-a1")
    assert stop.unanswered_calls == {"ta": "interrupted"}
    assert child.status == "ended" and child.interrupted_count == 1 and m.get("root").status == "idle"


def test_a_parent_waiting_on_its_sub_agent_is_released_when_the_sub_agent_ends():
    m = SessionManager()
    feed(m, p("SubagentStart", agent_id="a1", agent_type="general-purpose"))
    feed(m, p("PermissionRequest", tool_name="Bash", agent_id="a1", agent_type="general-purpose"))
    assert m.get("root").status == "waiting"
    feed(m, p("SubagentStop", agent_id="a1", agent_type="general-purpose"))
    assert m.get("root").status == "active" and m.get("root:agent-a1").attention is None
