"""K WebSocket subscribers in one Trio process, each of which must receive everything.

Not a benchmark by itself: bench_ingest.py and bench_latency.py start it. Protocol
(contract): on connect a ``snapshot``, then ``{"type":"event","seq","event"}`` or
``{"type":"events","seq","events":[...]}`` messages (others are ignored).

Prints ``READY`` once every client has its snapshot, then, when each client has
received ``--expect`` events (or ``--stop-file`` appears, or ``--timeout``), one JSON
line: per client the count, the last seq, whether it was closed early, and the
receive time (epoch ns) of every event (with ``--parse``) carrying ``data.bench_sent_ns`` (latency) or
``data.tool_use_id`` starting with ``--mark`` (hook probes).
"""

import argparse
import json
import os
import re
import sys
import time

import trio
from trio_websocket import ConnectionClosed, open_websocket_url

# Read in large pieces, as a browser does: trio-websocket reads 4 KiB at a time by
# default, and five clients in one process then cost a core of this 2-core machine.
RECEIVE_BYTES = 1 << 20
HEAD = re.compile(r'^\{"type":"(events?)","seq":(\d+),')
NOT_EVENTS = ('{"type":"session_update"', '{"type":"session_deleted"')


async def client(i: int, args, ready: list, results: list, all_ready: trio.Event) -> None:
    res = {"client": i, "count": 0, "seq": None, "first_seq": None, "closed": None, "lat_ns": [], "marks": {}}
    results[i] = res
    done_at = args.expect if args.expect > 0 else None
    try:
        async with open_websocket_url(
            args.url, message_queue_size=0, max_message_size=64 * 1024 * 1024, receive_buffer_size=RECEIVE_BYTES
        ) as ws:
            while True:
                msg = json.loads(await ws.get_message())
                if msg.get("type") == "snapshot":
                    res["first_seq"] = msg.get("seq")
                    break
            ready[i] = True
            if all(ready):
                all_ready.set()
            while done_at is None or res["count"] < done_at:
                with trio.move_on_after(0.2):
                    raw = await ws.get_message()
                    now = time.time_ns()
                    head = None if args.parse else HEAD.match(raw)
                    if head is not None:
                        # Counting only: the last seq says how many events arrived
                        # (the broker numbers every event), without decoding them all,
                        # so this process is not the bottleneck it measures.
                        res["seq"] = int(head.group(2))
                        res["count"] = res["seq"] - (res["first_seq"] or 0)
                        continue
                    if raw.startswith(NOT_EVENTS):  # (its sessions are not counted: no decoding)
                        continue
                    msg = json.loads(raw)
                    t = msg.get("type")
                    if t == "event":
                        evs = [msg.get("event") or {}]
                    elif t == "events":
                        evs = msg.get("events") or []
                    else:
                        continue
                    res["count"] += len(evs)
                    res["seq"] = msg.get("seq")
                    for ev in evs:
                        data = ev.get("data") or {}
                        sent = data.get("bench_sent_ns")
                        if sent:
                            res["lat_ns"].append(now - sent)
                        tid = data.get("tool_use_id")
                        if args.mark and isinstance(tid, str) and tid.startswith(args.mark):
                            res["marks"][tid] = now
                    continue
                if args.stop_file and os.path.exists(args.stop_file):  # noqa: ASYNC240 - a bench client polling its stop file
                    return
        res["t_done"] = time.time()
    except ConnectionClosed as exc:
        res["closed"] = f"{exc.reason.code} {exc.reason.reason}"
    except OSError as exc:
        res["closed"] = f"{type(exc).__name__}: {exc}"


async def main_async(args) -> None:
    ready = [False] * args.k
    results = [None] * args.k
    all_ready = trio.Event()
    with trio.move_on_after(args.timeout):
        async with trio.open_nursery() as n:
            for i in range(args.k):
                n.start_soon(client, i, args, ready, results, all_ready)

            async def announce():
                await all_ready.wait()
                print("READY", flush=True)

            n.start_soon(announce)
    if not all_ready.is_set():
        print("READY", flush=True)  # let the driver go on; the result says what failed
    print(json.dumps({"clients": results}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--expect", type=int, default=0)
    ap.add_argument("--mark", default="")
    ap.add_argument("--parse", action="store_true", help="decode every event (for latency)")
    ap.add_argument("--stop-file", default="")
    ap.add_argument("--timeout", type=float, default=300)
    trio.run(main_async, ap.parse_args())


if __name__ == "__main__":
    sys.exit(main())
