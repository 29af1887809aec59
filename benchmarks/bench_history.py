"""Benchmark 4 — scale of history: 1,000,000 events on disk.

Writes the history straight in the store's own format, with the store's own code
(``FileStore.append`` builds events.jsonl and the block index, ``save_sessions`` the
meta files): one session of 100,000 events and the rest in sessions of 1,000
(realistic PreToolUse events, ~500 bytes each). Then, interleaving a daemon on an
empty home with one on the full history (so the interpreter's and imports' start-up
is visible beside the history's share):

- start-to-healthy: process spawn → ``GET /api/health`` answers 200 and the socket
  exists (median of the rounds);
- RSS after start, and after ingesting more events live through the socket
  (BENCH_HISTORY_INGEST; the in-memory caps — recent ids, the WebSocket replay
  buffer — fill within 100,000 events, so this is the steady state);
- ``GET /api/sessions/{id}/events?limit=500`` on the 100,000-event session: the first
  (cold) request and the p50/p95 of the following ones, over one keep-alive connection.

    .venv/bin/python benchmarks/bench_history.py   # BENCH_HISTORY_EVENTS, BENCH_HISTORY_INGEST
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402
import bench_ingest  # noqa: E402

NAME = "history"
T_HEALTHY, T_RSS, T_QUERY = 2.0, 100 * 2**20, 0.020
BIG = 100_000
SMALL = 1_000


def generate(data_dir: str, total: int) -> dict:
    """``total`` events in the store's format; returns the big session's id and sizes."""
    from contextuate_trio.core import events
    from contextuate_trio.core.sessions import Session
    from contextuate_trio.runtime.store import FileStore

    payload = C.pre_tool_use_payload()
    t_gen = time.perf_counter()
    store = FileStore(data_dir)
    store.open()
    now = int(time.time() * 1000)
    big = min(BIG, total)
    plan = [("bench-big-session", big)]
    rest = total - big
    i = 0
    while rest > 0:
        plan.append((f"bench-hist-{i:05d}", min(SMALL, rest)))
        rest -= SMALL
        i += 1
    # One template per session: an event as the daemon stores it, with holes.
    sessions = []
    for n_s, (sid, count) in enumerate(plan):
        ev = events.from_payload(
            dict(payload, session_id=sid, tool_use_id="TOOLUSEID"),
            event_id="EVENTID",
            timestamp=1,
            machine_id="bench-host",
            source="socket",
        )
        text = events.dumps(ev)
        head, _, tail = text.partition('"id":"EVENTID","timestamp":1,')
        a, _, b = tail.partition("TOOLUSEID")
        c, _, d_ = b.partition("TOOLUSEID")
        start = now - 20 * 86_400_000 + n_s * 1000  # spread over the last 20 days
        step = 1000 if count == big else 50
        chunk = []
        for j in range(count):
            h = os.urandom(16).hex()
            eid = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"
            tid = f"toolu_{n_s}_{j}"
            ts = start + j * step
            line = f'{head}"id":"{eid}","timestamp":{ts},{a}{tid}{c}{tid}{d_}\n'.encode()
            chunk.append((sid, ts, line, None))
            if len(chunk) >= 20_000:
                store.append(chunk)
                chunk = []
        if chunk:
            store.append(chunk)
        sessions.append(
            Session(
                session_id=sid,
                machine_id="bench-host",
                working_directory=payload.get("cwd"),
                start_time=start,
                status="idle",
                event_count=count,
                tool_count=count,
                last_event_time=start + (count - 1) * step,
                last_event_type="tool_call",
                last_summary=ev.summary,
            )
        )
    store.save_sessions(sessions)
    store.close()
    return {
        "big_session": "bench-big-session",
        "sessions": len(plan),
        "events": total,
        "bytes": store.size_bytes(),
        "generate_s": time.perf_counter() - t_gen,
    }


def query_times(d: C.Daemon, sid: str, n: int) -> tuple[float, list[float], int]:
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
    out = []
    try:
        for _i in range(n + 1):
            t0 = time.perf_counter()
            conn.request("GET", f"/api/sessions/{sid}/events?limit=500")
            body = conn.getresponse().read()
            out.append(time.perf_counter() - t0)
        got = len(json.loads(body)["events"])
    finally:
        conn.close()
    return out[0], out[1:], got


def run() -> dict:
    total = C.knob("history_events", 1_000_000, 1_000_000)
    rounds = C.knob("history_rounds", 2, 3)
    ingest = C.knob("history_ingest", 100_000, 150_000)
    queries = C.knob("history_queries", 30, 60)
    result: dict = {"name": NAME, "events_on_disk": total}
    rows = []
    with C.temp_dir("ctx-bench-hist-") as home:
        info = generate(os.path.join(home, "data"), total)
        result["dataset"] = info
        healthy = {"empty": [], "history": []}
        rss_start = []
        for r in range(rounds):
            with C.Daemon() as d:
                healthy["empty"].append(d.start_to_healthy)
            d = C.Daemon(home)
            try:
                d.start()
                healthy["history"].append(d.start_to_healthy)
                time.sleep(0.3)
                rss_start.append(C.rss_bytes(d.pid))
                sessions_loaded = len(d.get_json("/api/sessions")["sessions"])
                if r == rounds - 1:
                    cold, warm, got = query_times(d, info["big_session"], queries)
                    with C.processes() as procs:
                        t0 = bench_ingest.start_producers(d, ingest, 3, procs, start_in=0.5, tag="hist")
                        base = d.events_stored()
                        d.wait_stored(base + ingest - ingest % 3, timeout=600)
                        ingest_s = time.time() - t0
                    time.sleep(0.3)
                    rss_after = C.rss_bytes(d.pid)
            finally:
                d.stop()
    h = C.pct(healthy["history"], 50)
    e = C.pct(healthy["empty"], 50)
    result.update(
        {
            "start_to_healthy_s": healthy,
            "rss_after_start": rss_start,
            "rss_after_ingest": rss_after,
            "ingested": ingest,
            "ingest_s": ingest_s,
            "sessions_loaded": sessions_loaded,
            "query_cold_s": cold,
            "query_s": warm,
            "query_events": got,
        }
    )
    mb = 2**20
    rows.append(
        C.row(
            "4 history",
            f"dataset: {total:,} events, {info['sessions']} sessions, "
            f"{info['bytes'] / 2**30:.2f} GiB (written in {info['generate_s']:.0f} s)",
            f"{sessions_loaded} sessions loaded",
            "",
            "",
        )
    )
    rows.append(
        C.row(
            "4 history",
            "start -> healthy, 1M events on disk (empty home)",
            f"{h:.2f} s ({e:.2f} s)",
            f"<= {T_HEALTHY:g} s",
            C.verdict(h, T_HEALTHY),
        )
    )
    rows.append(
        C.row(
            "4 history",
            "RSS after start",
            f"{max(rss_start) / mb:.0f} MB",
            f"<= {T_RSS // mb} MB",
            C.verdict(max(rss_start), T_RSS),
        )
    )
    rows.append(
        C.row(
            "4 history",
            f"RSS after ingesting {ingest:,} more events live",
            f"{rss_after / mb:.0f} MB",
            f"<= {T_RSS // mb} MB",
            C.verdict(rss_after, T_RSS),
        )
    )
    qp50 = C.pct(warm, 50)
    rows.append(
        C.row(
            "4 history",
            "last 500 events of the 100k session, p50/p95 (cold)",
            f"{qp50 * 1000:.1f} / {C.pct(warm, 95) * 1000:.1f} ms ({cold * 1000:.0f} ms)"
            + ("" if got == 500 else f" [{got} returned!]"),
            f"<= {T_QUERY * 1000:g} ms",
            C.verdict(qp50, T_QUERY),
        )
    )
    result["rows"] = rows
    result["charts"] = {"4 history: last-500 query": {"GET ...events?limit=500": warm}}
    return result


if __name__ == "__main__":
    C.standalone(run)
