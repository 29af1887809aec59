"""Benchmark — the Stop hook with usage (Redis mode: the hook reads the transcript).

Runs ``<python3> -I -S hook_emit.py`` as Claude Code does, against a real
redis-server, interleaved with the bare interpreter and with a PreToolUse (which pays
only a substring test for usage), so noise hits every case alike:

- ``Stop, nothing new``: the transcript was read already (steady state)
- ``Stop, one turn``: ~12 new responses (~60 KB) appended before each run
- ``Stop, 4 MiB``: the per-run read budget, all new (the worst a run can do)

Also the import cost of the usage modules under ``-X importtime``.

    .venv/bin/python benchmarks/bench_usage_hook.py     # BENCH_QUICK=1 for fewer rounds

(A ``run()`` in the same shape as the others: add ``("usage_hook", bench_usage_hook)``
to run_all.BENCHES to have it in ``make bench``.)
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

NAME = "usage_hook"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOOK = os.path.join(ROOT, "hook_emit.py")
MODEL = "claude-sonnet-4-5-20250929"


def _line(i: int, pad: int = 3000) -> bytes:
    u = {
        "input_tokens": 3,
        "cache_creation_input_tokens": 500,
        "cache_read_input_tokens": 40000,
        "cache_creation": {"ephemeral_5m_input_tokens": 500, "ephemeral_1h_input_tokens": 0},
        "output_tokens": 200,
        "service_tier": "standard",
    }
    obj = {
        "parentUuid": "p",
        "isSidechain": False,
        "type": "assistant",
        "uuid": f"u{i}",
        "timestamp": "2025-10-01T12:00:00.000Z",
        "requestId": f"req_{i}",
        "message": {
            "model": MODEL,
            "id": f"msg_{i:08d}",
            "role": "assistant",
            "usage": u,
            "content": [{"type": "text", "text": "x" * pad}],
        },
    }
    tool = {
        "type": "user",
        "uuid": f"t{i}",
        "message": {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "y" * pad}]},
    }
    return (json.dumps(obj) + "\n" + json.dumps(tool) + "\n").encode()


def _redis():
    exe = shutil.which("redis-server")
    if not exe:
        return None, None
    port = C.free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.02)
    proc.kill()
    return None, None


def _timed(argv, stdin: bytes, env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, input=stdin, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - t0


def import_cost(python: str) -> dict:
    """Microseconds (self, best of 5) of the two modules a Stop adds to the hook's imports."""
    best: dict = {}
    for _ in range(5):
        r = subprocess.run(
            [
                python,
                "-I",
                "-S",
                "-X",
                "importtime",
                "-c",
                f"import sys; sys.path.insert(0, {ROOT!r}); import contextuate_trio.hook.process; "
                "import contextuate_trio.hook.usage",
            ],
            capture_output=True,
            text=True,
        )
        for line in r.stderr.splitlines():
            parts = [p.strip() for p in line.split("|")]
            if len(parts) == 3 and parts[2].strip() in ("contextuate_trio.core.usage", "contextuate_trio.hook.usage"):
                try:
                    us = int(parts[1])
                except ValueError:
                    continue
                name = parts[2].strip()
                best[name] = min(best.get(name, us), us)
    return best


def run(rounds=None) -> dict:
    rounds = rounds or C.knob("BENCH_USAGE_ROUNDS", 15, 60)
    python = C.real_python()
    rows = []
    proc, port = _redis()
    if proc is None:
        return {"name": NAME, "rows": [C.row(NAME, "Stop hook with usage", "n/a (no redis-server)")]}
    home = os.path.realpath(__import__("tempfile").mkdtemp(prefix="ctx-bench-usage-"))
    try:
        with open(os.path.join(home, "monitor.config.json"), "w") as f:
            json.dump({"mode": "redis", "redis": {"host": "127.0.0.1", "port": port}}, f)
        env = {"CONTEXTUATE_HOME": home, "PATH": "/usr/bin:/bin", "CONTEXTUATE_MACHINE_ID": "bench"}
        paths = {k: os.path.join(home, f"{k}.jsonl") for k in ("idle", "turn", "big")}
        counter = [0]

        def grow(path: str, n: int) -> None:
            with open(path, "ab") as f:
                for _ in range(n):
                    counter[0] += 1
                    f.write(_line(counter[0]))

        grow(paths["idle"], 50)
        one_turn = len(_line(1)) * 12
        per_big = (4 << 20) // len(_line(1))

        def stop(path):
            return json.dumps(
                {
                    "session_id": "s-" + os.path.basename(path),
                    "transcript_path": path,
                    "cwd": "/w",
                    "hook_event_name": "Stop",
                }
            ).encode()

        pre = json.dumps(
            {
                "session_id": "s-pre",
                "transcript_path": paths["idle"],
                "cwd": "/w",
                "hook_event_name": "PreToolUse",
                "tool_name": "Bash",
                "tool_input": {"command": "ls"},
                "tool_use_id": "t",
            }
        ).encode()
        argv = [python, "-I", "-S", HOOK]
        cases = {
            "bare interpreter": (lambda: None, [python, "-I", "-S", "-c", "pass"], b""),
            "PreToolUse (no usage work)": (lambda: None, argv, pre),
            "Stop, nothing new": (lambda: None, argv, stop(paths["idle"])),
            f"Stop, one turn (12 responses, {one_turn // 1024} KB)": (
                lambda: grow(paths["turn"], 12),
                argv,
                stop(paths["turn"]),
            ),
            "Stop, 4 MiB new (the per-run budget)": (lambda: grow(paths["big"], per_big), argv, stop(paths["big"])),
        }
        _timed(argv, stop(paths["idle"]), env)  # the first read of "idle"
        times: dict = {k: [] for k in cases}
        for _ in range(rounds):
            order = list(cases)
            random.shuffle(order)
            for name in order:
                prep, a, stdin = cases[name]
                prep()
                times[name].append(_timed(a, stdin, env))
        base = C.summary(times["PreToolUse (no usage work)"])["p50"]
        for name, values in times.items():
            s = C.summary(values)
            extra = "" if name.startswith(("bare", "PreToolUse")) else f" (+{(s['p50'] - base) * 1000:.1f} ms)"
            rows.append(C.row(NAME, name, f"p50 {C.ms(s['p50'])}, p95 {C.ms(s['p95'])}{extra}"))
        imports = import_cost(python)
        total_us = sum(imports.values())
        rows.append(C.row(NAME, "extra imports on Stop (usage_hook + usage)", f"{total_us / 1000:.2f} ms"))
        return {"name": NAME, "rows": rows, "times": times, "imports_us": imports}
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    C.standalone(run)
