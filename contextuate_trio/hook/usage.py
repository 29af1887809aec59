"""The hook's side of tokens and cost (Redis mode, Stop/SubagentStop only).

In Redis mode the daemon may be on another machine, so the machine that has the
transcript reads it: on Stop (the session's transcript) and SubagentStop (the
sub-agent's), the hook reads what was appended since its last run (at most
``MAX_READ`` bytes a run; the rest next time), and sends the new or grown response
records as a second event, ``eventType: "usage"``, in the same round trip as the hook's
own event. The daemon turns records into deltas once per response id (``core.usage.Ledger``),
so a read repeated or raced by two hook runs adds nothing.

Imported lazily by ``hook.process``: standard library C modules only (``posix``), the hook's
own JSON scanner, no ``os``/``json``/``datetime``. State per transcript lives in
``$CONTEXTUATE_HOME/usage/<fnv64 of the path>.json`` (offset, inode, first bytes and
the last response keys), written atomically and committed only once the usage event
is delivered or spooled.
"""

import posix

from contextuate_trio.core import usage
from contextuate_trio.hook.paths import dumps, make_dirs, new_id, parse_json, read_fd, read_file, write_atomic

MAX_READ = 4 << 20
STATE_DIR = "usage"


def _fnv64(text: str) -> str:
    h = 0xCBF29CE484222325
    for b in text.encode("utf-8", "surrogateescape"):
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def _usable(path) -> bool:
    return isinstance(path, str) and path.startswith("/") and path.endswith(".jsonl")


def _transcript_of(payload: dict):
    """(transcript path, session id, sub-agent id) a Stop/SubagentStop names, or None."""
    hook = payload.get("hook_event_name")
    sid = payload.get("session_id")
    agent = None
    if hook == "SubagentStop" and _usable(payload.get("agent_transcript_path")):
        path = payload["agent_transcript_path"]
        agent = payload.get("agent_id") if isinstance(payload.get("agent_id"), str) else None
    elif hook in ("Stop", "SubagentStop"):
        path = payload.get("transcript_path")
    else:
        return None
    if not _usable(path) or not isinstance(sid, str) or not sid:
        return None
    return path, sid, agent


def _load_state(state_path: str) -> usage.FileState:
    try:
        return usage.FileState.from_dict(parse_json(read_file(state_path, 1 << 20).decode("utf-8")))
    except (OSError, ValueError, UnicodeDecodeError):
        return usage.FileState()


def _read_new(path: str, state: usage.FileState, max_read: int) -> tuple:
    """The records appended past ``state`` (advanced) -> (records, where they started)."""
    fd = posix.open(path, posix.O_RDONLY)  # FileNotFoundError: nothing to read (yet)
    try:
        st = posix.fstat(fd)
        state.observe(st.st_dev, st.st_ino, st.st_size, usage.head_of(posix.read(fd, usage.HEAD_BYTES)))
        start = state.offset
        posix.lseek(fd, start, 0)
        data = read_fd(fd, max_read)
    finally:
        posix.close(fd)
    records = usage.read_chunk(state, data, parse_json, at_eof=start + len(data) >= st.st_size)
    if state.offset == start:  # nothing whole in a full budget: a line it can never read
        state.skip_unreadable(len(data), max_read)
    return records, start


def _usage_event(payload: dict, where: tuple, records: list, span: tuple, machine: str, parent, ts: int) -> dict:
    path, sid, agent = where
    tokens = sum(sum(r[usage.R_TOKENS : usage.R_TOKENS + 5]) for r in records)
    event = {
        "id": new_id(),
        "timestamp": ts,
        "sessionId": sid,
        "machineId": machine,
        "eventType": "usage",
        "source": "transcript",
        "summary": "%d model responses, %s tokens" % (len(records), format(tokens, ",")),
        "data": {"transcript": path, "from": span[0], "to": span[1], "records": records},
    }
    if agent:
        event["agentId"] = agent
    if parent:
        event["parentSessionId"] = parent
    if isinstance(payload.get("cwd"), str):
        event["workingDirectory"] = payload["cwd"]
    return event


def prepare(payload, home: str, machine: str, parent, ts: int, max_read: int = MAX_READ):
    """-> (the usage event's wire line, commit) or (None, None) when there is nothing
    new. ``commit()`` saves the offset: call it once the line is delivered or spooled."""
    where = _transcript_of(payload) if isinstance(payload, dict) else None
    if where is None:
        return None, None
    state_dir = home + "/" + STATE_DIR
    state_path = state_dir + "/" + _fnv64(where[0]) + ".json"
    state = _load_state(state_path)
    records, start = _read_new(where[0], state, max_read)
    state.touched = ts // 1000

    def commit() -> None:
        make_dirs(state_dir)
        write_atomic(state_path, dumps(state.to_dict()).encode("utf-8"))

    if not records:
        return None, commit
    event = _usage_event(payload, where, records, (start, state.offset), machine, parent, ts)
    return dumps(event).encode("utf-8"), commit
