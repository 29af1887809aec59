"""The event model, and normalisation of Claude Code hook payloads into it.

Plain functions, no I/O: the same code serves every source (socket, spool, Redis).
An event keeps the payload Claude Code sent, untouched, as ``data``; the fields a
monitor needs (tool, agent, notification type, a one-line summary) are pulled out
beside it so nothing has to dig through ``data`` to draw a row.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import attrs
import cattrs
import orjson
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from contextuate_trio.core.names import camel, snake

# Claude Code's hook_event_name -> our eventType. An unknown hook keeps its name,
# in snake_case, so new Claude Code events are stored and shown, never dropped.
EVENT_TYPES = {
    "SessionStart": "session_start",
    "SessionEnd": "session_end",
    "Setup": "setup",
    "UserPromptSubmit": "user_prompt",
    "UserPromptExpansion": "prompt_expansion",
    "MessageDisplay": "message_display",
    "PreToolUse": "tool_call",
    "PermissionRequest": "permission_request",
    "PermissionDenied": "permission_denied",
    "PostToolUse": "tool_result",
    "PostToolUseFailure": "tool_error",
    "PostToolBatch": "tool_batch",
    "Notification": "notification",
    "Elicitation": "elicitation",
    "ElicitationResult": "elicitation_result",
    "Stop": "stop",
    "StopFailure": "stop_failure",
    "SubagentStart": "subagent_start",
    "SubagentStop": "subagent_stop",
    "PreCompact": "pre_compact",
    "PostCompact": "post_compact",
    "PreModelSwitch": "pre_model_switch",
    "PostModelSwitch": "model_switch",
    "TeammateIdle": "teammate_idle",
    "TaskCreated": "task_created",
    "TaskCompleted": "task_completed",
    "InstructionsLoaded": "instructions_loaded",
    "ConfigChange": "config_change",
    "CwdChanged": "cwd_changed",
    "FileChanged": "file_changed",
    "DirectoryAdded": "directory_added",
    "WorktreeCreate": "worktree_create",
    "WorktreeRemove": "worktree_remove",
    "PreSkillShellCommand": "skill_shell_command",
}
# A UserPromptSubmit that nobody typed: a background sub-agent's result handed back to
# its parent as a prompt (Claude Code 2.1.1xx+). Shown as the agent's report.
AGENT_REPORT = "agent_report"
TASK_NOTIFICATION = "<task-notification>"
INVALID = "invalid"  # the hook's stdin was not a JSON object; data.raw keeps the text
UNKNOWN_SESSION = "unknown"
AGENT_TOOLS = ("Agent", "Task")  # the sub-agent tool; "Task" in older Claude Code


def event_type_for(hook_name: str | None) -> str:
    if not hook_name:
        return "unknown"
    return EVENT_TYPES.get(hook_name) or snake(hook_name)


@attrs.define(slots=True)
class Event:
    id: str
    timestamp: int
    session_id: str
    machine_id: str
    event_type: str
    hook_type: str | None = None
    working_directory: str | None = None
    parent_session_id: str | None = None
    tool_name: str | None = None
    tool_use_id: str | None = None
    duration_ms: float | None = None
    agent_id: str | None = None
    agent_type: str | None = None
    notification_type: str | None = None
    # Claude Code's id of the prompt (turn) the event belongs to: groups a turn.
    prompt_id: str | None = None
    summary: str | None = None
    source: str | None = None
    # dict[Any, Any]: the bare dict's cattrs hook (dict[str, Any] would convert keys, 13x slower).
    data: dict[Any, Any] = attrs.Factory(dict)
    # Set by the session machine on the event that ends a turn: the tool calls of the
    # turn that never got a result ({tool_use_id: "interrupted" | "denied"}).
    unanswered_calls: dict[str, str] | None = None
    # Fields of a producer's event that we do not model, given back as they came.
    extra: dict[Any, Any] = attrs.Factory(dict)
    # Set on events normalised from a Claude Code payload: the session manager still
    # has to attribute them to the sub-agent they ran in. Never serialised.
    from_hook: bool = attrs.field(default=False, eq=False)

    def tool_input(self) -> Any:
        return self.data.get("tool_input")

    def tool_output(self) -> Any:
        """The tool's result; Claude Code sometimes sends it as a JSON string."""
        out = self.data.get("tool_response")
        if isinstance(out, str) and out[:1] in "{[":
            try:
                return json.loads(out)
            except ValueError:
                pass
        return out


_FIELDS = [a.name for a in attrs.fields(Event) if a.name not in ("extra", "from_hook")]
_CAMEL = {camel(n): n for n in _FIELDS}
_REQUIRED = ("id", "timestamp", "session_id", "machine_id", "event_type", "data")

converter = cattrs.Converter()


def _as_is(value: Any) -> Any:
    return value


# The overrides by field name are typed ``Any``: mypy checks the values of a ``**`` dict
# against every keyword parameter, the ``_cattrs_*`` flags included.
# Required fields are always present, even when falsy.
_UNSTRUCTURE_RENAMES: dict[str, Any] = {
    n: override(rename=camel(n), omit_if_default=False if n in _REQUIRED else None) for n in _FIELDS if n != "data"
}
_STRUCTURE_RENAMES: dict[str, Any] = {n: override(rename=camel(n)) for n in _FIELDS}

converter.register_unstructure_hook(
    Event,
    make_dict_unstructure_fn(
        Event,
        converter,
        _cattrs_omit_if_default=True,
        **_UNSTRUCTURE_RENAMES,
        # ``data`` is JSON already: given as it is, not walked value by value (that
        # walk was the largest single cost of storing an event).
        data=override(rename="data", omit_if_default=False, unstruct_hook=_as_is),
        extra=override(omit=True),
        from_hook=override(omit=True),
    ),
)
converter.register_structure_hook(
    Event,
    make_dict_structure_fn(
        Event,
        converter,
        **_STRUCTURE_RENAMES,
        extra=override(omit=True),
        from_hook=override(omit=True),
    ),
)


def to_dict(event: Event) -> dict[str, Any]:
    """The event's JSON object: what ``converter.unstructure`` gives (the required
    fields, then the others that are set, in field order), written out by hand: the
    generated function calls a hook per field and was 2x slower, on every event stored."""
    e = event
    out: dict[str, Any] = {
        "id": e.id,
        "timestamp": e.timestamp,
        "sessionId": e.session_id,
        "machineId": e.machine_id,
        "eventType": e.event_type,
        "data": e.data,
    }
    if e.hook_type is not None:
        out["hookType"] = e.hook_type
    if e.working_directory is not None:
        out["workingDirectory"] = e.working_directory
    if e.parent_session_id is not None:
        out["parentSessionId"] = e.parent_session_id
    if e.tool_name is not None:
        out["toolName"] = e.tool_name
    if e.tool_use_id is not None:
        out["toolUseId"] = e.tool_use_id
    if e.duration_ms is not None:
        out["durationMs"] = e.duration_ms
    if e.agent_id is not None:
        out["agentId"] = e.agent_id
    if e.agent_type is not None:
        out["agentType"] = e.agent_type
    if e.notification_type is not None:
        out["notificationType"] = e.notification_type
    if e.prompt_id is not None:
        out["promptId"] = e.prompt_id
    if e.summary is not None:
        out["summary"] = e.summary
    if e.source is not None:
        out["source"] = e.source
    if e.unanswered_calls is not None or e.extra:
        _rest(e, out)
    return out


def _rest(e: Event, out: dict[str, Any]) -> None:
    """``to_dict``'s last part: the unanswered calls, and a producer's own fields."""
    if e.unanswered_calls is not None:
        out["unansweredCalls"] = dict(e.unanswered_calls)
    for k, v in e.extra.items():
        out.setdefault(k, v)


def dumps(event: Event) -> str:
    return json.dumps(to_dict(event), ensure_ascii=False, separators=(",", ":"))


def encode(event: Event) -> bytes:
    """The event's compact JSON as UTF-8 (what is stored and sent). orjson; the
    standard library for what orjson refuses (Python ints over 64 bits, lone
    surrogates: those are replaced, as no UTF-8 file takes them)."""
    return json_bytes(to_dict(event))


def encode_line(event: Event) -> bytes:
    """``encode`` and a newline: the line that is stored and kept in the resume
    window. Joined, not orjson's OPT_APPEND_NEWLINE: orjson's own bytes object keeps
    the capacity it grew to (16 KB held for a 1 KB line, measured with tracemalloc),
    and the copy made here is exact (8 MB of RSS after 20,000 events)."""
    return json_bytes(to_dict(event)) + b"\n"


def json_bytes(d: dict[str, Any]) -> bytes:
    """Compact JSON as UTF-8: orjson, or the standard library for what orjson refuses
    (ints over 64 bits, lone surrogates: replaced, as no UTF-8 file takes them)."""
    try:
        return orjson.dumps(d)
    except TypeError:  # orjson.JSONEncodeError
        return utf8(json.dumps(d, ensure_ascii=False, separators=(",", ":")))


def utf8(text: str) -> bytes:
    """Lone surrogates (from ``\\ud800`` escapes) replaced: no UTF-8 file takes them."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")


class EventError(ValueError):
    """A line or object that cannot become an event; the message says why."""


def _str_or_none(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def _num_or_none(v: Any) -> float | None:
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _short(text: object, n: int = 160) -> str | None:
    if not isinstance(text, str):
        return None
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


_INPUT_KEYS = ("command", "file_path", "pattern", "url", "query", "description", "path", "prompt")


def _str(p: dict[str, Any], key: str) -> str:
    v = p.get(key)
    return v if isinstance(v, str) else ""


def _tail(path: str) -> str:
    """The last two parts of a path: enough to recognise a file in a list."""
    return "/".join(path.rstrip("/").split("/")[-2:])


def _agent_report(p: dict[str, Any]) -> str | None:
    text = _str(p, "prompt")
    summary = tag_text(text, "summary") or "a background agent finished"
    result = tag_text(text, "result")
    return f"{summary}: {result}" if result else summary


def tag_text(text: object, name: str) -> str | None:
    """The text of ``<name>…</name>`` in a task notification (no XML parser: the
    prompt is not well-formed XML and need not be)."""
    if not isinstance(text, str):
        return None
    start = text.find(f"<{name}>")
    end = text.find(f"</{name}>", start + 1)
    if start < 0 or end < 0:
        return None
    return text[start + len(name) + 2 : end].strip() or None


# Per event type, its one line, for events whose main fact is not a tool call or one
# of the generic keys below.
_SUMMARIES: dict[str, Callable[[dict[str, Any]], str | None]] = {
    AGENT_REPORT: _agent_report,
    "message_display": lambda p: _str(p, "delta") or None,
    "prompt_expansion": lambda p: f"/{_str(p, 'command_name')} {_str(p, 'command_args')}".strip() or None,
    "instructions_loaded": lambda p: (
        f"{_tail(_str(p, 'file_path'))} ({_str(p, 'memory_type') or '?'}, {_str(p, 'load_reason') or '?'})"
    ),
    "cwd_changed": lambda p: f"cd {_str(p, 'new_cwd')}",
    "model_switch": lambda p: f"model {_str(p, 'from_model')} → {_str(p, 'to_model')}",
    "pre_model_switch": lambda p: f"switching model from {_str(p, 'from_model')} to {_str(p, 'to_model')}",
    "elicitation": lambda p: f"{_str(p, 'mcp_server_name')} asks: {_str(p, 'message')}",
    "elicitation_result": lambda p: f"{_str(p, 'mcp_server_name')}: {_str(p, 'action')}",
    "config_change": lambda p: f"{_str(p, 'source')} settings changed {_tail(_str(p, 'file_path'))}".strip(),
    "setup": lambda p: f"setup ({_str(p, 'trigger')})",
    "teammate_idle": lambda p: f"teammate {_str(p, 'teammate_name')} is idle",
    "task_created": lambda p: f"task: {_str(p, 'task_subject')}",
    "task_completed": lambda p: f"task done: {_str(p, 'task_subject')}",
    "worktree_create": lambda p: f"worktree {_str(p, 'name')}",
    "worktree_remove": lambda p: f"worktree removed {_str(p, 'worktree_path')}",
    "file_changed": lambda p: f"{_str(p, 'event')} {_tail(_str(p, 'file_path'))}",
    "directory_added": lambda p: f"directory added {_str(p, 'directory')}",
    "stop_failure": lambda p: " — ".join(x for x in (_str(p, "error"), _str(p, "error_details")) if x) or None,
}


def summarize(event_type: str, p: dict[str, Any]) -> str | None:
    """One line a person reads in a list: what happened, with its main argument."""
    special = _SUMMARIES.get(event_type)
    if special is not None:
        try:
            return _short(special(p))
        except (TypeError, AttributeError):  # a field of an unexpected type: the generic line
            pass
    tool = p.get("tool_name")
    if tool:
        ti: dict[str, Any] = p["tool_input"] if isinstance(p.get("tool_input"), dict) else {}
        arg = next((ti[k] for k in _INPUT_KEYS if isinstance(ti.get(k), str) and ti[k]), None)
        text = f"{tool} {arg}" if arg else str(tool)
        if event_type in ("tool_error", "permission_denied") and (p.get("error") or p.get("reason")):
            text += f" — {p.get('error') or p.get('reason')}"
        return _short(text)
    for key in ("prompt", "message", "last_assistant_message", "error", "reason", "source"):
        if p.get(key):
            return _short(p[key])
    return None


def is_agent_report(prompt: object) -> bool:
    return isinstance(prompt, str) and prompt.lstrip().startswith(TASK_NOTIFICATION)


def from_payload(
    payload: Any,
    *,
    event_id: str,
    timestamp: int,
    machine_id: str,
    parent_session_id: str | None = None,
    source: str | None = None,
) -> Event:
    """Normalise one Claude Code hook payload (the hook's stdin) into an event."""
    if not isinstance(payload, dict):
        return Event(
            id=event_id,
            timestamp=timestamp,
            session_id=UNKNOWN_SESSION,
            machine_id=machine_id,
            event_type=INVALID,
            summary=_short(str(payload)),
            source=source,
            data={"raw": payload},
        )
    hook = _str_or_none(payload.get("hook_event_name"))
    event_type = event_type_for(hook)
    if event_type == "user_prompt" and is_agent_report(payload.get("prompt")):
        event_type = AGENT_REPORT
    return Event(
        id=event_id,
        timestamp=timestamp,
        session_id=_str_or_none(payload.get("session_id")) or UNKNOWN_SESSION,
        machine_id=machine_id,
        event_type=event_type,
        hook_type=hook,
        working_directory=_str_or_none(payload.get("cwd")),
        parent_session_id=parent_session_id,
        tool_name=_str_or_none(payload.get("tool_name")),
        tool_use_id=_str_or_none(payload.get("tool_use_id")),
        duration_ms=_num_or_none(payload.get("duration_ms")),
        agent_id=_str_or_none(payload.get("agent_id")),
        agent_type=_str_or_none(payload.get("agent_type")),
        notification_type=_str_or_none(payload.get("notification_type")),
        prompt_id=_str_or_none(payload.get("prompt_id")),
        summary=summarize(event_type, payload),
        source=source,
        data=payload,
        from_hook=True,
    )


def from_envelope(env: dict[str, Any], source: str | None = None) -> Event:
    """The hook's wire object (``{"kind": "hook", "id", ..., "payload"}``)."""
    event_id = env.get("id")
    ts = env.get("timestamp")
    if not isinstance(event_id, str) or not event_id:
        raise EventError("hook envelope without an id")
    if not isinstance(ts, int) or isinstance(ts, bool):
        raise EventError("hook envelope without an integer timestamp")
    return from_payload(
        env.get("payload"),
        event_id=event_id,
        timestamp=ts,
        machine_id=_str_or_none(env.get("machineId")) or "unknown",
        parent_session_id=_str_or_none(env.get("parentSessionId")),
        source=source,
    )


@attrs.frozen
class Mint:
    """Where an event that arrives without an id or a time gets one. Injected: the
    core has no clock and no randomness of its own (tests pass fixed ones)."""

    new_id: Callable[[], str]
    now_ms: Callable[[], int]


def from_object(obj: Any, source: str | None = None, *, mint: Mint) -> Event:
    """Any JSON object a producer may send: a hook envelope, a complete event in the
    contract's shape, or a bare Claude Code payload."""
    if not isinstance(obj, dict):
        raise EventError(f"expected a JSON object, got {type(obj).__name__}")
    if obj.get("kind") == "hook":
        return from_envelope(obj, source)
    if "eventType" in obj or "sessionId" in obj:
        return _from_complete(obj, source, mint)
    if "hook_event_name" in obj or "session_id" in obj:
        return from_payload(
            obj,
            event_id=mint.new_id(),
            timestamp=mint.now_ms(),
            machine_id="unknown",
            source=source,
        )
    raise EventError("not an event: no eventType/sessionId and no hook_event_name")


# Sources only the daemon gives its own events (``core.decisions``' audit events).
DAEMON_SOURCES = frozenset({"dashboard"})

# A complete event's optional text fields: a value that is not a string is dropped.
_TEXT_FIELDS = frozenset(
    {
        "hook_type",
        "working_directory",
        "parent_session_id",
        "tool_name",
        "tool_use_id",
        "agent_id",
        "agent_type",
        "notification_type",
        "prompt_id",
        "summary",
        "source",
    }
)


def _from_complete(obj: dict[str, Any], source: str | None, mint: Mint) -> Event:
    """A producer's complete event; the text fields are checked as they are sorted
    out (one pass over the object: this runs on every line a producer streams)."""
    fields: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in obj.items():
        name = _CAMEL.get(key)
        if name is None:
            if key != "ack":  # a request to the socket, not part of the event
                extra[key] = value
        elif name in _TEXT_FIELDS and not isinstance(value, str):
            fields[name] = None
        else:
            fields[name] = value
    for name in ("session_id", "event_type"):
        if not isinstance(fields.get(name), str) or not fields[name]:
            raise EventError(f"event without a valid {camel(name)}")
    event_id = fields.get("id")
    if not isinstance(event_id, str) or not event_id:
        fields["id"] = mint.new_id()
    ts = fields.get("timestamp")
    if isinstance(ts, float) and math.isfinite(ts):
        fields["timestamp"] = int(ts)
    elif not isinstance(ts, int) or isinstance(ts, bool):
        fields["timestamp"] = mint.now_ms()
    machine = fields.get("machine_id")
    if not isinstance(machine, str) or not machine:
        fields["machine_id"] = "unknown"
    if "data" in fields and not isinstance(fields["data"], dict):
        fields["data"] = {"value": fields["data"]}
    if "unanswered_calls" in fields and not isinstance(fields["unanswered_calls"], dict):
        del fields["unanswered_calls"]
    if "duration_ms" in fields:
        fields["duration_ms"] = _num_or_none(fields["duration_ms"])
    claimed = fields.get("source")
    # "dashboard" marks what the daemon itself records (an answer's audit): a producer's
    # claim of it is replaced by where the event really came from.
    fields["source"] = claimed if claimed and claimed not in DAEMON_SOURCES else source
    return Event(**fields, extra=extra)
