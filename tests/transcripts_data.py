"""Transcripts in Claude Code's format, built for the usage tests (unit, end to end
and dashboard), with their totals and dollars computed by hand in the comments."""

from __future__ import annotations

import json
import os

SONNET = "claude-sonnet-4-5-20250929"
HAIKU = "claude-haiku-4-5-20251001"
OPUS = "claude-opus-4-5-20251101"


def assistant(
    mid,
    model,
    inp,
    out,
    cread=0,
    w5=0,
    w1=0,
    *,
    req=None,
    block="text",
    ts="2025-10-01T12:00:00.000Z",
    agent=None,
    breakdown=True,
    web=0,
) -> dict:
    """One transcript line of a model response, as Claude Code writes it (one line per
    content block, each carrying the response's usage)."""
    u = {
        "input_tokens": inp,
        "cache_creation_input_tokens": w5 + w1,
        "cache_read_input_tokens": cread,
        "output_tokens": out,
        "service_tier": "standard",
    }
    if breakdown:
        u["cache_creation"] = {"ephemeral_5m_input_tokens": w5, "ephemeral_1h_input_tokens": w1}
    if web:
        u["server_tool_use"] = {"web_search_requests": web}
    content = (
        {"type": "text", "text": "ok"}
        if block == "text"
        else {"type": "tool_use", "id": "toolu_" + mid[-6:], "name": "Read", "input": {"file_path": "/x"}}
        if block == "tool"
        else {"type": "thinking", "thinking": "hmm", "signature": "s"}
    )
    line = {
        "parentUuid": "p",
        "isSidechain": agent is not None,
        "userType": "external",
        "cwd": "/w",
        "sessionId": "S",
        "version": "2.0.28",
        "gitBranch": "main",
        "message": {
            "model": model,
            "id": mid,
            "type": "message",
            "role": "assistant",
            "content": [content],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": u,
        },
        "requestId": req or "req_" + mid,
        "type": "assistant",
        "uuid": "u-" + mid + block,
        "timestamp": ts,
    }
    if agent:
        line["agentId"] = agent
    return line


def user(text: str, ts="2025-10-01T12:00:00.000Z") -> dict:
    return {
        "type": "user",
        "message": {"role": "user", "content": text},
        "uuid": "u",
        "timestamp": ts,
        "sessionId": "S",
        "isSidechain": False,
    }


def tool_result(text: str) -> dict:
    # A tool result that happens to contain the words the cheap filter looks for.
    return {
        "type": "user",
        "message": {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": text}]},
        "uuid": "u2",
    }


def dump(lines) -> bytes:
    return b"".join(json.dumps(x, separators=(",", ":")).encode() + b"\n" for x in lines)


# A turn: a streamed reply split over three lines (thinking, text, tool call) whose
# first lines carry a partial output_tokens, a tool result, then a second reply.
TURN = [
    user("fix the bug"),
    assistant("msg_A", SONNET, 10, 1, 20_000, 1_000, 2_000, block="thinking"),
    assistant("msg_A", SONNET, 10, 1, 20_000, 1_000, 2_000, block="text"),
    assistant("msg_A", SONNET, 10, 120, 20_000, 1_000, 2_000, block="tool"),
    tool_result('{"type":"assistant","usage":{"input_tokens":999999}}'),
    assistant("msg_B", SONNET, 5, 50, 21_000, ts="2025-10-01T13:05:00.000Z"),
]
# input 10+5 = 15; output 120+50 = 170; cache read 20,000+21,000 = 41,000;
# 5m writes 1,000; 1h writes 2,000; 2 calls.
# Sonnet 4.5 ($3 in, $15 out, $0.30 read, $3.75 5m, $6 1h per million):
#   15*3 + 170*15 + 41,000*0.30 + 1,000*3.75 + 2,000*6 = 45 + 2,550 + 12,300 + 3,750 + 12,000
#   = 30,645 micro-dollars = $0.030645
TURN_COST = 0.030645


SID = "0f3c7d7e-1111-4222-8333-944455556666"
# Haiku 4.5: 107*1 + 203*5 + 300*0.1 + 400*1.25 + 500*2 = 2,652 micro-dollars
SUB_LINES = [
    assistant("msg_S1", HAIKU, 100, 200, 300, 400, 500, agent="a1"),
    assistant("msg_S2", HAIKU, 7, 3, agent="a1"),
]
SUB_COST = 0.002652


def payload(hook: str, transcript: str, **extra) -> dict:
    return {"session_id": SID, "transcript_path": transcript, "cwd": "/w", "hook_event_name": hook, **extra}


def write(path: str, data: bytes, mode: str = "ab") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, mode) as f:
        f.write(data)
