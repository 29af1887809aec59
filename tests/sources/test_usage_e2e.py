"""Tokens and cost end to end: real hooks, a real daemon, real transcripts on disk;
and in Redis mode, a real redis-server with the hook reading the transcript."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.request

import pytest
from conftest import clean_env, run_hook, wait_for
from helpers import run_cli
from redis_server import needs_redis, redis_server  # noqa: F401 (fixture)
from transcripts_data import HAIKU, SID, SONNET, SUB_COST, SUB_LINES, TURN, TURN_COST, assistant, dump, payload, write  # noqa: F401


def usage_of(d, sid=SID):
    s = d.sessions().get(sid)
    return s and s.get("usage")


def metrics(d) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{d.port}/metrics", timeout=5) as r:
        return r.read().decode()


def test_local_stop_reads_the_transcript_and_the_api_shows_usage(home, daemon):
    d = daemon()
    tdir = os.path.join(home, "projects", "-w")
    main = os.path.join(tdir, SID + ".jsonl")
    sub = os.path.join(tdir, SID, "subagents", "agent-a1.jsonl")
    data = dump(TURN)
    cut = data.rfind(b'{"parentUuid"') + 40
    write(main, data[:cut])  # Claude Code is still writing msg_B
    assert run_hook(home, payload("UserPromptSubmit", main, prompt="fix")).returncode == 0
    assert run_hook(home, payload("Stop", main)).returncode == 0
    u = wait_for(lambda: usage_of(d), what="usage after Stop")
    assert u["calls"] == 1 and u["tokens"]["output"] == 120  # msg_A only; msg_B half written

    write(main, data[cut:])  # the rest of msg_B arrives
    write(sub, dump(SUB_LINES))
    run_hook(home, payload("SubagentStop", main, agent_id="a1", agent_type="Explore", agent_transcript_path=sub))
    run_hook(home, payload("Stop", main))
    s = wait_for(
        lambda: (
            d.sessions()[SID]["usage"]["calls"] == 2
            and d.sessions().get(SID + ":agent-a1", {}).get("usage")
            and d.sessions()
        ),
        what="usage of the session and its sub-agent",
    )
    assert s[SID]["usage"]["costUsd"] == pytest.approx(TURN_COST)
    assert s[SID + ":agent-a1"]["usage"]["costUsd"] == pytest.approx(SUB_COST)
    assert s[SID + ":agent-a1"]["parentSessionId"] == SID
    assert s[SID]["usageTotal"]["costUsd"] == pytest.approx(TURN_COST + SUB_COST)
    assert s[SID]["usageTotal"]["calls"] == 4
    assert s[SID]["status"] == "idle"  # the usage event changed no status

    by_machine = d.get("/api/usage?by=machine")
    assert by_machine["total"]["costUsd"] == pytest.approx(TURN_COST + SUB_COST)
    assert [r["key"] for r in by_machine["rows"]] == [s[SID]["machineId"]]
    by_model = {r["key"]: r for r in d.get("/api/usage?by=model")["rows"]}
    assert by_model[SONNET]["costUsd"] == pytest.approx(TURN_COST)
    assert [r["key"] for r in d.get("/api/usage?by=day")["rows"]] == ["2025-10-01"]
    text = metrics(d)
    assert f'contextuate_cost_usd_total{{machine="{s[SID]["machineId"]}",model="{HAIKU}"}} 0.002652' in text
    assert 'kind="cacheWrite1h"} 2000' in text
    events = d.events(SID)
    assert [e["eventType"] for e in events].count("usage") >= 2
    assert all(e["source"] == "transcript" for e in events if e["eventType"] == "usage")

    # The terminal: a table per model with the total.
    out = run_cli("usage", "--by", "model", env=clean_env(home), timeout=30)
    assert out.returncode == 0, out.stderr
    assert SONNET in out.stdout and HAIKU in out.stdout and "$0.0306" in out.stdout
    assert out.stdout.splitlines()[-1].split()[-1] == f"${TURN_COST + SUB_COST:.4f}"
    by_session = run_cli("usage", "--by", "session", "--json", env=clean_env(home), timeout=30)
    assert len(json.loads(by_session.stdout)["rows"]) == 2

    # A restart reads nothing twice: the offsets were kept.
    d.stop()
    d.start()
    run_hook(home, payload("Stop", main))
    run_hook(home, payload("PostToolUse", main, tool_name="Bash", tool_use_id="t", tool_input={}))
    wait_for(lambda: d.sessions()[SID]["lastEventType"] == "tool_result", what="the last events")
    after = d.sessions()
    assert after[SID]["usageTotal"]["costUsd"] == pytest.approx(TURN_COST + SUB_COST)
    assert d.get("/api/usage?by=session")["total"]["calls"] == 4


def test_local_missing_transcript_keeps_the_agent_result_estimate(home, daemon):
    d = daemon()
    main = os.path.join(home, "nowhere", SID + ".jsonl")
    run_hook(
        home,
        payload(
            "PreToolUse",
            main,
            tool_name="Agent",
            tool_use_id="tu1",
            tool_input={"subagent_type": "Explore", "description": "look"},
        ),
    )
    run_hook(
        home,
        payload(
            "PostToolUse",
            main,
            tool_name="Agent",
            tool_use_id="tu1",
            tool_response={
                "status": "completed",
                "agentId": "a7",
                "totalTokens": 24680,
                "totalDurationMs": 29159,
                "totalToolUseCount": 4,
            },
        ),
    )
    child = wait_for(lambda: d.sessions().get(SID + ":agent-a7"), what="the sub-agent")
    assert child["usage"]["estimate"]["totalTokens"] == 24680
    assert child["usage"]["costUsd"] is None  # an estimate is never a price
    assert d.sessions()[SID]["usageTotal"]["costUsd"] is None


@needs_redis
def test_redis_hook_reads_the_transcript_and_sends_the_delta(daemon, redis_server):
    r = redis_server()
    d = daemon({"mode": "redis", "redis": {"host": "127.0.0.1", "port": r.port}})
    machine = tempfile.mkdtemp(prefix="ct-m-")
    try:
        with open(os.path.join(machine, "monitor.config.json"), "w") as f:
            json.dump({"mode": "redis", "redis": {"host": "127.0.0.1", "port": r.port}}, f)
        env = {"CONTEXTUATE_MACHINE_ID": "box-b"}
        main = os.path.join(machine, "projects", SID + ".jsonl")
        sub = os.path.join(machine, "projects", SID, "subagents", "agent-a1.jsonl")
        data = dump(TURN)
        cut = data.rfind(b'{"parentUuid"') + 40
        write(main, data[:cut])
        assert run_hook(machine, payload("Stop", main), env).returncode == 0
        u = wait_for(lambda: usage_of(d), what="usage from the hook")
        assert u["calls"] == 1 and u["tokens"]["output"] == 120
        assert os.listdir(os.path.join(machine, "usage"))  # the hook's offset state
        write(main, data[cut:])
        write(sub, dump(SUB_LINES))
        run_hook(machine, payload("SubagentStop", main, agent_id="a1", agent_transcript_path=sub), env)
        run_hook(machine, payload("Stop", main), env)
        run_hook(machine, payload("Stop", main), env)  # nothing new: no usage event
        s = wait_for(
            lambda: (
                d.sessions()[SID]["usage"]["calls"] == 2
                and d.sessions().get(SID + ":agent-a1", {}).get("usage")
                and d.sessions()
            ),
            what="all the usage",
        )
        assert s[SID]["machineId"] == "box-b"
        assert s[SID]["usageTotal"]["costUsd"] == pytest.approx(TURN_COST + SUB_COST)
        usage_events = [e for e in d.events(SID) if e["eventType"] == "usage"]
        # Stop, SubagentStop, Stop; the last Stop found nothing new and sent none.
        assert len(usage_events) == 3 and all(e["machineId"] == "box-b" for e in usage_events)
        assert d.get("/api/usage?by=machine")["rows"][0]["key"] == "box-b"
        # Redis down: the usage event is spooled with the Stop and arrives later.
        r.kill()
        write(main, dump([assistant("msg_L", SONNET, 1, 1000)]))
        run_hook(machine, payload("Stop", main), {**env})
        spooled = os.listdir(os.path.join(machine, "spool"))
        assert len([n for n in spooled if n.endswith(".json")]) == 2
    finally:
        shutil.rmtree(machine, ignore_errors=True)
