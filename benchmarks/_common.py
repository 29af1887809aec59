"""Shared helpers for the benchmarks: interpreters, a daemon under test, statistics.

Every benchmark script imports this module (``benchmarks/`` is on ``sys.path`` when a
script is run directly, which is how ``run_all.py`` and ``make bench`` run them).
Run the scripts with the project's virtualenv interpreter (``.venv/bin/python``); the
hook itself is run with the *real* interpreter, the way Claude Code runs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
HOOK = os.path.join(REPO, "hook_emit.py")
FIXTURES = os.path.join(REPO, "tests", "fixtures")
RESULTS = os.path.join(HERE, "results")

# BENCH_QUICK=1: smaller samples, same cases (what `make bench` runs in ~2 minutes).
QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")


def knob(name: str, quick: int, full: int) -> int:
    """An integer size: $BENCH_<NAME> if set, else the quick or full default."""
    raw = os.environ.get("BENCH_" + name.upper())
    if raw:
        return int(raw)
    return quick if QUICK else full


def real_python() -> str:
    """The interpreter the hook is measured on: $BENCH_PYTHON, else the real binary
    behind this virtualenv (what ``hooks install`` writes into the hook's command)."""
    return os.environ.get("BENCH_PYTHON") or os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def daemon_python() -> str:
    """The interpreter that runs the daemon: the one that can import the package."""
    return sys.executable


def check_env() -> None:
    try:
        import contextuate_trio  # noqa: F401
    except ImportError:
        sys.exit(
            "run the benchmarks with the project's virtualenv: .venv/bin/python "
            "benchmarks/<script>.py (or `make bench`)"
        )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- statistics -----------------------------------------------------------------------
def pct(values, p: float) -> float:
    """Percentile by linear interpolation (numpy's default), on a copy."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary(values) -> dict:
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "p95": pct(values, 95),
        "p99": pct(values, 99),
        "min": min(values) if values else None,
        "max": max(values) if values else None,
    }


def verdict(value: float | None, target: float, higher_is_better: bool = False) -> str:
    if value is None:
        return "n/a"
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "MISSED"


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a live process (from /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


# --- events ---------------------------------------------------------------------------
def fixture_payloads(hook_name: str | None = None) -> list[dict]:
    """Claude Code payloads (the hook's stdin) from tests/fixtures/*.jsonl."""
    out = []
    for name in sorted(os.listdir(FIXTURES)):
        if not name.endswith(".jsonl"):
            continue
        with open(os.path.join(FIXTURES, name), encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                stdin = json.loads(line).get("stdin")
                if isinstance(stdin, dict) and (hook_name is None or stdin.get("hook_event_name") == hook_name):
                    out.append(stdin)
    return out


def pre_tool_use_payload() -> dict:
    """A realistic PreToolUse payload: a Bash call from the fixtures if there is one."""
    calls = fixture_payloads("PreToolUse")
    bash = [p for p in calls if p.get("tool_name") == "Bash"]
    return (bash or calls)[0]


def complete_event(session_id: str, payload: dict, ts: int | None = None, **extra) -> dict:
    """A complete event in the contract's shape, as a non-hook producer sends it."""
    ev = {
        "id": str(uuid.uuid4()),
        "timestamp": ts if ts is not None else int(time.time() * 1000),
        "sessionId": session_id,
        "machineId": "bench-host",
        "workingDirectory": payload.get("cwd"),
        "eventType": "tool_call",
        "hookType": "PreToolUse",
        "toolName": payload.get("tool_name"),
        "toolUseId": payload.get("tool_use_id"),
        "data": dict(payload, session_id=session_id),
    }
    ev.update(extra)
    return ev


# --- a daemon under test ------------------------------------------------------------------
class Daemon:
    """A real daemon (``python -m contextuate_trio start --foreground``) in a temp home.

    Use as a context manager: it is always stopped (SIGTERM, then SIGKILL) and its
    home removed, whatever happens. ``argv_prefix`` replaces the interpreter command,
    e.g. to run it under a profiler.
    """

    def __init__(
        self,
        home: str | None = None,
        *,
        persistence: bool = True,
        argv: list[str] | None = None,
        keep_home: bool = False,
        extra_config: dict | None = None,
    ) -> None:
        self._own_home = home is None
        self.home = home or tempfile.mkdtemp(prefix="ctx-bench-")
        self.keep_home = keep_home
        self.port = free_port()
        self.ws_port = free_port()
        cfg = {
            "server": {"port": self.port, "wsPort": self.ws_port},
            "persistence": {"enabled": persistence, "retentionDays": None},
        }
        for k, v in (extra_config or {}).items():
            cfg[k] = v
        os.makedirs(self.home, mode=0o700, exist_ok=True)
        with open(os.path.join(self.home, "monitor.config.json"), "w") as f:
            json.dump(cfg, f)
        self.argv = argv or [daemon_python(), "-m", "contextuate_trio", "start", "--foreground"]
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(self.home, "bench-daemon.log")
        self.start_to_healthy: float | None = None

    @property
    def socket_path(self) -> str:
        return os.path.join(self.home, "monitor.sock")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def env(self) -> dict:
        env = dict(os.environ)
        env["CONTEXTUATE_HOME"] = self.home
        env.pop("CONTEXTUATE_CONFIG", None)
        env.pop("CONTEXTUATE_DEBUG", None)
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        return env

    def start(self, timeout: float = 60.0) -> Daemon:
        log = open(self.log_path, "ab")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            self.argv, env=self.env(), cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
        log.close()
        self._wait_healthy(t0, timeout)
        return self

    def _wait_healthy(self, t0: float, timeout: float) -> None:
        import http.client

        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", "/api/health")
                r = c.getresponse()
                body = r.read()
                c.close()
                if r.status == 200 and json.loads(body).get("status") in ("ok", "degraded"):
                    if os.path.exists(self.socket_path):
                        self.start_to_healthy = time.perf_counter() - t0
                        return
            except OSError:
                pass
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"the daemon was not healthy within {timeout}s:\n{self.log_tail()}")
            time.sleep(0.005)

    def get_json(self, path: str, timeout: float = 30) -> dict:
        import http.client

        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return json.loads(r.read())
        finally:
            c.close()

    def events_stored(self) -> int:
        return int(self.get_json("/api/status")["eventsStored"])

    def wait_stored(self, n: int, timeout: float = 300.0, poll: float = 0.05) -> float:
        """Wait until the daemon has stored ``n`` events; returns perf_counter() then."""
        t0 = time.perf_counter()
        while True:
            if self.events_stored() >= n:
                return time.perf_counter()
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon died:\n{self.log_tail()}")
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"only {self.events_stored()}/{n} events stored after {timeout}s")
            time.sleep(poll)

    def log_tail(self, n: int = 30) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-n:]).decode("utf-8", "replace")
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        p, self.proc = self.proc, None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        return p.returncode

    def cleanup(self) -> None:
        self.stop()
        if self._own_home and not self.keep_home:
            shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> Daemon:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc) -> None:
        self.cleanup()


@contextlib.contextmanager
def temp_dir(prefix: str = "ctx-bench-") -> Iterator[str]:
    d = tempfile.mkdtemp(prefix=prefix)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def processes() -> Iterator[list]:
    """A list to put Popen objects in; every one still running is killed on exit."""
    procs: list = []
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass


# --- reporting ----------------------------------------------------------------------------
def row(bench: str, metric: str, value: str, target: str = "", status: str = "", prev: str = "") -> dict:
    """One table row; ``prev``: the figure before (shown in a "before" column, which
    the table has only when some row fills it)."""
    r = {"bench": bench, "metric": metric, "value": value, "target": target, "status": status}
    if prev:
        r["prev"] = prev
    return r


def format_table(rows: list[dict]) -> str:
    heads = ["benchmark", "metric", "result", "target", ""]
    keys = ["bench", "metric", "value", "target", "status"]
    if any(r.get("prev") for r in rows):
        heads.insert(3, "before")
        keys.insert(3, "prev")
    widths = [max(len(h), *(len(str(r.get(k, ""))) for r in rows)) for h, k in zip(heads, keys, strict=False)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(heads, widths, strict=False)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    out = [line, sep]
    for r in rows:
        out.append("| " + " | ".join(str(r.get(k, "")).ljust(w) for k, w in zip(keys, widths, strict=False)) + " |")
    return "\n".join(out)


def ms(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x * 1000:.{digits}f} ms"


def write_json(name: str, data: dict) -> str:
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, name)
    with open(path, "w") as f:
        json.dump(data, f, indent=1, default=str)
    return path


def standalone(run) -> None:
    """``main`` of a benchmark script: run it, print its rows as a table, save JSON."""
    check_env()
    result = run()
    print(format_table(result["rows"]))
    path = write_json(result["name"] + ".json", result)
    print(f"\nresults: {path}")


@contextlib.contextmanager
def redis_server() -> Iterator[int | None]:
    """A throw-away redis-server on a free loopback port (its port), or None when
    redis-server is not installed. Killed on exit."""
    exe = shutil.which("redis-server")
    if exe is None:
        yield None
        return
    port = free_port()
    with temp_dir("ctx-bench-redis-") as d:
        p = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", d],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(200):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                    break
                except OSError:
                    time.sleep(0.02)
            yield port
        finally:
            p.kill()
            p.wait()
