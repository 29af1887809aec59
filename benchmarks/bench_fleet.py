"""Benchmark 6 — the fleet: N simulated machines through one Redis into one monitor (issue 14).

How many machines one monitor holds with p99 hook -> dashboard latency <= 1 s and no
loss. One throw-away redis-server on a free port (never the machine's own Redis), one
real daemon in mode ``redis`` (persistence on, as deployed), and one real WebSocket
client on the daemon's WebSocket (trio-websocket, in a process of its own: this file
run with ``--ws-client``) that receives every event, as a dashboard does (snapshot,
then every ``event``/``events`` and ``session_update`` message).

The machines. Each simulated machine has SESSIONS Claude Code sessions; each session
runs turns: ``UserPromptSubmit``, then a burst of 2-10 ``PreToolUse``/``PostToolUse``
pairs spread over 1-2 s, then ``Stop``, then idle, so that a session averages
RATE events/s (a turn of k pairs is 2k + 2 events; the time to the next turn is
(2k + 2) / RATE, times a random factor of mean 1). A session's first turn starts at a
random point of its cycle, so the load is spread, not in step; a session seen for the
first time starts with ``SessionStart``. The payloads are the real Claude Code's, from
``tests/fixtures/real-cli/*.jsonl`` (ids, session, paths filled in; a pre and its post
share a fresh ``tool_use_id``). Every event is written the way the hook writes it in
Redis mode: the envelope of ``hook.wire.envelope`` (secrets masked by
``core.redact.Redactor``, as ``hook.process`` does; ``machineId`` the simulated
machine's name) delivered by ``hook.resp.deliver_redis``: a new TCP connection per
event, XADD to the machine's own stream + PUBLISH + SADD in one round trip, closed.
What the hook would spool (a delivery error) is counted, not sent again.

The generators are BENCH_FLEET_WORKERS processes (default 2: the rest of the CPU is
the monitor's and Redis's; this file run with ``--worker``), each
simulating a share of the machines from one loop of timers. Not a Python process per
event, as Claude Code runs the hook: at hundreds of machines that is thousands of
interpreter starts a second, more than this 2-core machine has for everything, so the
figure would be the spawns', not the monitor's (what one hook run costs on its own
machine is ``bench_hook``'s case). Each event carries ``bench_k`` (a unique key) and
``bench_sent_ns`` (``time.time_ns()`` just before ``deliver_redis``: the connection
is part of the latency, as it is for the hook) as the first keys of its payload; the
client takes its receive time as each message arrives (one clock: the same machine).

Steps: N machines (a superset of the last step's: the fleet grows; earlier machines
keep their streams and sessions), each for BENCH_FLEET_SECONDS of sending (20; quick:
8), then a drain of at
most DRAIN_S until every sent key has arrived. Per step: offered and sent events/s,
p50/p99/max latency, lost (sent, never received) and duplicates (received twice),
delivery errors, the CPU (of one core) over the sending window of the daemon (and its
part in the kernel), redis-server, the client, the generators and every other process
on the machine (it is shared: read the figures with it), latency per 2 s of the step
(does a backlog build?), and whether the generators kept their schedule (how late each
event was sent against its plan: p99 <= SCHEDULE_SLACK_S, and every planned event
sent). A step passes with p99 <= 1 s, nothing lost, no duplicates. The stepping stops at
the first step that fails, or whose generators fell behind (then the figure is the
generators' limit, not the monitor's, and the row says so), or past the time budget.
The result: the largest N that passed; and the Redis memory an entry takes (for
sizing ``redis.streamMaxLen``).

BENCH_FLEET_PYSPY=1 (or py-spy's path; py-spy is not a bench dependency): each step's
wall-clock samples of the daemon's Trio thread, idle included, in
``results/fleet-pyspy-<N>.txt``, summed by part (``PROFILE_PARTS``) in the JSON.

    .venv/bin/python benchmarks/bench_fleet.py    # BENCH_QUICK=1: ~35 s; full: ~2 min
    BENCH_FLEET_STEPS=100,400,1600 (machines), BENCH_FLEET_SECONDS (per step),
    BENCH_FLEET_WORKERS (generator processes), BENCH_FLEET_BUDGET (seconds of stepping:
    45 quick, 165 full)
"""

from __future__ import annotations

import heapq
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402
from bench_hotpath import machine_busy  # noqa: E402

NAME = "fleet"
TITLE = "6 fleet"
TARGET_MACHINES = 400  # what one monitor must hold (p99 <= 1 s, no loss)
P99_MAX_S = 1.0
SESSIONS = 3  # per machine
RATE = 0.5  # events/s per session, on average
PAIRS = (2, 10)  # tool calls in a turn's burst
BURST_S = (1.0, 2.0)  # how long the burst lasts
SCHEDULE_SLACK_S = 0.1  # a generator later than this (p99) did not keep its schedule
DRAIN_S = 15.0  # after sending: the longest wait for the last events
STREAM = "contextuate:events:stream"
HOLE = b"1111111111111111111"  # 19 digits, replaced by time.time_ns() just before sending
EVENT_RE = re.compile(rb'"bench_k":"([^"]+)","bench_sent_ns":(\d+)')
HEAD_RE = re.compile(rb'^\{"type":"(events?|caught_up|resume|session_update|snapshot)"')

# Up to the first failure (or the budget): the full run's last steps come after the
# limit measured here (~200-300 machines), the quick run's bracket it.
QUICK_STEPS = (50, 200, 400, 800)
FULL_STEPS = (25, 50, 100, 200, 300, 400, 600, 800, 1200, 1600)


def _steps() -> list[int]:
    raw = os.environ.get("BENCH_FLEET_STEPS")
    if raw:
        return [int(x) for x in raw.split(",") if x.strip()]
    return list(QUICK_STEPS if C.QUICK else FULL_STEPS)


def machine_name(i: int) -> str:
    return f"fleet-{i:05d}"


# --- the payloads (the real Claude Code's) ---------------------------------------------
def templates() -> dict:
    """Payloads from ``tests/fixtures/real-cli``: lists per hook, and (pre, post) pairs
    that share a tool_use_id."""
    real = os.path.join(C.FIXTURES, "real-cli")
    by_hook: dict[str, list[dict]] = {}
    for name in sorted(os.listdir(real)):
        if not name.endswith(".jsonl"):
            continue
        with open(os.path.join(real, name), encoding="utf-8") as f:
            for line in f:
                stdin = json.loads(line).get("stdin") if line.strip() else None
                if isinstance(stdin, dict):
                    by_hook.setdefault(stdin.get("hook_event_name"), []).append(stdin)
    posts = {p.get("tool_use_id"): p for p in by_hook.get("PostToolUse", [])}
    pairs = [(p, posts[p["tool_use_id"]]) for p in by_hook.get("PreToolUse", []) if p.get("tool_use_id") in posts]
    return {
        "start": by_hook["SessionStart"],
        "prompt": by_hook["UserPromptSubmit"],
        "stop": by_hook["Stop"],
        "pairs": pairs,
    }


class Session:
    __slots__ = ("machine", "sid", "transcript", "cwd", "started", "turn")

    def __init__(self, machine: str, index: int, new: bool) -> None:
        self.machine = machine
        self.sid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"contextuate-bench-fleet/{machine}/{index}"))
        project = f"proj-{index}"
        self.cwd = f"/home/dev/projects/{project}"
        self.transcript = f"/home/dev/.claude/projects/-home-dev-projects-{project}/{self.sid}.jsonl"
        self.started = not new  # a machine of an earlier step: its sessions are under way
        self.turn = 0


def _fill(tpl: dict, s: Session, **extra) -> dict:
    p = dict(tpl, session_id=s.sid, transcript_path=s.transcript, cwd=s.cwd)
    p.update(extra)
    return p


def plan_turn(s: Session, t: float, tpl: dict, rng: random.Random) -> tuple[list[tuple[float, dict]], float]:
    """One turn of a session from ``t`` (epoch s): [(due, payload)] and when its next turn starts."""
    out: list[tuple[float, dict]] = []
    if not s.started:
        s.started = True
        out.append((t, _fill(rng.choice(tpl["start"]), s)))
        t += 0.05
    s.turn += 1
    prompt_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    out.append((t, _fill(rng.choice(tpl["prompt"]), s, prompt_id=prompt_id)))
    k = rng.randint(*PAIRS)
    burst = rng.uniform(*BURST_S)
    gap = burst / k
    for i in range(k):
        pre, post = rng.choice(tpl["pairs"])
        tid = "toolu_bench" + format(rng.getrandbits(64), "016x")
        due = t + 0.2 + i * gap
        out.append((due, _fill(pre, s, tool_use_id=tid)))
        out.append((due + rng.uniform(0.3, 0.9) * gap, _fill(post, s, tool_use_id=tid)))
    out.append((t + 0.2 + burst + 0.3, _fill(rng.choice(tpl["stop"]), s)))
    events = 2 + 2 * k
    return out, t + events / RATE * rng.uniform(0.5, 1.5)


# --- a generator process ------------------------------------------------------------------
def worker_main(args: dict) -> None:
    """Simulate machines ``args['first']`` .. ``args['last'] - 1`` from ``t0`` for ``seconds``:
    one heap of timers, each event delivered as the hook delivers it. Writes
    ``key sent_ns lag_ns ok`` per event to ``out``; prints a JSON summary.

    Whole on purpose: the timer loop is the generator's hot path, and its cost is what
    decides whether the generator keeps its schedule."""
    from contextuate_trio.core.redact import Redactor
    from contextuate_trio.hook import resp
    from contextuate_trio.hook.paths import new_id
    from contextuate_trio.hook.wire import envelope

    rng = random.Random(args["seed"])
    tpl = templates()
    rs = resp.redis_settings({"redis": {"host": "127.0.0.1", "port": args["port"]}})
    redactor = Redactor()
    t0, end = args["t0"], args["t0"] + args["seconds"]
    heap: list = []
    n_timer = 0
    for m in range(args["first"], args["last"]):
        machine = machine_name(m)
        for i in range(SESSIONS):
            s = Session(machine, i, new=m >= args["known"])
            heapq.heappush(heap, (t0 + rng.uniform(0, (2 + sum(PAIRS)) / RATE), n_timer, s, None))
            n_timer += 1
    prefix = f"{args['step']}.{args['worker']}."
    n = sent = failed = 0
    lags: list[int] = []
    errors: dict[str, int] = {}
    cpu0 = time.process_time()
    with open(args["out"], "w", buffering=1 << 20) as out:
        while heap:
            due = heap[0][0]
            if due >= end:
                break
            now = time.time()
            if due > now:
                time.sleep(min(due - now, 0.05))
                continue
            _, _, s, payload = heapq.heappop(heap)
            if payload is None:  # the session's next turn: plan it
                turn, next_turn = plan_turn(s, due, tpl, rng)
                for d, p in turn:
                    heapq.heappush(heap, (d, n_timer, s, p))
                    n_timer += 1
                heapq.heappush(heap, (next_turn, n_timer, s, None))
                n_timer += 1
                continue
            key = prefix + str(n)
            n += 1
            raw = b'{"bench_k":"%s","bench_sent_ns":%s,%s' % (
                key.encode(),
                HOLE,
                json.dumps(payload, separators=(",", ":")).encode()[1:],
            )
            line = envelope(raw, new_id(), time.time_ns() // 1_000_000, s.machine, None, False, redactor)
            stamp = time.time_ns()
            why = resp.deliver_redis(
                rs, [line.rstrip(b"\n").replace(HOLE, b"%d" % stamp)], time.monotonic() + 1.0, s.machine
            )
            lag = stamp - int(due * 1e9)
            lags.append(lag)
            if why:
                failed += 1
                errors[why[:60]] = errors.get(why[:60], 0) + 1
            else:
                sent += 1
            out.write(f"{key} {stamp} {lag} {0 if why else 1}\n")
    lags.sort()
    print(
        json.dumps(
            {
                "planned": n,
                "sent": sent,
                "failed": failed,
                "errors": errors,
                "lag_p50_s": C.pct(lags, 50) / 1e9 if lags else None,
                "lag_p99_s": C.pct(lags, 99) / 1e9 if lags else None,
                "lag_max_s": lags[-1] / 1e9 if lags else None,
                "cpu_s": time.process_time() - cpu0,
                "left_behind": sum(1 for h in heap if h[0] < end),
            }
        ),
        flush=True,
    )


# --- the dashboard: one WebSocket client ---------------------------------------------------
def ws_client_main(url: str, out_path: str, stop_file: str) -> None:
    """Receive everything (a snapshot, then live messages); per event ``key latency_ns``
    to ``out_path`` (flushed every 0.2 s); READY once the snapshot is in; on the stop
    file, a JSON summary (messages by type, bytes, CPU)."""
    import trio
    from trio_websocket import ConnectionClosed, open_websocket_url

    counts: dict[str, int] = {}
    summary: dict = {"messages": counts, "bytes": 0, "closed": None}

    async def main() -> None:
        cpu0 = time.process_time()
        out = open(out_path, "wb", buffering=0)  # noqa: ASYNC230, SIM115 - a bench client's own log
        buf: list[bytes] = []
        last_flush = time.monotonic()
        try:
            async with open_websocket_url(url, message_queue_size=0, max_message_size=256 * 1024 * 1024) as ws:
                while True:
                    raw = await ws.get_message()
                    if isinstance(raw, str):
                        raw = raw.encode()
                    head = HEAD_RE.match(raw)
                    kind = head.group(1).decode() if head else "other"
                    counts[kind] = counts.get(kind, 0) + 1
                    if kind == "snapshot":
                        break
                print("READY", flush=True)
                while True:
                    raw = None
                    with trio.move_on_after(0.2):
                        raw = await ws.get_message()
                    now = time.time_ns()
                    if raw is not None:
                        if isinstance(raw, str):
                            raw = raw.encode()
                        summary["bytes"] += len(raw)
                        head = HEAD_RE.match(raw)
                        kind = head.group(1).decode() if head else "other"
                        counts[kind] = counts.get(kind, 0) + 1
                        if kind in ("event", "events"):
                            for m in EVENT_RE.finditer(raw):
                                buf.append(b"%s %d\n" % (m.group(1), now - int(m.group(2))))
                    if buf and (raw is None or time.monotonic() - last_flush >= 0.2):
                        out.write(b"".join(buf))
                        buf.clear()
                        last_flush = time.monotonic()
                    if raw is None and os.path.exists(stop_file):  # noqa: ASYNC240 - a bench client's stop file
                        break
        except ConnectionClosed as exc:
            summary["closed"] = f"{exc.reason.code} {exc.reason.reason}"
        except OSError as exc:
            summary["closed"] = f"{type(exc).__name__}: {exc}"
        finally:
            if buf:
                out.write(b"".join(buf))
            out.close()
            summary["cpu_s"] = time.process_time() - cpu0
            print(json.dumps(summary), flush=True)

    trio.run(main)


class Received:
    """What the client wrote so far (read incrementally): key -> latency (s), duplicates."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0
        self.tail = b""
        self.lat: dict[str, float] = {}
        self.dupes: dict[str, int] = {}  # key -> times received beyond the first

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            return
        self.offset += len(chunk)
        data = self.tail + chunk
        lines = data.split(b"\n")
        self.tail = lines.pop()
        for line in lines:
            key, _, ns = line.partition(b" ")
            k = key.decode()
            if k in self.lat:
                self.dupes[k] = self.dupes.get(k, 0) + 1
            else:
                self.lat[k] = int(ns) / 1e9


# --- the driver ---------------------------------------------------------------------------------
def _read_sent(path: str) -> tuple[dict[str, int], int]:
    """A worker's log: key -> send stamp (ns) of the events Redis took, and the count refused."""
    sent: dict[str, int] = {}
    failed = 0
    with open(path) as f:
        for line in f:
            key, stamp, _lag, ok = line.split()
            if ok == "1":
                sent[key] = int(stamp)
            else:
                failed += 1
    return sent, failed


def _cpu(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds of each process, and the monitor's in the kernel (``monitor_sys``)."""
    out = {}
    for name, pid in pids.items():
        try:
            out[name] = C.cpu_seconds(pid)
        except OSError:
            out[name] = float("nan")
    try:
        with open(f"/proc/{pids['monitor']}/stat") as f:
            out["monitor_sys"] = int(f.read().rsplit(")", 1)[1].split()[12]) / os.sysconf("SC_CLK_TCK")
    except OSError:
        out["monitor_sys"] = float("nan")
    return out


def _spawn_workers(step: int, n: int, known: int, port: int, seconds: float, home: str, procs: list) -> tuple:
    workers = max(1, min(C.knob("fleet_workers", 2, 2), n))
    t0 = time.time() + 1.5  # the workers import and plan meanwhile
    spawned = []
    for w in range(workers):
        args = {
            "step": step,
            "worker": w,
            "first": n * w // workers,
            "last": n * (w + 1) // workers,
            "known": known,
            "port": port,
            "t0": t0,
            "seconds": seconds,
            "seed": step * 1000 + w,
            "out": os.path.join(home, f"fleet-sent-{step}-{w}.txt"),
        }
        p = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(args)],
            stdout=subprocess.PIPE,
            cwd=C.REPO,
            text=True,
        )
        procs.append(p)
        spawned.append((p, args))
    return t0, spawned


def run_step(step: int, n: int, known: int, ctx: dict) -> dict:
    """One step: N machines sending for ``seconds``, then the drain; the figures.

    Whole on purpose: it is one timeline (spawn, CPU at the window's edges, the
    workers' results, the drain, the verdict) read top to bottom."""
    seconds = ctx["seconds"]
    t0, spawned = _spawn_workers(step, n, known, ctx["port"], seconds, ctx["home"], ctx["procs"])
    time.sleep(max(t0 - time.time(), 0))
    cpu0, busy0 = _cpu(ctx["pids"]), machine_busy()
    spy = _start_pyspy(ctx, n, seconds)
    time.sleep(max(t0 + seconds - time.time(), 0))
    cpu1, busy1 = _cpu(ctx["pids"]), machine_busy()
    gen: list[dict] = []
    sent: dict[str, int] = {}
    failed = 0
    for p, args in spawned:
        out, _ = p.communicate(timeout=seconds + 120)
        lines = [x for x in out.splitlines() if x.startswith("{")]
        gen.append(json.loads(lines[-1]) if lines else {"error": f"worker exited {p.returncode}"})
        s, f = _read_sent(args["out"])
        sent.update(s)
        failed += f
    t_end = time.time()
    rcv: Received = ctx["received"]
    while True:
        rcv.poll()
        missing = [k for k in sent if k not in rcv.lat]
        if not missing or time.time() - t_end > DRAIN_S:
            break
        time.sleep(0.1)
    drain_s = time.time() - t_end
    lat = [rcv.lat[k] for k in sent if k in rcv.lat]
    prefix = f"{step}."
    dupes = sum(c for k, c in rcv.dupes.items() if k.startswith(prefix))
    unknown = sum(1 for k in rcv.lat if k.startswith(prefix) and k not in sent)  # refused by Redis, yet arrived
    cpu = {k: (cpu1[k] - cpu0[k]) / seconds for k in cpu0}
    cpu["generators"] = sum(g.get("cpu_s", 0.0) for g in gen) / seconds
    cpu["other_processes"] = max(0.0, (busy1 - busy0) / seconds - sum(v for k, v in cpu.items() if k != "monitor_sys"))
    lag_p99 = max((g.get("lag_p99_s") or 0.0) for g in gen)
    behind = sum(g.get("left_behind", 0) for g in gen)
    kept = all("error" not in g for g in gen) and lag_p99 <= SCHEDULE_SLACK_S and behind == 0
    summ = C.summary(lat)
    timeline = _timeline(sent, rcv.lat, t0)
    ok = bool(lat) and summ["p99"] <= P99_MAX_S and not missing and not dupes
    stored = ctx["daemon"].get_json("/api/status")
    return {
        "step": step,
        "machines": n,
        "sessions": n * SESSIONS,
        "seconds": seconds,
        "offered_eps": n * SESSIONS * RATE,
        "planned": sum(g.get("planned", 0) for g in gen),
        "sent": len(sent),
        "sent_eps": len(sent) / seconds,
        "delivery_errors": failed,
        "received": len(lat),
        "lost": len(missing),
        "lost_examples": missing[:5],
        "duplicates": dupes,
        "received_not_sent": unknown,
        "drain_s": drain_s,
        "latency_s": summ,
        "cpu": cpu,
        "generators": gen,
        "generator_lag_p99_s": lag_p99,
        "generators_kept_schedule": kept,
        "passed": ok,
        "events_stored": stored.get("eventsStored"),
        "timeline": timeline,
        "profile": _pyspy_result(spy),
    }


# Where the Trio thread's time goes (BENCH_FLEET_PYSPY=1, or the path of py-spy):
# wall-clock samples of the daemon's main thread (idle included: a loop that is never
# idle is saturated, whether by CPU or by system calls waiting on the disk), each put
# in the first part whose frame it holds.
PROFILE_PARTS = (
    ("idle (waiting in epoll)", "EpollIOManager.get_events"),
    ("redis checkpoint file rewritten (every stream's)", "RedisSource._save_checkpoints"),
    ("session metas written", "FileStore.save_sessions"),
    ("events written", "FileStore.append"),
    ("WebSocket fan-out", "contextuate_trio/web/ws_server.py"),
    ("broker pipeline (parse, sessions, masking)", "contextuate_trio/runtime/broker.py"),
    ("redis source, the rest (submit, survey, channel)", "contextuate_trio/sources/redis.py"),
)


def _start_pyspy(ctx: dict, n: int, seconds: float) -> tuple | None:
    want = os.environ.get("BENCH_FLEET_PYSPY", "")
    if want in ("", "0"):
        return None
    exe = shutil.which("py-spy") if want == "1" else want
    if not exe:
        print("[fleet] BENCH_FLEET_PYSPY: no py-spy found", flush=True)
        return None
    path = os.path.join(C.RESULTS, f"fleet-pyspy-{n}.txt")
    os.makedirs(C.RESULTS, exist_ok=True)
    argv = [exe, "record", "-p", str(ctx["pids"]["monitor"]), "-d", str(max(int(seconds) - 1, 1))]
    argv += ["-r", "100", "--idle", "--threads", "--nonblocking", "-f", "raw", "-o", path]
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ctx["procs"].append(p)
    return p, path


def _pyspy_result(spy: tuple | None) -> dict | None:
    """The main thread's samples by PROFILE_PARTS (shares of its wall time) and its top frames."""
    if spy is None:
        return None
    p, path = spy
    p.wait(60)
    parts: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    try:
        with open(path) as f:
            for line in f:
                stack, _, count = line.rstrip().rpartition(" ")
                if "MainThread" not in stack.split(";", 1)[0]:
                    continue
                k = int(count)
                total += k
                part = next(
                    (name for name, mark in PROFILE_PARTS if mark in stack), "other (trio's loop, thread hand-offs)"
                )
                parts[part] = parts.get(part, 0) + k
                leaf = re.sub(r":\d+\)$", ")", stack.rsplit(";", 1)[-1])
                own[leaf] = own.get(leaf, 0) + k
    except OSError:
        return None
    share = {k: round(v / total, 3) for k, v in sorted(parts.items(), key=lambda kv: -kv[1])} if total else {}
    top = sorted(own.items(), key=lambda kv: -kv[1])[:12]
    return {"file": path, "samples": total, "parts": share, "top_self": [(f, round(v / total, 3)) for f, v in top]}


def _timeline(sent: dict[str, int], lat: dict[str, float], t0: float) -> list[dict]:
    """Per 2 s of send time: events sent, received, p50 and p99 (does a backlog build?)."""
    buckets: dict[int, list] = {}
    for k, stamp in sent.items():
        buckets.setdefault(int((stamp / 1e9 - t0) // 2), []).append(lat.get(k))
    out = []
    for b in sorted(buckets):
        got = [x for x in buckets[b] if x is not None]
        out.append(
            {
                "from_s": 2 * b,
                "sent": len(buckets[b]),
                "received": len(got),
                "p50_ms": round(C.pct(got, 50) * 1000, 1) if got else None,
                "p99_ms": round(C.pct(got, 99) * 1000, 1) if got else None,
            }
        )
    return out


def _start_client(d: C.Daemon, procs: list) -> tuple[subprocess.Popen, str, str]:
    out = os.path.join(d.home, "fleet-received.txt")
    stop = os.path.join(d.home, "fleet-stop")
    p = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--ws-client", d.ws_url + "?limit=0", out, stop],
        stdout=subprocess.PIPE,
        cwd=C.REPO,
        text=True,
    )
    procs.append(p)
    line = p.stdout.readline()
    if "READY" not in line:
        raise RuntimeError(f"the WebSocket client did not connect: {line!r}\n{d.log_tail()}")
    return p, out, stop


def _redis_facts(client) -> dict:
    """Memory per stream entry (for sizing redis.streamMaxLen) and Redis's own counters."""
    info = client.info()
    key = f"{STREAM}:{{{machine_name(0)}}}"
    length = client.xlen(key) or 0
    usage = client.memory_usage(key, samples=0) or 0
    return {
        "used_memory": info.get("used_memory"),
        "stream_entries_machine0": length,
        "stream_bytes_per_entry": usage / length if length else None,
        "total_connections_received": info.get("total_connections_received"),
    }


def _step_row(r: dict) -> dict:
    lat = r["latency_s"]
    cpu = r["cpu"]
    gen = "" if r["generators_kept_schedule"] else f"; generators behind (p99 {r['generator_lag_p99_s'] * 1000:.0f} ms)"
    value = (
        f"{r['sent_eps']:,.0f} ev/s; p50/p99/max {C.ms(lat['p50'], 0)} / {C.ms(lat['p99'], 0)} / {C.ms(lat['max'], 0)}; "
        f"lost {r['lost']}, dup {r['duplicates']}; CPU monitor {cpu['monitor']:.0%}, redis {cpu['redis']:.0%}, "
        f"generators {cpu['generators']:.0%}, others {cpu['other_processes']:.0%}{gen}"
    )
    status = "ok" if r["passed"] else "FAILED"
    return C.row(
        TITLE,
        f"{r['machines']:,} machines x {SESSIONS} sessions ({r['offered_eps']:,.0f} ev/s offered)",
        value,
        "",
        status,
    )


def verdict(steps: list[dict]) -> tuple[str, str, int | None]:
    """(value, status, machines held) of the summary row."""
    held = None
    why = "every step run passed: the real limit is higher"
    for r in steps:
        if not r["generators_kept_schedule"]:
            why = f"stopped at {r['machines']:,}: the generators fell behind there (their limit, not the monitor's)"
            if r["passed"]:
                held = r["machines"]
            break
        if not r["passed"]:
            lat = r["latency_s"]["p99"]
            why = f"failed at {r['machines']:,}: p99 {C.ms(lat, 0)}, lost {r['lost']}, dup {r['duplicates']}"
            break
        held = r["machines"]
    if held is None:
        return f"none ({why})", "MISSED", None
    r = next(x for x in steps if x["machines"] == held)
    value = f"{held:,} machines, {r['sent_eps']:,.0f} ev/s ({why})"
    return value, C.verdict(held, TARGET_MACHINES, higher_is_better=True), held


def run() -> dict:
    """The whole case: Redis, the daemon, the client, then the steps (see the module)."""
    import redis

    seconds = C.knob("fleet_seconds", 8, 20)
    budget = C.knob("fleet_budget", 45, 165)
    steps_planned = _steps()
    with C.redis_server() as port:
        if port is None:
            return {"name": NAME, "rows": [C.row(TITLE, "fleet through Redis", "n/a (no redis-server)")]}
        rclient = redis.Redis(port=port)
        cfg = {"mode": "redis", "redis": {"host": "127.0.0.1", "port": port}}
        with C.processes() as procs, C.Daemon(extra_config=cfg) as d:
            client, out, stop = _start_client(d, procs)
            ctx = {
                "port": port,
                "home": d.home,
                "procs": procs,
                "seconds": seconds,
                "daemon": d,
                "received": Received(out),
                "pids": {"monitor": d.pid, "redis": int(rclient.info()["process_id"]), "client": client.pid},
            }
            started = time.time()
            steps: list[dict] = []
            known = 0
            for i, n in enumerate(steps_planned):
                if steps and time.time() - started + seconds + 6 > budget:
                    break
                r = run_step(i, n, known, ctx)
                steps.append(r)
                known = max(known, n)
                print(f"[fleet] {_step_row(r)['metric']}: {_step_row(r)['value']} {_step_row(r)['status']}", flush=True)
                if not r["passed"] or not r["generators_kept_schedule"]:
                    break
            facts = _redis_facts(rclient)
            log_problems = [x for x in d.log_tail(400).splitlines() if " WARNING " in x or " ERROR " in x]
            open(stop, "w").close()
            cout, _ = client.communicate(timeout=30)
            client_summary = json.loads([x for x in cout.splitlines() if x.startswith("{")][-1])
    value, status, held = verdict(steps)
    rows = [_step_row(r) for r in steps]
    rows.append(
        C.row(
            TITLE,
            "machines one monitor holds: p99 hook -> dashboard <= 1 s, no loss",
            value,
            f">= {TARGET_MACHINES:,} machines",
            status,
        )
    )
    per_entry = facts.get("stream_bytes_per_entry")
    rows.append(
        C.row(
            TITLE,
            "Redis memory per stream entry (for redis.streamMaxLen)",
            f"{per_entry:,.0f} B" if per_entry else "n/a",
        )
    )
    return {
        "name": NAME,
        "rows": rows,
        "held_machines": held,
        "steps": steps,
        "redis": facts,
        "client": client_summary,
        "daemon_log_problems": log_problems[:50],
        "config": {"sessions": SESSIONS, "rate": RATE, "pairs": PAIRS, "burst_s": BURST_S, "seconds": seconds},
    }


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        worker_main(json.loads(sys.argv[2]))
    elif len(sys.argv) > 4 and sys.argv[1] == "--ws-client":
        ws_client_main(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        C.standalone(run)


if __name__ == "__main__":
    main()
