"""Benchmark 5 — the daemon's ingest rate from Redis (many machines, one monitor).

A real redis-server; N events (complete, in the contract's shape) are XADDed to the
streams of MACHINES machines (``<stream>:{<machineId>}``, registered in
``<stream>:machines``, as their hooks do) before the monitor starts, as if it had been
down while machines kept working; then the daemon starts in Redis mode and catches up
from its checkpoints (one XREAD reads every stream). Reports the catch-up rate
(streams -> stored, persistence on) and, with the monitor running, the rate at which
events XADDed by a producer (pipelined, like many hooks at once) are stored. The
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


def _fill(client, n: int, payload: dict, tag: str) -> None:
    pipe = client.pipeline(transaction=False)
    for m in range(MACHINES):
        pipe.sadd(f"{STREAM}:machines", f"bench-{m}")
    for i in range(n):
        machine = f"bench-{i % MACHINES}"
        ev = C.complete_event(f"redis-{tag}-s{i % 10}", payload, machineId=machine)
        pipe.xadd(f"{STREAM}:{{{machine}}}", {"data": json.dumps(ev, separators=(",", ":"))})
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
        _fill(client, n, payload, "backlog")
        cfg = {"mode": "redis", "redis": {"host": "127.0.0.1", "port": port}}
        with C.Daemon(extra_config=cfg) as d:
            t_start = d.start_to_healthy or 0.0
            t0 = time.perf_counter()
            d.wait_stored(n)
            catch_up = time.perf_counter() - t0
            t1 = time.perf_counter()
            _fill(client, n, payload, "live")
            d.wait_stored(2 * n)
            live = time.perf_counter() - t1
    rows = [
        C.row(
            "5 redis ingest",
            f"catch-up: {n:,} events waiting in {MACHINES} machines' streams -> stored",
            f"{n / catch_up:,.0f} ev/s ({catch_up:.1f} s after healthy in {t_start:.2f} s)",
            f">= {TARGET:,}",
            C.verdict(n / catch_up, TARGET, higher_is_better=True),
        ),
        C.row(
            "5 redis ingest",
            f"live: {n:,} events XADDed while running -> stored",
            f"{n / live:,.0f} ev/s (includes the producer's own time)",
            f">= {TARGET:,}",
            C.verdict(n / live, TARGET, higher_is_better=True),
        ),
    ]
    return {"name": NAME, "rows": rows, "events": n, "catch_up_s": catch_up, "live_s": live}


if __name__ == "__main__":
    res = run()
    print(C.format_table(res["rows"]))
