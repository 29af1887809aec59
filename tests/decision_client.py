"""What the decision tests share: the real hook run in the background the way Claude
Code runs it (``HookRun``), and an answer posted to ``/api/decisions``."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.error
import urllib.request

from conftest import HOOK, HOOK_PYTHON, clean_env


class HookRun:
    """The real hook, in the background, the way Claude Code runs it."""

    def __init__(self, home: str, stdin: dict) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [HOOK_PYTHON, "-I", "-S", HOOK],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=clean_env(home, CONTEXTUATE_DEBUG="1"),
        )
        self.out = self.err = b""
        self.took = 0.0  # from its start to its exit
        self._t = threading.Thread(target=self._talk, args=(json.dumps(stdin).encode(),), daemon=True)
        self._t.start()

    def _talk(self, data: bytes) -> None:
        self.out, self.err = self.proc.communicate(data, timeout=60)
        self.took = time.monotonic() - self.started

    def finish(self, timeout: float = 30) -> None:
        """Wait for the hook to exit (however it exits)."""
        self._t.join(timeout)
        assert not self._t.is_alive(), "the hook did not finish"

    def result(self, timeout: float = 30) -> dict | None:
        """What it printed for Claude Code (None: nothing), once it exited 0."""
        self.finish(timeout)
        assert self.proc.returncode == 0, self.err
        if not self.out.strip():
            return None
        assert self.out.count(b"\n") == 1, self.out  # one JSON object, one answer
        return json.loads(self.out)


def post_decision(port: int, body: dict, token: str | None) -> tuple[int, dict]:
    """``POST /api/decisions`` -> (status, its JSON)."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/decisions",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
