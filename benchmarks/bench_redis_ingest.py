"""Benchmark 5 — the daemon's ingest rate from Redis (many machines, one monitor).

A real redis-server; N events (complete, in the contract's shape) are XADDed to the
streams of MACHINES machines (``<stream>:{<machineId>}``, registered in
``<stream>:machines``, as their hooks do) before the monitor starts, as if it had been
down while machines kept working; then the daemon starts in Redis mode and catches up
from its checkpoints (one XREAD reads every stream). Reports the catch-up rate
(streams -> stored, persistence on; what was stored before the daemon was healthy is
left out) and, with the monitor running, the rate at which events XADDed by a producer
(pipelined, like many hooks at once; encoded before the clock starts) are stored. The
channel carries nothing here: only the durable path is measured. Target: 50,000/s.

    .venv/bin/python benchmarks/bench_redis_ingest.py     # BENCH_QUICK=1 for a short run
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

NAME = "redis_ingest"
STREAM = "contextuate:events:stream"
MACHINES = 10
TARGET = 50_000  # events/s, catch-up and live


def _entries(n: int, payload: dict, tag: str) -> list[tuple[str, str]]:
    """(stream, JSON) of n events, made before a clock starts: the figure is the
    daemon's, not the cost of building and encoding events in this process (which
    alone is ~50,000/s here, and shares the machine's two cores with the daemon)."""
    out = []
    for i in range(n):
        machine = f"bench-{i % MACHINES}"
        ev = C.complete_event(f"redis-{tag}-s{i % 10}", payload, machineId=machine)
        out.append((f"{STREAM}:{{{machine}}}", json.dumps(ev, separators=(",", ":"))))
    return out


def _fill(client, entries: list[tuple[str, str]]) -> None:
    """XADD them, pipelined 1,000 at a time (as many hooks at once)."""
    pipe = client.pipeline(transaction=False)
    for m in range(MACHINES):
        pipe.sadd(f"{STREAM}:machines", f"bench-{m}")
    for i, (stream, line) in enumerate(entries):
        pipe.xadd(stream, {"data": line})
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()


def run() -> dict:
    import redis

    n = C.knob("redis_events", 20_000, 60_000)
    payload = C.pre_tool_use_payload()
    with C.redis_server() as port:
        if port is None:
            return {
                "name": NAME,
                "rows": [C.row("5 redis ingest", "catch-up from the stream", "n/a (no redis-server)")],
            }
        client = redis.Redis(port=port)
        _fill(client, _entries(n, payload, "backlog"))
        cfg = {"mode": "redis", "redis": {"host": "127.0.0.1", "port": port}}
        with C.Daemon(extra_config=cfg) as d:
            t_start = d.start_to_healthy or 0.0
            cpu0, t0 = C.cpu_seconds(d.pid), time.perf_counter()
            early = d.events_stored()  # stored before it was healthy: not in the rate
            d.wait_stored(n)
            catch_up = time.perf_counter() - t0
            cpu_catch_up = C.cpu_seconds(d.pid) - cpu0
            live_entries = _entries(n, payload, "live")
            cpu1, t1 = C.cpu_seconds(d.pid), time.perf_counter()
            _fill(client, live_entries)
            d.wait_stored(2 * n)
            live = time.perf_counter() - t1
            cpu_live = C.cpu_seconds(d.pid) - cpu1
    rows = [
        C.row(
            "5 redis ingest",
            f"catch-up: {n:,} events waiting in {MACHINES} machines' streams -> stored",
            f"{(n - early) / catch_up:,.0f} ev/s ({catch_up:.1f} s after healthy in {t_start:.2f} s; "
            f"daemon CPU {cpu_catch_up / (n - early) * 1e6:.0f} µs/event)",
            f">= {TARGET:,}",
            C.verdict((n - early) / catch_up, TARGET, higher_is_better=True),
        ),
        C.row(
            "5 redis ingest",
            f"live: {n:,} events XADDed while running -> stored",
            f"{n / live:,.0f} ev/s (includes the producer's XADDs; daemon CPU {cpu_live / n * 1e6:.0f} µs/event)",
            f">= {TARGET:,}",
            C.verdict(n / live, TARGET, higher_is_better=True),
        ),
    ]
    return {
        "name": NAME,
        "rows": rows,
        "events": n,
        "early": early,
        "catch_up_s": catch_up,
        "live_s": live,
        "cpu_catch_up_s": cpu_catch_up,
        "cpu_live_s": cpu_live,
    }


if __name__ == "__main__":
    res = run()
    print(C.format_table(res["rows"]))
