"""Transcripts as a source (local mode): tokens read from Claude Code's transcripts.

When a stored event says a transcript has news (``Stop``, ``SubagentStop``, the Agent
tool's result, ``SessionEnd``; any other event at most every ``THROTTLE_S`` per file,
so a long turn's cost moves while it runs), the transcript is read from where the last
read stopped, in a worker thread, and what it adds goes back through the broker as one
``usage`` event (``source: "transcript"``). The session manager applies it like any
other event, so one writer owns the sessions and the usage is stored, replayed and
broadcast with everything else.

Offsets (with the file's identity and its last response keys) are kept in
``usage-transcripts.json`` next to the data, so a restart reads nothing twice. A file
that was replaced (other inode), truncated or rewritten (its first bytes changed) is
read again from the start; the response keys make that harmless. A file that is
missing or unreadable is skipped, and tried again on its next trigger.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from typing import TypeGuard

import attrs
import trio

from contextuate_trio.core import usage
from contextuate_trio.core.events import AGENT_TOOLS, Event
from contextuate_trio.core.sessions import USAGE_EVENT
from contextuate_trio.hook.paths import write_atomic

log = logging.getLogger("contextuate.transcripts")

STATE_NAME = "usage-transcripts.json"
CHUNK = 8 << 20
MAX_PER_READ = 256 << 20  # a job reads at most this much; the rest on the next trigger
THROTTLE_S = 15.0
FORGET_AFTER_S = 30 * 86400
ALWAYS = ("Stop", "SubagentStop", "SessionEnd", "StopFailure", "PreCompact")
# The hooks whose jobs may skip the throttle (``jobs_for``): ALWAYS, and what ends a
# sub-agent's tool call.
MAY_BE_URGENT = frozenset((*ALWAYS, "PostToolUse", "PostToolUseFailure"))
_NS = uuid.UUID("7d4c1c52-7e0a-4b7a-9a51-2b8e0f7c9a10")


@attrs.define(frozen=True)
class Job:
    path: str
    root: str  # the Claude Code session the transcript belongs to
    machine: str
    agent: str | None = None  # a sub-agent's own transcript
    cwd: str | None = None


def _usable(path: object) -> TypeGuard[str]:
    return isinstance(path, str) and path.startswith("/") and path.endswith(".jsonl") and "\0" not in path


def jobs_for(ev: Event) -> list[tuple[Job, bool]]:
    """(job, urgent) pairs an event asks for; urgent ones skip the throttle."""
    if ev.source == "redis" or ev.event_type == USAGE_EVENT or not isinstance(ev.data, dict):
        return []
    d = ev.data
    root = d.get("session_id")
    if not isinstance(root, str) or not root:
        return []
    main = d.get("transcript_path")
    hook = ev.hook_type
    out: list[tuple[Job, bool]] = []
    if hook == "SubagentStop" and _usable(d.get("agent_transcript_path")) and isinstance(d.get("agent_id"), str):
        out.append((Job(d["agent_transcript_path"], root, ev.machine_id, d["agent_id"], ev.working_directory), True))
    if hook in ("PostToolUse", "PostToolUseFailure") and ev.tool_name in AGENT_TOOLS and _usable(main):
        resp = ev.tool_output()
        aid = resp.get("agentId") if isinstance(resp, dict) else None
        if isinstance(aid, str) and aid and "/" not in aid:
            # Claude Code keeps a sub-agent's transcript beside the session's.
            guess = f"{main[: -len('.jsonl')]}/subagents/agent-{aid}.jsonl"
            out.append((Job(guess, root, ev.machine_id, aid, ev.working_directory), True))
        out.append((Job(main, root, ev.machine_id, None, ev.working_directory), True))
        return out
    if _usable(main) and not (hook == "SubagentStop" and out):
        out.append((Job(main, root, ev.machine_id, None, ev.working_directory), hook in ALWAYS))
    return out


def read_new(
    path: str, state: usage.FileState, max_bytes: int = MAX_PER_READ, loads=json.loads
) -> tuple[list, int, int, bool]:
    """Read what ``path`` holds past ``state`` -> (records, start, end, more left).
    Runs in a worker thread; raises OSError when the file cannot be read."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        head = usage.head_of(f.read(usage.HEAD_BYTES))
        if state.observe(st.st_dev, st.st_ino, st.st_size, head):
            log.info("transcript %s was replaced or truncated; reading it from the start", path)
        start = state.offset
        f.seek(start)
        records: list = []
        read = 0
        carry = b""
        while read < max_bytes:
            chunk = f.read(min(CHUNK, max_bytes - read))
            if not chunk:
                break
            read += len(chunk)
            data = carry + chunk
            before = state.offset
            at_eof = f.tell() >= st.st_size and len(chunk) < CHUNK
            records += usage.read_chunk(state, data, loads, at_eof=at_eof)
            carry = data[state.offset - before :]
            if not state.skip_unreadable(len(carry), max_bytes):
                carry = b""
        more = state.offset + len(carry) < os.fstat(f.fileno()).st_size and read >= max_bytes
    state.touched = int(time.time())
    return records, start, state.offset, more


class TranscriptReader:
    """Reads transcripts on the broker's behalf; one job at a time, off the event loop."""

    def __init__(self, broker, state_dir: str) -> None:
        self.broker = broker
        self.state_path = os.path.join(state_dir, STATE_NAME)
        self.states: dict[str, usage.FileState] = {}
        self._queued: dict[Job, None] = {}
        self._last: dict[str, float] = {}
        self._wake = trio.Event()
        self.counters = {"reads": 0, "records": 0, "bytes": 0, "errors": 0}
        self.last_error: str | None = None

    # --- state ------------------------------------------------------------------------
    def load(self) -> None:
        try:
            with open(self.state_path, "rb") as f:
                raw = json.loads(f.read())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning(
                "%s unreadable (%s): transcripts will be read from their start; "
                "responses already counted are recognised by their ids only within this run",
                self.state_path,
                exc,
            )
            return
        files = raw.get("files") if isinstance(raw, dict) else None
        for path, d in (files or {}).items():
            self.states[path] = usage.FileState.from_dict(d)
        # What was counted before the restart stays counted: seed the daemon's ledger.
        ledger = self.broker.manager.usage_ledger
        for st in self.states.values():
            for key, values in st.recent.items():
                if isinstance(values, list) and len(values) == usage.N_VALUES:
                    ledger.take([key, "", 0, *values, None])

    def _save(self) -> None:
        now = time.time()
        files = {p: s.to_dict() for p, s in self.states.items() if now - s.touched < FORGET_AFTER_S}
        data = json.dumps({"version": 1, "files": files}, separators=(",", ":")).encode()
        write_atomic(self.state_path, data)

    # --- triggers (called by the broker, synchronously, after each stored batch) -------
    def on_stored(self, stored: list[Event]) -> None:
        now = time.monotonic()
        last = self._last
        asked: set[str] = set()  # main transcripts queued by this batch
        for ev in stored:
            d = ev.data
            if ev.hook_type not in MAY_BE_URGENT and isinstance(d, dict):
                # Its one job, if any, is its main transcript, not urgent: skipped
                # when throttled without making the job (a burst's every event).
                path = d.get("transcript_path")
                if isinstance(path, str) and (path in asked or now - last.get(path, -1e9) < THROTTLE_S):
                    continue
            for job, urgent in jobs_for(ev):
                if not urgent and now - last.get(job.path, -1e9) < THROTTLE_S:
                    continue
                self._queued[job] = None
                if not urgent:
                    asked.add(job.path)
        if self._queued:
            self._wake.set()

    # --- the task -----------------------------------------------------------------------
    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.load()
        self.broker.on_stored.append(self.on_stored)
        task_status.started()
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                jobs = list(self._queued)
                self._queued.clear()
                dirty = False
                for job in jobs:
                    dirty |= await self._one(job)
                if dirty:
                    try:
                        await trio.to_thread.run_sync(self._save)
                    except OSError as exc:
                        self._failed(f"cannot save {self.state_path}: {exc}")
        finally:
            if self.on_stored in self.broker.on_stored:
                self.broker.on_stored.remove(self.on_stored)

    async def _one(self, job: Job) -> bool:
        self._last[job.path] = time.monotonic()
        state = self.states.get(job.path) or usage.FileState()
        try:
            records, start, end, more = await trio.to_thread.run_sync(read_new, job.path, state)
        except FileNotFoundError:
            return False  # not written yet, or not on this machine: the estimate stands
        except OSError as exc:
            self._failed(f"cannot read {job.path}: {exc}")
            return False
        self.states[job.path] = state
        self.counters["reads"] += 1
        self.counters["bytes"] += end - start
        if more:
            self._queued[job] = None
            self._wake.set()
        if not records:
            return True
        self.counters["records"] += len(records)
        ev = usage_event(job, records, start, end, state)
        d = await self.broker.submit(ev, wait=True)
        if not d.ok:
            self._failed(f"usage event for {job.path} not stored: {d.error}")
        return True

    def _failed(self, why: str) -> None:
        self.counters["errors"] += 1
        if why != self.last_error:
            log.warning("transcripts: %s", why)
        self.last_error = why


def summary(records: list) -> str:
    tokens = sum(sum(r[usage.R_TOKENS : usage.R_TOKENS + 5]) for r in records)
    models = sorted({r[usage.R_MODEL] for r in records})
    return f"{len(records)} model responses, {tokens:,} tokens ({', '.join(models)})"


def usage_event(job: Job, records: list, start: int, end: int, state: usage.FileState) -> Event:
    # The same bytes of the same file give the same id: a read repeated after a crash
    # (stored, but the offset not yet saved) is dropped by the broker as a duplicate.
    ident = f"{state.dev}:{state.ino}:{state.head[:32]}:{job.path}:{start}:{end}"
    return Event(
        id=str(uuid.uuid5(_NS, ident)),
        timestamp=int(time.time() * 1000),
        session_id=job.root,
        machine_id=job.machine,
        event_type=USAGE_EVENT,
        working_directory=job.cwd,
        agent_id=job.agent,
        summary=summary(records),
        source="transcript",
        data={"transcript": job.path, "from": start, "to": end, "records": records},
    )
