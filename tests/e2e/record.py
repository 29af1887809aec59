"""Record what the real Claude Code sends its hooks, scenario by scenario, into
``tests/fixtures/real-cli/<scenario>.jsonl`` (the shape of
``tests/fixtures/session-with-subagent.jsonl``: one ``{"stdin": payload, "env": {...}}``
a line, in the order Claude Code ran the hooks).

Run by hand (not by the tests), after `make test-deps`:

    .venv/bin/python tests/e2e/record.py [SCENARIO ...]

Every hook event Claude Code knows is wired (but WorktreeCreate, which would replace
git's worktree creation), each with a second handler (capture_hook.py) that writes the
payload and the hook's environment; the daemon is fed too and must hold as many events
as were captured. Ids stay the real ones; the temp paths become stable ones
(``/home/dev/projects/shop-api``...); ``env`` keeps only what Claude Code itself put in
the hook's environment, plus HOSTNAME.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from e2e import scenarios  # noqa: E402
from e2e.cli import CLAUDE_CODE_VERSION, ClaudeRun, skip_reason  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "fixtures" / "real-cli"
HOST = "laptop-a"
STABLE_HOME = "/home/dev"
STABLE_PROJ = "/home/dev/projects/shop-api"
STABLE_TMP = "/tmp/claude-tmp"
STABLE_CT = "/home/dev/.contextuate"


def _dashed(path: str) -> str:
    """A path as Claude Code names its project folders (``-home-dev-projects-x``)."""
    return re.sub(r"[^A-Za-z0-9]", "-", path)


def stabilizer(run: ClaudeRun):
    pairs = [
        (run.proj, STABLE_PROJ),
        (run.tmp, STABLE_TMP),
        (run.ct, STABLE_CT),
        (run.home, STABLE_HOME),
        (_dashed(run.proj), _dashed(STABLE_PROJ)),
        (_dashed(run.tmp), _dashed(STABLE_TMP)),
        (_dashed(run.home), _dashed(STABLE_HOME)),
        (run.root, "/home/dev/work"),
    ]
    if run.bin:
        pairs.append((run.bin, "/home/dev/.local/bin/claude"))
        pairs.append((os.path.dirname(run.bin), "/home/dev/.local/bin"))

    def fix(obj: Any) -> Any:
        if isinstance(obj, str):
            for a, b in pairs:
                obj = obj.replace(a, b)
            return obj
        if isinstance(obj, list):
            return [fix(x) for x in obj]
        if isinstance(obj, dict):
            return {fix(k): fix(v) for k, v in obj.items()}
        return obj

    return fix


def record(name: str) -> dict[str, Any]:
    cap = tempfile.mkdtemp(prefix="ctcap-")
    t0 = time.monotonic()
    captured: list[dict] = []
    with ClaudeRun(
        scenarios.SCRIPTS, all_events=True, capture_dir=cap, settings=scenarios.SETTINGS.get(name), hostname=HOST
    ) as run:
        scenarios.SCENARIOS[name](run)
        given = run.env()
        fix = stabilizer(run)

        def load() -> list[dict]:
            return [json.loads(p.read_text()) for p in sorted(Path(cap).glob("*.json"))]

        # Every captured payload must have reached the daemon (hook events only).
        def stored() -> int:
            return sum(1 for sid in run.sessions() for e in run.events(sid) if e.get("hookType"))

        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            captured = load()
            if stored() >= len(captured):
                break
            time.sleep(0.2)
        n_stored = stored()
        lines = []
        for item in captured:
            env = {k: v for k, v in item["env"].items() if given.get(k) != v or k == "HOSTNAME"}
            if "CLAUDE_CODE_MESSAGING_TOKEN" in env:  # a per-run secret of Claude Code's
                env["CLAUDE_CODE_MESSAGING_TOKEN"] = "0123456789abcdef0123456789abcdef"
            lines.append({"stdin": fix(item["stdin"]), "env": fix(env)})
    shutil.rmtree(cap, ignore_errors=True)
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / f"{name}.jsonl", "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    return {
        "name": name,
        "events": [x["stdin"].get("hook_event_name") for x in lines if isinstance(x["stdin"], dict)],
        "stored": n_stored,
        "seconds": round(time.monotonic() - t0, 1),
        "lines": lines,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help=f"scenarios (default all: {', '.join(scenarios.SCENARIOS)})")
    ap.add_argument("-j", "--jobs", type=int, default=3)
    ap.add_argument("--summary", help="also write a summary (files, and each event type's payload keys) here")
    args = ap.parse_args()
    reason = skip_reason()
    if reason:
        print(reason, file=sys.stderr)
        return 1
    names = args.names or list(scenarios.SCENARIOS)
    with ThreadPoolExecutor(args.jobs) as pool:
        done = list(pool.map(record, names))
    examples: dict[str, tuple[str, list[str]]] = {}
    for r in done:
        print(
            f"{r['name']:18} {r['seconds']:5}s  {len(r['events'])} payloads ({r['stored']} stored): {' '.join(r['events'])}"
        )
        for line in r["lines"]:
            st = line["stdin"]
            if isinstance(st, dict):
                examples.setdefault(st.get("hook_event_name", "?"), (r["name"], sorted(st)))
    if args.summary:
        with open(args.summary, "w") as f:
            f.write(f"Recorded with the real Claude Code {CLAUDE_CODE_VERSION} by tests/e2e/record.py\n")
            f.write("(all 33 events but WorktreeCreate wired). Files:\n")
            for r in done:
                f.write(
                    f"  tests/fixtures/real-cli/{r['name']}.jsonl  ({len(r['events'])} lines: {' '.join(r['events'])})\n"
                )
            f.write("\nPer event type, one example's keys (scenario it is from):\n")
            for ev, (name, keys) in sorted(examples.items()):
                f.write(f"  {ev} ({name}): {', '.join(keys)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
