"""Build the demo's story (``contextuate_trio/demo_data/real_cli_2_1_332.jsonl``) from
the payloads recorded from the real Claude Code CLI (``tests/fixtures/real-cli``).

Run by hand after recording again (``tests/e2e/record.py``): the ids Claude Code made
become placeholders the demo replaces with fresh ones on every run, the paths look
like a developer's, and each event gets a pause so the dashboard fills up while one
watches. The payloads are otherwise exactly what Claude Code sent.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT / "tests" / "fixtures" / "real-cli"
OUT = ROOT / "contextuate_trio" / "demo_data" / "real_cli_2_1_332.jsonl"
# (recording, machine, session placeholder, agent placeholders, linked under, stop before the nth hook)
STORY = [
    ("parallel", "A", "{P}", ["{A1}", "{A2}"], None, None),
    ("background", "B", "{C}", ["{A3}"], "{P}", None),
    ("permission_prompt", "A", "{Q}", [], None, ("PostToolUse", 1)),  # left waiting: "needs you"
]
PAUSE_MS = {"MessageDisplay": 120, "PreToolUse": 450, "SubagentStart": 300, "PermissionRequest": 600}
ABOUT = (
    "contextuate-trio demo, recorded from the real Claude Code 2.1.332: on laptop-ana a session runs two "
    "sub-agents in parallel; on ci-runner-02 a session linked under it runs a background agent that reports "
    "back; a third session on laptop-ana is left waiting on a permission prompt. Placeholders in braces are "
    "replaced by fresh ids on each run; delay is ms before the event."
)


def rows_of(name: str) -> list[dict]:
    with open(REAL / f"{name}.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["stdin"] for line in f if line.strip()]


def placeholders(rows: list[dict], session: str, agents: list[str]) -> dict[str, str]:
    ids = {rows[0]["session_id"]: session}
    found = [r["agent_id"] for r in rows if r.get("hook_event_name") == "SubagentStart"]
    ids.update(zip(found, agents, strict=True))
    return ids


def rewrite(text: str, ids: dict[str, str]) -> str:
    for real, placeholder in ids.items():
        text = text.replace(real, placeholder)
    text = text.replace("/home/dev/projects/shop-api", "/home/ana/projects/shop-api").replace("/home/dev", "/home/ana")
    return re.sub(r"-home-dev-projects-shop-api", "-home-ana-projects-shop-api", text)


def main() -> None:
    out = [{"about": ABOUT, "machines": {"A": "laptop-ana", "B": "ci-runner-02"}}]
    for name, machine, session, agents, parent, stop in STORY:
        rows = rows_of(name)
        ids = placeholders(rows, session, agents)
        seen = 0
        for payload in rows:
            hook = payload["hook_event_name"]
            if stop and hook == stop[0]:
                seen += 1
                if seen == stop[1]:
                    break
            row = {
                "machine": machine,
                "delay": PAUSE_MS.get(hook, 200),
                "stdin": json.loads(rewrite(json.dumps(payload), ids)),
            }
            if parent:
                row["parent"] = parent
            out.append(row)
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out), encoding="utf-8")
    print(f"{OUT}: {len(out) - 1} events")


if __name__ == "__main__":
    main()
