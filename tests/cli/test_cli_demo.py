"""``demo``: the packaged story through real hooks into a real daemon gives linked
sessions on two machines."""

from __future__ import annotations

from conftest import clean_env, wait_for
from helpers import run_cli


def test_demo_replays_the_real_cli_recordings(daemon, home):
    d = daemon()
    p = run_cli("demo", "--fast", env=clean_env(home), timeout=120)
    assert p.returncode == 0, p.stderr
    sessions = wait_for(lambda: (s := d.sessions()) and len(s) == 6 and s, what="6 sessions")
    roots = sorted((s for s in sessions.values() if s["parentSessionId"] is None), key=lambda s: s["eventCount"])
    waiting, parent = roots
    assert parent["machineId"] == "laptop-ana" and parent["status"] == "ended"
    children = [sessions[c] for c in parent["childSessionIds"]]
    assert sorted(c["machineId"] for c in children) == ["ci-runner-02", "laptop-ana", "laptop-ana"]
    remote = next(c for c in children if c["machineId"] == "ci-runner-02")
    (bg,) = [sessions[c] for c in remote["childSessionIds"]]  # its background agent, reported back
    assert bg["status"] == "ended" and remote["backgroundAgents"] == [] and remote["status"] == "ended"
    assert waiting["status"] == "waiting" and waiting["attention"]["reason"] == "permission"
    (item,) = d.get("/api/attention")["items"]
    assert item["sessionId"] == waiting["sessionId"] and item["toolName"] == "Bash"


def test_demo_classic_story_produces_linked_sessions_on_two_machines(daemon, home):
    d = daemon()
    p = run_cli("demo", "--fast", "--story", "classic", env=clean_env(home), timeout=120)
    assert p.returncode == 0, p.stderr
    assert "Dashboard: http://127.0.0.1:" in p.stdout
    sessions = wait_for(lambda: (s := d.sessions()) and len(s) == 4 and s, what="4 sessions")
    roots = [s for s in sessions.values() if s["parentSessionId"] is None]
    assert len(roots) == 1
    parent = roots[0]
    assert parent["machineId"] == "laptop-ana" and parent["status"] == "idle"
    children = [sessions[c] for c in parent["childSessionIds"]]
    by_machine = sorted((c["machineId"], c["agentType"] or "-") for c in children)
    assert by_machine == [("ci-runner-02", "-"), ("laptop-ana", "Explore"), ("laptop-ana", "general-purpose")]
    remote = next(c for c in children if c["machineId"] == "ci-runner-02")
    assert remote["status"] == "ended" and remote["eventCount"] == 8
    explore = next(c for c in children if c["agentType"] == "Explore")
    assert explore["description"] == "Map how discounts are rounded" and explore["status"] == "ended"
    gp = next(c for c in children if c["agentType"] == "general-purpose")
    assert gp["errorCount"] == 1  # its test run failed, counted under it, not the parent
    assert parent["errorCount"] == 0
    assert sum(s["eventCount"] for s in sessions.values()) == 41
    # Again: fresh ids, new sessions, nothing merged into the first run.
    run_cli("demo", "--fast", "--story", "classic", env=clean_env(home), timeout=120, check=True)
    wait_for(lambda: len(d.sessions()) == 8, what="8 sessions")


def test_demo_refuses_without_a_daemon(home):
    import json
    import os

    from conftest import free_port

    with open(os.path.join(home, "monitor.config.json"), "w") as f:
        json.dump({"server": {"port": free_port()}}, f)
    p = run_cli("demo", "--fast", env=clean_env(home), timeout=60)
    assert p.returncode == 1 and "contextuate-trio start" in p.stderr
