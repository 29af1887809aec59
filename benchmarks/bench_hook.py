"""Benchmark 1 — hook cost: the real hook process against the bare interpreter.

Runs ``<python3> -I -S hook_emit.py`` exactly as Claude Code does (a realistic
PreToolUse payload from tests/fixtures on stdin, nothing on stdout) interleaved with
``<python3> -I -S -c pass`` on the same binary: every round runs each case once, in a
shuffled order, so machine noise hits all of them alike. Reports p50/p95/p99 of the
wall time (spawn → exit, measured with posix_spawn + wait4 in this process) and the
ratio of medians hook / bare. Cases: daemon up, daemon down (spool), Redis up (and
with a secret to mask), Redis down, Redis hung.

    .venv/bin/python benchmarks/bench_hook.py          # BENCH_QUICK=1, BENCH_HOOK_ROUNDS=N
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sys
import time
from collections.abc import Callable, Iterator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

NAME = "hook"


# --- cases ----------------------------------------------------------------------------
# Each case is a context manager yielding the environment the hook runs with, or None
# with a reason when the case cannot run here (it is then reported as "n/a").
@contextlib.contextmanager
def daemon_up() -> Iterator[dict]:
    with C.Daemon() as d:
        yield {"env": d.env(), "home": d.home, "daemon": d}


@contextlib.contextmanager
def daemon_down() -> Iterator[dict]:
    with C.temp_dir() as home:
        yield {"env": dict(C.Daemon(home).env()), "home": home}


# Redis mode: the hook speaks RESP to a real redis-server started here (up), to a
# port where nothing listens (down), and to a socket that accepts and never answers
# (hung; hook.timeoutMs lowered to 100 ms so the run stays short: the hook waits
# exactly that long, then spools). "with a secret" sends a payload holding an API key,
# so the hook's masking (and its lazy ``import re``) is on the measured path.
SECRET_PAYLOAD = None  # set in run(): the PreToolUse payload with a key in its command


def _redis_home(home: str, redis_cfg: dict, timeout_ms: int | None = None) -> dict:
    env = dict(C.Daemon(home).env())  # (writes a local-mode config: replaced below)
    cfg: dict = {"mode": "redis", "redis": redis_cfg}
    if timeout_ms:
        cfg["hook"] = {"timeoutMs": timeout_ms}
    with open(os.path.join(home, "monitor.config.json"), "w") as f:
        json.dump(cfg, f)
    return env


def _stream_len(port: int) -> int:
    import redis

    return int(redis.Redis(port=port).xlen("contextuate:events:stream"))


@contextlib.contextmanager
def redis_up() -> Iterator[dict | None]:
    with C.redis_server() as port, C.temp_dir() as home:
        if port is None:
            yield None
            return
        yield {
            "env": _redis_home(home, {"host": "127.0.0.1", "port": port}),
            "home": home,
            "stored": lambda: _stream_len(port),
        }


@contextlib.contextmanager
def redis_up_secret() -> Iterator[dict | None]:
    with C.redis_server() as port, C.temp_dir() as home:
        if port is None:
            yield None
            return
        yield {
            "env": _redis_home(home, {"host": "127.0.0.1", "port": port}),
            "home": home,
            "stored": lambda: _stream_len(port),
            "stdin": (json.dumps(SECRET_PAYLOAD) + "\n").encode(),
        }


@contextlib.contextmanager
def redis_down() -> Iterator[dict | None]:
    with C.temp_dir() as home:
        yield {"env": _redis_home(home, {"host": "127.0.0.1", "port": C.free_port()}), "home": home}


@contextlib.contextmanager
def redis_hung() -> Iterator[dict | None]:
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4096)  # accepts (in the kernel), never answers
    try:
        with C.temp_dir() as home:
            yield {"env": _redis_home(home, {"host": "127.0.0.1", "port": srv.getsockname()[1]}, 100), "home": home}
    finally:
        srv.close()


# (label, setup, target ratio of medians or None)
CASES: list[tuple[str, Callable, float | None]] = [
    ("daemon up", daemon_up, 1.5),
    ("daemon down (spool)", daemon_down, 1.6),
    ("Redis up", redis_up, 1.5),
    ("Redis up, payload with a secret (masked)", redis_up_secret, None),
    ("Redis down", redis_down, 1.6),
    ("Redis hung (timeoutMs 100)", redis_hung, None),
]
NOT_YET = "n/a, no redis-server here"


# --- measuring ------------------------------------------------------------------------------
def spawn_timed(argv: list[str], stdin: bytes, env: dict, stderr_path: str) -> tuple[float, float]:
    """Wall time (spawn → reaped) and CPU time (user+sys) of one process."""
    r, w = os.pipe()
    try:
        os.write(w, stdin)  # fits the pipe buffer: written before the clock starts
    finally:
        os.close(w)
    actions = [
        (os.POSIX_SPAWN_DUP2, r, 0),
        (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
        (os.POSIX_SPAWN_OPEN, 2, stderr_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600),
    ]
    try:
        t0 = time.perf_counter()
        pid = os.posix_spawn(argv[0], argv, env, file_actions=actions)
        _, status, ru = os.wait4(pid, 0)
        wall = time.perf_counter() - t0
    finally:
        os.close(r)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{argv} exited with {os.waitstatus_to_exitcode(status)}")
    return wall, ru.ru_utime + ru.ru_stime


def import_audit(python: str, stdin: bytes, env: dict) -> dict:
    """Modules the hook imports beyond the bare interpreter's, from -X importtime
    (run against whatever daemon state ``env`` points at; the import set is the same)."""
    import subprocess

    def modules(argv, inp):
        out = subprocess.run(argv, input=inp, env=env, capture_output=True, timeout=30)
        mods = {}
        for line in out.stderr.decode("utf-8", "replace").splitlines():
            if line.startswith("import time:") and "|" in line and "self [us]" not in line:
                self_us, _cum_us, name = (p.strip() for p in line.split(":", 1)[1].split("|"))
                mods[name] = int(self_us)
        return mods

    def least(argv, inp, runs=7):  # the machine is noisy: each module's best of 7
        best: dict = {}
        for _ in range(runs):
            for m, us in modules(argv, inp).items():
                best[m] = min(us, best.get(m, us))
        return best

    bare = least([python, "-I", "-S", "-X", "importtime", "-c", "pass"], b"")
    hook = least([python, "-I", "-S", "-X", "importtime", C.HOOK], stdin)
    extra = {m: us for m, us in hook.items() if m not in bare}
    return {"bare_modules": sorted(bare), "hook_extra_modules": extra, "hook_extra_import_us": sum(extra.values())}


def run(rounds: int | None = None) -> dict:
    rounds = rounds or C.knob("hook_rounds", 120, 400)
    warmup = 10
    python = C.real_python()
    payload = C.pre_tool_use_payload()
    stdin = (json.dumps(payload) + "\n").encode()
    global SECRET_PAYLOAD
    SECRET_PAYLOAD = json.loads(json.dumps(payload))
    SECRET_PAYLOAD.setdefault("tool_input", {})["command"] = (
        "ANTHROPIC_API_KEY=sk-ant-api03-" + "Xy7" * 20 + " claude -p 'summarise the diff'"
    )
    rng = random.Random(1234)
    rows: list[dict] = []
    result: dict = {
        "name": NAME,
        "python": python,
        "rounds": rounds,
        "payload_bytes": len(stdin),
        "payload_tool": payload.get("tool_name"),
        "cases": {},
    }
    with contextlib.ExitStack() as stack:
        err_dir = stack.enter_context(C.temp_dir("ctx-bench-err-"))
        active = []  # (label, argv, env, target, info)
        base_env = C.Daemon(err_dir).env()  # any home: the bare interpreter ignores it
        active.append(("bare interpreter", [python, "-I", "-S", "-c", "pass"], base_env, None, {}))
        skipped = []
        for label, setup, target in CASES:
            info = stack.enter_context(setup())
            if info is None:
                skipped.append((label, target))
                continue
            active.append((label, [python, "-I", "-S", C.HOOK], info["env"], target, info))
        samples = {a[0]: [] for a in active}
        cpu = {a[0]: [] for a in active}
        err = os.path.join(err_dir, "stderr.txt")
        order = list(range(len(active)))
        for i in range(warmup + rounds):
            rng.shuffle(order)
            for j in order:
                label, argv, env, _, _ = active[j]
                case_stdin = active[j][4].get("stdin", stdin) if j else b""
                wall, cpu_s = spawn_timed(argv, case_stdin, env, err)
                if i >= warmup:
                    samples[label].append(wall)
                    cpu[label].append(cpu_s)
        stderr_text = open(err, "rb").read().decode("utf-8", "replace") if os.path.exists(err) else ""
        # Where did the events go? Every daemon-up run must be acknowledged, not spooled.
        for label, _, _env, _, info in active[1:]:
            home = info["home"]
            spool = os.path.join(home, "spool")
            n_spooled = len([n for n in os.listdir(spool) if n.endswith(".json")]) if os.path.isdir(spool) else 0
            d = info.get("daemon")
            if "stored" in info:
                n_stored = info["stored"]()
            else:
                n_stored = d.events_stored() if d is not None else 0
            result["cases"].setdefault(label, {})["delivery"] = {"stored": n_stored, "spooled": n_spooled}
        result["import_audit"] = import_audit(python, stdin, base_env)

    bare = samples["bare interpreter"]
    bare_p50 = C.pct(bare, 50)
    result["cases"]["bare interpreter"] = {"wall_s": C.summary(bare), "cpu_s": C.summary(cpu["bare interpreter"])}
    rows.append(C.row("1 hook cost", "bare `python3 -I -S -c pass` p50/p95/p99", fmt3(bare), "", ""))
    result["samples"] = {k: v for k, v in samples.items()}
    for label, _, _, target, _ in active[1:]:
        s = samples[label]
        ratio = C.pct(s, 50) / bare_p50
        extra = result["cases"][label]
        extra.update(
            {"wall_s": C.summary(s), "cpu_s": C.summary(cpu[label]), "ratio_of_medians": ratio, "target_ratio": target}
        )
        deliv = extra["delivery"]
        note = ""
        if (label.startswith("daemon up") or label.startswith("Redis up")) and deliv["spooled"]:
            note = f" ({deliv['spooled']} spooled!)"
        rows.append(C.row("1 hook cost", f"hook, {label}: p50/p95/p99", fmt3(s) + note, "", ""))
        rows.append(
            C.row(
                "1 hook cost",
                f"hook, {label}: median / bare median",
                f"{ratio:.2f}x",
                f"<= {target}x" if target else "",
                C.verdict(ratio, target) if target else "",
            )
        )
    for label, target in skipped:
        rows.append(
            C.row(
                "1 hook cost", f"hook, {label}: median / bare median", NOT_YET, f"<= {target}x" if target else "", "n/a"
            )
        )
        result["cases"][label] = {"skipped": NOT_YET}
    if stderr_text.strip():
        result["stderr"] = stderr_text[-2000:]
        rows.append(C.row("1 hook cost", "hook wrote to stderr", stderr_text.strip().splitlines()[-1][:60], "", "!"))
    audit = result["import_audit"]
    rows.append(
        C.row(
            "1 hook cost",
            "modules imported beyond bare (-X importtime)",
            f"{len(audit['hook_extra_modules'])} = {audit['hook_extra_import_us'] / 1000:.1f} ms",
            "",
            "",
        )
    )
    result["rows"] = rows
    return result


def fmt3(s: list) -> str:
    return " / ".join(f"{C.pct(s, p) * 1000:.1f}" for p in (50, 95, 99)) + " ms"


if __name__ == "__main__":
    C.standalone(run)
