"""Which transcripts a stored batch asks the reader to read (``on_stored``): each
once per batch, throttled unless the event ends a turn or a sub-agent's call."""

from __future__ import annotations

import time

from contextuate_trio.core import events
from contextuate_trio.sources import transcripts

MAIN = "/home/dev/.claude/projects/p/s1.jsonl"


def event(hook: str, i: int, path: object = MAIN, **data) -> events.Event:
    payload = {"session_id": "s1", "hook_event_name": hook, "transcript_path": path, **data}
    if hook.startswith(("Pre", "Post")):
        payload.setdefault("tool_name", "Bash")
    return events.from_payload(payload, event_id=f"e{i}", timestamp=1000 + i, machine_id="m", source="socket")


def reader() -> transcripts.TranscriptReader:
    return transcripts.TranscriptReader(broker=None, state_dir="/nonexistent")


def test_a_burst_asks_for_its_transcript_once_and_a_read_throttles_it(monkeypatch):
    made = []
    real = transcripts.jobs_for
    monkeypatch.setattr(transcripts, "jobs_for", lambda ev: made.append(ev.id) or real(ev))
    r = reader()
    r.on_stored([event("PreToolUse", i) for i in range(50)])
    assert [j.path for j in r._queued] == [MAIN]
    assert made == ["e0"]  # the rest of the batch: no job made
    r._queued.clear()
    r._last[MAIN] = time.monotonic()  # just read
    r.on_stored([event("PreToolUse", i) for i in range(50, 60)])
    assert not r._queued and made == ["e0"]  # throttled, without making jobs
    r.on_stored([event("Stop", 60)])  # a turn's end skips the throttle
    assert [j.path for j in r._queued] == [MAIN]


def test_a_sub_agents_end_is_read_at_once_and_odd_paths_ask_nothing():
    r = reader()
    r._last[MAIN] = time.monotonic()
    r.on_stored([event("PostToolUse", 1, tool_name="Agent", tool_response={"agentId": "a1"})])
    assert sorted(j.path for j in r._queued) == [MAIN, MAIN[: -len(".jsonl")] + "/subagents/agent-a1.jsonl"]
    r._queued.clear()
    r.on_stored([event("PreToolUse", 2, path=["not", "a", "path"]), event("PreToolUse", 3, path="relative.jsonl")])
    assert not r._queued
