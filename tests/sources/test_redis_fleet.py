"""The fleet through Redis, against real redis-server processes: one stream per
machine, machines found while running, identity by stream, exact counts of what a
monitor missed, checkpoints per stream, and the old single stream still read."""

from __future__ import annotations

import json
import os
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import run_hook, wait_for
from redis_server import needs_redis, redis_server  # noqa: F401 (fixture)
from test_redis import machine_home, monitor, spool_count, total_events  # noqa: F401 (fixture)

pytestmark = needs_redis

STREAM = "contextuate:events:stream"


def key(machine: str) -> str:
    return f"{STREAM}:{{{machine}}}"


def hook(home: str, machine: str, sid: str, i: int = 0):
    res = run_hook(
        home,
        {"session_id": sid, "hook_event_name": "UserPromptSubmit", "prompt": f"p{i}"},
        {"CONTEXTUATE_MACHINE_ID": machine},
    )
    assert res.returncode == 0 and res.stdout == b""
    return res


def complete(sid: str, machine: str | None, **extra) -> str:
    ev = {
        "id": str(uuid.uuid4()),
        "timestamp": int(time.time() * 1000),
        "sessionId": sid,
        "eventType": "tool_call",
        "hookType": "PreToolUse",
        "data": {"tool_name": "Bash"},
        **extra,
    }
    if machine is not None:
        ev["machineId"] = machine
    return json.dumps(ev)


def machines(d) -> dict:
    return {m["machineId"]: m for m in d.get("/api/machines")["machines"]}


def metrics(d) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{d.port}/metrics") as resp:
        return resp.read().decode()


def test_new_machine_found_while_running_and_identity_by_stream(monitor, redis_server):
    r = redis_server()
    d = monitor(r)
    wait_for(lambda: d.get("/api/health")["status"] == "ok", what="redis connected")
    a = machine_home({"host": "127.0.0.1", "port": r.port})
    hook(a, "box-a", "sa")
    wait_for(lambda: "sa" in d.sessions(), what="box-a's event")
    # A machine that only XADDs and SADDs (no PUBLISH): found by the registry alone.
    c = r.client()
    c.xadd(key("quiet-box"), {"data": complete("sq", "quiet-box")})
    c.sadd(f"{STREAM}:machines", "quiet-box")
    wait_for(lambda: "sq" in d.sessions(), timeout=10, what="a machine found without restart")
    assert d.sessions()["sq"]["machineId"] == "quiet-box"
    # Identity is the stream's: no machineId -> the stream's; another machine's -> refused.
    c.xadd(key("quiet-box"), {"data": complete("s-anon", None)})
    c.xadd(key("quiet-box"), {"data": complete("s-spoof", "box-a")})
    c.xadd(key("quiet-box"), {"data": complete("s-after", "quiet-box")})
    wait_for(lambda: "s-after" in d.sessions(), what="events after the spoofed one")
    s = d.sessions()
    assert s["s-anon"]["machineId"] == "quiet-box" and "s-spoof" not in s
    wait_for(lambda: machines(d)["quiet-box"]["spoofed"] == 1, what="spoofed counted per machine")
    assert "contextuate_redis_spoofed_total 1" in metrics(d)
    assert "claim to come from box-a" in d.log()
    # Its own name, but box-a's session: refused too; a sub-agent under it is linked
    # (a parent on another machine is allowed), as quiet-box's own.
    c.xadd(key("quiet-box"), {"data": complete("sa", "quiet-box")})
    c.xadd(key("quiet-box"), {"data": complete("s-child", "quiet-box", parentSessionId="sa")})
    wait_for(lambda: "s-child" in d.sessions(), what="events after the intruding one")
    s = d.sessions()
    assert s["sa"]["eventCount"] == 1 and s["sa"]["machineId"] == "box-a"
    assert s["s-child"]["parentSessionId"] == "sa" and s["s-child"]["machineId"] == "quiet-box"
    wait_for(lambda: machines(d)["quiet-box"]["spoofed"] == 2, what="the intrusion counted as spoofed")
    # Nor through the channel, which any machine may PUBLISH on: with no machine, or a made-up one.
    c.publish("contextuate:events", complete("sa", None))
    c.publish("contextuate:events", complete("sa", "ghost"))
    c.publish("contextuate:events", complete("s-after-channel", "ghost"))
    wait_for(lambda: "s-after-channel" in d.sessions(), what="the channel event after the intruding ones")
    assert d.sessions()["sa"]["eventCount"] == 1
    wait_for(lambda: machines(d)["box-a"]["spoofed"] == 2, what="channel intrusions counted on the owner")
    assert "box-a (its session sa)" in d.log()
    # The channel copy of a spoofed message is not taken either (box-a has its stream).
    # A machine that is registered but has no stream yet is still heard on the channel,
    # and the channel is read in order: once its event is stored, s-spoof-2 was seen.
    c.sadd(f"{STREAM}:machines", "reg-only")
    c.publish("contextuate:events", complete("s-spoof-2", "box-a"))
    c.publish("contextuate:events", complete("s-reg-only", "reg-only"))
    wait_for(lambda: "s-reg-only" in d.sessions(), what="the channel event after the spoofed one")
    assert "s-spoof-2" not in d.sessions()
    ignored = [x for x in metrics(d).splitlines() if x.startswith("contextuate_redis_channel_ignored_total ")]
    assert ignored and int(ignored[0].split()[1]) >= 1
    # The old single stream: its events keep their own machineId.
    c.xadd(STREAM, {"data": complete("s-legacy", "old-node-box")})
    wait_for(lambda: "s-legacy" in d.sessions(), what="legacy stream still read")
    assert d.sessions()["s-legacy"]["machineId"] == "old-node-box"
    m = machines(d)
    assert m["box-a"]["stream"] == key("box-a") and m["box-a"]["events"] == 1
    assert m["old-node-box"]["stream"] is None
    assert d.get("/api/health")["status"] == "ok"


def test_missed_events_counted_exactly(monitor, redis_server):
    r = redis_server()
    d = monitor(r)
    m = machine_home({"host": "127.0.0.1", "port": r.port, "streamMaxLen": 100})
    hook(m, "lossy", "s-first")
    wait_for(lambda: machines(d).get("lossy", {}).get("lag") == 0, timeout=10, what="its stream read")
    d.stop()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: hook(m, "lossy", "s-loss", i), range(500)))
    assert spool_count(m) == 0
    info = r.client().xinfo_stream(key("lossy"))
    held = info["length"]
    assert info["entries-added"] == 501 and 100 <= held < 500  # MAXLEN ~ trims whole nodes
    d.start()
    wait_for(lambda: total_events(d) == 1 + held, what="what is left stored")
    wait_for(lambda: machines(d)["lossy"]["missed"] == 500 - held, what="missed counted")
    row = machines(d)["lossy"]
    assert row["lag"] == 0 and row["events"] == 1 + held
    health = d.get("/api/health")
    assert health["status"] == "degraded"
    assert any("lossy" in x and f"{500 - held} events" in x for x in health["reasons"]), health
    assert f'contextuate_redis_missed_events_total{{machine="lossy"}} {500 - held}' in metrics(d)
    assert f"{500 - held} events from machine lossy were trimmed" in d.log()
    assert any("lossy" in x for x in d.get("/api/status")["reasons"])


def test_checkpoints_per_stream_across_a_restart_and_an_old_checkpoint(monitor, redis_server, home):
    r = redis_server()
    c = r.client()
    # An old monitor's checkpoint: a bare entry id for the single stream.
    first = c.xadd(STREAM, {"data": complete("old-1", "node-a")}).decode()
    c.xadd(STREAM, {"data": complete("old-2", "node-a")})
    data_dir = os.path.join(home, "data")
    os.makedirs(data_dir, exist_ok=True)
    with open(os.path.join(data_dir, "redis-checkpoints.json"), "w") as f:
        json.dump({f"redis://127.0.0.1:{r.port}/0#{STREAM}": first}, f)
    d = monitor(r, None)
    a = machine_home({"host": "127.0.0.1", "port": r.port})
    b = machine_home({"host": "127.0.0.1", "port": r.port})
    for i in range(3):
        hook(a, "ma", "s-a", i)
        hook(b, "mb", "s-b", i)
    wait_for(lambda: total_events(d) == 7, what="old-2 and both machines")
    assert "old-1" not in d.sessions()  # the old checkpoint was honoured
    wait_for(lambda: [machines(d).get(m, {}).get("lag") for m in ("ma", "mb")] == [0, 0], what="surveyed")
    d.stop()
    with open(os.path.join(data_dir, "redis-checkpoints.json")) as f:
        saved = json.load(f)
    base = f"redis://127.0.0.1:{r.port}/0#"
    assert saved[base + key("ma")]["pos"] == 3 and saved[base + key("mb")]["pos"] == 3
    assert saved[base + STREAM]["id"] != first
    hook(a, "ma", "s-a", 9)
    hook(b, "mb", "s-b2", 9)
    d.start()
    wait_for(lambda: "s-b2" in d.sessions() and total_events(d) == 9, what="only the new events")
    # Each stream is read in order: once a marker after its last entry is stored,
    # anything read again from before the checkpoint would have been counted.
    hook(a, "ma", "s-mark-a")
    hook(b, "mb", "s-mark-b")
    c.xadd(STREAM, {"data": complete("s-mark-l", "node-a")})
    wait_for(lambda: {"s-mark-a", "s-mark-b", "s-mark-l"} <= set(d.sessions()), what="the markers")
    st = d.get("/api/status")
    assert st["eventsStored"] == 5 and st["duplicates"] == 0
    assert d.get("/api/health")["status"] == "ok"


@pytest.mark.parametrize("db", [0, 3])
def test_hook_writes_its_own_stream_with_machine_id_from_config(redis_server, db):
    r = redis_server()
    m = machine_home({"host": "127.0.0.1", "port": r.port, "machineId": "cfg-box", "db": db})
    res = run_hook(
        m,
        {"session_id": "x", "hook_event_name": "Stop"},
        {"CONTEXTUATE_MACHINE_ID": "env-box", "CONTEXTUATE_DEBUG": "1"},
    )
    assert res.returncode == 0 and spool_count(m) == 0, res.stderr
    c = r.client(db=db)
    entries = c.xrange(key("cfg-box"))
    assert len(entries) == 1 and json.loads(entries[0][1][b"data"])["machineId"] == "cfg-box"
    assert c.smembers(f"{STREAM}:machines") == {b"cfg-box"}
    assert key("cfg-box").encode() in res.stderr


OLD_ACL = "~contextuate:* &contextuate:* +xadd +xread +publish +subscribe +ping +select +auth".split()


def test_an_old_acl_user_without_sadd_or_smembers(monitor, redis_server):
    """The ACL user the docs recommended before per-machine streams: the hook's XADD
    stores the events (a refused SADD is not a failure: nothing spooled, no copies),
    and a monitor using it still reads the legacy stream, saying what to grant."""
    r = redis_server("--user", "old", "on", ">pw", *OLD_ACL)
    creds = {"username": "old", "password": "pw"}
    m = machine_home({"host": "127.0.0.1", "port": r.port, "machineId": "old-acl-box", **creds})
    for i in range(4):
        res = run_hook(
            m,
            {"session_id": "s-old-acl", "hook_event_name": "UserPromptSubmit", "prompt": f"p{i}"},
            {"CONTEXTUATE_DEBUG": "1"},
        )
        assert res.returncode == 0 and res.stdout == b""
        assert b"refused SADD" in res.stderr and b"NOPERM" in res.stderr, res.stderr
        assert spool_count(m) == 0, res.stderr
    c = r.client()
    assert c.xlen(key("old-acl-box")) == 4
    assert not c.exists(f"{STREAM}:machines")
    # The monitor with that user: SMEMBERS (and XINFO) refused, the legacy stream read.
    c.xadd(STREAM, {"data": complete("s-legacy-old", "node-x")})
    d = monitor(r, creds)
    wait_for(lambda: "s-legacy-old" in d.sessions(), what="the legacy stream read without +smembers")
    reasons = " ".join(d.get("/api/health")["reasons"])
    assert "cannot list machines: grant +smembers" in reasons and "+xinfo" in reasons, reasons
    c.xadd(STREAM, {"data": complete("s-legacy-old-2", "node-x")})
    wait_for(lambda: "s-legacy-old-2" in d.sessions(), what="reading goes on")
    assert d.log().count("SMEMBERS") == 1  # logged once
    assert d.get("/api/health")["status"] == "degraded"


def test_registry_members_that_are_not_machine_names_are_ignored(monitor, redis_server):
    r = redis_server()
    c = r.client()
    c.sadd(f"{STREAM}:machines", "good-box", "../etc", "a b", "x" * 100)
    c.xadd(key("good-box"), {"data": complete("s-good", "good-box")})
    c.xadd(key("a b"), {"data": complete("s-bad", "a b")})
    d = monitor(r)
    wait_for(lambda: "s-good" in d.sessions(), what="the valid machine read")
    wait_for(lambda: "not a machine name" in d.log(), what="the invalid members logged")
    assert "s-bad" not in d.sessions() and set(machines(d)) == {"good-box"}


def test_a_new_monitor_does_not_count_what_was_trimmed_before_it_existed(monitor, redis_server):
    r = redis_server()
    c = r.client()
    for _ in range(300):
        c.xadd(key("busy"), {"data": complete("s-busy", "busy")}, maxlen=50, approximate=False)
    c.sadd(f"{STREAM}:machines", "busy")
    d = monitor(r)  # no checkpoint file at all
    wait_for(lambda: machines(d).get("busy", {}).get("lag") == 0, what="its stream read")
    assert machines(d)["busy"]["missed"] == 0 and total_events(d) == 50
    assert d.get("/api/health")["status"] == "ok", d.get("/api/health")
    assert "trimmed before this monitor first ran" in d.log()


def test_spooled_lines_travel_as_this_machine(redis_server):
    """Events spooled under another id (local mode, or the host name before
    redis.machineId was set) are this machine's: they go out under its id."""
    r = redis_server()
    m = machine_home({"host": "127.0.0.1", "port": 1})  # nothing there: spooled
    with open(os.path.join(m, "monitor.config.json")) as f:
        cfg = json.load(f)
    hook(m, "old-name", "s-spooled")
    assert spool_count(m) == 1
    cfg["redis"] = {"host": "127.0.0.1", "port": r.port, "machineId": "new-name"}
    with open(os.path.join(m, "monitor.config.json"), "w") as f:
        json.dump(cfg, f)
    hook(m, "old-name", "s-now")
    assert spool_count(m) == 0
    got = [json.loads(e[1][b"data"]) for e in r.client().xrange(key("new-name"))]
    assert sorted(e["payload"]["session_id"] for e in got) == ["s-now", "s-spooled"]
    assert {e["machineId"] for e in got} == {"new-name"}


def test_a_long_outage_keeps_the_order_of_a_session(redis_server):
    """More events spooled than one hook run takes along: a new event waits behind
    the older ones instead of reaching Redis before them."""
    r = redis_server(start=False)
    home = machine_home({"host": "127.0.0.1", "port": r.port}, timeout_ms=300)
    for i in range(25):
        hook(home, "long-out", "s-long", i)
    assert spool_count(home) == 25
    r.start()
    for i in range(25, 28):
        hook(home, "long-out", "s-long", i)
    assert spool_count(home) == 0
    entries = r.client().xrange(key("long-out"))
    assert [json.loads(f[b"data"])["payload"]["prompt"] for _i, f in entries] == [f"p{i}" for i in range(28)]
