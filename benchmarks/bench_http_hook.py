"""Benchmark — http hook vs command hook: what Claude Code waits for per event.

Command hook: ``<python3> -I -S hook_emit.py`` spawned and reaped (posix_spawn + wait4,
as in bench_hook.py); it exits once the daemon has acknowledged the stored event.
HTTP hook: ``POST /api/hooks`` with the same payload; the daemon answers once the
event is stored. Measured both with a new TCP connection per event (what a client
without connection reuse pays) and over one kept-alive connection. Rounds run the
three cases in a shuffled order so machine noise hits them alike.

    .venv/bin/python benchmarks/bench_http_hook.py     # BENCH_QUICK=1, BENCH_HTTP_HOOK_ROUNDS=N

Not in run_all.py (owned separately); add ``("http_hook", bench_http_hook)`` to its
BENCHES to include it in ``make bench``.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402
from bench_hook import spawn_timed  # noqa: E402

NAME = "http_hook"


def run(rounds: int | None = None) -> dict:
    rounds = rounds or C.knob("http_hook_rounds", 60, 300)
    python = C.real_python()
    payload = C.pre_tool_use_payload()
    body = json.dumps(payload).encode()
    samples: dict[str, list[float]] = {"command": [], "http_new_conn": [], "http_keepalive": []}
    with C.Daemon() as d:
        env = d.env()
        stderr_path = os.path.join(d.home, "hook-stderr.log")
        headers = {"Content-Type": "application/json", "X-Contextuate-Machine": "bench"}
        keep = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)

        def post(conn) -> None:
            conn.request("POST", "/api/hooks", body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"/api/hooks answered {resp.status}")

        def command() -> float:
            wall, _cpu = spawn_timed([python, "-I", "-S", C.HOOK], body, env, stderr_path)
            return wall

        def http_new() -> float:
            t0 = time.perf_counter()
            conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
            try:
                post(conn)
            finally:
                conn.close()
            return time.perf_counter() - t0

        def http_keep() -> float:
            t0 = time.perf_counter()
            post(keep)
            return time.perf_counter() - t0

        cases = [("command", command), ("http_new_conn", http_new), ("http_keepalive", http_keep)]
        for _ in range(5):  # warm-up: byte-code caches, first connections
            for _, fn in cases:
                fn()
        for _ in range(rounds):
            random.shuffle(cases)
            for name, fn in cases:
                samples[name].append(fn())
        keep.close()
        stored = d.events_stored()
    s = {k: C.summary(v) for k, v in samples.items()}
    rows = []
    for name, label in (
        ("command", "command hook (spawn → acked)"),
        ("http_new_conn", "http hook, new connection"),
        ("http_keepalive", "http hook, kept-alive connection"),
    ):
        rows.append(
            C.row(
                NAME,
                f"{label} p50 / p95 / p99",
                f"{C.ms(s[name]['p50'])} / {C.ms(s[name]['p95'])} / {C.ms(s[name]['p99'])}",
            )
        )
    ratio = s["command"]["p50"] / s["http_new_conn"]["p50"] if s["http_new_conn"]["p50"] else None
    rows.append(C.row(NAME, "command / http (new connection), p50", "n/a" if ratio is None else f"{ratio:.1f}x"))
    return {
        "name": NAME,
        "rows": rows,
        "rounds": rounds,
        "summary": s,
        "samples": samples,
        "events_stored": stored,
        "python": python,
    }


if __name__ == "__main__":
    C.standalone(run)
