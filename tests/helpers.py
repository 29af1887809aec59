"""Helpers the tests share (the fixtures are in conftest.py)."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
import uuid
from pathlib import Path

from contextuate_trio.core.events import Mint
from contextuate_trio.core.usage import DEFAULT_TABLE, PriceTable

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, env: dict, cwd: str | None = None, timeout: float = 60, check: bool = False):
    """``python -m contextuate_trio ARGS`` run to its end, its output captured as
    text; from the repository unless ``cwd`` says otherwise."""
    return subprocess.run(
        [sys.executable, "-m", "contextuate_trio", *args],
        env=env,
        cwd=cwd or str(ROOT),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


def fixed_mint(start_ms: int = 1_000) -> Mint:
    """Ids ``id-1``, ``id-2``, ... and a clock that says ``start_ms``: what the core
    uses for events that arrive without an id or a time, made predictable."""
    counter = itertools.count(1)
    return Mint(new_id=lambda: f"id-{next(counter)}", now_ms=lambda: start_ms)


MINT = fixed_mint()
PRICES: PriceTable = DEFAULT_TABLE


# Events in the contract's shape, for the WebSocket tests.
T0 = int(time.time() * 1000) - 600_000  # recent: retention would prune older sessions


def ev(
    i: int, session: str = "s1", machine: str = "m1", etype: str = "tool_call", tool: str | None = "Bash", **extra
) -> dict:
    d = {
        "id": f"e-{session}-{i}-{uuid.uuid4().hex[:6]}",
        "timestamp": T0 + i,
        "sessionId": session,
        "machineId": machine,
        "eventType": etype,
        "hookType": "PreToolUse",
        "workingDirectory": "/w",
        "data": {"tool_input": {"command": f"echo {i}"}},
    }
    if tool:
        d["toolName"] = tool
    d.update(extra)
    return d


def append_events(store, evs) -> None:
    """Events straight into a store, as the broker writes them (no pipeline)."""
    from contextuate_trio.core import events

    store.append((e.session_id, e.timestamp, (events.dumps(e) + "\n").encode(), None) for e in evs)
