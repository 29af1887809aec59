"""The fleet through a real Redis Cluster (3 masters on loopback, replicas where a
test kills a master): monitors read every machine's stream from the node that holds
its slot, find machines while running, and lose nothing over a failover."""

from __future__ import annotations

import json
import os
import time
import uuid

import pytest
from conftest import DaemonProc, clean_env, run_hook, wait_for, write_config
from helpers import run_cli
from redis_cluster import needs_cluster, redis_cluster  # noqa: F401 (fixture)
from redis_server import redis_server  # noqa: F401 (fixture, for the monitor fixture)
from test_redis import monitor  # noqa: F401 (fixture)

pytestmark = needs_cluster

STREAM = "contextuate:events:stream"
CHANNEL = "contextuate:events"


def key(machine: str) -> str:
    return f"{STREAM}:{{{machine}}}"


def event(sid: str, machine: str, i: int) -> dict:
    return {
        "id": str(uuid.uuid4()),
        "timestamp": int(time.time() * 1000),
        "sessionId": sid,
        "machineId": machine,
        "eventType": "tool_call",
        "hookType": "PreToolUse",
        "data": {"tool_name": "Bash", "tool_input": {"command": f"echo {i}"}},
    }


def write(client, machine: str, evs: list[dict]) -> None:
    """What a hook or relay does: XADD to the machine's stream, PUBLISH, SADD the registry."""
    pipe = client.pipeline(transaction=False)
    for ev in evs:
        line = json.dumps(ev)
        pipe.xadd(key(machine), {"data": line})
        pipe.execute_command("PUBLISH", CHANNEL, line)  # .publish() is blocked in a cluster pipeline
    pipe.sadd(f"{STREAM}:machines", machine)
    pipe.execute()


def cluster_monitor(daemon, cluster, home: str | None = None) -> DaemonProc:
    cfg = {"mode": "redis", "redis": {"nodes": cluster.seeds}}
    if home is None:
        return daemon(cfg)
    return DaemonProc(home, cfg).start()


def ids(d: DaemonProc, sid: str) -> list[str]:
    return [e["id"] for e in d.get(f"/api/sessions/{sid}/events?limit=10000")["events"]]


def test_machines_on_every_master_read_in_order(daemon, redis_cluster):
    c = redis_cluster(3)
    client = c.client()
    d = cluster_monitor(daemon, c)
    wait_for(lambda: d.get("/api/health")["status"] == "ok", what="cluster connected")
    # Machines whose streams hash to every master.
    machines = [f"box-{i}" for i in range(9)]
    nodes = {c.master_of_slot(client.keyslot(key(m))).port for m in machines}
    assert len(nodes) == 3, "the test's machines should cover every master"
    sent: dict[str, list[str]] = {}
    for round_ in range(5):
        for m in machines:
            evs = [event(f"s-{m}", m, round_ * 10 + i) for i in range(10)]
            write(client, m, evs)
            sent.setdefault(f"s-{m}", []).extend(e["id"] for e in evs)
    wait_for(lambda: all(d.sessions().get(s, {}).get("eventCount") == 50 for s in sent), what="every event")
    for sid, want in sent.items():
        assert ids(d, sid) == want
        assert d.sessions()[sid]["machineId"] == sid[2:]
    got = {m["machineId"] for m in d.get("/api/machines")["machines"]}
    assert set(machines) <= got
    client.close()


def send_until_stored(client_of, machine: str, evs: list[dict], timeout: float = 30) -> None:
    """A producer that keeps what Redis did not confirm and sends it again (as the
    hook's spool and the relay's queue do): a copy is possible, a loss is not."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            write(client_of(), machine, evs)
            return
        except Exception:  # the slot's master is gone until its replica is promoted
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_two_monitors_and_a_relay_lose_nothing_over_a_failover(daemon, redis_cluster, tmp_path):
    c = redis_cluster(3, replicas=1)
    clients = [c.client()]

    def client_of():
        return clients[-1]

    monitors = [cluster_monitor(daemon, c), cluster_monitor(daemon, c, home=str(tmp_path / "mon2"))]
    relay = DaemonProc(
        str(tmp_path / "relay"),
        {"mode": "relay", "redis": {"nodes": c.seeds, "machineId": "relay-box"}, "relay": {"retryMaxSeconds": 0.5}},
    ).start()
    try:
        for d in monitors:
            wait_for(lambda d=d: d.get("/api/health")["status"] == "ok", what="cluster connected")
        machines = [f"box-{i}" for i in range(6)]
        victim = machines[0]
        sent: dict[str, list[str]] = {}

        def round_(n: int) -> None:
            for m in machines:
                evs = [event(f"s-{m}", m, n * 5 + i) for i in range(5)]
                send_until_stored(client_of, m, evs)
                sent.setdefault(f"s-{m}", []).extend(e["id"] for e in evs)
            res = run_hook(
                relay.home, {"session_id": "s-relay", "hook_event_name": "UserPromptSubmit", "prompt": f"p{n}"}
            )
            assert res.returncode == 0 and res.stdout == b""

        # Real hooks (Redis mode) too: one whose stream is on the master killed, one elsewhere.
        hooks = _HookMachines(c, clients[0], victim, tmp_path)
        hook_round = hooks.round

        for n in range(3):
            round_(n)
            hook_round("before")
        c.wait_synced()
        slot = clients[0].keyslot(key(victim))
        old = c.master_of_slot(slot)
        old.kill()
        # The outage: the master is gone, its replica not promoted yet. The hooks go on
        # (they spool what no master takes), and so does the relay's queue.
        promoted_early = []
        for _ in range(3):
            promoted_early.append(_promoted(c, slot, old))
            hook_round("outage")
            res = run_hook(relay.home, {"session_id": "s-relay", "hook_event_name": "UserPromptSubmit", "prompt": "o"})
            assert res.returncode == 0
        assert hooks.spooled(0) > 0 or all(promoted_early), "nothing written during the outage"
        assert not promoted_early[0], "the replica took over before the first hook ran"
        wait_for(lambda: _promoted(c, slot, old), timeout=30, what="the replica promoted")
        c.wait_ok()
        clients.append(c.client())  # a client that knows the new master
        for n in range(3, 6):
            round_(n)
            hook_round("after")
        hooks.flush()

        def complete(d: DaemonProc) -> bool:
            s = d.sessions()
            return (
                all(s.get(sid, {}).get("eventCount") == len(v) for sid, v in sent.items())
                and s.get("s-relay", {}).get("eventCount") == 9
                and all(s.get(f"s-{m}", {}).get("eventCount") == len(p) for m, p in hooks.prompted.items())
            )

        for d in monitors:
            wait_for(lambda d=d: complete(d), timeout=30, what="every event in both monitors")
            for sid, want in sent.items():
                assert ids(d, sid) == want, sid  # each once, in the order sent
            prompts = [e["data"].get("prompt") for e in d.get("/api/sessions/s-relay/events?limit=100")["events"]]
            assert prompts == [f"p{n}" for n in range(3)] + ["o"] * 3 + [f"p{n}" for n in range(3, 6)]
            for m, want in hooks.prompted.items():  # every hook's event once, in order (the spooled ones later)
                evs = d.get(f"/api/sessions/s-{m}/events?limit=1000")["events"]
                assert [e["data"].get("prompt") for e in evs] == want, m
                assert len({e["id"] for e in evs}) == len(want)
            assert d.sessions()["s-relay"]["machineId"] == "relay-box"
    finally:
        relay.kill9()
        monitors[1].kill9()
        for cl in clients:
            cl.close()


class _HookMachines:
    """Two machines running the real hook in Redis mode: one whose stream is on the
    master of ``victim``'s slot, one on another master."""

    def __init__(self, cluster, client, victim: str, tmp_path) -> None:
        victim_port = cluster.master_of_slot(client.keyslot(key(victim))).port
        names = [f"hook-{i}" for i in range(1000)]
        on = [m for m in names if cluster.master_of_slot(client.keyslot(key(m))).port == victim_port]
        off = [m for m in names if cluster.master_of_slot(client.keyslot(key(m))).port != victim_port]
        self.boxes = [on[0], off[0]]
        self.homes = {m: str(tmp_path / m) for m in self.boxes}
        for h in self.homes.values():
            write_config(h, 0, 0, {"mode": "redis", "redis": {"nodes": cluster.seeds}, "hook": {"timeoutMs": 500}})
        self.prompted: dict[str, list[str]] = {m: [] for m in self.boxes}

    def round(self, tag: str) -> None:
        for m, h in self.homes.items():
            p = f"{tag}-{len(self.prompted[m])}"
            res = run_hook(
                h,
                {"session_id": f"s-{m}", "hook_event_name": "UserPromptSubmit", "prompt": p},
                {"CONTEXTUATE_MACHINE_ID": m, "CONTEXTUATE_DEBUG": "1"},
            )
            assert res.returncode == 0 and res.stdout == b"", res
            self.prompted[m].append(p)

    def spooled(self, i: int) -> int:
        return spooled(self.homes[self.boxes[i]])

    def flush(self) -> None:
        """Runs until no spool is left (each run takes up to 20 spooled events along)."""
        for _ in range(20):
            if not any(spooled(h) for h in self.homes.values()):
                return
            self.round("flush")
        raise AssertionError("spooled events never delivered")


def spooled(home: str) -> int:
    d = os.path.join(home, "spool")
    return len([n for n in os.listdir(d) if n.endswith(".json")]) if os.path.isdir(d) else 0


def _promoted(cluster, slot: int, old) -> bool:
    try:
        return cluster.master_of_slot(slot) is not old
    except Exception:  # the map is in flux while the replica takes over
        return False


def test_fleet_user_on_every_node_writes_only_its_own_stream(redis_cluster, home):
    import redis

    c = redis_cluster(3, replicas=1)
    write_config(home, 0, 0, {"mode": "redis", "redis": {"nodes": c.seeds}})
    applied = run_cli("fleet", "add-machine", "laptop-a", "--apply", env=clean_env(home))
    assert applied.returncode == 0, applied.stderr
    assert "every node of the cluster" in applied.stdout
    cfg = json.loads(applied.stdout[applied.stdout.index("\n{") :])["redis"]
    assert cfg["nodes"] == c.seeds and cfg["machineId"] == "laptop-a"
    for node in c.nodes:  # replicas too: one of them may be promoted
        assert "+cluster|slots" in c.cli(node, "acl", "getuser", "ct-laptop-a")

    def as_a():
        return redis.RedisCluster(
            host="127.0.0.1", port=c.nodes[0].port, username=cfg["username"], password=cfg["password"]
        )

    a = as_a()
    a.xadd(key("laptop-a"), {"data": "x"})
    for call in (
        lambda: a.xadd(key("laptop-b"), {"data": "x"}),
        lambda: a.xrange(key("laptop-a")),
        lambda: a.publish("other-channel", "x"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            call()
    a.close()
    c.wait_synced()
    c.kill_master_of(c.client().keyslot(key("laptop-a")))
    a = as_a()  # the promoted replica knows the user
    a.xadd(key("laptop-a"), {"data": "y"})
    with pytest.raises(redis.exceptions.NoPermissionError):
        a.xadd(key("laptop-b"), {"data": "x"})
    a.close()
    admin = c.client()
    assert admin.xlen(key("laptop-a")) == 2
    admin.close()


def test_a_monitor_started_before_its_cluster_waits_for_it(daemon):
    """No seed answers (the cluster is not up yet, or all seeds are down): the monitor
    stays up, says so, and reads once the cluster is there."""
    from redis_cluster import RedisCluster

    from contextuate_trio.sources.redis import BACKOFF_MAX

    c = RedisCluster(3)
    try:
        d = cluster_monitor(daemon, c)
        wait_for(lambda: d.get("/api/health")["status"] != "ok", what="health says the cluster is unreachable")
        assert d.proc is not None and d.proc.poll() is None
        c.start()
        # Its retries back off to BACKOFF_MAX while the cluster starts (slow under load).
        wait_for(
            lambda: d.get("/api/health")["status"] == "ok",
            timeout=2 * BACKOFF_MAX + 10,
            what="connected once the cluster is up",
        )
        client = c.client()
        write(client, "late-box", [event("s-late", "late-box", 0)])
        wait_for(lambda: "s-late" in d.sessions(), what="the event")
        client.close()
    finally:
        c.close()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("why", ["create-fails", "node-fails"])
def test_a_cluster_that_fails_to_start_leaves_no_redis_server(why):
    """``RedisCluster.start`` failing (``--cluster create`` refusing two masters, or a
    node whose redis-server exits) stops every redis-server it had started."""
    from redis_cluster import RedisCluster

    c = RedisCluster(2 if why == "create-fails" else 3)
    if why == "node-fails":
        c.nodes[-1].extra.append("--no-such-option")  # this redis-server exits at once
    pids: list[int] = []
    real_start = type(c.nodes[0]).start

    def recording_start(node):
        try:
            return real_start(node)
        finally:
            if node.proc is not None:
                pids.append(node.proc.pid)

    try:
        for n in c.nodes:
            n.start = recording_start.__get__(n)  # type: ignore[method-assign]
        with pytest.raises(AssertionError):
            c.start()
        assert pids, "no node was started"
        assert [p for p in pids if _running(p)] == [], "redis-server processes left running"
        assert all(n.proc is None for n in c.nodes)
    finally:
        c.close()
