"""Hosts in Linux network namespaces, for tests that need machines on a network.

``Fabric`` makes one namespace per host and one for the switch (a Linux bridge), all
named ``ct-<random>-<host>`` so that parallel runs never meet, and joins each host to
the switch with a veth pair: ``eth0`` in the host, ``v-<host>`` on the bridge. Hosts get
``10.213.<random>.<n>/24``. Nothing is made or changed in the root namespace (the veth
pairs are created inside the switch's namespace). ``close`` kills whatever still runs
in the namespaces (by pid, ``ip netns pids``) and deletes them: the veth pairs and the
bridge go with them.

A host runs programs with ``ip netns exec`` (``Host.popen``/``Host.run``) and runs
Python code of the test inside its namespace with ``Host.call``: a thread of its own
that has entered the namespace (``setns(2)`` changes the network namespace of the
calling thread only), so a test can reach a daemon listening on 127.0.0.1 in that
host without starting a process per request.

Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN), ``ip`` and the veth and bridge drivers;
``Fabric`` raises ``NetnsUnavailable`` with the reason when it cannot have them.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

IP = shutil.which("ip") or "/usr/sbin/ip"
CLONE_NEWNET = 0x40000000
SWITCH = "sw"


class NetnsUnavailable(Exception):
    """This machine cannot give the test namespaces (not root, no ``ip``, no veth...)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([IP, *args], capture_output=True, text=True, timeout=15)
    if check and res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {res.stderr.strip() or res.returncode}")
    return res


def unavailable_reason() -> str | None:
    """Why this machine cannot run namespace tests at all, before trying (None: try)."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "needs root to create network namespaces (ip netns add)"
    if not os.path.exists(IP):
        return "the ip command (iproute2) is not installed"
    return None


def _enter(path: str) -> None:
    """Move the calling thread into the network namespace at ``path``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def get_json(port: int, path: str, timeout: float = 5.0, headers: dict | None = None) -> Any:
    """GET http://127.0.0.1:PORT/PATH as JSON (run it through ``Host.call``)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


class Host:
    """One machine: a network namespace with ``lo`` and ``eth0`` (on the switch)."""

    def __init__(self, fabric: Fabric, name: str, ns: str, addr: str | None) -> None:
        self.fabric = fabric
        self.name = name
        self.ns = ns
        self.addr = addr
        self.veth = f"v-{name}"  # its cable's end on the switch (in the switch's namespace)
        self._thread: ThreadPoolExecutor | None = None

    def argv(self, cmd: list[str]) -> list[str]:
        return [IP, "netns", "exec", self.ns, *cmd]

    def popen(self, cmd: list[str], **kw) -> subprocess.Popen:
        return subprocess.Popen(self.argv(cmd), **kw)

    def run(self, cmd: list[str], **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(cmd), **kw)

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 30.0, **kw: Any) -> Any:
        """``fn(*args, **kw)`` on a thread inside this host's namespace (sockets it
        opens are this host's)."""
        if self._thread is None:
            self._thread = ThreadPoolExecutor(
                1, thread_name_prefix=f"netns-{self.name}", initializer=_enter, initargs=(f"/run/netns/{self.ns}",)
            )
        return self._thread.submit(fn, *args, **kw).result(timeout)

    def get_json(self, port: int, path: str, timeout: float = 5.0, headers: dict | None = None) -> Any:
        return self.call(get_json, port, path, timeout, headers, timeout=timeout + 5)

    def close_thread(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=True, cancel_futures=True)
            self._thread = None


class Fabric:
    """A switch and the hosts plugged into it; ``close`` removes everything."""

    def __init__(self) -> None:
        why = unavailable_reason()
        if why:
            raise NetnsUnavailable(why)
        self.prefix = f"ct-{secrets.token_hex(3)}-"
        self.subnet = f"10.213.{secrets.randbelow(254) + 1}"
        self.hosts: dict[str, Host] = {}
        self._made: list[str] = []
        self.switch: Host | None = None
        try:
            self.switch = switch = self._namespace(SWITCH, None)
            _ip("-n", switch.ns, "link", "add", "br0", "type", "bridge")
            _ip("-n", switch.ns, "link", "set", "br0", "up")
            # What the tests do in a namespace: run a program there, and enter it from a thread.
            ran = switch.run(["true"], capture_output=True, text=True, timeout=15)
            if ran.returncode != 0:
                raise RuntimeError(f"ip netns exec: {ran.stderr.strip() or ran.returncode}")
            switch.call(lambda: None)
        except (RuntimeError, OSError) as exc:
            self.close()
            raise NetnsUnavailable(f"cannot create and use a network namespace with a bridge: {exc}") from exc

    def _namespace(self, name: str, addr: str | None) -> Host:
        ns = self.prefix + name
        _ip("netns", "add", ns)
        self._made.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        return Host(self, name, ns, addr)

    def add_host(self, name: str) -> Host:
        """A new host on the switch, ``10.213.x.(n+1)``, its link up."""
        addr = f"{self.subnet}.{len(self.hosts) + 2}"
        try:
            host = self._namespace(name, addr)
            assert self.switch is not None
            sw = self.switch.ns
            _ip("-n", sw, "link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.ns)
            _ip("-n", sw, "link", "set", host.veth, "master", "br0")
            _ip("-n", sw, "link", "set", host.veth, "up")
            _ip("-n", host.ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", host.ns, "link", "set", "eth0", "up")
        except (RuntimeError, OSError) as exc:
            raise NetnsUnavailable(f"cannot connect a namespace to the bridge with veth: {exc}") from exc
        self.hosts[name] = host
        return host

    # --- the cables ------------------------------------------------------------------------
    def cut(self, host: Host, at: str = "switch") -> None:
        """Pull the host's cable. ``at="switch"``: the bridge's end goes down; the host
        keeps its address and route but loses carrier, so its packets vanish: a connect
        hangs (until ARP gives up, ~3 s, then EHOSTUNREACH), and what a connection had
        sent is retransmitted once the cable is back. ``at="host"``: ``eth0`` goes down
        and its route with it: connecting fails at once (ENETUNREACH)."""
        self._set(host, at, "down")

    def restore(self, host: Host, at: str = "switch") -> None:
        self._set(host, at, "up")

    def _set(self, host: Host, at: str, state: str) -> None:
        assert self.switch is not None
        if at == "switch":
            _ip("-n", self.switch.ns, "link", "set", host.veth, state)
        elif at == "host":
            _ip("-n", host.ns, "link", "set", "eth0", state)
        else:
            raise ValueError(f"cut at 'switch' or 'host', not {at!r}")

    # --- teardown ----------------------------------------------------------------------------
    def close(self) -> None:
        """Kill what still runs in our namespaces (by pid), then delete them."""
        for h in [*self.hosts.values(), *([self.switch] if self.switch is not None else [])]:
            h.close_thread()
        by_ns = {ns: _pids(ns) for ns in self._made}
        for pids in by_ns.values():
            for pid in pids:
                _signal(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while any(_pids(ns) for ns in self._made) and time.monotonic() < deadline:
            time.sleep(0.05)
        for ns in reversed(self._made):
            _ip("netns", "del", ns, check=False)
        self._made.clear()

    def __enter__(self) -> Fabric:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pids(ns: str) -> list[int]:
    res = _ip("netns", "pids", ns, check=False)
    return [int(p) for p in res.stdout.split() if p.isdigit()]


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
