"""Benchmark 3 — latency: hook start → event visible, and inside the daemon at 1,000 ev/s.

(a) Hook start → visible. N times, spaced out, the real hook (``python3 -I -S
    hook_emit.py``, a PreToolUse payload with a unique tool_use_id) is spawned; the
    clock starts just before the spawn (epoch ns, one clock for every process here).
    Reported: spawn → hook exited (the daemon acknowledges only once the event is
    written), spawn → the event is in ``GET /api/sessions/{id}/events`` (one request
    right after the hook exits; polled again if absent), and — once the WebSocket
    server exists — spawn → a WebSocket subscriber received it.
(b) Daemon-internal at 1,000 events/s background: a producer process sends complete
    events paced at 1,000/s, each stamped (``data.bench_sent_ns``) just before its line
    is written to the socket. With the WebSocket server, a subscriber records receive
    time − stamp for every event: socket write → WebSocket message received, an upper
    bound of "socket read → WebSocket send" (it adds the socket hop and the client's
    own receive). Meanwhile, always, ~50 probes/s send a hook envelope with
    ``"ack": true`` on a fresh connection and time the acknowledgement: socket write →
    stored → ack received, the daemon's part of what the hook waits for.

    .venv/bin/python benchmarks/bench_latency.py   # BENCH_LATENCY_SAMPLES, BENCH_BACKGROUND_SECONDS
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402
import bench_hook  # noqa: E402
import bench_ingest  # noqa: E402

NAME = "latency"
TARGET_P99 = 0.005
NO_WS = "n/a, no WebSocket yet"


def hook_to_visible(d: C.Daemon, n: int, ws: bool, procs: list) -> dict:
    python = C.real_python()
    payload = C.pre_tool_use_payload()
    sid = "bench-latency-" + os.urandom(4).hex()
    mark = "toolu_lat_"
    stop = os.path.join(d.home, "stop-subscribers")
    subs = bench_ingest.start_subscribers(d, 1, 0, procs, mark=mark, stop_file=stop, parse=True) if ws else None
    env = d.env()
    err = os.path.join(d.home, "hook-stderr.txt")
    spawned: dict[str, int] = {}
    t_exit, t_api = [], []
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
    try:
        for i in range(n):
            tid = f"{mark}{i}"
            stdin = (json.dumps(dict(payload, session_id=sid, tool_use_id=tid)) + "\n").encode()
            t0 = time.time_ns()
            wall, _ = bench_hook.spawn_timed([python, "-I", "-S", C.HOOK], stdin, env, err)
            spawned[tid] = t0
            t_exit.append(wall)
            while True:
                conn.request("GET", f"/api/sessions/{sid}/events?limit=5")
                body = json.loads(conn.getresponse().read())
                if any((e.get("data") or {}).get("tool_use_id") == tid for e in body.get("events", [])):
                    t_api.append((time.time_ns() - t0) / 1e9)
                    break
                if (time.time_ns() - t0) / 1e9 > 10:
                    raise RuntimeError(f"event {tid} not visible after 10 s")
            time.sleep(0.02)
    finally:
        conn.close()
    out = {"samples": n, "spawn_to_exit_s": t_exit, "spawn_to_api_s": t_api}
    if subs is not None:
        time.sleep(0.3)
        open(stop, "w").close()
        res = bench_ingest.subscribers_result(subs, 30)["clients"][0]
        marks = res.get("marks") or {}
        out["spawn_to_ws_s"] = [(marks[t] - t0) / 1e9 for t, t0 in spawned.items() if t in marks]
        out["ws_missing"] = n - len(out["spawn_to_ws_s"])
        out["ws_closed"] = res.get("closed")
    return out


def ack_probe(path: str, i: int) -> float:
    from contextuate_trio.hook import paths, wire

    eid = paths.new_id()
    raw = json.dumps(
        {
            "session_id": "bench-probe",
            "hook_event_name": "Notification",
            "message": f"probe {i}",
            "notification_type": "bench",
        }
    ).encode()
    line = wire.envelope(raw, eid, int(time.time() * 1000), "bench-host", None, ack=True)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        t0 = time.perf_counter()
        s.connect(path)
        s.sendall(line)
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                raise RuntimeError("closed without an ack")
            buf += chunk
        t = time.perf_counter() - t0
    finally:
        s.close()
    if not buf.startswith(b'{"ack"'):
        raise RuntimeError(buf[:200])
    return t


def background(d: C.Daemon, seconds: float, rate: int, ws: bool, procs: list) -> dict:
    n = int(seconds * rate)
    subs = None
    if ws:
        subs = bench_ingest.start_subscribers(d, 1, n, procs, parse=True)
    t0 = bench_ingest.start_producers(d, n, 1, procs, start_in=0.5, rate=rate, stamp=True, tag="bg")
    while time.time() < t0:
        time.sleep(0.01)
    acks = []
    i = 0
    while time.time() < t0 + seconds:
        acks.append(ack_probe(d.socket_path, i))
        i += 1
        time.sleep(0.02)
    d.wait_stored(n + i, timeout=60)
    out = {"rate": rate, "seconds": seconds, "events": n, "ack_s": acks}
    if subs is not None:
        res = bench_ingest.subscribers_result(subs, 60)["clients"][0]
        out["ws_s"] = [x / 1e9 for x in res.get("lat_ns", [])]
        out["ws_closed"] = res.get("closed")
        out["ws_received"] = res.get("count")
    return out


def run() -> dict:
    n = C.knob("latency_samples", 60, 150)
    seconds = C.knob("background_seconds", 5, 10)
    ws = True  # the WebSocket fan-out is part of the daemon
    result: dict = {"name": NAME, "ws_available": ws}
    rows = []
    with C.Daemon() as d, C.processes() as procs:
        a = hook_to_visible(d, n, ws, procs)
    with C.Daemon() as d, C.processes() as procs:
        b = background(d, seconds, 1000, ws, procs)
    result["hook_to_visible"] = a
    result["daemon_internal"] = b

    def p(xs):
        return f"{C.pct(xs, 50) * 1000:.1f} / {C.pct(xs, 99) * 1000:.1f} ms"

    rows.append(C.row("3 latency", "hook spawn -> hook exit (event stored + acked) p50/p99", p(a["spawn_to_exit_s"])))
    rows.append(
        C.row("3 latency", "hook spawn -> event in GET /api/sessions/{id}/events p50/p99", p(a["spawn_to_api_s"]))
    )
    if ws and a.get("spawn_to_ws_s"):
        miss = f" ({a['ws_missing']} missing)" if a.get("ws_missing") else ""
        rows.append(C.row("3 latency", "hook spawn -> WebSocket client received p50/p99", p(a["spawn_to_ws_s"]) + miss))
    else:
        rows.append(
            C.row(
                "3 latency",
                "hook spawn -> WebSocket client received p50/p99",
                NO_WS if not ws else f"none received ({a.get('ws_closed')})",
                "",
                "n/a",
            )
        )
    rows.append(
        C.row("3 latency", "@1000 ev/s: socket write -> stored + ack received p50/p99 (probes)", p(b["ack_s"]), "", "")
    )
    if ws and b.get("ws_s"):
        p99 = C.pct(b["ws_s"], 99)
        note = "" if b.get("ws_received", 0) >= b["events"] else f" (got {b.get('ws_received')}/{b['events']})"
        rows.append(
            C.row(
                "3 latency",
                "@1000 ev/s: socket write -> WebSocket client p50/p99",
                p(b["ws_s"]) + note,
                "p99 <= 5 ms",
                C.verdict(p99, TARGET_P99),
            )
        )
    else:
        rows.append(
            C.row(
                "3 latency",
                "@1000 ev/s: socket write -> WebSocket client p50/p99",
                NO_WS if not ws else f"none received ({b.get('ws_closed')})",
                "p99 <= 5 ms",
                "n/a",
            )
        )
    result["rows"] = rows
    result["charts"] = {
        "3 latency: hook spawn -> visible": {
            "hook exit (acked)": a["spawn_to_exit_s"],
            "GET /events": a["spawn_to_api_s"],
            **({"WebSocket": a["spawn_to_ws_s"]} if a.get("spawn_to_ws_s") else {}),
        },
        "3 latency: inside the daemon @1000 ev/s": {
            "socket -> ack": b["ack_s"],
            **({"socket -> WebSocket": b["ws_s"]} if b.get("ws_s") else {}),
        },
    }
    return result


if __name__ == "__main__":
    C.standalone(run)
