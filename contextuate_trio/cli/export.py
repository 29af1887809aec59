"""``contextuate-trio export`` / ``import``: sessions as JSONL, for sharing and backup.

Export writes one stored event per line (the contract's event shape), oldest first,
for every session or the ones named (each with its sub-agents and linked sessions).
It reads through the running daemon's API, or, when the daemon is not running,
straight from the data directory.

Import goes through the running daemon, so there is one writer: the lines are
streamed into its Unix socket. An event that came from a Claude Code hook is sent as
the hook's own envelope (same id, timestamp, machine, the payload exactly as stored),
so the daemon rebuilds its sessions the way it did the first time (sub-agents, their
types and descriptions, links); any other event is sent as the complete event it is.
Ids dedupe: importing the same file twice stores nothing the second time.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.parse
from collections.abc import Iterable
from typing import TextIO

import attrs
import trio

from contextuate_trio import config as config_mod

PAGE = 10_000


# --- export -------------------------------------------------------------------------------
def select(sessions: dict[str, dict], wanted: list[str]) -> list[str]:
    """Ids of the sessions wanted (an id or a unique prefix) and all their descendants."""
    if not wanted:
        return list(sessions)
    out: list[str] = []
    for w in wanted:
        matches = [w] if w in sessions else [k for k in sessions if k.startswith(w)]
        # A prefix of a session also prefixes its sub-agents' ids ("<id>:agent-…"):
        # keep the topmost.
        matches = [m for m in matches if (sessions[m].get("parentSessionId") not in matches)]
        if len(matches) != 1:
            raise LookupError(
                f"no session {w!r}" if not matches else f"{w!r} matches {len(matches)} sessions; give more of the id"
            )
        stack = matches[:]
        while stack:
            sid = stack.pop()
            if sid in out:
                continue
            out.append(sid)
            stack.extend(c for c in sessions.get(sid, {}).get("childSessionIds") or [] if c in sessions)
    return out


def order(events: Iterable[dict]) -> list[dict]:
    """Oldest first; events of one session keep their stored order on equal times."""
    indexed = list(enumerate(events))
    indexed.sort(key=lambda p: (p[1].get("timestamp") or 0, p[0]))
    seen: set = set()
    out = []
    for _, ev in indexed:
        if ev.get("id") in seen:
            continue
        seen.add(ev.get("id"))
        out.append(ev)
    return out


def events_via_api(cfg, session_ids: list[str]) -> list[dict]:
    from contextuate_trio.cli.client import api_get

    out: list[dict] = []
    for sid in session_ids:
        q = urllib.parse.quote(sid, safe="")
        after = None
        seen: set = set()
        while True:
            path = f"/api/sessions/{q}/events?limit={PAGE}" + (f"&after={after}" if after is not None else "&after=-1")
            page = api_get(cfg, path, timeout=30)["events"]
            fresh = [e for e in page if e.get("id") not in seen]
            for e in fresh:
                seen.add(e.get("id"))
            out.extend(fresh)
            if len(page) < PAGE or not fresh:
                break
            # Equal timestamps across a page boundary: ask again from the last one's
            # time minus one; the ids already seen are skipped.
            after = (page[-1].get("timestamp") or 0) - 1
    return out


def sessions_on_disk(data_dir: str) -> dict[str, tuple[dict, str]]:
    base = os.path.join(data_dir, "sessions")
    out = {}
    for key in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        try:
            with open(os.path.join(base, key, "meta.json"), "rb") as f:
                meta = json.loads(f.read())
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and isinstance(meta.get("sessionId"), str):
            out[meta["sessionId"]] = (meta, os.path.join(base, key, "events.jsonl"))
    return out


def events_on_disk(path: str) -> list[dict]:
    out = []
    try:
        with open(path, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break  # a line being written (or torn): not a whole event
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if isinstance(ev, dict):
                    out.append(ev)
    except FileNotFoundError:
        pass
    return out


def export(cfg, wanted: list[str], out) -> tuple[int, int, str]:
    """Write the JSONL; returns (sessions, events, where it was read from)."""
    from contextuate_trio.cli.client import api_get

    try:
        sessions = {s["sessionId"]: s for s in api_get(cfg, "/api/sessions")["sessions"]}
        where = "the daemon"
        ids = select(sessions, wanted)
        evs = events_via_api(cfg, ids)
    except (OSError, ValueError):
        on_disk = sessions_on_disk(cfg.persistence.dir)
        where = cfg.persistence.dir
        ids = select({k: v[0] for k, v in on_disk.items()}, wanted)
        evs = []
        for sid in ids:
            evs.extend(events_on_disk(on_disk[sid][1]))
    n = 0
    for ev in order(evs):
        out.write(json.dumps(ev, ensure_ascii=False, separators=(",", ":")) + "\n")
        n += 1
    return len(ids), n, where


# --- import -------------------------------------------------------------------------------
def to_line(ev: dict) -> tuple[bytes, bool]:
    """(the socket line, whether the daemon acknowledges it)."""
    data = ev.get("data")
    from_hook = (
        isinstance(data, dict)
        and isinstance(data.get("session_id"), str)
        and data.get("hook_event_name") == ev.get("hookType")
        and isinstance(ev.get("id"), str)
        and isinstance(ev.get("timestamp"), int)
    )
    if from_hook and isinstance(data, dict):
        env = {
            "kind": "hook",
            "id": ev["id"],
            "timestamp": ev["timestamp"],
            "machineId": ev.get("machineId") or "unknown",
            "ack": True,
            "payload": data,
        }
        # A link the hook made (CONTEXTUATE_PARENT_SESSION) or a person set; a
        # sub-agent's link is rebuilt from the payload.
        if ev.get("parentSessionId") and ev.get("sessionId") == data["session_id"]:
            env["parentSessionId"] = ev["parentSessionId"]
        return (json.dumps(env, ensure_ascii=False, separators=(",", ":")) + "\n").encode(
            "utf-8", "surrogateescape"
        ), True
    return (json.dumps(ev, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8", "surrogateescape"), False


def read_events(path: str) -> Iterable[tuple[int, object]]:
    f = sys.stdin.buffer if path == "-" else open(path, "rb")
    try:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                yield n, exc
                continue
            yield n, obj
    finally:
        if f is not sys.stdin.buffer:
            f.close()


@attrs.define
class ImportProgress:
    """How far an import got: what it sent, and what the daemon acknowledged."""

    sent: int = 0
    acked: int = 0
    want: int = 0
    nacks: list[str] = attrs.Factory(list)

    def summary(self) -> dict:
        return {
            "sent": self.sent,
            "acknowledged": self.acked,
            "expected": self.want,
            "refused": self.nacks,
            "complete": self.acked >= self.want,
        }


def import_events(socket_path: str, items: list[dict], timeout: float = 60.0) -> dict:
    """Stream events into the daemon's socket; wait (at most ``timeout`` seconds) until
    it has processed them all.

    Sending and reading the acknowledgements run side by side (a Trio nursery), so a
    long import never blocks on a full socket buffer in either direction."""
    progress = ImportProgress(sent=len(items))

    async def bounded() -> None:
        with trio.move_on_after(timeout):
            await _import(socket_path, items, progress)

    trio.run(bounded)
    return progress.summary()


async def _read_acks(
    stream: trio.SocketStream, progress: ImportProgress, sending_done: trio.Event, all_acked: trio.Event
) -> None:
    buf = b""
    while True:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            progress.acked += 1
            if not line.startswith(b'{"ack"'):
                progress.nacks.append(line.decode("utf-8", "replace"))
            if sending_done.is_set() and progress.acked >= progress.want:
                all_acked.set()


async def _import(socket_path: str, items: list[dict], progress: ImportProgress) -> None:
    all_acked = trio.Event()
    sending_done = trio.Event()
    stream = await trio.open_unix_socket(socket_path)
    async with stream, trio.open_nursery() as nursery:
        nursery.start_soon(_read_acks, stream, progress, sending_done, all_acked)
        barrier: bytes | None = None
        for ev in items:
            line, acks = to_line(ev)
            if acks:
                progress.want += 1
                barrier = barrier or line
            await stream.send_all(line)
        if barrier is not None:
            # Lines of one connection are handled in order: once this duplicate of
            # the first acknowledged event is acknowledged, everything before it is.
            progress.want += 1
            await stream.send_all(barrier)
        sending_done.set()
        if progress.acked >= progress.want:
            all_acked.set()
        await all_acked.wait()
        nursery.cancel_scope.cancel()


def cmd_export(args) -> int:
    cfg = config_mod.load_or_report(warn=False)
    if cfg is None:
        return 2
    target = args.output
    to_file = target not in (None, "-")
    tmp = target + ".tmp" if to_file else None
    # Streamed to a temp file (owner-only from the start: no moment when others could
    # read it), renamed into place once whole; an export may not fit in memory.
    out: TextIO = (
        os.fdopen(
            os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8", errors="surrogateescape"
        )
        if tmp is not None
        else sys.stdout
    )
    try:
        n_sessions, n_events, where = export(cfg, args.session or [], out)
        if tmp is not None:
            out.close()
            os.replace(tmp, target)
    except LookupError as exc:
        print(f"contextuate-trio export: {exc.args[0]}", file=sys.stderr)
        if tmp is not None:
            out.close()
            os.unlink(tmp)
        return 1
    print(
        f"exported {n_events} events of {n_sessions} sessions (read from {where})" + (f" to {target}" if tmp else ""),
        file=sys.stderr,
    )
    return 0


def cmd_import(args) -> int:
    cfg = config_mod.load_or_report(warn=False)
    if cfg is None:
        return 2
    items, bad = [], 0
    try:
        for n, obj in read_events(args.file):
            if not isinstance(obj, dict):
                bad += 1
                print(f"contextuate-trio import: line {n} is not a JSON object; skipped", file=sys.stderr)
                continue
            items.append(obj)
    except OSError as exc:
        print(f"contextuate-trio import: {exc}", file=sys.stderr)
        return 1
    from contextuate_trio.cli.client import api_get

    try:
        before = api_get(cfg, "/api/status")
    except Exception:
        print(
            "contextuate-trio import: the daemon is not running (import goes through it, so it "
            "stays the one writer): contextuate-trio start",
            file=sys.stderr,
        )
        return 1
    assert cfg.socket_path is not None  # config.load always sets it
    try:
        result = import_events(cfg.socket_path, items)
    except OSError as exc:
        print(f"contextuate-trio import: cannot reach {cfg.socket_path}: {exc}", file=sys.stderr)
        return 1
    try:
        after = api_get(cfg, "/api/status")
        new = after["eventsStored"] - before["eventsStored"]
        dup = after["duplicates"] - before["duplicates"] - (1 if result["expected"] else 0)
        counts = f": {new} new, {max(dup, 0)} already there"
    except Exception:
        counts = ""
    for r in result["refused"][:5]:
        print(f"contextuate-trio import: refused: {r}", file=sys.stderr)
    print(f"imported {result['sent']} events from {args.file}{counts}" + (f"; {bad} lines skipped" if bad else ""))
    if not result["complete"]:
        print(
            "contextuate-trio import: the daemon did not confirm every event in time; "
            "run the import again (ids dedupe)",
            file=sys.stderr,
        )
        return 1
    return 1 if result["refused"] else 0


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="sessions as JSONL (one event per line), for sharing and backup")
    p.add_argument(
        "--session",
        action="append",
        metavar="ID",
        help="this session (an id or its first characters) with its sub-agents; repeatable; default: every session",
    )
    p.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("import", help="load an export into the running daemon (ids dedupe)")
    p.add_argument("file", help="a JSONL file from `export` (or - for stdin)")
    p.set_defaults(func=cmd_import)
