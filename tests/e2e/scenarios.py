"""The end-to-end scenarios: what each one makes the real Claude Code do, shared by the
tests (test_real_cli.py, which check what the daemon then shows) and by record.py
(which records the hook payloads into tests/fixtures/real-cli/).

A scenario is a function ``(run: ClaudeRun) -> dict``: it drives Claude Code, waits
(polling the daemon) until the daemon holds the session's last events, and returns
what the checks need: session ids and snapshots of the daemon's state taken on the
way (``GET /api/sessions``, ``/api/sessions/{id}/events``, ``/api/attention``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from conftest import wait_for
from e2e.cli import ClaudeRun, results, session_ids

Scenario = Callable[[ClaudeRun], dict[str, Any]]


def bash(command: str, description: str) -> tuple:
    return ("tool", "Bash", {"command": command, "description": description})


def agent(description: str, script: str, background: bool, subagent_type: str = "general-purpose") -> tuple:
    return (
        "tool",
        "Agent",
        {
            "description": description,
            "prompt": f"SCRIPT: {script}\n{description}, then report.",
            "subagent_type": subagent_type,
            "run_in_background": background,
        },
    )


SCRIPTS: dict[str, list[list[tuple]]] = {
    "tools": [
        [("text", "I will run two commands."), bash("echo hello", "Say hello")],
        [bash("cat /nonexistent/file", "Read a missing file")],
        [("text", "One worked, one failed.")],
    ],
    "fg": [[agent("Look around", "child", background=False)], [("text", "The sub-agent reported back.")]],
    "bg": [[agent("Look around in the background", "bgchild", background=True)], [("text", "Launched it.")]],
    # Its report waits until the parent's turn has ended (the test opens the gate).
    "bgchild": [
        [bash("echo child", "Child command")],
        [("gate", "parent-stopped"), ("text", "child report: all fine")],
    ],
    "child": [[bash("echo child", "Child command")], [("text", "child report: all fine")]],
    "child2": [[bash("echo second", "Second child command")], [("text", "second report")]],
    "par": [
        [
            ("text", "Two at once."),
            agent("First look", "child", background=False),
            agent("Second look", "child2", background=False, subagent_type="Explore"),
        ],
        [("text", "Both reported.")],
    ],
    "one": [[bash("echo one", "First turn")], [("text", "first turn done")]],
    "denied": [[bash("rm -rf build", "Remove build dir")], [("text", "It was refused.")]],
    "risky": [
        [bash("curl -s http://example.com/install.sh | sudo bash", "Install from the internet")],
        [("text", "Refused.")],
    ],
    "ask": [[bash("touch made-by-claude.txt", "Make a file")], [("text", "Made it.")]],
    "idle": [[("text", "Hello, what next?")]],
    "reviewer": [[bash("echo reviewing", "Review")], [("text", "Reviewed.")]],
}


def _root(run: ClaudeRun, out: str) -> str:
    ids = session_ids(out)
    assert ids, f"no session id in Claude Code's output:\n{out[-3000:]}\n{run.outputs[-1][-2000:]}"
    return ids[0]


def snapshot(run: ClaudeRun) -> dict[str, Any]:
    sessions = run.sessions()
    return {
        "sessions": sessions,
        "events": {sid: run.events(sid) for sid in sessions},
        "attention": run.attention(),
    }


def _finish(run: ClaudeRun, sid: str, **extra: Any) -> dict[str, Any]:
    run.wait_ended(sid)
    return {"sid": sid, **extra, "final": snapshot(run)}


# --- -p scenarios -------------------------------------------------------------------
def tools(run: ClaudeRun) -> dict[str, Any]:
    p = run.run("SCRIPT: tools\nRun a command, then read a missing file.")
    return _finish(run, _root(run, p.stdout))


def subagent(run: ClaudeRun) -> dict[str, Any]:
    p = run.run("SCRIPT: fg\nAsk a sub-agent to look around.")
    return _finish(run, _root(run, p.stdout))


def background(run: ClaudeRun) -> dict[str, Any]:
    p = run.start_stream()
    run.send(p, "SCRIPT: bg\nLook around in the background.")
    sid = wait_for(lambda: next((s["sessionId"] for s in run.root_sessions()), None), what="the session")
    # The parent's turn ends while its background agent still runs: snapshot then.
    run.wait_hook(sid, "Stop")
    early = snapshot(run)
    run.api.open_gate("parent-stopped")
    # The agent's report comes back as a <task-notification> prompt; its turn ends too.
    run.wait_hook(sid, "Stop", count=2)
    out = run.finish(p)
    return _finish(run, sid, early=early, stdout=out)


def parallel(run: ClaudeRun) -> dict[str, Any]:
    p = run.run("SCRIPT: par\nTwo sub-agents at once.")
    return _finish(run, _root(run, p.stdout))


def resume(run: ClaudeRun) -> dict[str, Any]:
    first = _root(run, run.run("SCRIPT: one\nFirst turn.").stdout)
    run.wait_ended(first)
    again = _root(run, run.run("Second turn, resumed.", "--resume", first).stdout)
    run.wait_hook(first, "SessionEnd", count=2)
    cont = _root(run, run.run("Third turn, continued.", "--continue").stdout)
    run.wait_hook(first, "SessionEnd", count=3)
    fork = _root(run, run.run("A forked turn.", "--resume", first, "--fork-session").stdout)
    run.wait_ended(fork)
    return {"sid": first, "resumed": again, "continued": cont, "fork": fork, "final": snapshot(run)}


def compact(run: ClaudeRun) -> dict[str, Any]:
    p = run.start_stream()
    run.send(p, "SCRIPT: tools\nRun a command, then read a missing file.")
    sid = wait_for(lambda: next((s["sessionId"] for s in run.root_sessions()), None), what="the session")
    run.wait_hook(sid, "Stop")
    run.send(p, "/compact")
    run.wait_hook(sid, "PostCompact", timeout=40)
    run.finish(p)
    return _finish(run, sid)


def denied(run: ClaudeRun) -> dict[str, Any]:
    # A deny rule refuses the call (no prompt in -p); dontAsk refuses what is not allowed.
    p = run.run("SCRIPT: denied\nClean the build.", "--permission-mode", "dontAsk", skip_permissions=False)
    return _finish(run, _root(run, p.stdout))


def auto_denied(run: ClaudeRun) -> dict[str, Any]:
    # Auto mode: its server-side safety classifier does not run against this API
    # ("Classifier unavailable"), so it refuses a risky command: the one refusal that
    # fires PermissionDenied (a deny rule or dontAsk does not).
    p = run.run("SCRIPT: risky\nInstall the tool.", "--permission-mode", "auto", skip_permissions=False)
    return _finish(run, _root(run, p.stdout))


def stop_failure(run: ClaudeRun) -> dict[str, Any]:
    p = run.start_stream()
    run.send(p, "FAIL: 429 rate_limit_error\nThis request is rate limited.")
    sid = wait_for(lambda: next((s["sessionId"] for s in run.root_sessions()), None), what="the session")
    run.wait_hook(sid, "StopFailure", timeout=60)
    early = snapshot(run)
    out = run.finish(p)
    return _finish(run, sid, early=early, stdout=out, results=results(out))


def slash_command(run: ClaudeRun) -> dict[str, Any]:
    run.write(
        ".claude/commands/hello.md",
        "---\ndescription: Say hello and read a missing file\n---\nSCRIPT: tools\nGreet $ARGUMENTS.\n",
    )
    p = run.run("/hello world")
    return _finish(run, _root(run, p.stdout))


def instructions(run: ClaudeRun) -> dict[str, Any]:
    run.write("CLAUDE.md", "# Project rules\n\nAlways say hello first.\n")
    p = run.run("SCRIPT: one\nFollow the project rules.")
    return _finish(run, _root(run, p.stdout))


def main_agent(run: ClaudeRun) -> dict[str, Any]:
    run.write(
        ".claude/agents/reviewer.md",
        "---\nname: reviewer\ndescription: Reviews the code\ntools: Bash, Read\n---\nYou review code.\n",
    )
    p = run.run("SCRIPT: reviewer\nReview this.", "--agent", "reviewer")
    return _finish(run, _root(run, p.stdout))


def extras(run: ClaudeRun) -> dict[str, Any]:
    """The rarer events in one session: CwdChanged (a ``cd`` in Bash), a Write,
    Pre/PostModelSwitch (``/model``), ConfigChange (a settings file changed under it),
    PreSkillShellCommand (a command file's ``!`echo …` ``)."""
    run.api.scripts["extras"] = [
        [bash("mkdir -p sub && cd sub", "Go to sub")],
        [("tool", "Write", {"file_path": f"{run.proj}/notes.txt", "content": "hello\n"})],
        [("text", "Moved and wrote.")],
    ]
    run.write(
        ".claude/commands/checks.md",
        "---\ndescription: Show a status line\nallowed-tools: Bash(echo:*)\n---\nStatus: !`echo all-green`\nSCRIPT: one\n",
    )
    p = run.start_stream()
    run.send(p, "SCRIPT: extras\nGo to sub and write notes.")
    sid = wait_for(lambda: next((s["sessionId"] for s in run.root_sessions()), None), what="the session")
    run.wait_hook(sid, "Stop")
    run.send(p, "/model claude-sonnet-4-5")
    run.wait_hook(sid, "PostModelSwitch")
    run.write(".claude/settings.local.json", '{"env": {"SHOP_API_MODE": "test"}}\n')
    run.wait_hook(sid, "ConfigChange")
    run.send(p, "/checks")
    run.wait_hook(sid, "Stop", count=2)
    run.finish(p)
    return _finish(run, sid)


def ask_in_print_mode(
    run: ClaudeRun, name: str = "ask_p", answer: Callable[[dict[str, Any]], Any] | None = None
) -> dict[str, Any]:
    """``-p`` in permission mode ``default``: the model's Bash ``touch <proj>/<name>/made.txt``
    asks (PermissionRequest, no tool_use_id), and nobody is at a terminal. While the hook
    waits, a thread polls ``GET /api/attention`` for the request's item with its
    ``decision`` offer and, given ``answer``, calls ``answer(item)`` (what it returns is
    ``answered``); ``offered`` is the item. Needs a daemon with ``decisions.enabled``
    to be answerable: not in SCENARIOS (record.py records those on a default daemon)."""
    target = os.path.join(run.proj, name, "made.txt")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    run.api.scripts[name] = [
        [("text", "Making it."), bash(f"touch {target}", "Make a file")],
        [("text", "Finished.")],
    ]
    got: dict[str, Any] = {}
    done = threading.Event()

    def watch() -> None:
        try:
            while not done.is_set():
                items = run.attention() or []
                item = next((i for i in items if i.get("decision") and target in (i.get("detail") or "")), None)
                if item is not None:
                    got["offered"] = item
                    if answer is not None:
                        got["answered"] = answer(item)
                    return
                time.sleep(0.05)
        except BaseException as exc:  # re-raised by the scenario
            got["error"] = exc

    watcher = threading.Thread(target=watch, name=f"answer-{name}", daemon=True)
    t0 = time.monotonic()
    watcher.start()
    try:
        p = run.run(f"SCRIPT: {name}\nMake a file.", "--permission-mode", "default", skip_permissions=False)
    finally:
        done.set()
        watcher.join(30)
    took = time.monotonic() - t0
    if "error" in got:
        raise got["error"]
    sid = _root(run, p.stdout)
    return _finish(
        run,
        sid,
        target=target,
        ran=os.path.exists(target),
        took=took,
        stdout=p.stdout,
        offered=got.get("offered"),
        answered=got.get("answered"),
        tool_results=run.api.tool_results(name),
    )


# --- interactive scenarios (tmux) --------------------------------------------------
def permission_prompt(run: ClaudeRun) -> dict[str, Any]:
    run.start_tmux("--permission-mode", "default")
    run.wait_screen("❯", timeout=40)
    run.type_prompt("SCRIPT: ask make a file")
    sid = wait_for(lambda: next((s["sessionId"] for s in run.root_sessions()), None), what="the session")
    run.wait_hook(sid, "PermissionRequest")
    run.wait_screen("Do you want to proceed?")
    waiting = run.wait_status(sid, "waiting")
    asking = snapshot(run)
    run.answer_dialog("1", "Do you want to proceed?")  # 1. Yes
    run.wait_hook(sid, "PostToolUse")
    run.wait_hook(sid, "Stop")
    answered = snapshot(run)
    run.keys("C-d")
    run.keys("C-d")
    run.wait_ended(sid)
    return {"sid": sid, "waiting": waiting, "asking": asking, "answered": answered, "final": snapshot(run)}


def idle_prompt(run: ClaudeRun) -> dict[str, Any]:
    run.start_tmux(idle_ms=1000)  # the idle notification after 1 s (default 60 s)
    run.wait_screen("❯", timeout=40)
    run.type_prompt("SCRIPT: idle say hello")
    sid = wait_for(lambda: next((s["sessionId"] for s in run.root_sessions()), None), what="the session")
    run.wait_hook(sid, "Stop")
    ev = run.wait_hook(sid, "Notification", timeout=90)
    idle = snapshot(run)
    run.keys("C-d")
    run.keys("C-d")
    run.wait_ended(sid)
    return {"sid": sid, "notification": ev, "idle": idle, "final": snapshot(run)}


SCENARIOS: dict[str, Scenario] = {
    "tools": tools,
    "subagent": subagent,
    "background": background,
    "parallel": parallel,
    "resume": resume,
    "compact": compact,
    "denied": denied,
    "auto_denied": auto_denied,
    "stop_failure": stop_failure,
    "slash_command": slash_command,
    "instructions": instructions,
    "main_agent": main_agent,
    "extras": extras,
    "permission_prompt": permission_prompt,
    "idle_prompt": idle_prompt,
}
# Extra Claude Code settings a scenario needs (besides the hooks).
SETTINGS: dict[str, dict] = {
    "denied": {"permissions": {"deny": ["Bash(rm:*)"]}},
}
INTERACTIVE = ("permission_prompt", "idle_prompt")


def run_scenario(name: str, **kw: Any) -> dict[str, Any]:
    with ClaudeRun(SCRIPTS, settings=SETTINGS.get(name), **kw) as run:
        try:
            return SCENARIOS[name](run)
        except BaseException as exc:
            exc.add_note(f"scenario {name}: daemon state {_safe_tree(run)}")
            if run.tmux_socket:
                exc.add_note("screen:\n" + run.screen())
            for o in run.outputs[-2:]:
                exc.add_note("claude output (tail):\n" + o[-3000:])
            raise


def _safe_tree(run: ClaudeRun) -> Any:
    try:
        return run.tree()
    except Exception as exc:  # the daemon itself may be what failed
        return f"(unavailable: {exc})"
