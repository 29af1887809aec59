"""End to end: the real Claude Code CLI (2.1.332), against the fake Anthropic API,
wired by our own ``contextuate-trio hooks install`` into a real daemon; each test
checks what the daemon then shows (``/api/sessions``, ``/api/sessions/{id}/events``,
``/api/attention``).

The scenarios (scenarios.py) all start at once, in threads, each in its own temp
dirs with its own daemon and fake API; each test waits for its scenario's result and
checks it. Without the CLI (``make test-deps`` installs it) the module skips.
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from e2e import cli, scenarios

_SKIP = cli.skip_reason()
pytestmark = pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")
NO_TMUX = shutil.which("tmux") is None
# Claude Code is mostly waiting (on the fake, on its hooks): more runs than CPUs.
WORKERS = int(os.environ.get("CONTEXTUATE_E2E_WORKERS") or max(4, 2 * (os.cpu_count() or 1)))


def scenario(name: str):
    """The scenario a test checks (the module fixture runs only those selected)."""

    def mark(fn):
        fn.scenario = name
        return fn

    return mark


def _selected(request) -> list[str]:
    """The scenarios the selected tests of this module need (``-k`` runs fewer)."""
    wanted = set()
    for item in request.session.items:
        name = getattr(getattr(item, "function", None), "scenario", None)
        if name and item.module is request.module:
            wanted.add(name)
    return [n for n in scenarios.SCENARIOS if n in wanted and not (NO_TMUX and n in scenarios.INTERACTIVE)]


@pytest.fixture(scope="module")
def scenario_runs(request):
    """The selected tests' scenarios, all started at once; ``scenario_runs(name)`` ->
    its result (a test names its scenario with ``@scenario(name)``)."""
    names = _selected(request)
    # The interactive ones (the slowest) first.
    names.sort(key=lambda n: n not in scenarios.INTERACTIVE)
    times: dict[str, float] = {}
    pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="cc-e2e")
    t0 = time.monotonic()

    def timed(name: str) -> dict[str, Any]:
        t = time.monotonic()
        try:
            return scenarios.run_scenario(name)
        finally:
            times[name] = time.monotonic() - t

    futures: dict[str, Future] = {n: pool.submit(timed, n) for n in names}

    def get(name: str) -> dict[str, Any]:
        if name not in futures and NO_TMUX and name in scenarios.INTERACTIVE:
            pytest.skip("tmux is not installed (`make test-deps` installs it)")
        return futures[name].result(timeout=170)

    yield get
    pool.shutdown(wait=True, cancel_futures=True)
    lines = [f"real Claude Code scenarios ({WORKERS} at once, {time.monotonic() - t0:.1f}s in all):"]
    lines += [f"  {n:18} {times[n]:5.1f}s" for n in names if n in times]
    rep = request.config.pluginmanager.get_plugin("terminalreporter")
    cap = request.config.pluginmanager.get_plugin("capturemanager")
    if rep is not None and cap is not None:
        with cap.global_and_fixture_disabled():
            rep.write_line("")
            for line in lines:
                rep.write_line(line)


# --- helpers ------------------------------------------------------------------------
def hooks(snap: dict, sid: str) -> list[str]:
    return [e["hookType"] for e in snap["events"][sid] if e.get("hookType")]


def events_of(snap: dict, sid: str, hook: str) -> list[dict]:
    return [e for e in snap["events"][sid] if e.get("hookType") == hook]


def children(snap: dict, sid: str) -> list[dict]:
    return [snap["sessions"][c] for c in snap["sessions"][sid]["childSessionIds"]]


def attention_of(snap: dict, sid: str) -> list[dict]:
    items = snap["attention"]
    assert items is not None, "GET /api/attention is not served"
    return [i for i in items if i["sessionId"] == sid]


def show(snap: dict) -> str:
    """The daemon's sessions and their hooks, for a failing assert."""
    lines = []
    for sid, s in snap["sessions"].items():
        lines.append(
            f"{sid} status={s['status']} parent={s.get('parentSessionId')} agentType={s.get('agentType')} "
            f"children={s.get('childSessionIds')}\n    {hooks(snap, sid)}"
        )
    return "\n".join(lines)


def assert_prompt_groups(snap: dict, sid: str) -> None:
    """Every event from a UserPromptSubmit on carries that prompt's ``promptId``
    (until the next prompt): ``prompt_id`` groups a prompt's events."""
    current = None
    seen = 0
    for e in snap["events"][sid]:
        if not e.get("hookType"):
            continue
        if e["hookType"] == "UserPromptSubmit":
            assert e.get("promptId"), e
            current = e["promptId"]
            seen += 1
        elif current is not None and e["hookType"] not in ("SessionStart",):
            assert e.get("promptId") == current, (e["hookType"], e.get("promptId"), current)
    assert seen, "no UserPromptSubmit"


# --- -p scenarios -------------------------------------------------------------------
@scenario("tools")
def test_tools_one_ok_one_failing(scenario_runs):
    r = scenario_runs("tools")
    snap, sid = r["final"], r["sid"]
    assert list(snap["sessions"]) == [sid], show(snap)
    s = snap["sessions"][sid]
    assert s["status"] == "ended"
    assert s["toolCount"] == 2 and s["errorCount"] == 1, s
    h = hooks(snap, sid)
    assert h[0] == "SessionStart" and h[-1] == "SessionEnd", h
    assert h.count("PreToolUse") == 2 and h.count("PostToolUse") == 1 and h.count("PostToolUseFailure") == 1, h
    assert "Stop" in h
    types = {e["hookType"]: e["eventType"] for e in snap["events"][sid] if e.get("hookType")}
    assert types["PostToolUseFailure"] == "tool_error" and types["PostToolUse"] == "tool_result", types
    fail = events_of(snap, sid, "PostToolUseFailure")[0]
    assert fail["toolName"] == "Bash" and "nonexistent" in fail["data"]["error"], fail
    assert_prompt_groups(snap, sid)
    assert s["promptId"] == events_of(snap, sid, "UserPromptSubmit")[0]["promptId"]
    assert attention_of(snap, sid) == []


@scenario("subagent")
def test_foreground_subagent(scenario_runs):
    r = scenario_runs("subagent")
    snap, sid = r["final"], r["sid"]
    kids = children(snap, sid)
    assert len(kids) == 1, show(snap)
    child = kids[0]
    assert child["parentSessionId"] == sid
    assert child["agentType"] == "general-purpose" and child["description"] == "Look around", child
    assert child["agentId"] and child["sessionId"] == f"{sid}:agent-{child['agentId']}"
    assert child["status"] == "ended"
    ch = hooks(snap, child["sessionId"])
    assert ch[0] == "SubagentStart" and ch[-1] == "SubagentStop", ch
    assert [e["data"]["tool_input"]["command"] for e in events_of(snap, child["sessionId"], "PreToolUse")] == [
        "echo child"
    ]
    # The Agent call itself, and no Bash, stays in the parent.
    assert [e["toolName"] for e in events_of(snap, sid, "PreToolUse")] == ["Agent"], hooks(snap, sid)
    agent_result = events_of(snap, sid, "PostToolUse")[0]
    assert agent_result["data"]["tool_response"]["status"] == "completed", agent_result["data"]["tool_response"]
    assert snap["sessions"][sid]["status"] == "ended"
    assert child["spawnToolUseId"] == agent_result["toolUseId"]


@scenario("background")
def test_background_subagent(scenario_runs):
    r = scenario_runs("background")
    snap, sid = r["final"], r["sid"]
    kids = children(snap, sid)
    assert len(kids) == 1, show(snap)
    child = kids[0]
    assert child["agentType"] == "general-purpose" and child["parentSessionId"] == sid
    launched = events_of(snap, sid, "PostToolUse")[0]["data"]["tool_response"]
    assert launched["status"] == "async_launched" and launched["agentId"] == child["agentId"], launched
    # The parent's turn ended while its agent still ran: it waits on it, not "idle".
    early = r["early"]
    parent = early["sessions"][sid]
    assert parent["status"] != "idle", show(early)
    assert child["agentId"] in parent["backgroundAgents"], parent
    stop = events_of(early, sid, "Stop")[0]["data"]
    assert [t["id"] for t in stop["background_tasks"]] == [child["agentId"]], stop
    # The <task-notification> prompt is the agent's report, in the parent.
    prompts = events_of(snap, sid, "UserPromptSubmit")
    assert len(prompts) == 2, hooks(snap, sid)
    report = prompts[1]
    assert report["data"]["prompt"].startswith("<task-notification>")
    assert report["eventType"] == "agent_report", report
    assert "child report: all fine" in (report.get("summary") or ""), report
    final = snap["sessions"][sid]
    assert final["backgroundAgents"] == [] and final["status"] == "ended"
    assert hooks(snap, child["sessionId"])[-1] == "SubagentStop"


@scenario("parallel")
def test_two_parallel_subagents(scenario_runs):
    r = scenario_runs("parallel")
    snap, sid = r["final"], r["sid"]
    kids = children(snap, sid)
    assert len(kids) == 2, show(snap)
    by_desc = {k["description"]: k for k in kids}
    assert set(by_desc) == {"First look", "Second look"}, by_desc
    assert by_desc["First look"]["agentType"] == "general-purpose"
    assert by_desc["Second look"]["agentType"] == "Explore"
    for desc, cmd in (("First look", "echo child"), ("Second look", "echo second")):
        k = by_desc[desc]
        assert k["status"] == "ended" and k["parentSessionId"] == sid
        cmds = [e["data"]["tool_input"]["command"] for e in events_of(snap, k["sessionId"], "PreToolUse")]
        assert cmds == [cmd], (desc, cmds)
    spawns = {e["toolUseId"] for e in events_of(snap, sid, "PreToolUse")}
    assert {k["spawnToolUseId"] for k in kids} == spawns


@scenario("resume")
def test_resume_continue_fork(scenario_runs):
    r = scenario_runs("resume")
    snap, sid = r["final"], r["sid"]
    assert r["resumed"] == sid and r["continued"] == sid
    starts = [e["data"].get("source") for e in events_of(snap, sid, "SessionStart")]
    assert starts == ["startup", "resume", "resume"], starts
    assert hooks(snap, sid).count("UserPromptSubmit") == 3
    fork = r["fork"]
    assert fork != sid and fork in snap["sessions"], show(snap)
    assert [e["data"].get("source") for e in events_of(snap, fork, "SessionStart")] == ["fork"]
    assert snap["sessions"][fork]["status"] == "ended"
    assert snap["sessions"][sid]["status"] == "ended"
    # Three prompts, three groups.
    assert len({e["promptId"] for e in events_of(snap, sid, "UserPromptSubmit")}) == 3
    assert_prompt_groups(snap, sid)


@scenario("compact")
def test_compact(scenario_runs):
    r = scenario_runs("compact")
    snap, sid = r["final"], r["sid"]
    h = hooks(snap, sid)
    assert "PreCompact" in h and "PostCompact" in h, h
    assert [e["data"].get("source") for e in events_of(snap, sid, "SessionStart")] == ["startup", "compact"]
    # Compaction's own agents (SubagentStop, agent_type "", no SubagentStart) are not
    # sub-agent sessions.
    internal = events_of(snap, sid, "SubagentStop")
    assert internal and all(e["data"].get("agent_type") == "" for e in internal), internal
    assert "SubagentStart" not in h
    assert list(snap["sessions"]) == [sid], show(snap)
    assert snap["sessions"][sid]["childSessionIds"] == []
    assert snap["sessions"][sid]["compactions"] == 1
    assert snap["sessions"][sid]["status"] == "ended"


@scenario("denied")
def test_denied_by_rule(scenario_runs):
    r = scenario_runs("denied")
    snap, sid = r["final"], r["sid"]
    h = hooks(snap, sid)
    assert h.count("PreToolUse") == 1, h
    # A refused call has no PostToolUse (nor a failure); here no PermissionDenied either:
    # Claude Code fires that only for auto mode's classifier.
    assert "PostToolUse" not in h and "PostToolUseFailure" not in h, h
    assert "PermissionDenied" not in h
    batch = events_of(snap, sid, "PostToolBatch")[0]["data"]["tool_calls"][0]
    assert "denied" in batch["tool_response"], batch
    assert snap["sessions"][sid]["deniedCount"] == 1, snap["sessions"][sid]
    assert snap["sessions"][sid]["openCalls"] == {}


@scenario("auto_denied")
def test_denied_by_auto_mode(scenario_runs):
    r = scenario_runs("auto_denied")
    snap, sid = r["final"], r["sid"]
    h = hooks(snap, sid)
    assert "PermissionDenied" in h, h
    assert "PostToolUse" not in h and "PostToolUseFailure" not in h, h
    d = events_of(snap, sid, "PermissionDenied")[0]
    pre = events_of(snap, sid, "PreToolUse")[0]
    assert d["eventType"] == "permission_denied" and d["toolUseId"] == pre["toolUseId"], d
    assert d["data"]["reason"], d
    assert snap["sessions"][sid]["deniedCount"] == 1
    assert snap["sessions"][sid]["openCalls"] == {}


@scenario("stop_failure")
def test_stop_failure(scenario_runs):
    r = scenario_runs("stop_failure")
    early, sid = r["early"], r["sid"]
    h = hooks(early, sid)
    assert "StopFailure" in h and "Stop" not in h, h
    f = events_of(early, sid, "StopFailure")[0]
    assert f["eventType"] == "stop_failure" and f["data"]["error"] == "rate_limit", f
    assert early["sessions"][sid]["status"] == "failed", show(early)
    items = attention_of(early, sid)
    assert [i["reason"] for i in items] == ["failure"], items
    assert items[0]["machineId"] == "e2e-host"
    assert r["results"] and r["results"][-1]["is_error"] is True


@scenario("slash_command")
def test_slash_command(scenario_runs):
    r = scenario_runs("slash_command")
    snap, sid = r["final"], r["sid"]
    h = hooks(snap, sid)
    assert h.index("UserPromptSubmit") < h.index("UserPromptExpansion") < h.index("PreToolUse"), h
    x = events_of(snap, sid, "UserPromptExpansion")[0]
    assert x["data"]["command_name"] == "hello" and x["data"]["command_args"] == "world", x["data"]
    assert x["summary"] == "/hello world", x
    assert x["promptId"] == events_of(snap, sid, "UserPromptSubmit")[0]["promptId"]
    assert snap["sessions"][sid]["toolCount"] == 2


@scenario("instructions")
def test_instructions_loaded(scenario_runs):
    r = scenario_runs("instructions")
    snap, sid = r["final"], r["sid"]
    loaded = events_of(snap, sid, "InstructionsLoaded")
    assert loaded, hooks(snap, sid)
    assert loaded[0]["data"]["file_path"].endswith("/proj/CLAUDE.md"), loaded[0]["data"]
    assert loaded[0]["eventType"] == "instructions_loaded"
    assert any(p.endswith("/proj/CLAUDE.md") for p in snap["sessions"][sid]["instructions"])
    # Loading instructions is not work: it leaves the status alone.
    assert snap["sessions"][sid]["status"] == "ended"


@scenario("main_agent")
def test_main_thread_agent(scenario_runs):
    r = scenario_runs("main_agent")
    snap, sid = r["final"], r["sid"]
    # ``--agent reviewer``: every main-thread event says agent_type without agent_id;
    # that is the session's own agent, not a sub-agent.
    for e in snap["events"][sid]:
        if e.get("hookType"):
            assert e["data"].get("agent_type") == "reviewer" and "agent_id" not in e["data"], e
    assert list(snap["sessions"]) == [sid], show(snap)
    s = snap["sessions"][sid]
    assert s["agentType"] == "reviewer" and s["parentSessionId"] is None and s["childSessionIds"] == []
    assert s["toolCount"] == 1 and s["status"] == "ended"


# --- interactive (tmux) -------------------------------------------------------------
@scenario("permission_prompt")
def test_permission_prompt(scenario_runs):
    r = scenario_runs("permission_prompt")
    sid = r["sid"]
    asking = r["asking"]
    h = hooks(asking, sid)
    assert h[-1] in ("PermissionRequest", "Notification") and "PermissionRequest" in h, h
    req = events_of(asking, sid, "PermissionRequest")[0]
    assert req["eventType"] == "permission_request" and req["toolName"] == "Bash"
    assert req["data"]["tool_input"]["command"] == "touch made-by-claude.txt"
    assert asking["sessions"][sid]["status"] == "waiting", show(asking)
    items = attention_of(asking, sid)
    assert [i["reason"] for i in items] == ["permission"], items
    assert "touch" in items[0]["detail"] and items[0]["machineId"] == "e2e-host", items
    # Answered (Yes): the tool ran, the turn ended; it waits no more.
    answered = r["answered"]
    assert answered["sessions"][sid]["status"] != "waiting", show(answered)
    assert attention_of(answered, sid) == []
    ah = hooks(answered, sid)
    assert ah.index("PermissionRequest") < ah.index("PostToolUse") < ah.index("Stop"), ah
    final = r["final"]
    assert final["sessions"][sid]["status"] == "ended"
    assert events_of(final, sid, "SessionEnd")[0]["data"]["reason"] == "prompt_input_exit"


@scenario("idle_prompt")
def test_idle_prompt_notification(scenario_runs):
    r = scenario_runs("idle_prompt")
    sid = r["sid"]
    idle = r["idle"]
    n = events_of(idle, sid, "Notification")
    assert [e["data"]["notification_type"] for e in n] == ["idle_prompt"], n
    assert idle["sessions"][sid]["status"] == "waiting", show(idle)
    items = attention_of(idle, sid)
    assert [i["reason"] for i in items] == ["idle"], items
    final = r["final"]
    assert final["sessions"][sid]["status"] == "ended"
    assert attention_of(final, sid) == []


@scenario("extras")
def test_rarer_events(scenario_runs):
    r = scenario_runs("extras")
    snap, sid = r["final"], r["sid"]
    h = hooks(snap, sid)
    for hook in ("CwdChanged", "PreModelSwitch", "PostModelSwitch", "ConfigChange", "PreSkillShellCommand"):
        assert hook in h, (hook, h)
    s = snap["sessions"][sid]
    # cd in Bash moves the session; /model switches its model.
    cwd = events_of(snap, sid, "CwdChanged")[0]
    assert cwd["eventType"] == "cwd_changed" and cwd["data"]["new_cwd"].endswith("/proj/sub")
    assert s["workingDirectory"].endswith("/proj/sub"), s["workingDirectory"]
    switch = events_of(snap, sid, "PostModelSwitch")[0]["data"]
    assert (switch["from_model"], switch["to_model"]) == ("claude-opus-5-5", "claude-sonnet-4-5"), switch
    assert s["model"] == "claude-sonnet-4-5"
    assert events_of(snap, sid, "ConfigChange")[0]["data"]["source"] == "local_settings"
    # A command file's !`…` runs through PreSkillShellCommand: not a tool call of the
    # agent's, and nothing left open.
    sh = events_of(snap, sid, "PreSkillShellCommand")[0]
    assert sh["data"]["tool_input"]["command"] == "echo all-green" and sh["data"]["command_name"] == "checks"
    assert s["toolCount"] == 2 and s["openCalls"] == {}, s
    assert s["status"] == "ended"
