"""``contextuate-trio demo``: sessions recorded from the real Claude Code CLI, replayed
through the real hook, paced so the dashboard fills up while you watch.

The story (``demo_data/real_cli_2_1_332.jsonl``, shipped in the package; built from
``tests/fixtures/real-cli`` by ``tests/e2e/make_demo.py``): on ``laptop-ana`` a session
runs two sub-agents in parallel; on ``ci-runner-02`` a session linked under it (by
``CONTEXTUATE_PARENT_SESSION``) runs a background agent that reports back; a third
session on ``laptop-ana`` is left waiting on a permission prompt, so "needs you" has
something in it. The payloads are what Claude Code 2.1.332 sent; every event goes
through a real ``hook_emit.py`` process with fresh ids on every run. The older
hand-written story (``multi_agent_two_machines.jsonl``) stays for ``--story``.
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

DATA = "real_cli_2_1_332.jsonl"
STORIES = {"real": DATA, "classic": "multi_agent_two_machines.jsonl"}


def load(name: str = DATA) -> tuple[dict, list[dict]]:
    text = resources.files("contextuate_trio").joinpath("demo_data", name).read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return rows[0], rows[1:]


def fresh_ids() -> dict[str, str]:
    """Sessions are UUIDs; agent ids are hex (Claude Code's ``a`` + 16 hex digits)."""
    ids = {k: str(uuid.uuid4()) for k in ("{P}", "{C}", "{Q}")}
    ids.update({f"{{A{i}}}": "a" + secrets.token_hex(8) for i in (1, 2, 3)})
    return ids


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


def replay(speed: float = 1.0, env: dict | None = None, out=sys.stdout, story: str = DATA) -> dict:
    """Run the demo; returns the ids used ({"parent", "child", "agents", "machines"})."""
    env = dict(os.environ if env is None else env)
    about, rows = load(story)
    machines = about["machines"]
    ids = fresh_ids()
    python, script = cs.real_python(), cs.hook_script()
    role = {ids["{P}"]: "main session", ids["{C}"]: "linked session", ids["{Q}"]: "another session"}
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
    ids = replay(speed, story=STORIES[args.story])
    print(
        f"Done: session {ids['parent'][:8]} on {ids['machines'][0]} with 2 sub-agents, and session "
        f"{ids['child'][:8]} on {ids['machines'][1]} linked under it"
        + ("; one more waits on a permission prompt (see Needs you)." if args.story == "real" else ".")
    )
    print(f"Dashboard: {base}/   Terminal: contextuate-trio tail --session {ids['parent'][:8]}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="replay a realistic multi-agent, two-machine session through the real hook")
    p.add_argument("--speed", type=float, default=1.0, help="pace multiplier (default 1: about 15 s)")
    p.add_argument("--fast", action="store_true", help="no pauses")
    p.add_argument("--anyway", action="store_true", help="run even when the daemon is not answering")
    p.add_argument(
        "--story",
        choices=sorted(STORIES),
        default="real",
        help="real: recorded from Claude Code 2.1.332 (default); classic: the older hand-written one",
    )
    p.set_defaults(func=cmd_demo)
