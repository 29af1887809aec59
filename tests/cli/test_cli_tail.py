"""``tail`` against a real daemon's WebSocket: history, a live event, filters, token."""

from __future__ import annotations

import io
import queue
import subprocess
import sys
import threading
import time

from conftest import ROOT, clean_env, run_hook

from contextuate_trio.cli.tail import Printer


class Tail:
    def __init__(self, home, *args):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "contextuate_trio", "tail", *args],
            env=clean_env(home),
            cwd=str(ROOT),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, text, timeout=15.0):
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                continue
            seen.append(line)
            if text in line:
                return line, seen
        raise AssertionError(
            f"tail never printed {text!r}; printed {seen!r}; stderr "
            f"{self.proc.stderr.read() if self.proc.poll() is not None else ''}"
        )

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


def test_tail_prints_history_then_live_events_with_filters(daemon, home):
    daemon({"server": {"token": "t0k"}})
    run_hook(
        home,
        {"session_id": "old-session-1", "hook_event_name": "UserPromptSubmit", "prompt": "earlier work"},
        {"HOSTNAME": "box-a"},
    )
    everything = Tail(home)
    only_b = Tail(home, "--machine", "box-b", "--type", "tool_call,tool_error")
    try:
        everything.wait_for("earlier work")
        everything.wait_for("live from")
        only_b.wait_for("live from")
        run_hook(
            home,
            {
                "session_id": "live-1",
                "hook_event_name": "PreToolUse",
                "tool_name": "Bash",
                "tool_input": {"command": "pytest -q"},
                "tool_use_id": "t1",
            },
            {"HOSTNAME": "box-a"},
        )
        run_hook(
            home,
            {
                "session_id": "live-2",
                "hook_event_name": "PreToolUse",
                "tool_name": "Read",
                "tool_input": {"file_path": "/srv/app.py"},
                "tool_use_id": "t2",
            },
            {"HOSTNAME": "box-b"},
        )
        line, _ = everything.wait_for("Bash pytest -q")
        assert "box-a" in line and "live-1" in line and "tool_call" in line
        everything.wait_for("Read /srv/app.py")
        line, seen = only_b.wait_for("Read /srv/app.py")
        assert not any("pytest" in s or "earlier work" in s for s in seen), seen
    finally:
        everything.stop()
        only_b.stop()


def test_tail_keeps_going_across_a_daemon_restart(daemon, home):
    d = daemon()
    t = Tail(home, "--history", "0")
    try:
        t.wait_for("live from")
        d.stop()
        t.wait_for("disconnected")
        d.start()
        run_hook(home, {"session_id": "after-restart", "hook_event_name": "Stop"})
        t.wait_for("after-re", timeout=20)
    finally:
        t.stop()


def test_printer_marks_sub_agents_and_colours():
    out = io.StringIO()
    p = Printer(out, color=True)
    p.sessions["agent-abc123456"] = {"sessionId": "agent-abc123456", "parentSessionId": "root", "agentType": "Explore"}
    p.event(
        {
            "timestamp": 0,
            "machineId": "m",
            "sessionId": "agent-abc123456",
            "eventType": "tool_error",
            "summary": "Bash false — Exit code 1",
        }
    )
    text = out.getvalue()
    assert "↳agent-abc123 (Explore)" in text and "\x1b[1;31m" in text and "Exit code 1" in text
