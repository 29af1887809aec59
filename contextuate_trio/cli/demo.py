"""``contextuate-trio demo``: a realistic multi-agent, two-machine session replayed
through the real hook, paced so the dashboard fills up while you watch.

The story (``demo_data/multi_agent_two_machines.jsonl``, shipped in the package):
a session on ``laptop-ana`` fixes a rounding bug with two sub-agents working in
parallel (an Explore agent and a general-purpose one whose test run fails), waits on a
permission prompt, then runs the full suite through ``ssh ci-runner-02 claude -p`` —
a second Claude Code session on another machine, linked under the first by
``CONTEXTUATE_PARENT_SESSION``. Every event goes through a real ``hook_emit.py``
process, exactly as Claude Code would run it, with fresh session ids on every run.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from importlib import resources

from contextuate_trio import config as config_mod
from contextuate_trio.cli import hooks as cs
from contextuate_trio.core import events

DATA = "multi_agent_two_machines.jsonl"


def load(name: str = DATA) -> tuple[dict, list[dict]]:
    text = resources.files("contextuate_trio").joinpath("demo_data", name).read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return rows[0], rows[1:]


def fresh_ids() -> dict[str, str]:
    return {
        "{P}": str(uuid.uuid4()),
        "{C}": str(uuid.uuid4()),
        "{A1}": secrets.token_hex(8),
        "{A2}": secrets.token_hex(8),
    }


def substitute(row: dict, ids: dict[str, str]) -> dict:
    text = json.dumps(row, ensure_ascii=False)
    for k, v in ids.items():
        text = text.replace(k, v)
    return json.loads(text)


def run_hook(stdin: dict, machine: str, parent: str | None, env: dict, python: str, script: str) -> int:
    henv = {k: v for k, v in env.items() if k not in ("CONTEXTUATE_PARENT_SESSION", "CONTEXTUATE_MACHINE_ID")}
    henv["CONTEXTUATE_MACHINE_ID"] = machine
    if parent:
        henv["CONTEXTUATE_PARENT_SESSION"] = parent
    p = subprocess.run(
        [python, "-I", "-S", script], input=json.dumps(stdin).encode(), env=henv, capture_output=True, timeout=30
    )
    return p.returncode


def replay(speed: float = 1.0, env: dict | None = None, out=sys.stdout) -> dict:
    """Run the demo; returns the ids used ({"parent", "child", "agents", "machines"})."""
    env = dict(os.environ if env is None else env)
    about, rows = load()
    machines = about["machines"]
    ids = fresh_ids()
    python, script = cs.real_python(), cs.hook_script()
    role = {ids["{P}"]: "main session", ids["{C}"]: "linked session"}
    for i, row in enumerate(rows, 1):
        row = substitute(row, ids)
        if speed > 0 and row.get("delay"):
            time.sleep(row["delay"] / 1000.0 / speed)
        stdin = row["stdin"]
        machine = machines[row["machine"]]
        run_hook(stdin, machine, row.get("parent"), env, python, script)
        hook = stdin.get("hook_event_name", "?")
        who = role.get(stdin.get("session_id"), "")
        if stdin.get("agent_id"):
            who = f"sub-agent {stdin.get('agent_type')}"
        summary = events.summarize(events.event_type_for(hook), stdin) or ""
        out.write(f"  [{i:2}/{len(rows)}] {machine:<13} {who:<26} {hook:<19} {summary[:70]}\n")
        out.flush()
    return {
        "parent": ids["{P}"],
        "child": ids["{C}"],
        "agents": ["agent-" + ids["{A1}"], "agent-" + ids["{A2}"]],
        "machines": list(machines.values()),
    }


def cmd_demo(args) -> int:
    from contextuate_trio.cli.client import api_get

    cfg = config_mod.load_or_report(warn=False)
    if cfg is None:
        return 2
    base = config_mod.api_base(cfg)
    try:
        api_get(cfg, "/api/health")
        up = True
    except Exception:
        up = False
    if not up and not args.anyway:
        print(
            f"contextuate-trio demo: the daemon is not answering on {base}; start it first:\n"
            "  contextuate-trio start\n(or --anyway: the events then wait in the spool)",
            file=sys.stderr,
        )
        return 1
    speed = 0.0 if args.fast else args.speed
    print(f"Replaying a two-machine, multi-agent session through the real hook; open {base}/ to watch.")
    ids = replay(speed)
    print(
        f"Done: session {ids['parent'][:8]} on {ids['machines'][0]} with 2 sub-agents, and session "
        f"{ids['child'][:8]} on {ids['machines'][1]} linked under it."
    )
    print(f"Dashboard: {base}/   Terminal: contextuate-trio tail --session {ids['parent'][:8]}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="replay a realistic multi-agent, two-machine session through the real hook")
    p.add_argument("--speed", type=float, default=1.0, help="pace multiplier (default 1: about 15 s)")
    p.add_argument("--fast", action="store_true", help="no pauses")
    p.add_argument("--anyway", action="store_true", help="run even when the daemon is not answering")
    p.set_defaults(func=cmd_demo)
