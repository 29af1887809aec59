"""Benchmark 2 — ingest throughput, and where the daemon's time goes.

P producer processes (benchmarks/_producer.py) stream complete events (contract shape,
a realistic PreToolUse payload as ``data``, 10 sessions each) as NDJSON into the
daemon's Unix socket, all starting at the same instant, persistence on. Measured:
events/s from the start until the daemon has stored them all (polling /api/status),
and — once the WebSocket server exists — until each of K subscribers
(benchmarks/_ws_subscribers.py) has received every one of them. Also the daemon's CPU
time per event and its RSS afterwards.

Then the same load (a third of the events, no subscribers) with the daemon under cProfile
(benchmarks/_profiled_daemon.py): the top functions by own time, and the time
grouped by area (json, cattrs, store syscalls, trio, websocket...).

    .venv/bin/python benchmarks/bench_ingest.py   # BENCH_INGEST_EVENTS, BENCH_PRODUCERS, BENCH_SUBSCRIBERS
"""

from __future__ import annotations

import json
import os
import pstats
import select
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

NAME = "ingest"
TARGET = 50_000
NO_WS = "n/a, no WebSocket yet"


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    """One stdout line of a child, or '' after ``timeout``."""
    r, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline().decode() if r else ""


def start_subscribers(d: C.Daemon, k: int, expect: int, procs: list, **kw) -> subprocess.Popen:
    argv = [
        sys.executable,
        os.path.join(C.HERE, "_ws_subscribers.py"),
        "--url",
        d.ws_url,
        "--k",
        str(k),
        "--expect",
        str(expect),
    ]
    for key, value in kw.items():
        if value is True:
            argv.append("--" + key.replace("_", "-"))
        elif value not in (None, False):
            argv += ["--" + key.replace("_", "-"), str(value)]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs.append(p)
    if read_line(p, 30).strip() != "READY":
        raise RuntimeError("the WebSocket subscribers did not connect")
    return p


def subscribers_result(p: subprocess.Popen, timeout: float) -> dict:
    out, err = p.communicate(timeout=timeout)
    lines = out.decode().strip().splitlines()
    if not lines:
        raise RuntimeError(f"subscribers printed nothing: {err.decode()[-500:]}")
    return json.loads(lines[-1])


def start_producers(
    d: C.Daemon,
    n: int,
    producers: int,
    procs: list,
    *,
    start_in: float = 1.0,
    rate: float = 0.0,
    stamp: bool = False,
    tag: str = "p",
) -> float:
    payload = json.dumps(C.pre_tool_use_payload())
    t0 = time.time() + start_in
    for i in range(producers):
        argv = [
            sys.executable,
            os.path.join(C.HERE, "_producer.py"),
            "--socket",
            d.socket_path,
            "--count",
            str(n // producers),
            "--tag",
            f"{tag}{i}",
            "--start-at",
            repr(t0),
            "--payload",
            payload,
        ]
        if rate:
            argv += ["--rate", str(rate / producers)]
        if stamp:
            argv.append("--stamp")
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE))
    return t0


def one_run(n: int, producers: int, k: int, profile_out: str | None = None, rate: float = 0.0) -> dict:
    n -= n % producers
    argv = None
    if profile_out:
        argv = [sys.executable, os.path.join(C.HERE, "_profiled_daemon.py"), profile_out]
    with C.Daemon(argv=argv) as d, C.processes() as procs:
        subs = start_subscribers(d, k, n, procs) if k else None
        rss0 = C.rss_bytes(d.pid)
        cpu0 = C.cpu_seconds(d.pid)
        t0 = start_producers(d, n, producers, procs, rate=rate)
        d.wait_stored(n, timeout=600, poll=0.02)
        t_stored = time.time()
        cpu = C.cpu_seconds(d.pid) - cpu0
        out = {
            "events": n,
            "producers": producers,
            "subscribers": k,
            "paced_rate": rate or None,
            "stored_s": t_stored - t0,
            "stored_per_s": n / (t_stored - t0),
            "daemon_cpu_s": cpu,
            "daemon_cpu_us_per_event": cpu / n * 1e6,
            "rss_before": rss0,
            "rss_after": C.rss_bytes(d.pid),
        }
        if subs is not None:
            res = subscribers_result(subs, timeout=600)
            clients = res["clients"]
            out["ws_clients"] = [
                {k_: c.get(k_) for k_ in ("count", "seq", "first_seq", "closed")} for c in clients if c
            ]
            complete = all(c and c["count"] >= n and not c.get("closed") for c in clients)
            out["ws_all_received"] = complete
            if not complete:
                out["daemon_log"] = [x for x in d.log_tail(200).splitlines() if "drop" in x][-5:]
            if complete:
                t_ws = max(c["t_done"] for c in clients)
                out["delivered_s"] = t_ws - t0
                out["delivered_per_s"] = n / (t_ws - t0)
            out["daemon_cpu_s_incl_ws"] = C.cpu_seconds(d.pid) - cpu0
        return out


AREAS = [  # (area, substrings of pstats' "file:line(function)")
    ("epoll wait (idle)", ("select.epoll",)),
    ("websocket (trio-websocket, wsproto)", ("trio_websocket", "wsproto", "h11")),
    ("cattrs/attrs (event <-> dict)", ("cattrs", "<attrs generated", "attr/")),
    ("json encode/decode", ("json/", "_json", "json.")),
    (
        "store files (open/write/replace/stat)",
        (
            "posix.",
            "io.open",
            "_io.",
            "_IOBase",
            "BufferedWriter",
            "FileIO",
            "TextIOWrapper",
            "posixpath",
            "<frozen os>",
        ),
    ),
    ("trio scheduler + channels", ("/trio/",)),
    ("contextuate_trio.core.events", ("contextuate_trio/core/events.py",)),
    ("contextuate_trio.core.sessions", ("contextuate_trio/core/sessions.py",)),
    (
        "contextuate_trio.core (masking, redaction, dedupe)",
        ("contextuate_trio/core/masking.py", "contextuate_trio/core/redact.py", "contextuate_trio/core/dedupe.py"),
    ),
    (
        "contextuate_trio.runtime.broker + fanout",
        ("contextuate_trio/runtime/broker.py", "contextuate_trio/runtime/fanout.py"),
    ),
    ("contextuate_trio.runtime.store", ("contextuate_trio/runtime/store.py",)),
    ("contextuate_trio.core.wire + socket source", ("contextuate_trio/core/wire.py", "unix_socket.py")),
    ("contextuate_trio.web.ws", ("contextuate_trio/web/ws_server.py", "contextuate_trio/web/ws_protocol.py")),
]


def profile_summary(path: str, top: int = 12) -> dict:
    st = pstats.Stats(path)
    total = st.total_tt
    funcs = []
    areas: dict[str, float] = {}
    for (fname, line, func), (_cc, nc, tt, ct, _callers) in st.stats.items():
        label = f"{fname}:{line}({func})"
        short = (
            f"{os.path.relpath(fname, C.REPO) if fname.startswith(C.REPO) else os.path.basename(fname)}:{line}({func})"
            if not fname.startswith("~")
            else func
        )
        funcs.append((tt, ct, nc, short))
        area = next((a for a, keys in AREAS if any(k in label for k in keys)), None)
        if area is None and "contextuate_trio/" in fname:
            area = "contextuate_trio." + fname.split("contextuate_trio/", 1)[1][:-3].replace("/", ".")
        area = area or "other (imports, logging, ...)"
        areas[area] = areas.get(area, 0.0) + tt
    funcs = [f for f in funcs if "epoll" not in f[3]]
    funcs.sort(reverse=True)
    busy = total - areas.get("epoll wait (idle)", 0.0)
    return {
        "total_s": total,
        "busy_s": busy,
        "top_functions": [
            {"function": f, "tottime_s": tt, "cumtime_s": ct, "calls": nc, "share_of_busy": tt / busy if busy else 0}
            for tt, ct, nc, f in funcs[:top]
        ],
        "areas": sorted(
            (
                {"area": a, "tottime_s": t, "share_of_busy": t / busy if busy else 0}
                for a, t in areas.items()
                if a != "epoll wait (idle)"
            ),
            key=lambda x: -x["tottime_s"],
        ),
    }


def run() -> dict:
    n = C.knob("ingest_events", 60_000, 150_000)
    producers = C.knob("producers", 3, 3)
    k = C.knob("subscribers", 5, 5)
    ws = True  # the WebSocket fan-out is part of the daemon
    rows = []
    result: dict = {"name": NAME, "target_events_per_s": TARGET, "ws_available": ws}
    plain = one_run(n, producers, 0)
    result["no_subscribers"] = plain
    rows.append(
        C.row(
            "2 ingest",
            f"stored/s, {producers} producers, persistence on, no subscribers",
            f"{plain['stored_per_s']:,.0f} ev/s",
            "",
            "",
        )
    )
    rows.append(
        C.row(
            "2 ingest",
            "daemon CPU per event / RSS after",
            f"{plain['daemon_cpu_us_per_event']:.0f} us / {plain['rss_after'] / 2**20:.0f} MB",
            "",
            "",
        )
    )
    if ws:
        # Full speed first; if the subscribers cannot keep up (the daemon drops a client
        # that falls 10,000 messages behind), pace the producers lower until every
        # subscriber gets everything, and report that sustained rate.
        attempts = []
        for frac in (None, 0.5, 0.25, 0.1):
            rate = None if frac is None else plain["stored_per_s"] * frac
            try:
                count = n if rate is None else int(min(n // 2, rate * 6))  # paced: ~6 s
                r = one_run(count, producers, k, rate=rate or 0.0)
            except Exception as exc:  # the server exists but is not usable (yet)
                r = {"error": f"{type(exc).__name__}: {exc}", "paced_rate": rate}
            attempts.append(r)
            if r.get("ws_all_received"):
                break
        result["with_subscribers"] = attempts
        full, last = attempts[0], attempts[-1]
        if last.get("ws_all_received"):
            v = last["delivered_per_s"]
            how = "full speed" if last is full else f"paced at {last['paced_rate']:,.0f}/s"
            rows.append(
                C.row(
                    "2 ingest",
                    f"stored+delivered/s, {k} WebSocket subscribers get all ({how})",
                    f"{v:,.0f} ev/s",
                    f">= {TARGET:,}",
                    C.verdict(v, TARGET, True),
                )
            )
        else:
            rows.append(
                C.row(
                    "2 ingest",
                    f"stored+delivered/s, {k} WebSocket subscribers get all",
                    "none complete",
                    f">= {TARGET:,}",
                    "MISSED",
                )
            )
        if not full.get("ws_all_received"):
            if "error" in full:
                why = "error: " + full["error"][:60]
            else:
                got = min(c["count"] for c in full["ws_clients"])
                why = f"{got:,}/{full['events']:,} then dropped ({full['ws_clients'][0].get('closed')})"[:70]
            rows.append(C.row("2 ingest", f"{k} subscribers at full producer speed", why, "", ""))
    else:
        v = plain["stored_per_s"]
        rows.append(C.row("2 ingest", f"with {k} WebSocket subscribers", NO_WS, f">= {TARGET:,}", "n/a"))
        rows.append(
            C.row(
                "2 ingest",
                "stored/s (no subscribers) against the target",
                f"{v:,.0f} ev/s",
                f">= {TARGET:,}",
                C.verdict(v, TARGET, True),
            )
        )
    # The profile: the same load, fewer events (cProfile roughly doubles the cost).
    with C.temp_dir("ctx-bench-prof-") as tmp:
        prof = os.path.join(tmp, "daemon.prof")
        pn = max(producers, n // 3)
        # Full speed, no subscribers: where the time of the ingest path itself goes.
        profiled = one_run(pn, producers, 0, profile_out=prof)
        result["profiled_run"] = profiled
        result["profile"] = profile_summary(prof)
        os.makedirs(C.RESULTS, exist_ok=True)
        try:
            os.replace(prof, os.path.join(C.RESULTS, "ingest-daemon.prof"))
        except OSError:
            pass
    areas = result["profile"]["areas"][:4]
    rows.append(
        C.row(
            "2 ingest",
            "profile: top costs (share of busy CPU)",
            ", ".join(f"{a['area'].split(' (')[0]} {a['share_of_busy'] * 100:.0f}%" for a in areas),
            "",
            "",
        )
    )
    result["rows"] = rows
    return result


def print_profile(result: dict) -> None:
    p = result["profile"]
    print(
        f"\ndaemon profile ({p['busy_s']:.2f} s busy of {p['total_s']:.2f} s; "
        f"full stats: benchmarks/results/ingest-daemon.prof)"
    )
    print("  by area:")
    for a in p["areas"][:10]:
        print(f"    {a['share_of_busy'] * 100:5.1f}%  {a['area']}")
    print("  top functions (own time):")
    for f in p["top_functions"]:
        print(f"    {f['share_of_busy'] * 100:5.1f}%  {f['calls']:>8} calls  {f['function']}")


if __name__ == "__main__":
    C.check_env()
    res = run()
    print(C.format_table(res["rows"]))
    print_profile(res)
    print("\nresults:", C.write_json(NAME + ".json", res))
