"""Benchmark — relay mode: forwarding rate to Redis, and the hook's ack time.

A real redis-server and a daemon in relay mode. (1) A burst of N complete events
(a real Claude Code PreToolUse payload) written as NDJSON to the daemon's Unix socket
(no acks asked): the time from the first byte written until Redis holds all N in the
machine's stream (XLEN polled), i.e. socket -> stored -> XADD + PUBLISH confirmed.
(2) The real hook (``python3 -I -S hook_emit.py``, as Claude Code runs it), one run
after another, against a relay daemon and against a local-mode daemon, interleaved:
its wall time, which includes the interpreter's start-up.

    .venv/bin/python benchmarks/bench_relay.py     # BENCH_QUICK=1 for a short run
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

NAME = "relay"
STREAM = "contextuate:events:stream"
MACHINE = "bench-relay"
HOOK = os.path.join(C.REPO, "hook_emit.py")


def _burst(d: C.Daemon, client, n: int, payload: dict) -> tuple[float, float]:
    """(seconds until stored, seconds until in Redis; 0 without a client)."""
    lines = b"".join(
        json.dumps(C.complete_event(f"relay-s{i % 10}", payload, machineId=MACHINE), separators=(",", ":")).encode()
        + b"\n"
        for i in range(n)
    )
    key = f"{STREAM}:{{{MACHINE}}}"
    before = client.xlen(key) if client is not None else 0
    stored_before = d.events_stored()
    t0 = time.perf_counter()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(d.socket_path)
        s.sendall(lines)
    stored = d.wait_stored(stored_before + n, poll=0.005) - t0
    if client is None:
        return stored, 0.0
    while client.xlen(key) < before + n:
        if time.perf_counter() - t0 > 300:
            raise RuntimeError(f"only {client.xlen(key) - before}/{n} forwarded after 300 s:\n{d.log_tail()}")
        time.sleep(0.005)
    return stored, time.perf_counter() - t0


def _hook_once(home: str, payload: dict) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTEXTUATE_")}
    env.update(CONTEXTUATE_HOME=home, CONTEXTUATE_MACHINE_ID=MACHINE)
    data = json.dumps(payload).encode()
    t0 = time.perf_counter()
    r = subprocess.run([C.real_python(), "-I", "-S", HOOK], input=data, env=env, capture_output=True, timeout=10)
    took = time.perf_counter() - t0
    spool = os.path.join(home, "spool")
    assert r.returncode == 0, r
    assert not (os.path.isdir(spool) and os.listdir(spool)), "the hook spooled: not acknowledged"
    return took


def _ack_once(d: C.Daemon, payload: dict) -> float:
    """What the hook does on the socket: connect, one line asking for an ack, wait for it."""
    ev = dict(C.complete_event("relay-ack-bench", payload, machineId=MACHINE), ack=True)
    line = json.dumps(ev, separators=(",", ":")).encode() + b"\n"
    t0 = time.perf_counter()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(d.socket_path)
        s.sendall(line)
        reply = s.recv(4096)
    took = time.perf_counter() - t0
    assert reply.startswith(b'{"ack":'), reply
    return took


def run() -> dict:
    import redis

    n = C.knob("relay_events", 5_000, 20_000)
    runs = C.knob("relay_hook_runs", 30, 150)
    payload = C.pre_tool_use_payload()
    with C.redis_server() as port:
        if port is None:
            return {"name": NAME, "rows": [C.row("relay", "forwarding", "n/a (no redis-server)")]}
        client = redis.Redis(port=port)
        cfg = {"mode": "relay", "redis": {"host": "127.0.0.1", "port": port}}
        with C.Daemon(extra_config=cfg) as relay, C.Daemon() as local:
            for _ in range(200):
                if relay.get_json("/api/status")["relay"]["state"] == "connected":
                    break
                time.sleep(0.02)
            _burst(relay, client, 500, payload)  # warm up
            _burst(local, None, 500, payload)
            local_stored, _ = _burst(local, None, n, payload)
            relay_stored, took = _burst(relay, client, n, payload)
            status = relay.get_json("/api/status")["relay"]
            hook_payload = dict(payload, session_id="relay-hook-bench")
            times: dict[str, list[float]] = {"relay": [], "local": []}
            for i in range(runs):
                order = (("relay", relay), ("local", local)) if i % 2 == 0 else (("local", local), ("relay", relay))
                for name, d in order:
                    times[name].append(_hook_once(d.home, hook_payload))
            acks: dict[str, list[float]] = {"relay": [], "local": []}
            for i in range(runs * 4):
                order = (("relay", relay), ("local", local)) if i % 2 == 0 else (("local", local), ("relay", relay))
                for name, d in order:
                    acks[name].append(_ack_once(d, payload))
    rate = n / took
    r_med, l_med = C.pct(times["relay"], 50), C.pct(times["local"], 50)
    rows = [
        C.row(
            "relay",
            f"burst: {n:,} events on the socket -> stored, local mode (the ingest alone)",
            f"{n / local_stored:,.0f} ev/s ({local_stored:.2f} s)",
        ),
        C.row(
            "relay",
            f"burst: {n:,} events on the socket -> stored, relay mode (while forwarding)",
            f"{n / relay_stored:,.0f} ev/s ({relay_stored:.2f} s)",
        ),
        C.row(
            "relay",
            f"socket ack (connect, line, ack once stored), relay mode (median / p95 of {runs * 4})",
            f"{C.ms(C.pct(acks['relay'], 50), 2)} / {C.ms(C.pct(acks['relay'], 95), 2)}",
        ),
        C.row(
            "relay",
            f"socket ack, local mode (median / p95 of {runs * 4})",
            f"{C.ms(C.pct(acks['local'], 50), 2)} / {C.ms(C.pct(acks['local'], 95), 2)}",
        ),
        C.row(
            "relay",
            f"burst: {n:,} events on the socket -> confirmed in Redis ({status['batches']} batches so far)",
            f"{rate:,.0f} ev/s ({took:.2f} s)",
        ),
        C.row(
            "relay",
            f"hook wall time, relay mode (median / p95 of {runs})",
            f"{C.ms(r_med)} / {C.ms(C.pct(times['relay'], 95))}",
        ),
        C.row(
            "relay",
            f"hook wall time, local mode (median / p95 of {runs})",
            f"{C.ms(l_med)} / {C.ms(C.pct(times['local'], 95))}",
        ),
    ]
    return {
        "name": NAME,
        "rows": rows,
        "events": n,
        "burst_s": took,
        "local_stored_s": local_stored,
        "relay_stored_s": relay_stored,
        "rate": rate,
        "hook_relay_s": times["relay"],
        "hook_local_s": times["local"],
        "ack_relay_s": acks["relay"],
        "ack_local_s": acks["local"],
    }


if __name__ == "__main__":
    C.standalone(run)
