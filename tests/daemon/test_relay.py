"""Relay mode against real redis-server processes: hooks acknowledged on local disk,
every stored event forwarded to the machine's stream in order, exactly once, across a
Redis that dies and comes back and a relay that restarts while Redis is down."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

import pytest
from conftest import DaemonProc, clean_env, run_hook, wait_for
from redis_server import make_tls_files, needs_redis, redis_server  # noqa: F401 (fixture)

pytestmark = needs_redis

STREAM = "contextuate:events:stream"
MACHINE = "relay-box"
# Redis that keeps what it acknowledged across a kill (the tests' default keeps nothing).
DURABLE = ("--appendonly", "yes", "--appendfsync", "always")


def key(machine: str = MACHINE) -> str:
    return f"{STREAM}:{{{machine}}}"


def relay_config(server, **relay) -> dict:
    return {
        "mode": "relay",
        "redis": {"host": "127.0.0.1", "port": server.port},
        "relay": {"retryMaxSeconds": 0.5, "degradedAfterSeconds": 1, **relay},
    }


def hook(home: str, sid: str, i: int) -> float:
    """One real hook run (as Claude Code runs it); its wall time."""
    t0 = time.perf_counter()
    res = run_hook(
        home,
        {"session_id": sid, "hook_event_name": "UserPromptSubmit", "prompt": f"p{i}"},
        {"CONTEXTUATE_MACHINE_ID": MACHINE},
    )
    took = time.perf_counter() - t0
    assert res.returncode == 0 and res.stdout == b"", res
    return took


def prompts(server, machine: str = MACHINE) -> list[str]:
    """The prompts in the machine's stream, in stream order."""
    out = []
    for _id, fields in server.client().xrange(key(machine)):
        ev = json.loads(fields[b"data"])
        out.append(ev["data"].get("prompt"))
    return out


def stream_ids(server, machine: str = MACHINE) -> list[str]:
    return [json.loads(f[b"data"])["id"] for _i, f in server.client().xrange(key(machine))]


def spooled(home: str) -> int:
    d = os.path.join(home, "spool")
    return len([n for n in os.listdir(d) if n.endswith(".json")]) if os.path.isdir(d) else 0


def relay_info(d: DaemonProc) -> dict:
    return d.get("/api/status")["relay"]


def metrics(d: DaemonProc) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{d.port}/metrics") as resp:
        return resp.read().decode()


def relay_connections(c) -> list:
    """Ids of the Redis connections whose last command was one of the relay's."""
    return [x["id"] for x in c.client_list() if x["cmd"] in ("publish", "xadd", "sadd")]


def burst(d: DaemonProc, n: int, sid: str = "s-burst", machine: str = MACHINE) -> list[str]:
    """``n`` complete events as NDJSON on the socket (no acks asked); their ids."""
    ids = [str(uuid.uuid4()) for _ in range(n)]
    now = int(time.time() * 1000)
    lines = b"".join(
        json.dumps(
            {
                "id": eid,
                "timestamp": now + i,
                "sessionId": sid,
                "machineId": machine,
                "eventType": "tool_call",
                "hookType": "PreToolUse",
                "data": {"tool_name": "Bash", "tool_input": {"command": f"echo {i}"}},
            }
        ).encode()
        + b"\n"
        for i, eid in enumerate(ids)
    )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(d.socket_path)
        s.sendall(lines)
    return ids


def test_hooks_acknowledged_locally_and_forwarded_in_order(daemon, redis_server, home):
    r = redis_server()
    c = r.client()
    sub = c.pubsub(ignore_subscribe_messages=True)
    sub.subscribe("contextuate:events")
    d = daemon(relay_config(r))
    wait_for(lambda: relay_info(d)["state"] == "connected", what="relay connected")
    for i in range(12):
        hook(home, "s-relay", i)
    assert spooled(home) == 0  # every hook was acknowledged by the local daemon
    # The machine's own daemon holds the session (its dashboard) ...
    assert d.sessions()["s-relay"]["eventCount"] == 12
    assert d.sessions()["s-relay"]["machineId"] == MACHINE
    # ... and its stream has every event, in order, once.
    wait_for(lambda: len(prompts(r)) == 12, what="12 events in the stream")
    assert prompts(r) == [f"p{i}" for i in range(12)]
    assert c.smembers(f"{STREAM}:machines") == {MACHINE.encode()}
    # The forwarded line is the stored event (what the local API gives back).
    local = {e["id"]: e for e in d.events("s-relay")}
    for eid, (_entry, fields) in zip(stream_ids(r), c.xrange(key()), strict=True):
        assert json.loads(fields[b"data"]) == local[eid]
    # PUBLISHed as well.
    got = []
    deadline = time.monotonic() + 5
    while len(got) < 12 and time.monotonic() < deadline:
        m = sub.get_message(timeout=0.5)
        if m:
            got.append(json.loads(m["data"])["id"])
    assert got == stream_ids(r)
    # One kept-alive connection: the same one carries the next batches.
    first = relay_connections(c)
    assert len(first) == 1
    for i in range(12, 15):
        hook(home, "s-relay", i)
    wait_for(lambda: len(prompts(r)) == 15, what="3 more events in the stream")
    wait_for(lambda: relay_info(d)["backlog"] == 0, what="confirmed")  # the replies follow the stream
    assert relay_connections(c) == first
    info = relay_info(d)
    assert info["forwarded"] == 15 and info["backlog"] == 0 and info["state"] == "connected"
    assert info["machines"] == [MACHINE]
    text = metrics(d)
    assert "contextuate_relay_forwarded_total 15" in text and "contextuate_relay_backlog 0" in text
    assert "contextuate_relay_connected 1" in text
    assert d.get("/api/health")["status"] == "ok"
    with open(os.path.join(home, "data", "relay-checkpoint.json")) as f:
        assert json.load(f)["seq"] == info["checkpoint"] > 0
    out = subprocess.run(
        [sys.executable, "-m", "contextuate_trio", "status"], env=clean_env(home), capture_output=True, text=True
    )
    assert out.returncode == 0, out
    assert f"relay:     redis://127.0.0.1:{r.port}/0 connected: 15 forwarded this run, backlog 0" in out.stdout


def test_redis_killed_mid_run_then_back_everything_once_in_order(daemon, redis_server, home):
    r = redis_server(*DURABLE)
    d = daemon(relay_config(r, batchMax=200))
    wait_for(lambda: relay_info(d)["state"] == "connected", what="relay connected")
    first = burst(d, 3000)
    wait_for(lambda: r.client().xlen(key()) >= 400, interval=0.002, what="the burst being forwarded")
    r.kill()  # while the burst is being forwarded (some batches sent, their replies perhaps lost)
    # Hooks keep being acknowledged locally, fast.
    took = [hook(home, "s-down", i) for i in range(20)]
    assert spooled(home) == 0
    assert max(took) < 0.5, took
    assert d.sessions()["s-down"]["eventCount"] == 20
    wait_for(lambda: d.get("/api/health")["status"] == "degraded", what="degraded while Redis is gone")
    reasons = d.get("/api/health")["reasons"]
    assert any(x.startswith(f"relay: cannot forward to Redis at redis://127.0.0.1:{r.port}/0 for ") for x in reasons)
    info = relay_info(d)
    assert info["state"] == "error" and info["lastError"] and info["backlog"] >= 20
    r.start()  # the same port, its data back from the append-only file
    want = first + [e["id"] for e in d.events("s-down")]
    wait_for(lambda: relay_info(d)["backlog"] == 0, timeout=30, what="the backlog forwarded")
    ids = stream_ids(r)
    assert len(ids) == len(set(ids)) == 3020  # exactly once ...
    burst_ids = [i for i in ids if i in set(first)]
    assert burst_ids == first  # ... in order
    assert prompts(r)[-20:] == [f"p{i}" for i in range(20)]
    assert set(ids) == set(want)
    wait_for(lambda: d.get("/api/health")["status"] == "ok", what="healthy again")
    info = relay_info(d)
    assert info["forwarded"] + info["alreadyThere"] == 3020 and info["state"] == "connected"


@pytest.mark.parametrize("how", ["stop", "kill9"])
def test_relay_restarted_while_redis_down_resumes_from_its_checkpoint(daemon, redis_server, home, how):
    r = redis_server(*DURABLE)
    d = daemon(relay_config(r, backlogMax=10, degradedAfterSeconds=600))
    for i in range(5):
        hook(home, "s-r", i)
    wait_for(lambda: relay_info(d)["backlog"] == 0, what="first events forwarded")
    assert len(prompts(r)) == 5
    r.kill()
    for i in range(5, 15):
        hook(home, "s-r", i)
    if how == "stop":
        assert d.stop() == 0
    else:
        d.kill9()
    d.start()  # Redis still down
    for i in range(15, 20):
        hook(home, "s-r", i)
    assert spooled(home) == 0
    assert d.sessions()["s-r"]["eventCount"] == 20
    assert relay_info(d)["backlog"] == 15
    health = d.get("/api/health")
    assert health["status"] == "degraded", health
    assert "relay: 15 events stored here are not forwarded to Redis yet (relay.backlogMax)" in health["reasons"]
    r.start()
    wait_for(lambda: relay_info(d)["backlog"] == 0, timeout=30, what="the backlog forwarded")
    assert prompts(r) == [f"p{i}" for i in range(20)]  # nothing lost or twice, in order
    wait_for(lambda: d.get("/api/health")["status"] == "ok", what="healthy again")
    d.stop()
    d.start()  # nothing new: nothing sent again
    wait_for(lambda: relay_info(d)["state"] == "connected", what="connected")
    time.sleep(0.3)
    assert len(prompts(r)) == 20 and relay_info(d)["forwarded"] == 0


def test_sent_but_not_checkpointed_is_not_sent_again(daemon, redis_server, home):
    """A batch Redis stored whose confirmation never reached the checkpoint (the
    daemon died between the two): the next run finds it in the stream and skips it."""
    r = redis_server()
    d = daemon(relay_config(r))
    for i in range(6):
        hook(home, "s-c", i)
    # The checkpoint, not Redis, is what must hold all six before the stop: a stop in
    # the middle of a batch leaves exactly the uncertainty this test makes by hand.
    wait_for(lambda: relay_info(d)["backlog"] == 0, what="forwarded and checkpointed")
    assert len(prompts(r)) == 6
    d.stop()
    path = os.path.join(home, "data", "relay-checkpoint.json")
    with open(path) as f:
        saved = json.load(f)
    saved["seq"] -= 4  # as if the last four were sent but not checkpointed
    with open(path, "w") as f:
        json.dump(saved, f)
    d.start()
    hook(home, "s-c", 6)
    wait_for(lambda: relay_info(d)["backlog"] == 0, what="forwarded")
    assert prompts(r) == [f"p{i}" for i in range(7)]
    assert relay_info(d)["alreadyThere"] == 4 and relay_info(d)["forwarded"] == 1


def test_a_monitor_shows_the_relay_machines_sessions(daemon, redis_server, home):
    r = redis_server()
    relay = daemon(relay_config(r))
    monitor_home = tempfile.mkdtemp(prefix="ct-mon-")
    mon = DaemonProc(monitor_home, {"mode": "redis", "redis": {"host": "127.0.0.1", "port": r.port}})
    try:
        mon.start()
        for i in range(6):
            hook(home, "s-fleet", i)
        burst(relay, 50, sid="s-fleet-2")
        wait_for(lambda: mon.sessions().get("s-fleet-2", {}).get("eventCount") == 50, what="the monitor has it")
        s = mon.sessions()
        assert s["s-fleet"]["machineId"] == MACHINE and s["s-fleet"]["eventCount"] == 6
        assert [e["data"]["prompt"] for e in mon.events("s-fleet")] == [f"p{i}" for i in range(6)]
        assert {e["id"] for e in mon.events("s-fleet")} == {e["id"] for e in relay.events("s-fleet")}

        def row() -> dict:
            return {m["machineId"]: m for m in mon.get("/api/machines")["machines"]}.get(MACHINE, {})

        wait_for(lambda: row().get("stream") == key() and row().get("lag") == 0, what="the monitor reads its stream")
        assert row()["missed"] == 0 and row()["events"] == 56
        # A monitor that was down catches up from the stream (the channel had no listener).
        mon.stop()
        for i in range(6, 10):
            hook(home, "s-fleet", i)
        wait_for(lambda: relay_info(relay)["backlog"] == 0, what="forwarded while the monitor is down")
        mon.start()
        wait_for(lambda: mon.sessions()["s-fleet"]["eventCount"] == 10, what="the monitor caught up")
        assert [e["data"]["prompt"] for e in mon.events("s-fleet")] == [f"p{i}" for i in range(10)]
        assert mon.get("/api/status")["reasons"] == []
    finally:
        mon.kill9()


def test_machine_id_from_config_and_a_refused_batch_retried(daemon, redis_server, home):
    """redis.machineId: events go to that machine's stream, named as it; a command
    Redis refuses (here: the stream key holds a string) stops the queue, in order,
    until it is fixed."""
    r = redis_server()
    c = r.client()
    c.set(key("acl-box"), "not a stream")
    cfg = relay_config(r)
    cfg["redis"]["machineId"] = "acl-box"
    d = daemon(cfg)
    for i in range(3):
        hook(home, "s-m", i)
    wait_for(lambda: "WRONGTYPE" in (relay_info(d)["lastError"] or ""), what="the refusal reported")
    assert relay_info(d)["backlog"] == 3
    wait_for(lambda: "WRONGTYPE" in " ".join(d.get("/api/health")["reasons"]), what="degraded by a refusal")
    c.delete(key("acl-box"))
    wait_for(lambda: relay_info(d)["backlog"] == 0, what="forwarded once fixed")
    assert prompts(r, "acl-box") == ["p0", "p1", "p2"]
    assert {json.loads(f[b"data"])["machineId"] for _i, f in c.xrange(key("acl-box"))} == {"acl-box"}


def test_a_hung_redis_blocks_neither_the_hooks_nor_a_stop(daemon, redis_server, home):
    r = redis_server()
    d = daemon(relay_config(r))
    hook(home, "s-h", 0)
    wait_for(lambda: len(prompts(r)) == 1, what="forwarded")
    r.pause()  # SIGSTOP: connections stay open, nothing answers
    took = [hook(home, "s-h", i) for i in range(1, 6)]
    assert max(took) < 0.5, took
    assert spooled(home) == 0
    t0 = time.monotonic()
    assert d.stop() == 0
    assert time.monotonic() - t0 < 5
    r.resume()
    d.start()
    wait_for(lambda: relay_info(d)["backlog"] == 0, what="forwarded after the restart")
    time.sleep(0.3)
    assert prompts(r) == [f"p{i}" for i in range(6)]


def test_over_tls_one_handshake_for_many_batches(daemon, redis_server, home):
    tls = make_tls_files(tempfile.mkdtemp(prefix="ct-tls-"))
    r = redis_server(tls=tls)
    cfg = relay_config(r, batchMax=10)
    cfg["redis"] = {"url": f"rediss://localhost:{r.port}/0", "tlsCaFile": tls["ca"]}
    d = daemon(cfg)
    wait_for(lambda: relay_info(d)["state"] == "connected", what="connected over TLS")
    c = r.client()
    before = c.info("stats")["total_connections_received"]
    burst(d, 200)
    wait_for(lambda: relay_info(d)["backlog"] == 0, what="forwarded over TLS")
    assert relay_info(d)["batches"] >= 20 and len(stream_ids(r)) == 200
    # One connection (one TLS handshake) for every batch: the only new one is stream_ids' own.
    assert c.info("stats")["total_connections_received"] - before == 1


def test_relay_mode_needs_persistence(tmp_path):
    from contextuate_trio import config

    (tmp_path / "monitor.config.json").write_text(json.dumps({"mode": "relay", "persistence": {"enabled": False}}))
    with pytest.raises(config.ConfigError, match="relay.*persistence.enabled"):
        config.load({"CONTEXTUATE_HOME": str(tmp_path)})
    (tmp_path / "monitor.config.json").write_text(json.dumps({"mode": "relay", "relay": {"batchMax": 50}}))
    cfg, warnings = config.load({"CONTEXTUATE_HOME": str(tmp_path)})
    assert cfg.mode == "relay" and cfg.relay.batch_max == 50 and warnings == []


def test_otel_through_a_relay_reaches_the_central_monitor(redis_server, tmp_path):
    """Claude Code's OTLP posted to a machine's relay daemon is stored there, forwarded
    to Redis with the events, and joined to the session by the central monitor."""
    import glob
    from pathlib import Path

    from conftest import FIXTURES

    r = redis_server()
    relay = DaemonProc(str(tmp_path / "relay"), relay_config(r)).start()
    central = DaemonProc(
        str(tmp_path / "central"), {"mode": "redis", "redis": {"host": "127.0.0.1", "port": r.port}}
    ).start()
    try:
        for f in sorted(glob.glob(str(FIXTURES / "otel" / "subagent" / "*.json"))):
            signal = f.rsplit("-", 1)[1].split(".")[0]
            req = urllib.request.Request(
                f"http://127.0.0.1:{relay.port}/v1/{signal}",
                data=Path(f).read_bytes(),
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert resp.status == 200

        def joined(d: DaemonProc) -> dict | None:
            roots = [s for s in d.sessions().values() if not s.get("parentSessionId")]
            kids = [s for s in d.sessions().values() if s.get("parentSessionId")]
            if len(roots) == 1 and len(kids) == 1 and roots[0].get("usage") and kids[0].get("usage"):
                return {"root": roots[0], "child": kids[0]}
            return None

        here = wait_for(lambda: joined(relay), what="the relay's own sessions")
        there = wait_for(lambda: joined(central), timeout=15, what="the central monitor's sessions")
        for k in ("root", "child"):
            assert there[k]["sessionId"] == here[k]["sessionId"]
            assert there[k]["usage"]["source"] == "otel"
            assert there[k]["usage"]["costUsd"] == here[k]["usage"]["costUsd"] > 0
            assert there[k]["otel"]["tools"] == here[k]["otel"]["tools"]
        assert there["root"]["otel"]["traces"].keys() == here["root"]["otel"]["traces"].keys()
    finally:
        central.kill9()
        relay.kill9()
