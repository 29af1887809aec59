"""``contextuate-trio fleet``: an ACL user per machine (checked against a real
redis-server's ACL), and the list of machines."""

from __future__ import annotations

import json
import os
import sys
import tempfile

import pytest
import redis
from conftest import DaemonProc, clean_env, run_hook, wait_for, write_config
from helpers import run_cli
from redis_cluster import needs_cluster, redis_cluster  # noqa: F401 (fixture)
from redis_server import needs_redis, redis_server  # noqa: F401 (fixture)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "sources"))

pytestmark = needs_redis

STREAM = "contextuate:events:stream"
ADMIN = {"username": "admin", "password": "adm1n"}


def spooled(home: str) -> int:
    d = os.path.join(home, "spool")
    return len([n for n in os.listdir(d) if n.endswith(".json")]) if os.path.isdir(d) else 0


def snippet(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("\n{") :])


def machine(cfg: dict) -> str:
    home = tempfile.mkdtemp(prefix="ct-m-")
    with open(os.path.join(home, "monitor.config.json"), "w") as f:
        json.dump(cfg, f)
    return home


def test_name_checked(home):
    res = run_cli("fleet", "add-machine", "bad name*", env=clean_env(home))
    assert res.returncode == 2 and "not a machine name" in res.stderr


def test_add_machine_user_writes_only_its_own_stream(redis_server, home):
    import redis

    r = redis_server("--user", "default", "off", "--user", "admin", "on", ">adm1n", "~*", "&*", "+@all")
    write_config(home, 0, 0, {"mode": "redis", "redis": {"host": "127.0.0.1", "port": r.port, **ADMIN}})
    env = clean_env(home)
    printed = run_cli("fleet", "add-machine", "laptop-a", env=env)
    assert printed.returncode == 0, printed.stderr
    acl = next(line for line in printed.stdout.splitlines() if line.startswith("ACL SETUSER"))
    assert acl.startswith("ACL SETUSER ct-laptop-a reset on >")
    assert "~contextuate:events:stream:{laptop-a} ~contextuate:events:stream:machines &contextuate:events -@all" in acl
    for cmd in ("+xadd", "+sadd", "+publish", "+ping", "+auth", "+hello", "+select"):
        assert cmd in acl.split()
    cfg = snippet(printed.stdout)
    assert cfg["redis"]["username"] == "ct-laptop-a" and cfg["redis"]["machineId"] == "laptop-a"
    assert cfg["redis"]["port"] == r.port and "adm1n" not in printed.stdout
    with pytest.raises(redis.AuthenticationError):  # printed only: not created
        r.client(username="ct-laptop-a", password=cfg["redis"]["password"]).ping()

    applied = run_cli("fleet", "add-machine", "laptop-a", "--apply", env=env)
    assert applied.returncode == 0, applied.stderr
    cfg = snippet(applied.stdout)
    a = machine(cfg)
    res = run_hook(a, {"session_id": "acl-a", "hook_event_name": "Stop"}, {"CONTEXTUATE_DEBUG": "1"})
    assert res.returncode == 0 and spooled(a) == 0, res.stderr
    admin = r.client(**ADMIN)
    assert admin.xlen(f"{STREAM}:{{laptop-a}}") == 1
    assert admin.smembers(f"{STREAM}:machines") == {b"laptop-a"}

    # The same credentials cannot write as another machine, nor read anything.
    as_a = r.client(username="ct-laptop-a", password=cfg["redis"]["password"])
    as_a.xadd(f"{STREAM}:{{laptop-a}}", {"data": "x"})
    for call in (
        lambda: as_a.xadd(f"{STREAM}:{{laptop-b}}", {"data": "x"}),
        lambda: as_a.xadd(STREAM, {"data": "x"}),
        lambda: as_a.xrange(f"{STREAM}:{{laptop-a}}"),
        lambda: as_a.delete(f"{STREAM}:{{laptop-a}}"),
        lambda: as_a.publish("other-channel", "x"),
        lambda: as_a.smembers(f"{STREAM}:machines"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            call()
    cfg_b = json.loads(json.dumps(cfg))
    cfg_b["redis"]["machineId"] = "laptop-b"
    b = machine(cfg_b)
    res = run_hook(b, {"session_id": "acl-b", "hook_event_name": "Stop"}, {"CONTEXTUATE_DEBUG": "1"})
    assert res.returncode == 0 and spooled(b) == 1 and b"NOPERM" in res.stderr
    assert not admin.exists(f"{STREAM}:{{laptop-b}}")
    # With db != 0 the hook SELECTs: allowed too.
    cfg_db = json.loads(json.dumps(cfg))
    cfg_db["redis"]["db"] = 2
    c = machine(cfg_db)
    assert run_hook(c, {"session_id": "acl-c", "hook_event_name": "Stop"}).returncode == 0 and spooled(c) == 0

    # fleet list: the machine, its events (the monitor runs), its credential.
    d = DaemonProc(home, {"mode": "redis", "redis": {"host": "127.0.0.1", "port": r.port, **ADMIN}}).start()
    try:
        wait_for(lambda: "acl-a" in d.sessions(), what="the machine's event")
        wait_for(lambda: [m for m in d.get("/api/machines")["machines"] if m["lag"] == 0], what="surveyed")
        listed = run_cli("fleet", "list", "--json", env=env)
        assert listed.returncode == 0, listed.stderr
        rows = {m["machineId"]: m for m in json.loads(listed.stdout)["machines"]}
        row = rows["laptop-a"]
        assert row["stream"] == f"{STREAM}:{{laptop-a}}" and row["credential"] == "ct-laptop-a (on)"
        assert row["events"] == 1 and row["lag"] == 0 and row["missed"] == 0 and row["lastSeen"]
        table = run_cli("fleet", "list", env=env)
        assert table.returncode == 0 and "laptop-a" in table.stdout and "ct-laptop-a (on)" in table.stdout
    finally:
        d.kill9()
    # Without the daemon: lag from the checkpoints it left.
    assert run_hook(a, {"session_id": "acl-a", "hook_event_name": "Stop"}).returncode == 0 and spooled(a) == 0
    rows = {m["machineId"]: m for m in json.loads(run_cli("fleet", "list", "--json", env=env).stdout)["machines"]}
    assert rows["laptop-a"]["lag"] == 1 and rows["laptop-a"]["events"] is None


def _flags(cluster, asked, port: int) -> list[str]:
    """The flags ``asked`` holds for the node on ``port`` (CLUSTER NODES)."""
    for line in cluster.cli(asked, "cluster", "nodes").splitlines():
        f = line.split()
        if len(f) > 2 and f[1].split("@")[0].endswith(f":{port}"):
            return f[2].split(",")
    return []


@needs_cluster
def test_add_machine_on_a_cluster_reports_every_node_that_failed(redis_cluster, home):
    """``--apply`` on a cluster with a node down (a replica killed: the cluster marks it
    failed) and a node that refuses ``ACL SETUSER``: each is named, the others get the
    user, the exit code is 1 and the message says how to finish; run again once they
    are back, every node has it."""
    c = redis_cluster(3, replicas=1)
    write_config(home, 0, 0, {"mode": "redis", "redis": {"nodes": c.seeds}})
    env = clean_env(home)
    replica = next(n for n in c.nodes if c.role(n) == "slave")
    refusing = next(n for n in c.nodes if c.role(n) == "master")
    replica.kill()
    wait_for(lambda: "fail" in _flags(c, refusing, replica.port), timeout=20, what="the replica marked failed")
    fixer = redis.Redis(host="127.0.0.1", port=refusing.port)
    fixer.execute_command("ACL", "SETUSER", "fixer", "on", ">fx", "~*", "&*", "+@all")  # to undo it later
    fixer.close()
    c.cli(refusing, "acl", "setuser", "default", "-acl|setuser")
    res = run_cli("fleet", "add-machine", "laptop-z", "--apply", env=env)
    assert res.returncode == 1, res.stderr
    assert f"NOT created on 127.0.0.1:{replica.port}: the cluster marks it failed" in res.stderr
    assert (
        f"NOT created on 127.0.0.1:{refusing.port}: ACL SETUSER failed" in res.stderr and "no permissions" in res.stderr
    )
    assert "2 of 6 nodes failed" in res.stderr and "fleet add-machine laptop-z --apply" in res.stderr
    for n in c.alive():
        has = "ct-laptop-z" in c.cli(n, "acl", "users")
        assert has == (n is not refusing), n.port
    # The nodes back: running it again creates the user everywhere (a new password).
    fixer = redis.Redis(host="127.0.0.1", port=refusing.port, username="fixer", password="fx")
    fixer.execute_command("ACL", "SETUSER", "default", "+acl|setuser")
    fixer.close()
    replica.start()
    wait_for(lambda: "fail" not in _flags(c, refusing, replica.port), timeout=30, what="the replica back")
    c.wait_ok()
    again = run_cli("fleet", "add-machine", "laptop-z", "--apply", env=env)
    assert again.returncode == 0, again.stderr
    assert "NOT created" not in again.stderr
    password = snippet(again.stdout)["redis"]["password"]
    for n in c.nodes:
        assert "ct-laptop-z" in c.cli(n, "acl", "users"), n.port
        r = redis.Redis(host="127.0.0.1", port=n.port, username="ct-laptop-z", password=password)
        assert r.ping()
        r.close()
