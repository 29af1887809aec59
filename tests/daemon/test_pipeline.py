"""End to end, all real: hook processes -> Unix socket -> daemon -> disk -> HTTP."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import stat
import threading
import time

import pytest
from conftest import (
    FIXTURE_NAMES,
    DaemonProc,
    clean_env,
    load_expect,
    replay_fixture,
    run_hook,
    wait_for,
)
from helpers import run_cli


def check_expectations(d: DaemonProc, name: str) -> None:
    sessions = d.sessions()
    for sid, want in load_expect(name)["sessions"].items():
        assert sid in sessions, f"{name}: session {sid} missing"
        s = sessions[sid]
        assert s["machineId"] == want["machineId"]
        children = [sessions[c] for c in s["childSessionIds"]]
        assert len(children) == want["children"], s
        assert sorted(c["agentType"] for c in children) == sorted(want["childAgentTypes"])
        for c in children:
            assert c["parentSessionId"] == sid
            assert c["machineId"] == want["machineId"]
        if "statusNot" in want:
            assert s["status"] != want["statusNot"]
        if "status" in want:
            assert s["status"] == want["status"]


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_through_real_hooks(daemon, home, name):
    d = daemon()
    replay_fixture(home, name)
    check_expectations(d, name)
    # Every hook run was acknowledged: nothing spooled.
    assert not os.path.isdir(os.path.join(home, "spool")) or not os.listdir(os.path.join(home, "spool"))
    sessions = d.sessions()
    total = sum(s["eventCount"] for s in sessions.values())
    from conftest import load_fixture

    assert total == len(load_fixture(name))
    # The sub-agent's tool calls count under it, not under its parent.
    root_id = next(iter(load_expect(name)["sessions"]))
    child = sessions[sessions[root_id]["childSessionIds"][0]]
    assert child["toolCount"] >= 3
    child_events = d.events(child["sessionId"])
    assert all(e["parentSessionId"] == root_id for e in child_events)
    assert {e["eventType"] for e in child_events} >= {"tool_call", "tool_result", "subagent_stop"}
    # Every field Claude Code sent is retrievable from the stored event.
    original = [item["stdin"] for item in load_fixture(name)]
    stored = [e["data"] for e in d.all_events()]
    assert sorted(json.dumps(o, sort_keys=True) for o in original) == sorted(
        json.dumps(s, sort_keys=True) for s in stored
    )
    # And it all comes back after a restart, from disk.
    before = d.sessions()
    d.stop()
    d.start()
    assert d.sessions() == before
    check_expectations(d, name)


def test_http_api(daemon, home):
    d = daemon()
    replay_fixture(home, "session-with-subagent")
    sid = "cd613e30-d8f1-4adf-91b7-584a2265b1f5"
    s = d.get(f"/api/sessions/{sid}")
    assert s["sessionId"] == sid and s["status"] == "idle"
    for key in (
        "sessionId",
        "machineId",
        "workingDirectory",
        "startTime",
        "endTime",
        "status",
        "parentSessionId",
        "childSessionIds",
        "agentType",
        "eventCount",
        "lastEventTime",
    ):
        assert key in s
    evs = d.events(sid)
    assert [e["timestamp"] for e in evs] == sorted(e["timestamp"] for e in evs)
    last2 = d.get(f"/api/sessions/{sid}/events?limit=2")["events"]
    assert last2 == evs[-2:]
    mid = evs[len(evs) // 2]["timestamp"]
    before = d.get(f"/api/sessions/{sid}/events?before={mid}&limit=1000")["events"]
    assert before and all(e["timestamp"] < mid for e in before)
    after = d.get(f"/api/sessions/{sid}/events?after={mid}&limit=3")["events"]
    assert len(after) == 3 and all(e["timestamp"] > mid for e in after)
    assert after == [e for e in evs if e["timestamp"] > mid][:3]
    health = d.get("/api/health")
    assert health["status"] == "ok"
    status = d.get("/api/status")
    assert status["sessions"] == 2 and status["eventsStored"] == 25
    cfg = d.get("/api/config")
    assert cfg["server"]["port"] == d.port
    import urllib.error

    with pytest.raises(urllib.error.HTTPError) as err:
        d.get("/api/sessions/nope")
    assert err.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as err:
        d.get(f"/api/sessions/{sid}/events?limit=abc")
    assert err.value.code == 400
    # A foreign Host header (DNS rebinding) is refused.
    with pytest.raises(urllib.error.HTTPError) as err:
        d.get("/api/sessions", headers={"Host": "evil.example:3847"})
    assert err.value.code == 421
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{d.port}/metrics", timeout=5) as r:
        text = r.read().decode()
    assert 'contextuate_events_in_total{source="socket"} 25' in text


def test_token_protects_api_but_not_health(daemon, home):
    d = daemon({"server": {"token": "s3cret"}})
    import urllib.error

    assert d.get("/api/health")["status"] == "ok"
    with pytest.raises(urllib.error.HTTPError) as err:
        d.get("/api/sessions")
    assert err.value.code == 401
    with pytest.raises(urllib.error.HTTPError) as err:
        d.get("/api/sessions", headers={"Authorization": "Bearer wrong"})
    assert err.value.code == 401
    assert d.get("/api/sessions", headers={"Authorization": "Bearer s3cret"}) == {"sessions": []}
    cfg = d.get("/api/config", headers={"Authorization": "Bearer s3cret"})
    assert cfg["server"]["token"] == "***"


def test_files_are_private_and_second_daemon_refused(daemon, home):
    d = daemon()
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
    st = os.stat(d.socket_path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    run_hook(home, {"session_id": "s", "hook_event_name": "Stop"})
    for root, dirs, files in os.walk(os.path.join(home, "data")):
        for name in dirs:
            assert stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode) == 0o700
        for name in files:
            assert stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode) == 0o600, name
    second = DaemonProc(home)
    second.port, second.ws_port = d.port, d.ws_port
    second.config_path = d.config_path
    p = run_cli("start", "--foreground", env=clean_env(home), timeout=20)
    assert p.returncode == 1
    assert "another contextuate-trio daemon is running" in p.stderr
    # The first one is unharmed.
    assert d.get("/api/health")["status"] == "ok"


def test_stale_socket_from_crashed_daemon_is_cleaned(daemon, home):
    d = daemon()
    d.kill9()
    assert os.path.exists(d.socket_path)  # left behind by the crash
    d.start()
    r = run_hook(home, {"session_id": "s1", "hook_event_name": "SessionStart"})
    assert r.returncode == 0
    assert "s1" in d.sessions()


def test_streaming_producer_and_garbage_on_socket(daemon, home):
    d = daemon()
    good = [
        {
            "id": f"ev-{i}",
            "timestamp": 1_700_000_000_000 + i,
            "sessionId": "stream-1",
            "machineId": "m1",
            "eventType": "tool_call",
            "hookType": "PreToolUse",
            "toolName": "Bash",
            "data": {"n": i},
        }
        for i in range(200)
    ]
    junk = [
        b"garbage\n",
        b'{"truncated": \n',
        b"\xff\xfe\n",
        b"[1,2,3]\n",
        b'"just a string"\n',
        b"[" * 100_000 + b"\n",
        b'{"no": "event fields"}\n',
    ]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(d.socket_path)
        for i, ev in enumerate(good):
            s.sendall(json.dumps(ev).encode() + b"\n")
            if i % 40 == 0:
                s.sendall(junk[(i // 40) % len(junk)])
        s.sendall(junk[-2])
        # A line split across writes, then a duplicate id.
        line = json.dumps({**good[0], "id": "split-1"}).encode() + b"\n"
        s.sendall(line[:10])
        time.sleep(0.05)
        s.sendall(line[10:])
        s.sendall(json.dumps(good[5]).encode() + b"\n")
    wait_for(lambda: d.sessions().get("stream-1", {}).get("eventCount") == 201, what="201 events")
    evs = d.events("stream-1")
    assert len(evs) == 201 and len({e["id"] for e in evs}) == 201
    assert d.get("/api/status")["badLines"] >= len(junk) - 1
    assert d.get("/api/health")["status"] == "ok"


def test_oversize_line_rejected_daemon_unharmed(daemon, home):
    d = daemon({"maxLineBytes": 100_000})
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(d.socket_path)
        big = {
            "id": "big",
            "timestamp": 1,
            "sessionId": "x",
            "machineId": "m",
            "eventType": "tool_result",
            "data": {"blob": "a" * 500_000},
        }
        s.sendall(json.dumps(big).encode() + b"\n")
        ok = {"id": "ok", "timestamp": 2, "sessionId": "x", "machineId": "m", "eventType": "stop"}
        s.sendall(json.dumps(ok).encode() + b"\n")
    wait_for(lambda: "x" in d.sessions(), what="session x")
    assert [e["id"] for e in d.events("x")] == ["ok"]
    assert "line longer than 100000 bytes" in d.log()


def test_hooks_while_daemon_down_are_delivered_after_start(daemon, home):
    d = daemon(start=False)
    replay_fixture(home, "session-with-subagent")
    spooled = os.listdir(os.path.join(home, "spool"))
    assert len(spooled) == 25
    d.start()
    wait_for(
        lambda: not [n for n in os.listdir(os.path.join(home, "spool")) if n.endswith(".json")], what="spool drained"
    )
    check_expectations(d, "session-with-subagent")
    assert sum(s["eventCount"] for s in d.sessions().values()) == 25
    # Drained means stored once: a restart finds the same.
    d.stop()
    d.start()
    assert sum(s["eventCount"] for s in d.sessions().values()) == 25


def test_hung_daemon_hook_spools_within_timeout(home):
    """A daemon that accepts but never answers (SIGSTOP) must not hold the hook."""
    os.makedirs(home, exist_ok=True)
    with open(os.path.join(home, "monitor.config.json"), "w") as f:
        json.dump({"hook": {"timeoutMs": 300}}, f)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(os.path.join(home, "monitor.sock"))
    srv.listen(5)
    try:
        t0 = time.monotonic()
        r = run_hook(home, {"session_id": "h", "hook_event_name": "Stop"})
        elapsed = time.monotonic() - t0
    finally:
        srv.close()
    assert r.returncode == 0 and r.stdout == b""
    assert elapsed < 3.0
    assert len(os.listdir(os.path.join(home, "spool"))) == 1


def test_kill9_mid_burst_every_event_stored_exactly_once(daemon, home):
    d = daemon({"hook": {"timeoutMs": 400}})
    n = 120
    sid = "burst-session"

    def one(i: int) -> int:
        r = run_hook(home, {"session_id": sid, "hook_event_name": "UserPromptSubmit", "prompt": f"n={i}"})
        return r.returncode

    killed = threading.Event()

    def killer():
        wait_for(lambda: d.sessions().get(sid, {}).get("eventCount", 0) >= 30, timeout=60, what="some events stored")
        d.kill9()
        killed.set()

    t = threading.Thread(target=killer)
    t.start()
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(one, range(n)))
    t.join()
    assert killed.is_set()
    assert codes == [0] * n
    d.start()
    wait_for(lambda: d.sessions().get(sid, {}).get("eventCount") == n, timeout=30, what=f"{n} events")
    prompts = [e["data"]["prompt"] for e in d.events(sid)]
    assert sorted(prompts) == sorted(f"n={i}" for i in range(n))
    # Still exactly once after another restart (spool fully drained, no replays).
    wait_for(
        lambda: not [x for x in os.listdir(os.path.join(home, "spool")) if x.endswith(".json")], what="spool drained"
    )
    d.stop()
    d.start()
    assert d.sessions()[sid]["eventCount"] == n
    assert len(d.events(sid)) == n


def test_sigterm_stops_cleanly_and_quickly(daemon, home):
    d = daemon()
    # An idle client holding a connection must not delay shutdown.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(d.socket_path)
    try:
        t0 = time.monotonic()
        assert d.stop(signal.SIGTERM) == 0
        assert time.monotonic() - t0 < 5
    finally:
        s.close()
    assert not os.path.exists(d.socket_path)
    assert not os.path.exists(os.path.join(home, "daemon.pid"))
    assert "stopped" in d.log()
    d.start()
    assert d.stop(signal.SIGINT) == 0


def test_broken_config_stops_daemon_with_clear_message(home):
    with open(os.path.join(home, "monitor.config.json"), "w") as f:
        json.dump({"server": {"port": "3847"}}, f)
    p = run_cli("start", "--foreground", env=clean_env(home), timeout=20)
    assert p.returncode == 2
    assert "monitor.config.json" in p.stderr and "server.port" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    # The hook treats the same broken config as defaults and still exits 0.
    r = run_hook(home, {"session_id": "s", "hook_event_name": "Stop"})
    assert r.returncode == 0


def test_cli_start_status_stop_init(home):
    port = __import__("conftest").free_port()
    env = clean_env(home)
    p = run_cli("init", env=env)
    assert p.returncode == 0, p.stderr
    cfg_path = os.path.join(home, "monitor.config.json")
    assert stat.S_IMODE(os.stat(cfg_path).st_mode) == 0o600
    p = run_cli("init", env=env)
    assert p.returncode == 1 and "--force" in p.stderr
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["server"]["port"] = port
    cfg["server"]["wsPort"] = __import__("conftest").free_port()
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    try:
        p = run_cli("start", env=env, timeout=30)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "started" in p.stdout
        p = run_cli("status", env=env, timeout=10)
        assert p.returncode == 0 and "ok" in p.stdout, p.stdout + p.stderr
        p = run_cli("start", env=env, timeout=30)
        assert p.returncode == 0 and "already running" in p.stdout
    finally:
        p = run_cli("stop", env=env, timeout=30)
    assert p.returncode == 0 and "stopped" in p.stdout
    p = run_cli("status", env=env, timeout=10)
    assert p.returncode == 3 and "not running" in p.stdout


def test_parent_session_env_links_sessions_across_machines(daemon, home):
    d = daemon()
    run_hook(
        home, {"session_id": "parent-1", "hook_event_name": "SessionStart"}, {"CONTEXTUATE_MACHINE_ID": "machine-a"}
    )
    run_hook(
        home,
        {"session_id": "child-1", "hook_event_name": "SessionStart"},
        {"CONTEXTUATE_MACHINE_ID": "machine-b", "CONTEXTUATE_PARENT_SESSION": "parent-1"},
    )
    s = d.sessions()
    assert s["child-1"]["parentSessionId"] == "parent-1"
    assert s["child-1"]["machineId"] == "machine-b"
    assert s["parent-1"]["childSessionIds"] == ["child-1"]
    assert s["parent-1"]["machineId"] == "machine-a"


def test_a_busy_port_is_said_plainly(daemon, home):
    import socket as stdsocket

    busy = stdsocket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        d = daemon({"server": {"port": busy.getsockname()[1]}}, start=False)
        p = run_cli("start", "--foreground", env=clean_env(home), timeout=30)
    finally:
        busy.close()
    assert p.returncode == 1
    assert "cannot start" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not os.path.exists(d.socket_path)
