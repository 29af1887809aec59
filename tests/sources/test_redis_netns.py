"""The fleet across hosts on a network (issue 14): Redis, two monitors and three
machines, each a network namespace of its own, plugged into one switch (a bridge in a
namespace of its own too). Everything is real: redis-server, daemons started with
``start --foreground``, hook processes fed Claude Code payloads on stdin.

- ``m1`` and ``m2`` run the hook in Redis mode (each its own home and ``redis.machineId``);
- ``m3`` runs a relay daemon, its hook in local mode (Unix socket; the relay forwards);
- ``mon1`` and ``mon2`` are monitors in Redis mode, each on its own address.

Three sessions per machine (fixtures, interleaved as parallel sessions would be). Mid-run
m1's and m3's links are cut, one by pulling its cable at the switch (packets vanish),
the other by taking its ``eth0`` down (no route: connecting fails at once), then the
other way round. Meanwhile m1's hook waits ``hook.timeoutMs`` or fails, and spools; m3's
hooks are still acknowledged by its daemon, whose relay queue grows; m2 goes on. Once
both are back, the next hooks take m1's spool along and the relay sends its backlog.
Both monitors must then hold every event exactly once (one id each, the same id in
both, m3's the ids its own daemon stored), in the order each session sent them (in the
stored files, that is as they arrived, and in the API), and see the three machines
with their own streams.

Skipped, with the reason, where namespaces cannot be made (not root, no ``ip``, a
container without CAP_SYS_ADMIN, no veth or bridge driver) or redis-server is missing.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import pytest
from conftest import HOOK, HOOK_PYTHON, ROOT, DaemonProc, clean_env, load_fixture, wait_for
from netns import Fabric, Host, NetnsUnavailable, unavailable_reason
from redis_server import REDIS_SERVER, needs_redis
from test_redis import spool_count, total_events

from contextuate_trio.runtime.store import session_key

_WHY_NOT = unavailable_reason()
pytestmark = [needs_redis, pytest.mark.skipif(_WHY_NOT is not None, reason=f"network namespaces: {_WHY_NOT}")]

REDIS_PORT = 6379
STREAM = "contextuate:events:stream"
SESSIONS = ("session-with-subagent", "real-cli/tools", "real-cli/subagent")  # 25 + 12 + 13 events
MARK = "contextuate_netns_sent"  # added to each payload: which event this is, in the order sent
# Events each machine sends before the cut, and while it lasts. DURING is more than the
# 20 spooled events one hook run takes along (hook/spool.py): the runs after the outage
# must keep their own events behind the older ones still spooled (they once went ahead).
BEFORE, DURING = 20, 26
HOOK_TIMEOUT_MS = 300


class Sent(NamedTuple):
    """One hook run: the payload's marker (``m1#007``: machine, place in the order sent)."""

    marker: str
    stdin: bytes
    env: dict


def plan(machine: str) -> list[Sent]:
    """The machine's sessions (fresh ids), their events interleaved one by one."""
    sessions = []
    for name in SESSIONS:
        items = load_fixture(name)
        old = items[0]["stdin"]["session_id"]
        new = f"{machine}-{uuid.uuid4()}"
        sessions.append([json.loads(json.dumps(it).replace(old, new)) for it in items])
    out: list[Sent] = []
    for item in itertools.chain.from_iterable(itertools.zip_longest(*sessions)):
        if item is None:
            continue
        marker = f"{machine}#{len(out):03d}"
        env = {**item.get("env", {}), "CONTEXTUATE_MACHINE_ID": machine}
        out.append(Sent(marker, json.dumps({**item["stdin"], MARK: marker}).encode(), env))
    return out


def order_of(marker: str) -> int:
    return int(marker.split("#")[1])


class NsDaemon(DaemonProc):
    """A real daemon inside a host's namespace; its API (127.0.0.1 there) read from
    the host's own thread."""

    def __init__(self, host: Host, home: str, config: dict) -> None:
        super().__init__(home, config)
        self.host = host

    def start(self, wait: bool = True) -> NsDaemon:
        with open(self.log_path, "ab") as log:
            self.proc = self.host.popen(
                [sys.executable, "-m", "contextuate_trio", "start", "--foreground"],
                env=clean_env(self.home),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(ROOT),
            )
        if wait:
            self.wait_healthy()
        return self

    def get(self, path: str, timeout: float = 5.0, headers: dict | None = None):
        return self.host.get_json(self.port, path, timeout, headers)


class Machine:
    """A machine that runs Claude Code: its host, its home, what it sends."""

    def __init__(self, name: str, host: Host, home: str, config: dict | None = None) -> None:
        self.name, self.host, self.home = name, host, home
        if config is not None:
            os.makedirs(home, mode=0o700, exist_ok=True)
            with open(os.path.join(home, "monitor.config.json"), "w") as f:
                json.dump(config, f)
        self.plan = plan(name)

    def send(self, start: int, stop: int) -> None:
        for s in self.plan[start:stop]:
            res = self.host.run(
                [HOOK_PYTHON, "-I", "-S", HOOK],
                input=s.stdin,
                env=clean_env(self.home, **s.env),
                capture_output=True,
                timeout=15,
            )
            assert res.returncode == 0 and res.stdout == b"", (self.name, s.marker, res)


def _can_connect(addr: str, port: int) -> bool:
    try:
        with socket.create_connection((addr, port), timeout=0.3):
            return True
    except OSError:
        return False


class Net:
    """The hosts, and what runs on them; ``close`` stops it all and removes it."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="ct-nn-")  # short: socket paths must fit 108 bytes
        self.fabric: Fabric | None = None
        self.daemons: list[NsDaemon] = []
        self.redis_proc: subprocess.Popen | None = None
        try:
            self.fabric = Fabric()
            self.hosts = {n: self.fabric.add_host(n) for n in ("redis", "mon1", "mon2", "m1", "m2", "m3")}
        except NetnsUnavailable:
            self.close()
            raise

    def home(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def start_redis(self) -> str:
        host = self.hosts["redis"]
        d = self.home("redis")
        os.makedirs(d)
        self.redis_proc = host.popen(
            [REDIS_SERVER or "redis-server", "--bind", host.addr, "--port", str(REDIS_PORT), "--protected-mode", "no"]
            + ["--save", "", "--appendonly", "no", "--dir", d, "--logfile", os.path.join(d, "redis.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: host.call(_can_connect, host.addr, REDIS_PORT), timeout=10, what="redis-server on its host")
        return host.addr

    def daemon(self, host: str, config: dict) -> NsDaemon:
        d = NsDaemon(self.hosts[host], self.home(host), config)
        self.daemons.append(d)
        return d

    def close(self) -> None:
        for d in self.daemons:
            d.kill9()
        if self.redis_proc is not None:
            self.redis_proc.kill()
            self.redis_proc.wait()
        if self.fabric is not None:
            self.fabric.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def net():
    try:
        n = Net()
    except NetnsUnavailable as exc:
        pytest.skip(f"network namespaces: {exc}")
    try:
        yield n
    finally:
        n.close()


def stored(d: NsDaemon) -> dict[str, list[dict]]:
    """Each session's events as the API gives them (oldest first)."""
    return {sid: d.events(sid) for sid in d.sessions()}


def arrived(d: NsDaemon, session_id: str) -> list[dict]:
    """A session's events as its file holds them: in the order they arrived."""
    path = os.path.join(d.home, "data", "sessions", session_key(session_id), "events.jsonl")
    with open(path, "rb") as f:
        return [json.loads(line) for line in f if line.strip()]


def per_machine(d: NsDaemon) -> dict[str, int]:
    return {m["machineId"]: m["events"] for m in d.get("/api/machines")["machines"]}


def relay(d: NsDaemon) -> dict:
    return d.get("/api/status")["relay"]


class Fleet(NamedTuple):
    monitors: list[NsDaemon]
    relay_daemon: NsDaemon  # m3's
    machines: tuple[Machine, Machine, Machine]

    def send(self, start: int, stop: int) -> None:
        """Each machine sends its events ``start:stop``, all machines at once."""
        with ThreadPoolExecutor(len(self.machines)) as pool:
            list(pool.map(lambda m: m.send(start, stop), self.machines))


def start_fleet(net: Net) -> Fleet:
    addr = net.start_redis()
    redis_cfg = {"host": addr, "port": REDIS_PORT}
    monitors = [net.daemon(n, {"mode": "redis", "redis": redis_cfg}) for n in ("mon1", "mon2")]
    relay_cfg = {"retryMaxSeconds": 1, "degradedAfterSeconds": 2}
    m3d = net.daemon("m3", {"mode": "relay", "redis": {**redis_cfg, "machineId": "m3"}, "relay": relay_cfg})
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda d: d.start(), [*monitors, m3d]))
    for d in monitors:
        wait_for(lambda d=d: d.get("/api/health")["status"] == "ok", what=f"{d.host.name} connected to Redis")
    hook_cfg = {"timeoutMs": HOOK_TIMEOUT_MS}
    m1, m2 = (
        Machine(
            n, net.hosts[n], net.home(n), {"mode": "redis", "redis": {**redis_cfg, "machineId": n}, "hook": hook_cfg}
        )
        for n in ("m1", "m2")
    )
    m3 = Machine("m3", net.hosts["m3"], m3d.home)  # its hook reads the daemon's config: relay, so the socket
    return Fleet(monitors, m3d, (m1, m2, m3))


def wait_for_all(d: NsDaemon, sent: set[str]) -> None:
    try:
        wait_for(lambda: total_events(d) >= len(sent), timeout=30, what=f"{d.host.name}: all {len(sent)} events")
    except AssertionError:
        have = {e["data"].get(MARK) for e in d.all_events()}
        raise AssertionError(f"{d.host.name}: after 30 s, never got {sorted(sent - have)}") from None


def check_monitor(d: NsDaemon, machines: tuple[Machine, ...], sent: set[str]) -> dict[str, tuple[str, str]]:
    """Every event once, each session in the order sent (API and stored file), each
    machine with its own stream. -> marker: (event id, session id)."""
    where = d.host.name
    by_session = stored(d)
    events = [e for evs in by_session.values() for e in evs]
    assert sorted(e["data"].get(MARK) for e in events) == sorted(sent), f"{where}: not every event exactly once"
    ids = [e["id"] for e in events]
    assert len(set(ids)) == len(ids) == len(sent), f"{where}: an event id twice"
    for e in events:
        assert e["machineId"] == e["data"][MARK].split("#")[0], (where, e)
    for sid, evs in by_session.items():
        in_file = arrived(d, sid)
        for view, got in (("API", evs), ("stored file (arrival order)", in_file)):
            order = [order_of(e["data"][MARK]) for e in got]
            assert order == sorted(order), f"{where}: session {sid} out of order in the {view}: {order}"
        assert sorted(e["id"] for e in in_file) == sorted(e["id"] for e in evs), (where, sid)
    rows = {m["machineId"]: m for m in d.get("/api/machines")["machines"]}
    assert set(rows) == {m.name for m in machines}, rows
    for m in machines:
        row = rows[m.name]
        assert row["stream"] == f"{STREAM}:{{{m.name}}}" and row["events"] == len(m.plan), row
        assert row["missed"] == 0 and row["spoofed"] == 0, row
    wait_for(lambda: d.get("/api/health")["status"] == "ok", what=f"{where} healthy")
    return {e["data"][MARK]: (e["id"], e["sessionId"]) for e in events}


@pytest.mark.parametrize(
    ("m1_cut", "m3_cut"),
    [("switch", "host"), ("host", "switch")],
    ids=["m1-cable-pulled-m3-link-down", "m1-link-down-m3-cable-pulled"],
)
def test_fleet_across_hosts_link_cut_and_restored(net, m1_cut, m3_cut):
    """A cable pulled at the switch: packets vanish (m1's hook waits its timeout; m3's
    relay has a batch in flight that may reach Redis when the cable is back: found
    there, or sent again and dropped by the monitors). A link down at the host: its
    route goes, connecting fails at once."""
    fleet = start_fleet(net)
    monitors, m3d = fleet.monitors, fleet.relay_daemon
    m1, m2, m3 = fleet.machines
    sent = {s.marker for m in fleet.machines for s in m.plan}

    # Before the cut: everything goes through.
    fleet.send(0, BEFORE)
    for d in monitors:
        wait_for(lambda d=d: total_events(d) == 3 * BEFORE, what=f"{d.host.name}: the events sent before the cut")
    wait_for(lambda: relay(m3d)["backlog"] == 0, what="m3's relay forwarded everything")

    # The cut: m1's hooks spool, m3's hooks are stored by its daemon, whose relay waits.
    net.fabric.cut(m1.host, at=m1_cut)
    net.fabric.cut(m3.host, at=m3_cut)
    fleet.send(BEFORE, BEFORE + DURING)
    assert spool_count(m1.home) == DURING
    wait_for(
        lambda: m3d.get("/api/health")["status"] == "degraded" and relay(m3d)["backlog"] == DURING,
        timeout=20,
        what="m3's relay: Redis unreachable, the events stored meanwhile waiting",
    )
    assert relay(m3d)["state"] != "connected" and len(m3d.all_events()) == BEFORE + DURING
    meanwhile = {"m1": BEFORE, "m2": BEFORE + DURING, "m3": BEFORE}  # m2 still gets through
    for d in monitors:
        wait_for(lambda d=d: per_machine(d) == meanwhile, what=f"{d.host.name}: m2's events, not m1's or m3's")

    # Restored: the next hooks take m1's spool along; the relay sends its backlog.
    net.fabric.restore(m1.host, at=m1_cut)
    net.fabric.restore(m3.host, at=m3_cut)
    fleet.send(BEFORE + DURING, len(m1.plan))
    assert spool_count(m1.home) == 0 and spool_count(m2.home) == 0
    for d in monitors:
        wait_for_all(d, sent)
    wait_for(lambda: relay(m3d)["backlog"] == 0 and m3d.get("/api/health")["status"] == "ok", what="m3 forwarding")

    seen = [check_monitor(d, fleet.machines, sent) for d in monitors]
    # The same event is the same event everywhere: one id, one session, in both monitors,
    # and m3's ids are those its own daemon stored.
    assert seen[0] == seen[1]
    m3_own = {e["data"][MARK]: e["id"] for e in m3d.all_events()}
    assert m3_own == {k: v[0] for k, v in seen[0].items() if k.startswith("m3#")}
