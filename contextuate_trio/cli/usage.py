"""``contextuate-trio usage``: tokens and cost in the terminal, from the daemon's
``/api/usage`` (grouped by machine, model, day, hour or session)."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
from urllib.parse import urlencode

from contextuate_trio import config as config_mod
from contextuate_trio.cli.client import api_get

KIND_HEADS = (
    ("input", "input"),
    ("output", "output"),
    ("cacheRead", "cache read"),
    ("cacheWrite5m", "write 5m"),
    ("cacheWrite1h", "write 1h"),
)


def human(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def money(row: dict) -> str:
    if row["costUsd"] is not None:
        return f"${row['costUsd']:,.4f}" if row["costUsd"] < 1 else f"${row['costUsd']:,.2f}"
    if row["pricedCostUsd"]:
        return f">${row['pricedCostUsd']:,.2f}*"
    return "unknown*"


def label(by: str, key, sessions: dict) -> str:
    if by == "hour":
        return time.strftime("%Y-%m-%d %H:00", time.gmtime(key / 1000)) + "Z"
    if by == "session":
        s = sessions.get(key) or {}
        name = s.get("name") or s.get("agentType") or ""
        return f"{key[:20]}{'…' if len(key) > 20 else ''} {name}".rstrip()
    return str(key)


def table(result: dict, sessions: dict) -> str:
    by = result["by"]
    heads = [by, *(h for _, h in KIND_HEADS), "total", "calls", "cost"]
    rows = []
    for r in result["rows"] + [dict(result["total"], key="TOTAL")]:
        t = r["tokens"]
        rows.append(
            [
                label(by, r["key"], sessions) if r["key"] != "TOTAL" else "total",
                *(human(t[k]) for k, _ in KIND_HEADS),
                human(t["total"]),
                str(r["calls"]),
                money(r),
            ]
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(heads)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    out = [fmt(heads), "  ".join("-" * w for w in widths)]
    out += [fmt(row) for row in rows[:-1]]
    out += ["  ".join("-" * w for w in widths), fmt(rows[-1])]
    unpriced = sorted({m for r in result["rows"] for m in r["unpricedModels"]})
    if unpriced:
        out.append(
            f"* no price for {', '.join(unpriced)}: their tokens are counted, their cost is not "
            "(add them under pricing.models in the config)"
        )
    return "\n".join(out)


def cmd_usage(args) -> int:
    cfg = config_mod.load_or_report()
    if cfg is None:
        return 2
    q = {"by": args.by}
    if args.since:
        q["since"] = int((time.time() - parse_age(args.since)) * 1000)
    if args.machine:
        q["machine"] = ",".join(args.machine)
    try:
        result = api_get(cfg, "/api/usage?" + urlencode(q), timeout=5)
        sessions = {}
        if args.by == "session":
            sessions = {s["sessionId"]: s for s in api_get(cfg, "/api/sessions", timeout=5)["sessions"]}
    except urllib.error.HTTPError as exc:
        print(
            f"contextuate-trio: the daemon answered {exc.code}: {exc.read().decode(errors='replace')}", file=sys.stderr
        )
        return 1
    except (OSError, ValueError) as exc:
        print(
            f"contextuate-trio: the daemon is not reachable ({exc}); start it with `contextuate-trio start`",
            file=sys.stderr,
        )
        return 3
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    if not result["rows"]:
        print("no token usage recorded yet" + (f" in the last {args.since}" if args.since else ""))
        return 0
    print(table(result, sessions))
    return 0


def parse_age(text: str) -> float:
    """``90m``, ``24h``, ``7d`` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    try:
        return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)
    except (ValueError, IndexError):
        raise SystemExit(f"contextuate-trio: --since {text!r}: use e.g. 90m, 24h, 7d") from None


def add_parser(sub) -> None:
    p = sub.add_parser("usage", help="tokens and cost by machine, model, day, hour or session")
    p.add_argument("--by", choices=("machine", "model", "day", "hour", "session"), default="machine")
    p.add_argument("--since", metavar="AGE", help="only the last AGE, e.g. 24h or 7d (by hour)")
    p.add_argument("--machine", action="append", metavar="NAME", help="only this machine (repeatable)")
    p.add_argument("--json", action="store_true", help="the API's answer as JSON")
    p.set_defaults(func=cmd_usage)
