"""The harness for the end-to-end tests: the real Claude Code CLI, run against the fake
Anthropic API (fake_api.py), wired with our own ``contextuate-trio hooks install``
into a real daemon (``DaemonProc``).

A ``ClaudeRun`` owns one scenario's world, each under its own temp root:

- ``ct/``    the daemon's home (config, socket, store);
- ``home/``  the HOME Claude Code sees (``~/.claude/settings.json`` by ``hooks install``);
- ``proj/``  the working directory (CLAUDE.md, ``.claude/commands``, ``.claude/agents``);
- ``tmp/``   TMPDIR and CLAUDE_CODE_TMPDIR.

Nothing reaches the network: the API is the fake on 127.0.0.1, every proxy points at
a closed port, and Claude Code's non-essential traffic is off.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from conftest import ROOT, DaemonProc, clean_env, wait_for
from e2e.fake_api import FakeAnthropic, Script

CLAUDE_CODE_VERSION = "2.1.332"
CACHE_DIR = Path(os.environ.get("CONTEXTUATE_CLAUDE_CACHE") or Path.home() / ".cache/contextuate-trio/claude-code")
_ARCH = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower(), "x64")
DEFAULT_BIN = CACHE_DIR / f"node_modules/@anthropic-ai/claude-code-linux-{_ARCH}/claude"
API_KEY = "sk-ant-api03-e2e-fake-key-0123456789abcdefghijklmnop"

# Every hook event Claude Code 2.1.332 knows, but WorktreeCreate (a hook there replaces
# git's worktree creation: wiring it would change what the CLI does).
ALL_EVENTS = (
    "PreToolUse PostToolUse PostToolUseFailure PostToolBatch Notification UserPromptSubmit "
    "UserPromptExpansion SessionStart SessionEnd Stop StopFailure SubagentStart SubagentStop "
    "PreCompact PostCompact PreModelSwitch PostModelSwitch PermissionRequest PermissionDenied "
    "Setup TeammateIdle TaskCreated TaskCompleted Elicitation ElicitationResult ConfigChange "
    "WorktreeRemove InstructionsLoaded CwdChanged FileChanged DirectoryAdded MessageDisplay "
    "PreSkillShellCommand"
).split()
MATCHER_EVENTS = ("PreToolUse", "PostToolUse", "PostToolUseFailure", "PermissionRequest", "PermissionDenied")


def claude_bin() -> str | None:
    """The native Claude Code binary: $CONTEXTUATE_CLAUDE_BIN, else the one `make
    test-deps` installs; None when neither is there."""
    cand = os.environ.get("CONTEXTUATE_CLAUDE_BIN") or str(DEFAULT_BIN)
    return cand if os.path.isfile(cand) and os.access(cand, os.X_OK) else None


def skip_reason() -> str | None:
    b = claude_bin()
    if b is None:
        return (
            f"Claude Code {CLAUDE_CODE_VERSION} not installed (no {os.environ.get('CONTEXTUATE_CLAUDE_BIN') or DEFAULT_BIN}); "
            "`make test-deps` installs it with npm"
        )
    try:
        out = subprocess.run([b, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{b} does not run: {exc}"
    if out.returncode != 0:
        return f"{b} --version failed: {out.stderr.strip()[:200]}"
    return None


def user_message(text: str) -> str:
    """One line of ``--input-format stream-json``."""
    return json.dumps({"type": "user", "message": {"role": "user", "content": text}}) + "\n"


class ClaudeRun:
    """One scenario: its dirs, daemon, fake API and the Claude Code processes it runs."""

    def __init__(
        self,
        scripts: dict[str, Script] | None = None,
        *,
        all_events: bool = False,
        settings: dict | None = None,
        hostname: str = "e2e-host",
        capture_dir: str | None = None,
        install_args: tuple[str, ...] = (),
        config: dict | None = None,
    ) -> None:
        self.bin = claude_bin()
        assert self.bin, skip_reason()
        # Short: the daemon's Unix socket path must fit in 108 bytes.
        self.root = tempfile.mkdtemp(prefix="ctcc-")
        self.ct = self._dir("ct")
        self.home = self._dir("home")
        self.proj = self._dir("proj")
        self.tmp = self._dir("tmp")
        self.hostname = hostname
        # ``config``: the daemon's config sections (``decisions``, ``server.tokens``...);
        # ``hooks install`` reads the same file.
        self.daemon = DaemonProc(self.ct, config or {})
        self.api = FakeAnthropic(scripts)
        self.all_events = all_events
        self.settings_extra = settings or {}
        self.capture_dir = capture_dir
        self.install_args = install_args  # more ``hooks install`` flags (``--otel``)
        self.procs: list[subprocess.Popen] = []
        self.tmux_socket: str | None = None
        self.outputs: list[str] = []

    def _dir(self, name: str) -> str:
        d = os.path.join(self.root, name)
        os.makedirs(d, mode=0o700)
        return d

    # --- set-up ---------------------------------------------------------------------
    def __enter__(self) -> ClaudeRun:
        try:
            self.api.__enter__()
            self.daemon.start()
            self.install_hooks()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.tmux_socket:
            subprocess.run(["tmux", "-L", self.tmux_socket, "kill-server"], capture_output=True, env=self.env())
            self.tmux_socket = None
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        try:
            self.api.__exit__(None, None, None)
        except Exception:
            pass
        if self.daemon.proc is not None:
            try:
                self.daemon.stop()
            except AssertionError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def settings_path(self) -> str:
        return os.path.join(self.home, ".claude", "settings.json")

    def base_env(self) -> dict:
        """The environment of our own commands and of Claude Code (before its API
        settings): this run's HOME and tmp, the daemon's home, the CLI on PATH (so
        ``hooks install`` sees its version)."""
        path = os.path.dirname(self.bin) + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin")
        return clean_env(
            self.ct,
            HOME=self.home,
            TMPDIR=self.tmp,
            CLAUDE_CODE_TMPDIR=self.tmp,
            PATH=path,
            HOSTNAME=self.hostname,
        )

    def install_hooks(self) -> None:
        r = subprocess.run(
            [sys.executable, "-m", "contextuate_trio", "hooks", "install", *self.install_args],
            env=self.base_env(),
            cwd=str(ROOT),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, f"hooks install failed: {r.stdout}\n{r.stderr}"
        st = json.loads(Path(self.settings_path).read_text())
        if self.all_events or self.capture_dir:
            ours = next(iter(st["hooks"].values()))[0]["hooks"][0]
            handlers = [ours]
            if self.capture_dir:
                cap = f"{sys.executable} -I -S {Path(__file__).with_name('capture_hook.py')} {self.capture_dir}"
                handlers = [ours, {"type": "command", "command": cap, "timeout": 10}]
            events = ALL_EVENTS if self.all_events else list(st["hooks"])
            for e in events:
                group: dict[str, Any] = {"hooks": handlers}
                if e in MATCHER_EVENTS:
                    group = {"matcher": "*", **group}
                st["hooks"][e] = [group]
        st.update(self.settings_extra)
        Path(self.settings_path).write_text(json.dumps(st, indent=2))

    def write(self, rel: str, text: str) -> str:
        """A file in the project (``.claude/commands/x.md``, ``CLAUDE.md``...)."""
        p = os.path.join(self.proj, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        Path(p).write_text(text)
        return p

    def env(self) -> dict:
        return dict(
            self.base_env(),
            ANTHROPIC_BASE_URL=self.api.url,
            ANTHROPIC_API_KEY=API_KEY,
            IS_SANDBOX="1",
            CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
            DISABLE_AUTOUPDATER="1",
            DISABLE_TELEMETRY="1",
            DISABLE_ERROR_REPORTING="1",
            HTTP_PROXY="http://127.0.0.1:9",
            HTTPS_PROXY="http://127.0.0.1:9",
            NO_PROXY="127.0.0.1,localhost",
            TERM="xterm-256color",
        )

    # --- running Claude Code --------------------------------------------------------
    def run(
        self, prompt: str, *args: str, skip_permissions: bool = True, timeout: float = 90
    ) -> subprocess.CompletedProcess:
        """``claude -p PROMPT`` to its end (stream-json output, parsed by ``session_ids``)."""
        cmd = [self.bin, "-p", prompt, "--output-format", "stream-json", "--verbose", *args]
        if skip_permissions:
            cmd.append("--dangerously-skip-permissions")
        p = subprocess.run(cmd, env=self.env(), cwd=self.proj, capture_output=True, text=True, timeout=timeout)
        self.outputs.append(p.stdout + "\nSTDERR:\n" + p.stderr)
        return p

    def start_stream(self, *args: str, skip_permissions: bool = True) -> subprocess.Popen:
        """``claude -p --input-format stream-json``: alive until its stdin closes;
        ``send`` writes a prompt."""
        cmd = [
            self.bin,
            "-p",
            "--input-format",
            "stream-json",
            "--output-format",
            "stream-json",
            "--verbose",
            *args,
        ]
        if skip_permissions:
            cmd.append("--dangerously-skip-permissions")
        p = subprocess.Popen(
            cmd,
            env=self.env(),
            cwd=self.proj,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(p)
        return p

    @staticmethod
    def send(p: subprocess.Popen, text: str) -> None:
        assert p.stdin is not None
        p.stdin.write(user_message(text))
        p.stdin.flush()

    def finish(self, p: subprocess.Popen, timeout: float = 60) -> str:
        """Close its stdin (which ends it once it is idle) and read what it wrote."""
        if p.stdin is not None and not p.stdin.closed:
            p.stdin.close()
        p.stdin = None
        out, err = p.communicate(timeout=timeout)
        self.outputs.append(out + "\nSTDERR:\n" + err)
        return out

    # --- interactive, under tmux ----------------------------------------------------
    def trust(self, idle_ms: int = 60_000) -> None:
        """``~/.claude.json`` as after onboarding: theme chosen, this API key approved,
        the project trusted; the idle notification after ``idle_ms``."""
        cfg = {
            "hasCompletedOnboarding": True,
            "lastOnboardingVersion": CLAUDE_CODE_VERSION,
            "theme": "dark",
            "numStartups": 5,
            "customApiKeyResponses": {"approved": [API_KEY[-20:]], "rejected": []},
            "bypassPermissionsModeAccepted": True,
            "messageIdleNotifThresholdMs": idle_ms,
            "projects": {
                self.proj: {
                    "hasTrustDialogAccepted": True,
                    "hasCompletedProjectOnboarding": True,
                    "projectOnboardingSeenCount": 1,
                    "allowedTools": [],
                }
            },
        }
        Path(self.home, ".claude.json").write_text(json.dumps(cfg, indent=2))

    def tmux(self, *args: str) -> subprocess.CompletedProcess:
        assert self.tmux_socket
        return subprocess.run(
            ["tmux", "-L", self.tmux_socket, *args], env=self.env(), capture_output=True, text=True, timeout=20
        )

    def start_tmux(self, *args: str, idle_ms: int = 60_000) -> None:
        """Interactive ``claude ARGS`` in a detached tmux window of its own server."""
        self.trust(idle_ms)
        self.tmux_socket = "ctcc-" + os.path.basename(self.root)
        cmd = " ".join(_shq(a) for a in [self.bin, *args])
        r = subprocess.run(
            [
                "tmux",
                "-L",
                self.tmux_socket,
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-s",
                "cc",
                "-x",
                "200",
                "-y",
                "50",
                "-c",
                self.proj,
                cmd,
            ],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert r.returncode == 0, r.stderr
        self.tmux("set-option", "-t", "cc", "remain-on-exit", "on")

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "cc").stdout

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "cc", *keys)

    def answer_dialog(self, key: str, shown: str, timeout: float = 30, every: float = 1.0) -> None:
        """Press ``key`` while the dialog saying ``shown`` is on the screen (it ignores
        keys for a moment after it appears: press again every ``every`` s), until it is
        gone. Never presses once it is gone: the key would land in the prompt."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if shown not in self.screen():
                return
            self.keys(key)
            pressed = time.monotonic()
            while time.monotonic() - pressed < every:
                if shown not in self.screen():
                    return
                time.sleep(0.1)
        raise AssertionError(f"pressing {key!r} for {timeout}s did not close {shown!r}; the screen:\n{self.screen()}")

    def type_prompt(self, text: str) -> None:
        """Type a prompt and submit it (literal text, then Enter once it shows)."""
        self.tmux("send-keys", "-t", "cc", "-l", text)
        first = text.splitlines()[0][:30]
        wait_for(lambda: first in self.screen(), timeout=20, what=f"the prompt {first!r} on screen")
        self.keys("Enter")

    def wait_screen(self, needle: str, timeout: float = 30) -> str:
        def check() -> str | None:
            s = self.screen()
            return s if needle in s else None

        try:
            return wait_for(check, timeout=timeout, interval=0.1, what=f"{needle!r} on the screen")
        except AssertionError as exc:
            exc.add_note("the screen:\n" + self.screen())
            raise

    # --- what the daemon holds ------------------------------------------------------
    def sessions(self) -> dict[str, dict]:
        return self.daemon.sessions()

    def events(self, sid: str) -> list[dict]:
        return self.daemon.events(sid)

    def hooks(self, sid: str) -> list[str]:
        return [e.get("hookType") for e in self.events(sid) if e.get("hookType")]

    def attention(self) -> list[dict] | None:
        """``GET /api/attention``'s items; None while the daemon has no such route."""
        try:
            return self.daemon.get("/api/attention")["items"]
        except Exception:
            return None

    def root_sessions(self) -> list[dict]:
        return [s for s in self.sessions().values() if not s.get("parentSessionId")]

    def wait_hook(self, sid: str | Callable[[], str | None], hook: str, count: int = 1, timeout: float = 30) -> list:
        """Wait until the daemon holds ``count`` ``hook`` events of the session."""

        def check():
            s = sid() if callable(sid) else sid
            if not s:
                return None
            evs = self.events_or_empty(s)
            return evs if sum(1 for e in evs if e.get("hookType") == hook) >= count else None

        return wait_for(check, timeout=timeout, interval=0.1, what=f"{count} {hook} of {sid}")

    def events_or_empty(self, sid: str) -> list[dict]:
        try:
            return self.events(sid)
        except Exception:
            return []

    def wait_ended(self, sid: str, timeout: float = 30) -> list[dict]:
        return self.wait_hook(sid, "SessionEnd", timeout=timeout)

    def wait_status(self, sid: str, status: str | Iterable[str], timeout: float = 30) -> dict:
        want = {status} if isinstance(status, str) else set(status)
        return wait_for(
            lambda: (s := self.sessions().get(sid)) and s["status"] in want and s,
            timeout=timeout,
            interval=0.1,
            what=f"{sid} {want} (sessions: {[(k, v['status']) for k, v in self.sessions().items()]})",
        )

    def tree(self) -> dict[str, dict]:
        """Each session with its events' hook types: what a failing assert prints."""
        return {sid: {**s, "hooks": self.hooks(sid)} for sid, s in self.sessions().items()}


def session_ids(stdout: str) -> list[str]:
    """Session ids in a stream-json output, the session's own first: the ``init``
    message's (with ``--resume``/``--continue`` the SessionStart hook's
    ``hook_started``/``hook_response`` lines come first and carry a throwaway id)."""
    init: list[str] = []
    other: list[str] = []
    for o in stream(stdout):
        sid = o.get("session_id")
        if not sid:
            continue
        if o.get("type") == "system" and o.get("subtype") == "init":
            init.append(sid)
        elif o.get("subtype") not in ("hook_started", "hook_response"):
            other.append(sid)
    return list(dict.fromkeys(init + other))


def stream(stdout: str) -> list[dict]:
    """The JSON objects of a stream-json output (other lines skipped)."""
    out = []
    for line in stdout.splitlines():
        try:
            o = json.loads(line)
        except ValueError:
            continue
        if isinstance(o, dict):
            out.append(o)
    return out


def results(stdout: str) -> list[dict]:
    return [o for o in stream(stdout) if o.get("type") == "result"]


def _shq(s: str) -> str:
    import shlex

    return shlex.quote(s)
