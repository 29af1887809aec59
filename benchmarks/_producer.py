"""A producer process: streams complete events (NDJSON) into the daemon's socket.

Not a benchmark by itself; the ingest and latency benchmarks start several of these.
It builds all its lines before the clock starts, waits for ``--start-at`` (epoch
seconds) so producers begin together, then writes them as fast as the socket takes
them (or, with ``--rate``, paced at that many events per second). Never reads replies.

With ``--stamp``, each event carries ``data.bench_sent_ns`` = time.time_ns() taken
just before its line is written, so a receiver can measure the latency.
Prints one JSON line: {"sent", "t_start", "t_end"} (epoch seconds).
"""

import argparse
import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def new_id() -> str:
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"


def lines_for(args, payload: dict) -> list:
    """(prefix, suffix) pairs when stamping, else complete lines."""
    out = []
    sessions = [f"bench-{args.tag}-s{i}" for i in range(args.sessions)]
    ts = int(time.time() * 1000)
    for i in range(args.count):
        sid = sessions[i % len(sessions)]
        data = dict(payload, session_id=sid, tool_use_id=f"toolu_{args.tag}_{i}")
        ev = {
            "id": new_id(),
            "timestamp": ts + i // 20,  # stamped per event, as hooks do (~20 per ms here)
            "sessionId": sid,
            "machineId": "bench-host",
            "workingDirectory": payload.get("cwd"),
            "eventType": "tool_call",
            "hookType": "PreToolUse",
            "toolName": payload.get("tool_name"),
            "toolUseId": data["tool_use_id"],
            "data": data,
        }
        if args.stamp:
            data["bench_sent_ns"] = 0
            text = json.dumps(ev, separators=(",", ":"))
            head, tail = text.split('"bench_sent_ns":0', 1)
            out.append((head + '"bench_sent_ns":', tail + "\n"))
        else:
            out.append(json.dumps(ev, separators=(",", ":")) + "\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--tag", default="p0")
    ap.add_argument("--start-at", type=float, default=0.0)
    ap.add_argument("--rate", type=float, default=0.0, help="events/s; 0 = as fast as possible")
    ap.add_argument("--stamp", action="store_true")
    ap.add_argument("--payload", required=True, help="a Claude Code payload (JSON)")
    args = ap.parse_args()
    payload = json.loads(args.payload)
    lines = lines_for(args, payload)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(args.socket)
    delay = args.start_at - time.time()
    if delay > 0:
        time.sleep(delay)
    t_start = time.time()
    if args.rate <= 0 and not args.stamp:
        blob = "".join(lines).encode()
        view = memoryview(blob)
        for i in range(0, len(blob), 1 << 18):
            sock.sendall(view[i : i + (1 << 18)])
    elif args.rate <= 0:
        for head, tail in lines:
            sock.sendall((head + str(time.time_ns()) + tail).encode())
    else:
        # Paced: at each tick send what is due by now, so the average rate holds even
        # when a sleep overshoots; events leave one by one, each stamped when it goes.
        sent = 0
        n = len(lines)
        while sent < n:
            due = min(n, int((time.time() - t_start) * args.rate) + 1)
            while sent < due:
                line = lines[sent]
                if args.stamp:
                    line = line[0] + str(time.time_ns()) + line[1]
                sock.sendall(line.encode())
                sent += 1
            time.sleep(max(0.0, (sent / args.rate) - (time.time() - t_start)))
    t_end = time.time()
    sock.close()
    print(json.dumps({"sent": len(lines), "t_start": t_start, "t_end": t_end}), flush=True)


if __name__ == "__main__":
    main()
