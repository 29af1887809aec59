"""A real Redis Cluster on loopback for the tests: ``masters`` redis-server processes
with ``--cluster-enabled yes`` (and ``replicas`` replicas each), joined with
``redis-cli --cluster create``. A master can be killed (its replica is promoted after
``cluster-node-timeout``) and started again; everything is removed afterwards."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest
from redis_server import REDIS_SERVER, RedisServer

REDIS_CLI = shutil.which("redis-cli")
NODE_TIMEOUT_MS = 1000
needs_cluster = pytest.mark.skipif(
    REDIS_SERVER is None or REDIS_CLI is None,
    reason="redis-server/redis-cli are not installed (make test installs them)",
)


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and below 65536."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 55535:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise AssertionError("no free port pair for a cluster node")


class ClusterNode(RedisServer):
    def __init__(self, *extra: str) -> None:
        super().__init__(
            "--cluster-enabled",
            "yes",
            "--cluster-node-timeout",
            str(NODE_TIMEOUT_MS),
            "--cluster-config-file",
            "nodes.conf",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            *extra,
        )
        self.port = free_cluster_port()
        self.started = False  # once it ran, its port is its identity in the cluster

    def start(self) -> ClusterNode:
        """Started, or nothing left running: a redis-server that did not come up in time
        is killed (and a new node that lost its port to another process, between the
        port being picked and bound, is started again on another)."""
        for attempt in range(3):
            try:
                super().start()
                self.started = True
                return self
            except BaseException:
                log = self.log()
                self.kill()
                if self.started or attempt == 2 or "Address already in use" not in log:
                    raise
                self.port = free_cluster_port()
        raise AssertionError("unreachable")


class RedisCluster:
    def __init__(self, masters: int = 3, replicas: int = 0) -> None:
        self.nodes: list[ClusterNode] = []
        self.replicas = replicas
        try:
            for _ in range(masters * (1 + replicas)):
                self.nodes.append(ClusterNode())
        except BaseException:
            self.close()  # their directories
            raise

    @property
    def seeds(self) -> list[str]:
        return [f"127.0.0.1:{n.port}" for n in self.nodes]

    def start(self) -> RedisCluster:
        """Every node started and joined, the cluster ok; or, whatever failed (a node
        that does not start, ``--cluster create``, the wait, an interrupt), every
        redis-server of it stopped again before the error is raised."""
        try:
            for n in self.nodes:
                n.start()
            res = subprocess.run(
                [REDIS_CLI or "redis-cli", "--cluster", "create", *self.seeds]
                + ["--cluster-replicas", str(self.replicas), "--cluster-yes"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            if res.returncode != 0:
                raise AssertionError(f"redis-cli --cluster create failed: {(res.stdout + res.stderr)[-2000:]}")
            self.wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Every node's redis-server stopped (their directories kept, as ``kill``)."""
        errors = []
        for n in self.nodes:
            try:
                n.kill()
            except Exception as exc:  # the others are stopped all the same
                errors.append(exc)
        if errors:
            raise errors[0]

    def cli(self, node: ClusterNode, *args: str) -> str:
        out = subprocess.run(
            [REDIS_CLI or "redis-cli", "-p", str(node.port), *args], capture_output=True, text=True, timeout=10
        )
        return out.stdout

    def alive(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def wait_ok(self, timeout: float = 30) -> None:
        """Until every live node says cluster_state:ok and all slots are served."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            infos = [self.cli(n, "cluster", "info") for n in self.alive()]
            if infos and all("cluster_state:ok" in i and "cluster_slots_ok:16384" in i for i in infos):
                return
            time.sleep(0.1)
        raise AssertionError(f"cluster not ok: {infos}")

    def role(self, node: ClusterNode) -> str:
        for line in self.cli(node, "info", "replication").splitlines():
            if line.startswith("role:"):
                return line.split(":", 1)[1].strip()
        return "?"

    def master_of_slot(self, slot: int) -> ClusterNode:
        """The live node serving a slot now."""
        c = self.client()
        try:
            node = c.nodes_manager.get_node_from_slot(slot)
            port = int(node.port)
        finally:
            c.close()
        return next(n for n in self.nodes if n.port == port)

    def kill_master_of(self, slot: int, timeout: float = 30) -> ClusterNode:
        """Kill the master serving ``slot`` and wait until its replica serves it."""
        old = self.master_of_slot(slot)
        old.kill()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                taken = self.master_of_slot(slot) is not old
            except Exception:  # the slot map is in flux while the replica takes over
                taken = False
            if taken:
                self.wait_ok()
                return old
            time.sleep(0.1)
        raise AssertionError(f"no replica took over slot {slot}")

    def client(self):
        import redis

        return redis.RedisCluster(host="127.0.0.1", port=self.alive()[0].port)

    def replication(self, node: ClusterNode) -> dict[str, str]:
        out = self.cli(node, "info", "replication")
        return dict(line.strip().split(":", 1) for line in out.splitlines() if ":" in line)

    def wait_synced(self, timeout: float = 10) -> None:
        """Until every replica has all of its master's writes (replication is asynchronous)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            infos = {n.port: self.replication(n) for n in self.alive()}
            if all(
                i.get("role") != "slave"
                or i.get("slave_repl_offset") == infos.get(int(i.get("master_port", 0)), {}).get("master_repl_offset")
                for i in infos.values()
            ):
                return
            time.sleep(0.05)
        raise AssertionError("replicas did not catch up")

    def close(self) -> None:
        errors = []
        for n in self.nodes:
            try:
                n.close()
            except Exception as exc:  # the others are closed all the same
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture
def redis_cluster():
    made: list[RedisCluster] = []

    def make(masters: int = 3, replicas: int = 0) -> RedisCluster:
        c = RedisCluster(masters, replicas)
        made.append(c)  # closed even when it fails to start (start stops its nodes itself too)
        return c.start()

    yield make
    errors = []
    for c in made:
        try:
            c.close()
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]
