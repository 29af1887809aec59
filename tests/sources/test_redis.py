"""Redis mode against real redis-server processes: hooks, monitors, failures."""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid

import pytest
from conftest import DaemonProc, load_fixture, run_hook, wait_for
from helpers import run_cli
from redis_server import make_tls_files, needs_redis, redis_server  # noqa: F401 (fixture)

pytestmark = needs_redis


def machine_home(redis_cfg: dict, timeout_ms: int = 1000) -> str:
    """A separate 'machine': its own home with a Redis-mode config."""
    home = tempfile.mkdtemp(prefix="ct-m-")
    with open(os.path.join(home, "monitor.config.json"), "w") as f:
        json.dump({"mode": "redis", "redis": redis_cfg, "hook": {"timeoutMs": timeout_ms}}, f)
    return home


def replay(home: str, name: str, machine: str, rename: dict | None = None) -> int:
    n = 0
    for item in load_fixture(name):
        stdin = json.dumps(item["stdin"])
        for old, new in (rename or {}).items():
            stdin = stdin.replace(old, new)
        r = run_hook(home, stdin, {"CONTEXTUATE_MACHINE_ID": machine})
        assert r.returncode == 0 and r.stdout == b""
        n += 1
    return n


def spool_count(home: str) -> int:
    d = os.path.join(home, "spool")
    return len([n for n in os.listdir(d) if n.endswith(".json")]) if os.path.isdir(d) else 0


def total_events(d: DaemonProc) -> int:
    return sum(s["eventCount"] for s in d.sessions().values())


@pytest.fixture
def monitor(daemon, redis_server):
    extra: list[DaemonProc] = []

    def make(server, extra_redis: dict | None = None, home: str | None = None) -> DaemonProc:
        cfg = {"mode": "redis", "redis": {"host": "127.0.0.1", "port": server.port, **(extra_redis or {})}}
        if home is None:
            return daemon(cfg)
        d = DaemonProc(home, cfg)
        extra.append(d)  # a second monitor, in its own home: stopped even if the test fails
        return d.start()

    yield make
    for d in extra:
        d.kill9()


def test_two_machines_replaying_fixtures(monitor, redis_server):
    r = redis_server()
    d = monitor(r)
    a = machine_home({"host": "127.0.0.1", "port": r.port})
    b = machine_home({"url": f"redis://127.0.0.1:{r.port}/0"})
    sid_a = "cd613e30-d8f1-4adf-91b7-584a2265b1f5"
    sid_b = "bbbbbbbb-d8f1-4adf-91b7-584a2265b1f5"
    n = replay(a, "session-with-subagent", "laptop-a")
    n += replay(b, "session-with-subagent", "laptop-b", {sid_a: sid_b})
    n += replay(b, "older-claude-code-task-tool", "laptop-b")
    wait_for(lambda: total_events(d) == n, what=f"{n} events")
    s = d.sessions()
    assert s[sid_a]["machineId"] == "laptop-a" and s[sid_b]["machineId"] == "laptop-b"
    for sid in (sid_a, sid_b, "d95bafc8-f2a4-427b-9cf4-bb99f4bea973"):
        kids = [s[c] for c in s[sid]["childSessionIds"]]
        assert [k["agentType"] for k in kids] == ["Explore"]
        assert kids[0]["machineId"] == s[sid]["machineId"]
        assert s[sid]["status"] != "ended"
    assert spool_count(a) == spool_count(b) == 0
    # Each machine's own stream, and the registry where monitors find them.
    c = r.client()
    assert c.smembers("contextuate:events:stream:machines") == {b"laptop-a", b"laptop-b"}
    n_a = c.xlen("contextuate:events:stream:{laptop-a}")
    assert n_a > 0 and n_a + c.xlen("contextuate:events:stream:{laptop-b}") == n
    assert c.xlen("contextuate:events:stream") == 0

    def machines():
        return {m["machineId"]: m for m in d.get("/api/machines")["machines"]}

    wait_for(lambda: machines()["laptop-b"]["lag"] == 0, what="both streams read")
    assert machines()["laptop-a"]["stream"] == "contextuate:events:stream:{laptop-a}"
    assert machines()["laptop-a"]["events"] == n_a and machines()["laptop-b"]["events"] == n - n_a
    assert machines()["laptop-a"]["missed"] == 0 and machines()["laptop-a"]["lag"] == 0


def test_plain_publish_of_a_complete_event_and_garbage(monitor, redis_server):
    r = redis_server()
    d = monitor(r)
    wait_for(lambda: d.get("/api/health")["status"] == "ok", what="redis connected")
    c = r.client()
    c.publish("contextuate:events", "this is not json")
    c.publish("contextuate:events", json.dumps([1, 2]))
    c.xadd("contextuate:events:stream", {"data": "{broken"})
    ev = {
        "id": str(uuid.uuid4()),
        "timestamp": int(time.time() * 1000),
        "sessionId": "node-1",
        "machineId": "old-node-box",
        "eventType": "tool_call",
        "hookType": "PreToolUse",
        "workingDirectory": "/srv",
        "data": {"tool_name": "Bash"},
    }
    c.publish("contextuate:events", json.dumps(ev))
    wait_for(lambda: "node-1" in d.sessions(), what="published event")
    got = d.events("node-1")
    assert [e["id"] for e in got] == [ev["id"]] and got[0]["source"] == "redis"
    assert d.sessions()["node-1"]["machineId"] == "old-node-box"
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{d.port}/metrics") as resp:
        metrics = resp.read().decode()
    assert "contextuate_bad_redis_messages_total 3" in metrics
    assert d.get("/api/health")["status"] == "ok"


def test_monitor_down_catches_up_and_two_monitors_get_everything(monitor, redis_server):
    r = redis_server()
    m = machine_home({"port": r.port, "host": "127.0.0.1"})
    n = replay(m, "session-with-subagent", "laptop-a")  # no monitor running at all
    assert spool_count(m) == 0
    d1 = monitor(r)
    other_home = tempfile.mkdtemp(prefix="ct-")
    d2 = monitor(r, home=other_home)
    try:
        for d in (d1, d2):
            wait_for(lambda d=d: total_events(d) == n, what="catch-up")
        n2 = n + replay(m, "older-claude-code-task-tool", "laptop-a")
        for d in (d1, d2):
            wait_for(lambda d=d: total_events(d) == n2, what="live events")
        # A restarted monitor resumes from its checkpoint: no re-reading, no duplicates.
        d1.stop()
        n3 = n2 + replay(m, "session-with-subagent", "laptop-a", {"cd613e30": "cccccccc"})
        d1.start()
        wait_for(lambda: total_events(d1) == n3, what="resume from checkpoint")
        assert d1.get("/api/status")["eventsStored"] == n3 - n2
    finally:
        d2.kill9()


def test_redis_killed_restarted_and_hung(monitor, redis_server):
    r = redis_server()
    d = monitor(r)
    m = machine_home({"host": "127.0.0.1", "port": r.port}, timeout_ms=300)
    assert run_hook(m, {"session_id": "f1", "hook_event_name": "SessionStart"}).returncode == 0
    wait_for(lambda: "f1" in d.sessions(), what="first event")

    def timed_hook(i):
        t0 = time.monotonic()
        res = run_hook(m, {"session_id": "f1", "hook_event_name": "UserPromptSubmit", "prompt": f"p{i}"})
        assert res.returncode == 0 and res.stdout == b""
        return time.monotonic() - t0

    r.kill()
    down = [timed_hook(i) for i in range(3)]
    assert spool_count(m) == 3 and max(down) < 2.0
    wait_for(lambda: d.get("/api/health")["status"] == "degraded", what="degraded health")
    assert "redis" in " ".join(d.get("/api/health")["reasons"])
    r.start()  # same port, empty (no persistence)
    r.pause()
    hung = [timed_hook(i) for i in range(3, 6)]
    assert spool_count(m) == 6 and max(hung) < 2.0  # a hung Redis does not hold the hook
    r.resume()
    # The next hook that reaches Redis takes the spool along; the daemon reconnects.
    sent = 6
    while spool_count(m) and sent < 12:
        timed_hook(sent)
        sent += 1
    assert spool_count(m) == 0
    expected = sorted(f"p{i}" for i in range(sent))

    def prompts():
        return sorted(e["data"]["prompt"] for e in d.events("f1") if "prompt" in e["data"])

    wait_for(lambda: prompts() == expected, timeout=40, what="every prompt stored exactly once")
    wait_for(lambda: d.get("/api/health")["status"] == "ok", timeout=40, what="reconnected")
    assert "attempt" in d.log()


def test_acl_user_and_wrong_password(monitor, redis_server):
    r = redis_server("--user", "default", "off", "--user", "mon", "on", ">s3cret", "~*", "&*", "+@all")
    good = {"username": "mon", "password": "s3cret"}
    d = monitor(r, good)
    m = machine_home({"host": "127.0.0.1", "port": r.port, **good})
    assert run_hook(m, {"session_id": "acl-1", "hook_event_name": "Stop"}).returncode == 0
    wait_for(lambda: "acl-1" in d.sessions(), what="event via ACL user")
    assert spool_count(m) == 0
    # A wrong password: the hook spools and says why; the daemon reports, no crash loop.
    bad = machine_home({"host": "127.0.0.1", "port": r.port, "username": "mon", "password": "nope"})
    res = run_hook(bad, {"session_id": "acl-2", "hook_event_name": "Stop"}, {"CONTEXTUATE_DEBUG": "1"})
    assert res.returncode == 0 and spool_count(bad) == 1 and b"WRONGPASS" in res.stderr
    d.stop()
    other = tempfile.mkdtemp(prefix="ct-")
    d2 = monitor(r, {"username": "mon", "password": "wrong"}, home=other)
    wait_for(
        lambda: "authentication failed" in " ".join(d2.get("/api/health")["reasons"]),
        what="degraded health naming the cause",
    )
    assert d2.get("/api/health")["status"] == "degraded"
    time.sleep(2)
    assert d2.proc.poll() is None  # still running, retrying with backoff

    from conftest import clean_env

    st = run_cli("status", env=clean_env(other), timeout=10)
    assert st.returncode == 1 and "authentication failed" in st.stdout
    assert "authentication failed" in d2.log()
    d2.kill9()


def test_tls_with_self_signed_ca(monitor, redis_server):
    tls = make_tls_files(tempfile.mkdtemp(prefix="ct-tls-"))
    r = redis_server(tls=tls)
    d = monitor(r, {"host": "localhost", "tls": True, "tlsCaFile": tls["ca"]})
    wait_for(lambda: d.get("/api/health")["status"] == "ok", what="TLS connection")
    m = machine_home({"url": f"rediss://localhost:{r.port}/0", "tlsCaFile": tls["ca"]})
    res = run_hook(m, {"session_id": "tls-1", "hook_event_name": "Stop"}, {"CONTEXTUATE_DEBUG": "1"})
    assert res.returncode == 0 and spool_count(m) == 0, res.stderr
    wait_for(lambda: "tls-1" in d.sessions(), what="event over TLS")
    # Without the CA the certificate is not trusted: spooled, not sent in clear.
    m2 = machine_home({"url": f"rediss://localhost:{r.port}/0"})
    assert run_hook(m2, {"session_id": "tls-2", "hook_event_name": "Stop"}).returncode == 0
    assert spool_count(m2) == 1


def test_stream_is_capped(redis_server):
    r = redis_server()
    m = machine_home({"host": "127.0.0.1", "port": r.port, "streamMaxLen": 5})
    for i in range(250):
        run_hook(m, {"session_id": "cap", "hook_event_name": "Stop", "n": i}, {"CONTEXTUATE_MACHINE_ID": "cap-box"})
    assert r.client().xlen("contextuate:events:stream:{cap-box}") < 250
