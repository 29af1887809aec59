"""End to end: answering the real Claude Code CLI's (2.1.332) permission prompts from
the dashboard. A real daemon with ``decisions`` on and named tokens (one that may
``decide``, one read-only), hooks installed by our own ``contextuate-trio hooks
install`` (so the PermissionRequest hook's ``timeout`` is ours), the fake API's model
asking for a Bash ``touch`` in ``-p`` mode with ``--permission-mode default``; a thread
finds the request in ``GET /api/attention`` and answers it with ``POST /api/decisions``.

Each case is checked against what Claude Code then did: the file made or not, the
``tool_result`` the model got back (from the fake API's requests), the stream-json
``permission_denied``; and the daemon's audit ``decision`` event, in the session's
events and in ``contextuate-trio export``.

The answered cases share one daemon (waitMs 8000) and run at once; the unanswered one
has its own (waitMs 1500, so Claude Code gets no answer quickly), alongside.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from decision_client import post_decision
from e2e import cli, scenarios

_SKIP = cli.skip_reason()
pytestmark = pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")

DECIDER, READER = "tok-decide-" + "d" * 24, "tok-read-" + "r" * 24
TOKENS = [
    # The read-only one first: the harness reads (/api/attention, events) with it.
    {"name": "wall", "token": READER, "scopes": ["read"]},
    {"name": "phone", "token": DECIDER, "scopes": ["read", "decide"]},
]
WAIT_MS, QUIET_WAIT_MS = 8000, 1500
DENY_MESSAGE = "blocked from the dashboard"


def config(wait_ms: int) -> dict:
    return {"decisions": {"enabled": True, "waitMs": wait_ms}, "server": {"tokens": TOKENS}}


def post(run: cli.ClaudeRun, body: dict, token: str | None) -> tuple[int, dict]:
    return post_decision(run.daemon.port, body, token)


def denied(r: dict) -> list[dict]:
    """The stream-json ``permission_denied`` messages of a run."""
    return [o for o in cli.stream(r["stdout"]) if o.get("type") == "system" and o.get("subtype") == "permission_denied"]


def events(r: dict, kind: str) -> list[dict]:
    return [e for e in r["final"]["events"][r["sid"]] if e.get("eventType") == kind]


def export(run: cli.ClaudeRun) -> list[dict]:
    p = subprocess.run(
        [sys.executable, "-m", "contextuate_trio", "export"],
        env=run.base_env(),
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    return [json.loads(line) for line in p.stdout.splitlines() if line.strip()]


# --- the answers (each runs in the scenario's watcher thread, while the hook waits) ---
def allow(run: cli.ClaudeRun):
    def answer(item: dict) -> list:
        return [post(run, {"requestId": item["requestId"], "decision": "allow"}, DECIDER)]

    return answer


def deny(run: cli.ClaudeRun):
    def answer(item: dict) -> list:
        body = {"requestId": item["requestId"], "decision": "deny", "message": DENY_MESSAGE}
        return [post(run, body, DECIDER)]

    return answer


def refused_then_twice(run: cli.ClaudeRun, target: str):
    """No token, the read-only token (the prompt still waits, nothing ran), then the
    decide token's allow, then a second answer (a deny) to the same request."""

    def answer(item: dict) -> list:
        rid = item["requestId"]
        out = [post(run, {"requestId": rid, "decision": "allow"}, None)]
        out.append(post(run, {"requestId": rid, "decision": "allow"}, READER))
        still = [i for i in run.attention() or [] if i.get("requestId") == rid and i.get("decision")]
        out.append(("still offered", bool(still), "ran", os.path.exists(target)))
        out.append(post(run, {"requestId": rid, "decision": "allow"}, DECIDER))
        out.append(post(run, {"requestId": rid, "decision": "deny", "message": "too late"}, DECIDER))
        return out

    return answer


@pytest.fixture(scope="module")
def decided(request):
    """Case name -> its scenario's result (``scenarios.ask_in_print_mode``), the four
    runs at once; then ``settings`` and ``export``, each per daemon (``main``, ``quiet``),
    and ``timings``."""
    t0 = time.monotonic()
    with ExitStack() as stack, ThreadPoolExecutor(4, thread_name_prefix="cc-dec") as pool:
        main, quiet = pool.map(
            lambda w: stack.enter_context(cli.ClaudeRun({}, config=config(w))), (WAIT_MS, QUIET_WAIT_MS)
        )
        setup = time.monotonic() - t0
        cases = {
            "allow": (main, allow(main)),
            "deny": (main, deny(main)),
            # The scenario's file: <proj>/<case>/made.txt.
            "twice": (main, refused_then_twice(main, os.path.join(main.proj, "twice", "made.txt"))),
            "quiet": (quiet, None),
        }
        futures = {
            name: pool.submit(scenarios.ask_in_print_mode, run, name, answer) for name, (run, answer) in cases.items()
        }
        out: dict[str, Any] = {}
        for name, fut in futures.items():
            run = cases[name][0]
            try:
                out[name] = fut.result(timeout=120)
            except BaseException as exc:
                exc.add_note(f"case {name}: daemon log tail:\n{run.daemon.log()[-3000:]}")
                for o in run.outputs:
                    exc.add_note("claude output (tail):\n" + o[-3000:])
                raise
        # A late answer to the request nobody answered in time.
        # A late answer to the request nobody answered in time (its id: the offer's, or
        # the PermissionRequest event's should the watcher have missed the offer).
        q = out["quiet"]
        rid = (q["offered"] or {}).get("requestId") or events(q, "permission_request")[0]["id"]
        q["late"] = post(quiet, {"requestId": rid, "decision": "allow"}, DECIDER)
        out["settings"] = {
            n: json.loads(Path(r.settings_path).read_text()) for n, r in (("main", main), ("quiet", quiet))
        }
        out["export"] = {"main": export(main), "quiet": export(quiet)}
        out["timings"] = {"setup": setup, **{n: out[n]["took"] for n in cases}, "all": time.monotonic() - t0}
    rep = request.config.pluginmanager.get_plugin("terminalreporter")
    cap = request.config.pluginmanager.get_plugin("capturemanager")
    if rep is not None and cap is not None:
        with cap.global_and_fixture_disabled():
            rep.write_line("")
            rep.write_line(
                "real Claude Code decisions: " + ", ".join(f"{k} {v:.1f}s" for k, v in out["timings"].items())
            )
    return out


def bash_result(r: dict) -> dict:
    (result,) = r["tool_results"]
    return result


def show(r: dict) -> str:
    return (
        json.dumps({k: r.get(k) for k in ("offered", "answered", "tool_results", "ran", "took")}, indent=1, default=str)
        + "\n"
        + "\n".join(f"{e['eventType']} {e.get('summary')}" for e in r["final"]["events"][r["sid"]])
    )


def test_install_gives_the_permission_hook_a_timeout_covering_the_wait(decided):
    for name, wait_ms in (("main", WAIT_MS), ("quiet", QUIET_WAIT_MS)):
        (group,) = decided["settings"][name]["hooks"]["PermissionRequest"]
        (handler,) = group["hooks"]
        assert handler["type"] == "command" and not handler.get("async")
        assert handler["timeout"] * 1000 > wait_ms + 1000, handler


def test_allow_from_the_dashboard_runs_the_tool(decided):
    r = decided["allow"]
    assert r["answered"][0][0] == 200, r["answered"]
    assert r["answered"][0][1]["decision"] == "allow" and r["answered"][0][1]["by"] == "phone"
    # What the dashboard was offered: an answerable permission request for this call.
    item = r["offered"]
    assert item["reason"] == "permission" and item["toolName"] == "Bash" and item["sessionId"] == r["sid"]
    assert item["decision"]["decisions"] == ["allow", "deny"] and item["decision"]["kind"] == "permission"
    assert r["ran"], show(r)
    result = bash_result(r)
    assert not result.get("is_error") and result["content"] == "(Bash completed with no output)", result
    assert denied(r) == []
    (res,) = cli.results(r["stdout"])
    assert res["permission_denials"] == []
    assert [e["eventType"] for e in events(r, "tool_result")] == ["tool_result"], show(r)
    # Answered well before the wait ran out (Claude Code did not sit out waitMs).
    assert r["took"] < WAIT_MS / 1000, r["took"]


def test_deny_from_the_dashboard_blocks_the_tool_with_its_message(decided):
    r = decided["deny"]
    assert r["answered"][0][0] == 200, r["answered"]
    assert not r["ran"], show(r)
    result = bash_result(r)
    assert result["is_error"] is True and result["content"] == DENY_MESSAGE, result
    (d,) = denied(r)
    assert d["tool_name"] == "Bash" and d["message"] == DENY_MESSAGE and d.get("decision_reason_type") == "hook", d
    assert d["tool_use_id"] == result["tool_use_id"]
    (res,) = cli.results(r["stdout"])
    assert [x["tool_use_id"] for x in res["permission_denials"]] == [result["tool_use_id"]]
    assert not events(r, "tool_result"), show(r)


def test_no_answer_in_time_is_claude_codes_own_denial_and_a_late_answer_is_404(decided):
    r = decided["quiet"]
    assert r["offered"] and r["offered"]["decision"]["decisions"] == ["allow", "deny"], show(r)
    assert r["offered"]["decision"]["expiresAt"] - r["offered"]["since"] <= QUIET_WAIT_MS + 500
    assert not r["ran"], show(r)
    result = bash_result(r)
    # Claude Code's own words in -p when nobody answers: as without the monitor.
    assert result["is_error"] is True and "needs approval" in result["content"], result
    assert "dashboard" not in result["content"]
    (d,) = denied(r)
    assert d["message"] == result["content"] and d.get("decision_reason_type") != "hook", d
    # It waited for the hook about waitMs, no longer (the hook's timeout is longer).
    (asked,) = events(r, "permission_request")
    after = [e for e in r["final"]["events"][r["sid"]] if e["timestamp"] > asked["timestamp"]]
    gap = after[0]["timestamp"] - asked["timestamp"]
    assert QUIET_WAIT_MS - 300 <= gap <= QUIET_WAIT_MS + 3000, (gap, show(r))
    status, body = decided["quiet"]["late"]
    assert status == 404, body
    assert not events(r, "decision")


def test_a_second_answer_is_409_and_the_read_only_token_is_403(decided):
    r = decided["twice"]
    (none, read, between, valid, second) = r["answered"]
    assert none[0] == 401, none
    assert read[0] == 403, read
    assert between == ("still offered", True, "ran", False), between
    assert valid[0] == 200 and valid[1]["by"] == "phone", valid
    assert second[0] == 409 and "phone" in second[1]["error"], second
    # The valid answer (allow) is the one Claude Code got: the tool ran.
    assert r["ran"], show(r)
    result = bash_result(r)
    assert not result.get("is_error"), result
    assert denied(r) == []


def test_every_answer_is_a_decision_event_and_exported(decided):
    exported = decided["export"]["main"]
    for name, want in (("allow", "allow"), ("deny", "deny"), ("twice", "allow")):
        r = decided[name]
        (audit,) = events(r, "decision")  # one per request: the refused answers recorded nothing
        assert audit["data"]["requestId"] == r["offered"]["requestId"]
        assert audit["data"]["decision"] == want and audit["data"]["by"] == "phone"
        assert audit["data"]["from"].startswith("127.0.0.1:") and audit["data"]["kind"] == "permission"
        assert audit["toolName"] == "Bash" and audit["source"] == "dashboard" and audit["sessionId"] == r["sid"]
        (asked,) = events(r, "permission_request")
        assert asked["id"] == r["offered"]["requestId"] and asked["timestamp"] <= audit["timestamp"]
        if want == "deny":
            assert audit["data"]["message"] == DENY_MESSAGE
        else:  # recorded before the hook got it: before the tool's result
            (done,) = events(r, "tool_result")
            assert audit["timestamp"] <= done["timestamp"]
        assert audit["id"] == r["answered"][-2 if name == "twice" else 0][1]["eventId"]
        mine = [e for e in exported if e["sessionId"] == r["sid"] and e["eventType"] == "decision"]
        assert mine == [audit], mine
    assert not [e for e in decided["export"]["quiet"] if e["eventType"] == "decision"]
