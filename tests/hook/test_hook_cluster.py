"""The hook in Redis mode against a real Redis Cluster (3 masters on loopback, a replica
each where a master is killed): the slot of a key as Redis computes it, each stream
written on the node that owns its slot, the slot map cached in the hook's home and
corrected by MOVED (kept through ASK), a cache that is corrupt or another cluster's,
a failover (spooled, then delivered once) and a node that hangs (bounded by
``hook.timeoutMs``). Real hook processes (``python3 -I -S hook_emit.py``), no mocks."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import stat
import subprocess
import tempfile
import time

import pytest
import redis
from conftest import HOOK, HOOK_PYTHON, clean_env, run_hook, wait_for
from redis_cluster import REDIS_CLI, ClusterNode, needs_cluster, redis_cluster  # noqa: F401 (fixture)
from redis_server import make_tls_files, redis_server  # noqa: F401 (fixture)

from contextuate_trio.hook.cluster import REGISTER_EVERY_S, SLOTS_NAME, key_slot
from contextuate_trio.hook.resp import redis_settings

pytestmark = needs_cluster

STREAM = "contextuate:events:stream"
REGISTRY = f"{STREAM}:machines"


def key(machine: str) -> str:
    return f"{STREAM}:{{{machine}}}"


@pytest.fixture
def machine_home():
    """``machine_home(redis_section, timeout_ms)`` -> a machine's home with a Redis-mode config."""
    made: list[str] = []

    def make(redis_cfg: dict, timeout_ms: int = 1000) -> str:
        home = tempfile.mkdtemp(prefix="ct-mc-")
        made.append(home)
        write_cfg(home, redis_cfg, timeout_ms)
        return home

    yield make
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


def write_cfg(home: str, redis_cfg: dict, timeout_ms: int = 1000) -> None:
    with open(os.path.join(home, "monitor.config.json"), "w") as f:
        json.dump({"mode": "redis", "redis": redis_cfg, "hook": {"timeoutMs": timeout_ms}}, f)


def hook(home: str, machine: str, i: int, **env: str) -> subprocess.CompletedProcess:
    res = run_hook(
        home,
        {"session_id": f"s-{machine}", "hook_event_name": "UserPromptSubmit", "prompt": f"p{i}"},
        {"CONTEXTUATE_MACHINE_ID": machine, "CONTEXTUATE_DEBUG": "1", **env},
    )
    assert res.returncode == 0 and res.stdout == b"", res
    return res


def spool_count(home: str) -> int:
    d = os.path.join(home, "spool")
    return len([n for n in os.listdir(d) if n.endswith(".json")]) if os.path.isdir(d) else 0


def node_client(node) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=node.port)


def masters(cluster) -> list:
    return [n for n in cluster.alive() if cluster.role(n) == "master"]


def prompts(cluster, machine: str) -> list[str]:
    """The prompts in the machine's stream, read from the node that owns its slot (a
    plain client: a MOVED would raise), in stream order."""
    owner = cluster.master_of_slot(key_slot(key(machine)))
    entries = node_client(owner).xrange(key(machine))
    return [json.loads(fields[b"data"])["payload"]["prompt"] for _, fields in entries]


def holders(cluster, machine: str) -> list[int]:
    """The masters holding any key in the stream's slot."""
    slot = key_slot(key(machine))
    return [n.port for n in masters(cluster) if node_client(n).execute_command("CLUSTER COUNTKEYSINSLOT", slot)]


def stat_count(node, section: str, name: str, field: str) -> int:
    """A counter of ``INFO errorstats`` / ``INFO commandstats`` (0 when absent)."""
    info = node_client(node).info(section)
    return int(info.get(name, {}).get(field, 0))


def total_stat(cluster, section: str, name: str, field: str) -> int:
    return sum(stat_count(n, section, name, field) for n in cluster.alive())


def machines_on_every_master(cluster, count: int = 3) -> list[str]:
    """Machine names whose streams are on ``count`` different masters."""
    seen: dict[int, str] = {}
    for i in range(1000):
        m = f"box-{i}"
        port = cluster.master_of_slot(key_slot(key(m))).port
        seen.setdefault(port, m)
        if len(seen) == count:
            return list(seen.values())
    raise AssertionError("no machine names cover every master")


def node_id(cluster, node) -> str:
    return cluster.cli(node, "cluster", "myid").strip()


def start_migration(cluster, slot: int, src, dst) -> None:
    """Slot ``slot`` from ``src`` to ``dst``, its keys moved; the slot left mid-migration
    (``src`` MIGRATING, ``dst`` IMPORTING): what a client hears then is ``-ASK``."""
    s, d = node_client(src), node_client(dst)
    d.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", node_id(cluster, src))
    s.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", node_id(cluster, dst))
    keys = s.execute_command("CLUSTER GETKEYSINSLOT", slot, 1000)
    if keys:
        s.execute_command("MIGRATE", "127.0.0.1", dst.port, "", 0, 5000, "KEYS", *keys)


def finish_migration(cluster, slot: int, dst) -> None:
    for n in masters(cluster):
        node_client(n).execute_command("CLUSTER SETSLOT", slot, "NODE", node_id(cluster, dst))
    wait_for(lambda: cluster.master_of_slot(slot) is dst, what="every node agrees on the slot's owner")


def cache_text(home: str) -> str:
    with open(os.path.join(home, SLOTS_NAME)) as f:
        return f.read()


def cached_owner(home: str, slot: int) -> int | None:
    """The port the cached map gives for ``slot`` (the file format is the hook's own)."""
    for line in cache_text(home).splitlines()[1:]:
        f = line.split()
        if f[0] != "registered" and int(f[0]) <= slot <= int(f[1]):
            return int(f[2].rpartition(":")[2])
    return None


# --- the slot function ----------------------------------------------------------------------


def test_key_slot_is_cluster_keyslot():
    node = ClusterNode().start()
    try:
        c = node_client(node)
        rnd = random.Random(14)
        keys: list = ["", "{}", "{}{x}", "a{}b", "{", "}", "}{", "{a", "a}", "{{a}}", "{a}{b}", "x{{y}}z"]
        keys += ["{a{b}c}", "{}a{b}", "a{b}}", "{{}}", "foo{bar}zap", "{user1000}.following", "é{ü}", "\x00{\x00}"]
        keys += [key(f"box-{i}") for i in range(40)] + [REGISTRY, STREAM, key("")]
        alphabet = "ab{}}{xyz:é"
        while len(keys) < 240:
            keys.append("".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 12))))
        keys += [bytes(rnd.randrange(256) for _ in range(rnd.randint(0, 16))) + b"{\xff}" for _ in range(20)]
        for k in keys:
            assert key_slot(k) == c.execute_command("CLUSTER KEYSLOT", k), k
    finally:
        node.close()


def test_settings_parse_cluster_and_nodes():
    assert redis_settings({"redis": {}})["cluster"] is False
    rs = redis_settings({"redis": {"cluster": True, "url": "rediss://u:p@h1:7001/0"}})
    assert rs["cluster"] and rs["nodes"] == [("h1", 7001)] and rs["tls"]
    rs = redis_settings({"redis": {"nodes": ["a:1", "[::1]:2", "::1:3"], "host": "ignored"}})
    assert rs["cluster"] and rs["nodes"] == [("a", 1), ("::1", 2), ("::1", 3)]
    with pytest.raises(ValueError):
        redis_settings({"redis": {"nodes": ["no-port"]}})


# --- delivery ---------------------------------------------------------------------------------


def test_three_machines_each_on_its_owner_with_the_map_cached(redis_cluster, machine_home):
    c = redis_cluster(3)
    boxes = machines_on_every_master(c)
    owners = {m: c.master_of_slot(key_slot(key(m))).port for m in boxes}
    assert len(set(owners.values())) == 3
    homes = {m: machine_home({"nodes": c.seeds, "db": 3 if m == boxes[0] else 0}) for m in boxes}
    # (the test's redis-py cluster clients ask for CLUSTER SLOTS too: counted apart)
    slots_asked = total_stat(c, "commandstats", "cmdstat_cluster|slots", "calls")
    moved = total_stat(c, "errorstats", "errorstat_MOVED", "count")
    for i in range(4):
        for m in boxes:
            res = hook(homes[m], m, i)
            assert spool_count(homes[m]) == 0, res.stderr
            assert f"added to {key(m)}".encode() in res.stderr
            if m == boxes[0]:
                assert b"redis.db 3 ignored" in res.stderr
    # The map is asked for once per machine (its first run, in the pipeline with its
    # events); then the cache is used: no more CLUSTER SLOTS, no MOVED after the first runs.
    assert total_stat(c, "commandstats", "cmdstat_cluster|slots", "calls") == slots_asked + 3
    assert total_stat(c, "errorstats", "errorstat_MOVED", "count") <= moved + 3
    for m in boxes:
        assert prompts(c, m) == ["p0", "p1", "p2", "p3"]  # every event once, in order
        assert holders(c, m) == [owners[m]]  # on its owner only
        assert cached_owner(homes[m], key_slot(key(m))) == owners[m]
        mode = os.stat(os.path.join(homes[m], SLOTS_NAME)).st_mode
        assert stat.S_IMODE(mode) == 0o600
    assert c.client().smembers(REGISTRY) == {m.encode() for m in boxes}


def test_registry_on_another_node_is_refreshed_every_few_minutes(redis_cluster, machine_home):
    c = redis_cluster(3)
    reg_port = c.master_of_slot(key_slot(REGISTRY)).port
    names = (f"r-{i}" for i in range(1000))
    far = next(m for m in names if c.master_of_slot(key_slot(key(m))).port != reg_port)
    near = next(m for m in names if c.master_of_slot(key_slot(key(m))).port == reg_port)
    homes = {m: machine_home({"nodes": c.seeds}) for m in (far, near)}
    client = c.client()
    for m in (far, near):
        hook(homes[m], m, 0)
    assert client.smembers(REGISTRY) == {far.encode(), near.encode()}
    client.delete(REGISTRY)  # lost (a flush, a failover that lost the write)
    for m in (far, near):
        hook(homes[m], m, 1)
    # On the stream's node the SADD rides along at every run; on another node it waits.
    assert client.smembers(REGISTRY) == {near.encode()}
    sadds = total_stat(c, "commandstats", "cmdstat_sadd", "calls")
    hook(homes[far], far, 2)
    assert total_stat(c, "commandstats", "cmdstat_sadd", "calls") == sadds  # no second round trip
    # Once the last registration is older than REGISTER_EVERY_S, the next run registers.
    path = os.path.join(homes[far], SLOTS_NAME)
    lines = cache_text(homes[far]).splitlines()
    [i] = [n for n, line in enumerate(lines) if line.startswith("registered ")]
    _, ts, whom = lines[i].split(" ")
    lines[i] = f"registered {float(ts) - REGISTER_EVERY_S - 1} {whom}"
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    hook(homes[far], far, 3)
    assert client.smembers(REGISTRY) == {far.encode(), near.encode()}
    assert prompts(c, far) == ["p0", "p1", "p2", "p3"]


def test_stale_map_follows_moved(redis_cluster, machine_home):
    c = redis_cluster(3)
    m = "mover"
    slot = key_slot(key(m))
    home = machine_home({"nodes": c.seeds})
    hook(home, m, 0)
    src = c.master_of_slot(slot)
    assert cached_owner(home, slot) == src.port
    dst = next(n for n in masters(c) if n is not src)
    start_migration(c, slot, src, dst)
    finish_migration(c, slot, dst)
    before = stat_count(src, "errorstats", "errorstat_MOVED", "count")
    res = hook(home, m, 1)
    assert spool_count(home) == 0, res.stderr
    assert stat_count(src, "errorstats", "errorstat_MOVED", "count") == before + 1  # the stale map was used
    assert cached_owner(home, slot) == dst.port  # and corrected
    hook(home, m, 2)
    assert stat_count(src, "errorstats", "errorstat_MOVED", "count") == before + 1
    assert prompts(c, m) == ["p0", "p1", "p2"] and holders(c, m) == [dst.port]


def test_slot_mid_migration_follows_ask_and_keeps_the_map(redis_cluster, machine_home):
    c = redis_cluster(3)
    m = "asker"
    slot = key_slot(key(m))
    home = machine_home({"nodes": c.seeds})
    hook(home, m, 0)
    src = c.master_of_slot(slot)
    dst = next(n for n in masters(c) if n is not src)
    start_migration(c, slot, src, dst)  # the stream is on dst already, the slot still src's
    cached = cache_text(home)
    slots_asked = total_stat(c, "commandstats", "cmdstat_cluster|slots", "calls")
    for i in (1, 2):
        res = hook(home, m, i)
        assert spool_count(home) == 0, res.stderr
        assert stat_count(src, "errorstats", "errorstat_ASK", "count") == i
        assert stat_count(dst, "commandstats", "cmdstat_asking", "calls") == i
    # ASK is for one command: the map is kept as it was, and not asked for again.
    assert cache_text(home) == cached and cached_owner(home, slot) == src.port
    assert total_stat(c, "commandstats", "cmdstat_cluster|slots", "calls") == slots_asked
    finish_migration(c, slot, dst)
    hook(home, m, 3)
    assert prompts(c, m) == ["p0", "p1", "p2", "p3"] and holders(c, m) == [dst.port]


def _blackhole():
    """A listener whose accept queue is full: a connection to it neither succeeds nor
    fails (the SYN is dropped), like a host that vanished from the network."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    filler = socket.create_connection(srv.getsockname())
    return srv, filler


@pytest.mark.parametrize("kind", ["garbage", "truncated", "foreign", "dead-node", "hung-node"])
def test_a_corrupt_or_foreign_cache_still_delivers(redis_cluster, redis_server, machine_home, kind):
    c = redis_cluster(3)
    m = "cached"
    home = machine_home({"nodes": c.seeds})
    hook(home, m, 0)
    good = cache_text(home)
    header = good.splitlines()[0]
    path = os.path.join(home, SLOTS_NAME)
    other = redis_server()  # a standalone Redis: whatever lands there is lost to the monitors
    held = []
    if kind == "garbage":
        data = b"\x00\xff{not a map}\n" * 50
    elif kind == "truncated":
        data = good.encode()[: len(header) + 12]
    elif kind == "foreign":  # another cluster's map: its seeds are not this config's
        data = f"contextuate-slots 1 127.0.0.1:{other.port}\n0 16383 127.0.0.1:{other.port}\n".encode()
    elif kind == "dead-node":  # this cluster's seeds, but every slot on a closed port
        from conftest import free_port

        data = f"{header}\n0 16383 127.0.0.1:{free_port()}\n".encode()
    else:  # every slot on a node that never completes a connection
        held = _blackhole()
        data = f"{header}\n0 16383 127.0.0.1:{held[0].getsockname()[1]}\n".encode()
    with open(path, "wb") as f:
        f.write(data)
    try:
        res = hook(home, m, 1)
    finally:
        for s in held:
            s.close()
    assert spool_count(home) == 0, res.stderr
    assert prompts(c, m) == ["p0", "p1"]
    assert other.client().dbsize() == 0
    assert cache_text(home).splitlines()[0] == header  # rewritten from this cluster
    assert cached_owner(home, key_slot(key(m))) == c.master_of_slot(key_slot(key(m))).port


def test_failover_spools_then_delivers_each_event_once(redis_cluster, machine_home):
    c = redis_cluster(3, replicas=1)
    m = "failing"
    slot = key_slot(key(m))
    home = machine_home({"nodes": c.seeds})
    for i in range(2):
        hook(home, m, i)
    assert spool_count(home) == 0
    c.wait_synced()
    old = c.master_of_slot(slot)
    old.kill()
    # Until the replica is promoted (cluster-node-timeout 1 s, then an election) the
    # slot has no master: the hooks spool.
    for i in range(2, 5):
        res = hook(home, m, i)
        assert spool_count(home) == i - 1, res.stderr
        assert b"spooled" in res.stderr
    wait_for(lambda: _promoted(c, slot, old), timeout=30, what="the replica promoted")
    c.wait_ok()
    res = hook(home, m, 5)
    assert spool_count(home) == 0, res.stderr
    assert b"with 3 spooled events" in res.stderr
    assert prompts(c, m) == ["p0", "p1", "p2", "p3", "p4", "p5"]  # the spooled ones first


def _promoted(cluster, slot: int, old) -> bool:
    try:
        return cluster.master_of_slot(slot) is not old
    except Exception:  # the map is in flux while the replica takes over
        return False


def test_a_hung_node_and_no_time_left_spools_within_the_timeout(redis_cluster, machine_home):
    c = redis_cluster(3)
    m = "hung"
    slot = key_slot(key(m))
    timeout_ms = 300
    home = machine_home({"nodes": c.seeds}, timeout_ms)
    hook(home, m, 0)
    owner = c.master_of_slot(slot)
    owner.pause()  # accepts connections (the kernel does), never answers
    try:
        t0 = time.monotonic()
        res = hook(home, m, 1)
        elapsed = time.monotonic() - t0
    finally:
        owner.resume()
    print(f"hung node, timeoutMs {timeout_ms}: the hook took {elapsed * 1000:.0f} ms")
    assert spool_count(home) == 1, res.stderr
    assert elapsed < timeout_ms / 1000 + 0.25, elapsed
    c.wait_ok()
    res = hook(home, m, 2)
    assert spool_count(home) == 0, res.stderr
    # The hung node ran the XADD it had read once it woke: a reply lost, so the spooled
    # copy is there too, with the same id (the monitors store it once).
    entries = node_client(c.master_of_slot(slot)).xrange(key(m))
    events = [json.loads(fields[b"data"]) for _, fields in entries]
    assert [e["payload"]["prompt"] for e in events] in (["p0", "p1", "p2"], ["p0", "p1", "p1", "p2"])
    assert len({e["id"] for e in events}) == 3


# --- TLS --------------------------------------------------------------------------------------


def _tls_cluster(tls: dict, nodes: list) -> list:
    """Three TLS nodes joined, appended to ``nodes`` as they are made (the caller
    closes them, whatever fails here)."""
    for _ in range(3):
        n = ClusterNode("--tls-cluster", "yes", "--tls-replication", "yes")
        n.tls = tls
        nodes.append(n)
        n.start()
    tls_cli = [REDIS_CLI or "redis-cli", "--tls", "--cacert", tls["ca"]]
    seeds = [f"127.0.0.1:{n.port}" for n in nodes]
    subprocess.run([*tls_cli, "--cluster", "create", *seeds, "--cluster-yes"], check=True, capture_output=True)

    def ok(n) -> bool:
        out = subprocess.run([*tls_cli, "-p", str(n.port), "cluster", "info"], capture_output=True, text=True)
        return "cluster_state:ok" in out.stdout

    for n in nodes:
        wait_for(lambda n=n: ok(n), timeout=30, what=f"TLS cluster node {n.port} ok")
    return nodes


def test_tls_per_node(machine_home):
    tls_dir = tempfile.mkdtemp(prefix="ct-tls-")
    nodes: list = []
    try:
        tls = make_tls_files(tls_dir)
        _tls_cluster(tls, nodes)
        client = redis.RedisCluster(host="127.0.0.1", port=nodes[0].port, ssl=True, ssl_ca_certs=tls["ca"])
        boxes = [f"tls-{i}" for i in range(12)]
        owners = {client.nodes_manager.get_node_from_slot(key_slot(key(m))).port for m in boxes}
        assert len(owners) == 3
        # One seed by URL (rediss://): every other node is reached over TLS too.
        home = machine_home({"cluster": True, "url": f"rediss://127.0.0.1:{nodes[0].port}", "tlsCaFile": tls["ca"]})
        for m in boxes:
            res = hook(home, m, 0)
            assert f"added to {key(m)}".encode() in res.stderr, res.stderr
        assert spool_count(home) == 0
        for m in boxes:
            [(_, fields)] = client.xrange(key(m))
            assert json.loads(fields[b"data"])["machineId"] == m
        # A certificate the hook cannot verify: spooled, nothing sent in clear.
        write_cfg(home, {"nodes": [f"127.0.0.1:{nodes[0].port}"], "tls": True})
        res = run_hook(
            home,
            {"session_id": "x", "hook_event_name": "Stop"},
            {"CONTEXTUATE_MACHINE_ID": "tls-0", "CONTEXTUATE_DEBUG": "1"},
        )
        assert spool_count(home) == 1 and b"CERTIFICATE_VERIFY_FAILED" in res.stderr, res.stderr
        client.close()
    finally:
        for n in nodes:
            n.close()
        shutil.rmtree(tls_dir, ignore_errors=True)


def test_cluster_mode_imports_nothing_new(redis_cluster, machine_home):
    c = redis_cluster(3)
    home = machine_home({"nodes": c.seeds})
    hook(home, "light", 0)  # the map cached
    r = subprocess.run(
        [HOOK_PYTHON, "-I", "-S", "-X", "importtime", HOOK],
        input=json.dumps({"session_id": "s", "hook_event_name": "UserPromptSubmit", "prompt": "p"}).encode(),
        capture_output=True,
        env=clean_env(home, CONTEXTUATE_MACHINE_ID="light"),
    )
    imported = {
        line.split("|")[-1].strip()
        for line in r.stderr.decode().splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert {"contextuate_trio.hook.resp", "contextuate_trio.hook.cluster"} <= imported
    for heavy in ("encodings.idna", "re", "json", "socket", "os", "typing", "ssl", "bisect", "binascii"):
        assert heavy not in imported, f"the hook imports {heavy}"


def test_a_monitor_reads_what_the_hooks_wrote(redis_cluster, machine_home, daemon):
    """The monitor's side (``sources.redis`` through redis-py's cluster client) finds
    the machines in the registry the hooks wrote and reads each stream from its node."""
    c = redis_cluster(3)
    boxes = machines_on_every_master(c)
    d = daemon({"mode": "redis", "redis": {"nodes": c.seeds}})
    wait_for(lambda: d.get("/api/health")["status"] == "ok", what="the monitor connected to the cluster")
    homes = {m: machine_home({"nodes": c.seeds}) for m in boxes}
    for i in range(3):
        for m in boxes:
            hook(homes[m], m, i)
    wait_for(lambda: all(d.sessions().get(f"s-{m}", {}).get("eventCount") == 3 for m in boxes), what="every event")
    for m in boxes:
        assert d.sessions()[f"s-{m}"]["machineId"] == m
        assert [e["data"]["prompt"] for e in d.events(f"s-{m}")] == ["p0", "p1", "p2"]


@pytest.mark.parametrize("slots_allowed", [True, False])
def test_the_fleet_acl_user_of_a_cluster(redis_cluster, machine_home, slots_allowed):
    """The ACL user ``fleet add-machine`` makes for a cluster (on every node). Without
    ``+cluster|slots`` (a user made before cluster support) the hook learns where its
    two keys are from the MOVED replies (or from the node that took them) alone, and
    caches that: the map is asked for on the first run only."""
    from contextuate_trio.cli.fleet import acl_rules
    from contextuate_trio.config import RedisConfig

    c = redis_cluster(3)
    first = c.nodes[0].port  # the first seed: a machine there gets no MOVED at all
    names = [f"acl-{i}" for i in range(1000)]
    here = next(m for m in names if c.master_of_slot(key_slot(key(m))).port == first)
    there = next(m for m in names if c.master_of_slot(key_slot(key(m))).port != first)
    for m in (here, there):
        rules = [r for r in acl_rules(RedisConfig(nodes=c.seeds), m, "pw") if slots_allowed or r != "+cluster|slots"]
        for n in c.nodes:
            node_client(n).execute_command("ACL", "SETUSER", f"ct-{m}", *rules)
        home = machine_home({"nodes": c.seeds, "username": f"ct-{m}", "password": "pw"})
        for i in range(3):
            res = hook(home, m, i)
            assert spool_count(home) == 0, res.stderr
            assert (b"grant +cluster|slots" in res.stderr) == (not slots_allowed and i == 0), res.stderr
            assert b"refused" not in res.stderr, res.stderr
        owner = c.master_of_slot(key_slot(key(m)))
        assert cached_owner(home, key_slot(key(m))) == owner.port
        assert cached_owner(home, key_slot(REGISTRY)) == c.master_of_slot(key_slot(REGISTRY)).port
        assert prompts(c, m) == ["p0", "p1", "p2"]
        # A slot mid-migration: ASKING is allowed too.
        dst = next(n for n in masters(c) if n is not owner)
        start_migration(c, key_slot(key(m)), owner, dst)
        res = hook(home, m, 3)
        assert spool_count(home) == 0, res.stderr
        finish_migration(c, key_slot(key(m)), dst)
        assert prompts(c, m) == ["p0", "p1", "p2", "p3"]
    assert c.client().smembers(REGISTRY) == {here.encode(), there.encode()}


# --- hung and missing nodes: the event keeps its budget ---------------------------------------


def _mute_listener() -> socket.socket:
    """A node that hangs: it accepts connections (the kernel completes them into its
    backlog) and never answers a byte. On a port below 55535 (the tests' range)."""
    for _ in range(200):
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        if srv.getsockname()[1] < 55535:
            srv.listen(64)
            return srv
        srv.close()
    raise AssertionError("no free port below 55535")


def _addr(sock: socket.socket) -> str:
    return f"127.0.0.1:{sock.getsockname()[1]}"


def _cache_with(home: str, slot: int, addr: str | None = None, registered_at: float | None = None) -> None:
    """Rewrite the hook's cached map: ``slot`` alone on ``addr`` (the rest as it was),
    and/or the last registration moved to ``registered_at``."""
    lines = cache_text(home).splitlines()
    out = [lines[0]]
    for line in lines[1:]:
        f = line.split(" ")
        if f[0] == "registered":
            if registered_at is not None:
                f[1] = repr(registered_at)
            out.append(" ".join(f))
            continue
        first, last = int(f[0]), int(f[1])
        if addr is None or not first <= slot <= last:
            out.append(line)
            continue
        nodes = " ".join(f[2:])
        out += [f"{a} {b} {nodes}" for a, b in ((first, slot - 1), (slot + 1, last)) if a <= b]
        out.append(f"{slot} {slot} {addr}")
    with open(os.path.join(home, SLOTS_NAME), "w") as f:
        f.write("\n".join(out) + "\n")


def _registered_at(home: str) -> float:
    [line] = [x for x in cache_text(home).splitlines() if x.startswith("registered ")]
    return float(line.split(" ")[1])


def _timed_hook(home: str, machine: str, i: int) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    res = hook(home, machine, i)
    return res, time.monotonic() - t0


def _far_machine(cluster, prefix: str) -> str:
    """A machine whose stream is not on the registry's node (so registering is a second
    connection)."""
    reg_port = cluster.master_of_slot(key_slot(REGISTRY)).port
    return next(
        m for m in (f"{prefix}-{i}" for i in range(1000)) if cluster.master_of_slot(key_slot(key(m))).port != reg_port
    )


def test_a_hung_registry_node_costs_only_a_small_share_of_the_budget(redis_cluster, machine_home):
    """The registry's node hangs when this machine is due to register: the events are
    stored on their own node at once, the registration gets a small share of what is
    left (not the whole ``hook.timeoutMs``), and is tried again on the next run."""
    c = redis_cluster(3)
    m = _far_machine(c, "reg")
    timeout_ms = 1500
    home = machine_home({"nodes": c.seeds}, timeout_ms)
    hook(home, m, 0)
    client = c.client()
    client.delete(REGISTRY)
    mute = _mute_listener()
    try:
        _cache_with(home, key_slot(REGISTRY), _addr(mute), registered_at=time.time() - REGISTER_EVERY_S - 1)
        stale = _registered_at(home)
        res, elapsed = _timed_hook(home, m, 1)
        print(f"hung registry node, timeoutMs {timeout_ms}: the hook took {elapsed * 1000:.0f} ms")
        assert spool_count(home) == 0, res.stderr
        assert f"added to {key(m)}".encode() in res.stderr
        assert b"registry" in res.stderr  # said, in the debug output
        assert elapsed < 0.4 * timeout_ms / 1000 + 0.15, elapsed  # not the whole budget
        assert _registered_at(home) <= stale  # not registered: still due
        assert client.smembers(REGISTRY) == set()
    finally:
        mute.close()
    # The node is gone now (its port refuses): the next run registers through the others.
    res, elapsed = _timed_hook(home, m, 2)
    assert spool_count(home) == 0, res.stderr
    assert client.smembers(REGISTRY) == {m.encode()}, res.stderr
    assert _registered_at(home) > stale
    assert cached_owner(home, key_slot(REGISTRY)) == c.master_of_slot(key_slot(REGISTRY)).port
    assert prompts(c, m) == ["p0", "p1", "p2"]
    client.close()


def test_registration_is_skipped_when_the_budget_is_short(redis_cluster, machine_home):
    """Little time left once the events are stored: no registration (not even a
    connection). It is owed, though: the next run with the time registers, even when
    the last registration was recent (here the map changed: a MOVED)."""
    c = redis_cluster(3)
    m = _far_machine(c, "short")
    home = machine_home({"nodes": c.seeds})
    hook(home, m, 0)
    client = c.client()
    client.delete(REGISTRY)
    owner = c.master_of_slot(key_slot(key(m))).port
    reg_owner = c.master_of_slot(key_slot(REGISTRY)).port
    [third] = [n.port for n in masters(c) if n.port not in (owner, reg_owner)]
    # A stale map (MOVED ahead: the map changes, so registering is due) and a recent
    # registration; a budget so small that what is left after the XADDs is under the floor.
    _cache_with(home, key_slot(key(m)), f"127.0.0.1:{third}", registered_at=time.time())
    write_cfg(home, {"nodes": c.seeds}, 60)
    sadds = total_stat(c, "commandstats", "cmdstat_sadd", "calls")
    for i in range(1, 4):
        res = run_hook(
            home,
            {"session_id": f"s-{m}", "hook_event_name": "UserPromptSubmit", "prompt": f"p{i}"},
            {"CONTEXTUATE_MACHINE_ID": m, "CONTEXTUATE_DEBUG": "1"},
        )
        assert res.returncode == 0
    # (a run may spool on a loaded machine; none registered)
    assert total_stat(c, "commandstats", "cmdstat_sadd", "calls") == sadds, res.stderr
    assert client.smembers(REGISTRY) == set(), res.stderr
    assert cached_owner(home, key_slot(key(m))) == owner
    write_cfg(home, {"nodes": c.seeds}, 1000)
    res = hook(home, m, 4)
    assert spool_count(home) == 0, res.stderr
    assert client.smembers(REGISTRY) == {m.encode()}, res.stderr
    assert sorted(prompts(c, m)) == [f"p{i}" for i in range(5)]
    hook(home, m, 5)  # registered: not again for REGISTER_EVERY_S
    assert total_stat(c, "commandstats", "cmdstat_sadd", "calls") == sadds + 1
    client.close()


def test_a_hung_seed_without_a_map_still_delivers(redis_cluster, machine_home):
    """The first seed hangs and there is no cached map: the hook does not wait on it
    for its whole budget, but asks the next seed in time."""
    c = redis_cluster(3)
    m = "seeded"
    mute = _mute_listener()
    timeout_ms = 1000
    try:
        home = machine_home({"nodes": [_addr(mute), *c.seeds]}, timeout_ms)
        res, elapsed = _timed_hook(home, m, 0)
        print(f"hung first seed, timeoutMs {timeout_ms}: the hook took {elapsed * 1000:.0f} ms")
        assert spool_count(home) == 0, res.stderr
        assert elapsed < timeout_ms / 1000 + 0.25, elapsed
        # With the map cached, the next run goes straight to the stream's node.
        res, elapsed = _timed_hook(home, m, 1)
        assert spool_count(home) == 0, res.stderr
        assert elapsed < 0.4, elapsed
    finally:
        mute.close()
    assert prompts(c, m) == ["p0", "p1"]
    assert c.client().smembers(REGISTRY) == {m.encode()}


@pytest.mark.parametrize("how", ["killed", "hung"])
def test_the_only_seed_down_with_the_map_cached(redis_cluster, machine_home, how):
    """One seed in ``redis.nodes``, and it is down (killed, its replica promoted) or
    hangs: the cached map knows the other nodes, so machines on every master still
    deliver, and register when due, within the budget."""
    c = redis_cluster(3, replicas=1 if how == "killed" else 0)
    boxes = machines_on_every_master(c)
    seed_node = c.master_of_slot(key_slot(key(boxes[0])))  # the first machine's stream is on the seed
    mute = _mute_listener() if how == "hung" else None
    seed = _addr(mute) if mute else f"127.0.0.1:{seed_node.port}"
    timeout_ms = 1500
    homes = {m: machine_home({"nodes": [seed]}, timeout_ms) for m in boxes}
    try:
        for m in boxes:
            if mute:  # a map cached from the hung seed when it still answered
                real = machine_home({"nodes": c.seeds})
                hook(real, m, 0)
                header = f"contextuate-slots 1 {seed}"
                body = cache_text(real).splitlines()[1:]
                with open(os.path.join(homes[m], SLOTS_NAME), "w") as f:
                    f.write("\n".join([header, *body]) + "\n")
                client = c.client()
                client.delete(key(m))
                client.close()
                hook(homes[m], m, 0)
            else:
                hook(homes[m], m, 0)
            assert spool_count(homes[m]) == 0
        if how == "killed":
            c.wait_synced()
            c.kill_master_of(key_slot(key(boxes[0])))
        client = c.client()
        client.delete(REGISTRY)
        for m in boxes:
            _cache_with(homes[m], 0, registered_at=time.time() - REGISTER_EVERY_S - 1)
            res, elapsed = _timed_hook(homes[m], m, 1)
            assert spool_count(homes[m]) == 0, res.stderr
            assert f"added to {key(m)}".encode() in res.stderr
            assert elapsed < timeout_ms / 1000, elapsed
        assert client.smembers(REGISTRY) == {m.encode() for m in boxes}
        for m in boxes:
            assert prompts(c, m) == ["p0", "p1"]
        client.close()
    finally:
        if mute:
            mute.close()
