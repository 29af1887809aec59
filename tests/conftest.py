"""Shared test helpers: real hook processes, a real daemon process, free ports."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
HOOK = str(ROOT / "hook_emit.py")
# The interpreter Claude Code would run: the real one, not a venv or shim wrapper.
HOOK_PYTHON = os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_fixture(name: str) -> list[dict]:
    with open(FIXTURES / f"{name}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_expect(name: str) -> dict:
    with open(FIXTURES / f"{name}.expect.json", encoding="utf-8") as f:
        return json.load(f)


FIXTURE_NAMES = sorted(p.name[: -len(".jsonl")] for p in FIXTURES.glob("*.jsonl"))


def clean_env(home: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTEXTUATE_")}
    env["CONTEXTUATE_HOME"] = home
    env.update(extra)
    return env


def run_hook(
    home: str, stdin, env_extra: dict | None = None, timeout: float = 10.0, **popen
) -> subprocess.CompletedProcess:
    """Run the real hook the way Claude Code does; ``stdin`` is a dict, str or bytes."""
    if isinstance(stdin, dict):
        data = json.dumps(stdin).encode()
    elif isinstance(stdin, str):
        data = stdin.encode()
    else:
        data = stdin
    env = clean_env(home, **(env_extra or {}))
    return subprocess.run(
        [HOOK_PYTHON, "-I", "-S", HOOK], input=data, env=env, capture_output=True, timeout=timeout, **popen
    )


def replay_fixture(home: str, name: str, env_extra: dict | None = None) -> None:
    for item in load_fixture(name):
        r = run_hook(home, item["stdin"], {**item.get("env", {}), **(env_extra or {})})
        assert r.returncode == 0 and r.stdout == b"", r


def write_config(home: str, port: int, ws_port: int, config: dict | None) -> str:
    """The home's config: these ports, with ``config``'s sections merged in."""
    cfg: dict = {"server": {"port": port, "wsPort": ws_port}}
    for key, value in (config or {}).items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    os.makedirs(home, mode=0o700, exist_ok=True)
    path = os.path.join(home, "monitor.config.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    return path


class DaemonProc:
    """A real daemon process (``python -m contextuate_trio start --foreground``)."""

    def __init__(self, home: str, config: dict | None = None, env: dict | None = None) -> None:
        self.home = home
        self.env = env or {}  # more environment for the process
        self.port = free_port()
        self.ws_port = free_port()
        self.config = config
        self.config_path = write_config(home, self.port, self.ws_port, config)
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(home, "test-daemon.log")

    @property
    def socket_path(self) -> str:
        return os.path.join(self.home, "monitor.sock")

    def start(self, wait: bool = True) -> DaemonProc:
        """Start it; with ``wait``, until healthy. A port another process took between
        ``free_port`` and the daemon's bind is taken again with new ports (twice)."""
        for attempt in range(3):
            self._spawn()
            if not wait:
                return self
            try:
                self.wait_healthy()
                return self
            except AssertionError:
                if attempt == 2 or "already in use" not in self.log() or self.proc is None or self.proc.poll() is None:
                    raise
                self.port, self.ws_port = free_port(), free_port()
                self.config_path = write_config(self.home, self.port, self.ws_port, self.config)
        return self

    def _spawn(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "contextuate_trio", "start", "--foreground"],
            env=clean_env(self.home, **self.env),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(ROOT),
        )
        log.close()

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
            try:
                if self.get("/api/health", timeout=0.5)["status"] in ("ok", "degraded"):
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"daemon not healthy in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    def read_token(self) -> str | None:
        """A named token of this daemon's config that may read (None: it has none):
        what ``get`` sends unless told otherwise (``server.token`` is never sent
        unasked: tests of it check the refusals)."""
        server = (self.config or {}).get("server") or {}
        return next((t["token"] for t in server.get("tokens") or [] if "read" in t.get("scopes", [])), None)

    def get(self, path: str, timeout: float = 5.0, headers: dict | None = None):
        if headers is None and self.read_token():
            headers = {"Authorization": f"Bearer {self.read_token()}"}
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers=headers or {})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())

    def sessions(self) -> dict:
        return {s["sessionId"]: s for s in self.get("/api/sessions")["sessions"]}

    def events(self, session_id: str, limit: int = 10000) -> list[dict]:
        from urllib.parse import quote

        return self.get(f"/api/sessions/{quote(session_id, safe='')}/events?limit={limit}")["events"]

    def all_events(self) -> list[dict]:
        out = []
        for sid in self.sessions():
            out.extend(self.events(sid))
        return out

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"daemon did not stop within {timeout}s:\n{self.log()}") from None
        self.proc = None
        return code

    def kill9(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.05, what: str = "condition"):
    """Poll a condition that lives in another process (no event to wait on)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


@pytest.fixture
def home():
    # Short paths: a Unix socket path must fit in 108 bytes.
    d = tempfile.mkdtemp(prefix="ct-")
    os.chmod(d, 0o700)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def daemon(home):
    procs: list[DaemonProc] = []

    def make(config: dict | None = None, start: bool = True, env: dict | None = None) -> DaemonProc:
        d = DaemonProc(home, config, env)
        procs.append(d)
        if start:
            d.start()
        return d

    yield make
    for d in procs:
        if d.proc is not None:
            d.kill9()


# --- an in-process daemon, for tests that drive it from Trio ------------------------------
class LiveDaemon:
    """A real ``Daemon`` running in the test's own Trio run (its nursery)."""

    def __init__(
        self, home: str, config: dict | None = None, port: int | None = None, ws_port: int | None = None
    ) -> None:
        from contextuate_trio import config as config_mod
        from contextuate_trio.daemon.daemon import Daemon

        self.home = home
        self.port = port or free_port()
        self.ws_port = ws_port or free_port()
        write_config(home, self.port, self.ws_port, config)
        conf, _ = config_mod.load({"CONTEXTUATE_HOME": home})
        self.daemon = Daemon(conf)
        self.done = None

    @property
    def broker(self):
        return self.daemon.broker

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, nursery) -> LiveDaemon:
        import trio

        self.done = trio.Event()

        async def run(task_status):
            try:
                await self.daemon.run(task_status=task_status)
            finally:
                self.done.set()

        await nursery.start(run)
        return self

    async def stop(self) -> None:
        if self.done is not None and not self.done.is_set():
            self.daemon.stop()
            await self.done.wait()

    async def submit(self, obj: dict):
        """One complete event through the real pipeline; returns once it is stored."""
        from contextuate_trio.core import events
        from contextuate_trio.runtime.clock import SYSTEM_MINT

        d = await self.broker.submit(events.from_object(obj, source="socket", mint=SYSTEM_MINT), wait=True)
        assert d.ok
        return d


@pytest.fixture
async def live_daemon(nursery, home):
    """``await live_daemon(config=None, **tweaks)`` -> a started LiveDaemon; ``tweaks``
    are set on ``daemon.ws`` (e.g. queue_size) before it starts."""
    made: list[LiveDaemon] = []

    async def make(config: dict | None = None, home_dir: str | None = None, **ws_tweaks) -> LiveDaemon:
        d = LiveDaemon(home_dir or home, config)
        for k, v in ws_tweaks.items():
            setattr(d.daemon.ws, k, v)
        made.append(d)
        return await d.start(nursery)

    yield make
    for d in made:
        await d.stop()
