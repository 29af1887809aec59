"""End to end: the real Claude Code CLI (2.1.332) exporting its own OpenTelemetry
(logs, metrics, traces over OTLP/HTTP) to the daemon, wired by our own
``contextuate-trio hooks install --otel`` (its settings ``env`` block), beside the
hooks; the fake API of tests/e2e answers, a sub-agent runs a command.

What the daemon must then show: per session and sub-agent, the cost from Claude
Code's ``api_request`` records (their sum, not the price table's), the tool decisions
and durations, the hooks' run times, and the turn's spans joined to its prompt.
``hooks uninstall`` then removes exactly the env block it wrote.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, wait_for
from e2e import cli, scenarios

_SKIP = cli.skip_reason()
pytestmark = pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")


def _joined(run: cli.ClaudeRun, sid: str) -> dict | None:
    """The sessions once every OTel figure of the run has arrived (the CLI flushes its
    exporters as it exits; the daemon reads the transcript on Stop)."""
    sessions = run.sessions()
    root = sessions.get(sid)
    if not root or not (root.get("otel") or {}).get("traces") or (root["otel"]["apiRequests"] < 2):
        return None
    kids = [sessions[c] for c in root["childSessionIds"] if c in sessions]
    if len(kids) != 1 or (kids[0].get("otel") or {}).get("apiRequests", 0) < 2:
        return None
    if not (root["usage"] or {}).get("transcript") or not root["otel"].get("activeTimeS"):
        return None
    return sessions


@pytest.fixture(scope="module")
def otel_run():
    with cli.ClaudeRun(scenarios.SCRIPTS, install_args=("--otel",)) as run:
        settings = json.loads(Path(run.settings_path).read_text())
        p = run.run("SCRIPT: fg\nAsk a sub-agent to look around.")
        ids = cli.session_ids(p.stdout)
        assert ids, p.stdout[-2000:] + p.stderr[-2000:]
        sid = ids[0]
        run.wait_ended(sid)
        try:
            sessions = wait_for(lambda: _joined(run, sid), timeout=40, interval=0.2, what="the OTel figures")
        except AssertionError as exc:
            exc.add_note(json.dumps(run.sessions(), indent=1)[:6000])
            exc.add_note(run.daemon.log()[-3000:])
            raise
        out = {
            "sid": sid,
            "port": run.daemon.port,
            "settings": settings,
            "sessions": sessions,
            "events": {s: run.events(s) for s in sessions},
        }
        r = subprocess.run(
            [sys.executable, "-m", "contextuate_trio", "hooks", "uninstall"],
            env=run.base_env(),
            cwd=str(ROOT),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        out["after_uninstall"] = Path(run.settings_path).read_text() if Path(run.settings_path).exists() else None
        yield out


def otel_logs(snap: dict, sid: str, name: str) -> list[dict]:
    return [e for e in snap["events"][sid] if e["eventType"] == "otel_log" and e["data"]["name"] == name]


def test_install_otel_writes_the_env_block(otel_run):
    env = otel_run["settings"]["env"]
    assert env["CLAUDE_CODE_ENABLE_TELEMETRY"] == "1"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://127.0.0.1:{otel_run['port']}"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    assert env["OTEL_LOGS_EXPORTER"] == env["OTEL_METRICS_EXPORTER"] == env["OTEL_TRACES_EXPORTER"] == "otlp"
    assert env["OTEL_RESOURCE_ATTRIBUTES"] == "host.name=e2e-host"
    # The sessions are named by the machine OTEL_RESOURCE_ATTRIBUTES gave.
    assert {s["machineId"] for s in otel_run["sessions"].values()} == {"e2e-host"}
    # Uninstall removes exactly what install wrote: the file is gone (it created it).
    assert otel_run["after_uninstall"] is None


def test_cost_per_session_is_the_sum_of_its_api_requests(otel_run):
    snap, sid = otel_run, otel_run["sid"]
    root = snap["sessions"][sid]
    (child_id,) = root["childSessionIds"]
    child = snap["sessions"][child_id]
    mine = otel_logs(snap, sid, "api_request")
    theirs = otel_logs(snap, child_id, "api_request")
    assert len(mine) == 2 and len(theirs) == 2  # the sub-agent's records moved to its session
    for s, records in ((root, mine), (child, theirs)):
        assert s["usage"]["source"] == "otel"
        assert s["usage"]["costUsd"] == pytest.approx(sum(e["data"]["attributes"]["cost_usd"] for e in records))
        assert s["usage"]["calls"] == len(records)
    total = sum(e["data"]["attributes"]["cost_usd"] for e in mine + theirs)
    assert root["usageTotal"]["costUsd"] == pytest.approx(total)
    # The transcript (read too) says the same here: list prices, the fake's tokens.
    assert root["usage"]["transcript"]["costUsd"] == pytest.approx(root["usage"]["costUsd"])
    # OTel records are not hook events: the counts stay the hooks'.
    hooks = [e for e in snap["events"][sid] if e.get("hookType")]
    assert root["eventCount"] == len(hooks)


def test_tool_decisions_durations_and_hook_times(otel_run):
    snap, sid = otel_run, otel_run["sid"]
    root = snap["sessions"][sid]
    child = snap["sessions"][root["childSessionIds"][0]]
    assert root["otel"]["decided"] == {"acceptedByConfig": 1, "acceptedByUser": 0, "rejected": 0}  # Agent
    assert child["otel"]["decided"]["acceptedByConfig"] == 1  # its Bash
    agent, bash = root["otel"]["tools"]["Agent"], child["otel"]["tools"]["Bash"]
    assert agent["count"] == bash["count"] == 1 and agent["failures"] == 0
    assert 0 < bash["totalMs"] < agent["totalMs"]  # the Agent call lasts the sub-agent's work
    # Each tool_result record carries the tool_use_id of the hooks' PreToolUse.
    result = otel_logs(snap, sid, "tool_result")[0]
    call = next(e for e in snap["events"][sid] if e.get("hookType") == "PreToolUse" and e["toolName"] == "Agent")
    assert result["toolUseId"] == call["toolUseId"] and result["promptId"] == call["promptId"]
    # What our own hook costs the agent, per hook event.
    for hook in ("SessionStart", "UserPromptSubmit", "PreToolUse", "PostToolUse", "Stop"):
        assert root["otel"]["hooks"][hook]["count"] >= 1 and root["otel"]["hooks"][hook]["totalMs"] > 0
    assert root["otel"]["hookMsTotal"] > 0
    assert root["otel"]["activeTimeS"]["cli"] > 0


def test_spans_are_the_turns_timeline(otel_run):
    snap, sid = otel_run, otel_run["sid"]
    root = snap["sessions"][sid]
    spans = [s for e in snap["events"][sid] if e["eventType"] == "otel_spans" for s in e["data"]["spans"]]
    names = [s["name"] for s in spans]
    assert names.count("interaction") == 1 and names.count("llm_request") == 4  # 2 main, 2 sub-agent
    assert names.count("tool") == 2 and "tool.execution" in names
    by_id = {s["spanId"]: s for s in spans}
    (top,) = [s for s in spans if s["name"] == "interaction"]
    for s in spans:
        if s is not top:  # every span hangs under the turn's
            node = s
            while node.get("parentSpanId") in by_id:
                node = by_id[node["parentSpanId"]]
            assert node is top
    # The trace is the hooks' turn: the prompt id of the UserPromptSubmit.
    (trace,) = root["otel"]["traces"].values()
    prompt = next(e["promptId"] for e in snap["events"][sid] if e.get("hookType") == "UserPromptSubmit")
    assert trace["promptId"] == prompt and trace["spans"] == len(spans)
