"""``contextuate-trio tail``: the live event stream in a terminal, over the WebSocket.

For SSH sessions and servers without a browser. It connects to ``server.wsPort``
(with ``Authorization: Bearer <token>`` when the config has one), asks the server to
filter (``?sessions=&machines=&types=``), prints the last ``--history`` events of the
snapshot, then every event as it arrives. When the connection drops it reconnects with
``?since=<last seq>&epoch=…``, so nothing is missed or printed twice while the
daemon keeps running.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.parse
from collections.abc import Sequence
from typing import TextIO

import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from contextuate_trio import config as config_mod
from contextuate_trio.core.access import Scope
from contextuate_trio.web.ws_protocol import Follower

COLORS = {
    "session_start": "1;32",
    "session_end": "90",
    "user_prompt": "1;36",
    "tool_call": "34",
    "tool_result": "2",
    "tool_error": "1;31",
    "tool_batch": "2",
    "permission_request": "1;33",
    "notification": "33",
    "stop": "35",
    "stop_failure": "1;31",
    "subagent_start": "1;35",
    "subagent_stop": "35",
    "invalid": "31",
}
MACHINE_COLORS = ("36", "33", "32", "35", "34", "91", "96")


def _c(code: str | None, text: str, color: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if color and code else text


def _one_line(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


class Printer:
    def __init__(self, out: TextIO, color: bool, as_json: bool = False, width: int | None = None) -> None:
        self.out = out
        self.color = color
        self.as_json = as_json
        self.width = width
        self.sessions: dict[str, dict] = {}
        self.machines: dict[str, str] = {}

    def machine(self, m: str) -> str:
        if m not in self.machines:
            self.machines[m] = MACHINE_COLORS[len(self.machines) % len(MACHINE_COLORS)]
        return _c(self.machines[m], f"{m[:14]:<14}", self.color)

    def session_label(self, ev: dict) -> str:
        sid = ev.get("sessionId") or "?"
        s = self.sessions.get(sid) or {}
        short = sid.rpartition(":")[2]  # sub-agents may be "<parent id>:agent-<id>"
        if short.startswith(("agent-", "task-")):
            kind_, _, rest = short.partition("-")
            label = f"{kind_}-{rest[:6]}"
        else:
            label = short[:8]
        kind = s.get("agentType") or ev.get("agentType")
        if ev.get("parentSessionId") or s.get("parentSessionId"):
            label = "↳" + label
            if kind:
                label += f" ({kind})"
        return f"{label:<24}"

    def event(self, ev: dict) -> None:
        if self.as_json:
            self.out.write(json.dumps(ev, ensure_ascii=False) + "\n")
            self.out.flush()
            return
        ts = ev.get("timestamp")
        when = (
            time.strftime("%H:%M:%S", time.localtime(ts / 1000)) + f".{int(ts) % 1000:03d}"
            if isinstance(ts, (int, float))
            else "--:--:--.---"
        )
        et = ev.get("eventType") or "?"
        summary = ev.get("summary") or ev.get("toolName") or ev.get("notificationType") or ""
        if et == "tool_result" and isinstance(ev.get("durationMs"), (int, float)):
            summary = f"{summary} ({ev['durationMs']:.0f} ms)"
        head = f"{_c('90', when, self.color)} {self.machine(ev.get('machineId') or '?')} {self.session_label(ev)} "
        kind = _c(COLORS.get(et), f"{et:<18}", self.color)
        width = self.width or 0
        line = head + kind + " " + (_one_line(summary, max(width - 80, 40)) if width else _one_line(summary, 200))
        self.out.write(line.rstrip() + "\n")
        self.out.flush()

    def note(self, text: str) -> None:
        if not self.as_json:
            self.out.write(_c("90", f"-- {text}", self.color) + "\n")
            self.out.flush()


def ws_url(cfg: config_mod.Config, query: dict[str, str]) -> str:
    host = cfg.server.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"ws://{host}:{cfg.server.ws_port}/" + (("?" + urllib.parse.urlencode(query)) if query else "")


def resolve_sessions(cfg: config_mod.Config, wanted: list[str]) -> list[str]:
    """Full ids for what the user typed (an id, or the first characters shown by tail)."""
    if not wanted:
        return []
    from contextuate_trio.cli.client import api_get

    try:
        known = [s["sessionId"] for s in api_get(cfg, "/api/sessions")["sessions"]]
    except Exception:
        return list(wanted)
    out = []
    for w in wanted:
        matches = [k for k in known if k == w] or [k for k in known if k.startswith(w)]
        out.extend(matches or [w])
    return out


def _what(sessions: Sequence[str], machines: Sequence[str], types: Sequence[str]) -> str:
    parts = [
        f"sessions {','.join(sessions)}" if sessions else "",
        f"machines {','.join(machines)}" if machines else "",
        f"types {','.join(types)}" if types else "",
    ]
    return ", ".join(p for p in parts if p) or "everything"


async def _follow(
    url: str, headers: list, follower: Follower, printer: Printer, live_note: str, opened: list[bool]
) -> None:
    """One connection: every message through the protocol's follower, to the printer."""
    async with open_websocket_url(url, extra_headers=headers, connect_timeout=5) as ws:
        opened.append(True)
        while True:
            update = follower.feed(json.loads(await ws.get_message()))
            for ev in update.events:
                printer.event(ev)
            if update.first:
                printer.note(live_note)
            if update.note:
                printer.note(update.note)


def _refused_status(exc: HandshakeError) -> int | None:
    status = getattr(exc, "status_code", None) or getattr(getattr(exc, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


async def run(
    cfg: config_mod.Config,
    printer: Printer,
    *,
    sessions: Sequence[str] = (),
    machines: Sequence[str] = (),
    types: Sequence[str] = (),
    history: int = 20,
    reconnect: bool = True,
) -> int:
    """Follow the stream until interrupted; reconnect (with resume) when it drops."""
    token = cfg.server.client_token(Scope.READ)
    headers = [(b"Authorization", f"Bearer {token}".encode())] if token else []
    follower = Follower(history=history)
    printer.sessions = follower.sessions
    warned = False
    delay = 0.5
    while True:
        url = ws_url(cfg, follower.query(sessions, machines, types))
        live_note = f"live from {url.split('?')[0]} ({_what(sessions, machines, types)}); Ctrl-C to stop"
        opened: list[bool] = []
        try:
            await _follow(url, headers, follower, printer, live_note, opened)
        except HandshakeError as exc:
            status = _refused_status(exc)
            if status == 401:
                print(
                    f"contextuate-trio tail: the daemon wants a read token: add one with `contextuate-trio token add` ({cfg.path})",
                    file=sys.stderr,
                )
                return 1
            why = f"refused ({status})" if status else str(exc)
        except ConnectionClosed:
            why = "connection closed"
        except (OSError, trio.BrokenResourceError) as exc:
            why = f"{type(exc).__name__}: {exc}"
        else:
            why = "connection closed"
        if not reconnect:
            print(f"contextuate-trio tail: {why}", file=sys.stderr)
            return 1
        if opened:
            delay = 0.5
        if follower.started:
            printer.note(f"disconnected ({why}); reconnecting")
        elif not warned:
            print(
                f"contextuate-trio tail: cannot reach the daemon's WebSocket ({why}); "
                "is it running? `contextuate-trio start` (retrying)",
                file=sys.stderr,
            )
            warned = True
        follower.lost()
        await trio.sleep(delay)
        delay = min(delay * 2, 5.0)


def _split(values) -> list[str]:
    out: list[str] = []
    for v in values or []:
        out.extend(x for x in v.split(",") if x)
    return out


def cmd_tail(args) -> int:
    cfg = config_mod.load_or_report(warn=False)
    if cfg is None:
        return 2
    color = not args.no_color and not args.json and sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    try:
        width = os.get_terminal_size().columns if sys.stdout.isatty() else None
    except OSError:
        width = None
    printer = Printer(sys.stdout, color, as_json=args.json, width=width)
    sessions = resolve_sessions(cfg, _split(args.session))
    try:
        return trio.run(
            lambda: run(
                cfg,
                printer,
                sessions=sessions,
                machines=_split(args.machine),
                types=_split(args.type),
                history=args.history,
            )
        )
    except KeyboardInterrupt:
        return 0


def add_parser(sub) -> None:
    p = sub.add_parser("tail", help="live, coloured event stream in the terminal (over the WebSocket)")
    p.add_argument(
        "--session",
        action="append",
        metavar="ID",
        help="only this session and its sub-agents (an id or its first characters; repeatable)",
    )
    p.add_argument("--machine", action="append", metavar="NAME", help="only this machine (repeatable)")
    p.add_argument(
        "--type",
        action="append",
        metavar="EVENT_TYPE",
        help="only these event types, e.g. tool_call,tool_error (repeatable)",
    )
    p.add_argument("--history", type=int, default=20, metavar="N", help="recent events to show first (default 20)")
    p.add_argument("--json", action="store_true", help="one event per line as JSON (for jq)")
    p.add_argument("--no-color", action="store_true")
    p.set_defaults(func=cmd_tail)
