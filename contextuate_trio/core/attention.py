""" "Needs you": why a session waits for a person, and the queue of all of them.

Plain code, no clock of its own: the session machine calls ``after_event`` on each
event of a session, which says what the session now waits for (or that it no longer
does); ``queue`` builds the list every machine's sessions feed, given the time.

A session waits for a person when Claude Code asks for a permission (the
``PermissionRequest`` hook fires the moment the prompt shows; its ``Notification``
comes seconds later), when an MCP server asks a question (``Elicitation``), when the
prompt has sat idle (``idle_prompt``), when an agent asks for input, or when a turn
failed in a way only a person can fix (rate limit, billing, credentials). A session
that says it is working but has sent nothing for a while is ``stuck``. The event that
answers (a tool result, a prompt, a denial, the turn's end) clears it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from contextuate_trio.core.events import Event

if TYPE_CHECKING:
    from contextuate_trio.core.sessions import Session

PERMISSION, ELICITATION, IDLE, INPUT, FAILURE, STUCK = "permission", "elicitation", "idle", "input", "failure", "stuck"
REASONS = (PERMISSION, ELICITATION, IDLE, INPUT, FAILURE, STUCK)
# Reasons that mean the agent is blocked on a person right now (status "waiting").
BLOCKING = frozenset({PERMISSION, ELICITATION, IDLE, INPUT})

_BY_NOTIFICATION = {
    "permission_prompt": PERMISSION,
    "elicitation_dialog": ELICITATION,
    "elicitation_url_dialog": ELICITATION,
    "idle_prompt": IDLE,
    "agent_needs_input": INPUT,
}
# StopFailure errors (Claude Code's ``error`` values) that a person has to act on;
# the rest (overloaded, server_error, max_output_tokens, ...) pass or need no one.
ACTION_ERRORS = frozenset(
    {
        "rate_limit",
        "billing_error",
        "authentication_failed",
        "oauth_org_not_allowed",
        "account_on_hold",
        "verification_required",
        "cloud_credential_error",
        "model_not_found",
    }
)
# Events that say nothing about whether the agent is busy, and neither ask for a person
# nor answer one: the session's status stays, and so does its wait (the session
# machine's status rules use this set too).
QUIET = frozenset(
    {
        "notification",  # one that does not ask (reason_for): auth_success, ...
        "invalid",
        "usage",
        "message_display",
        "instructions_loaded",
        "config_change",
        "cwd_changed",
        "file_changed",
        "directory_added",
        "pre_compact",
        "post_compact",
        "compaction_agent",
        "pre_model_switch",
        "model_switch",
        "teammate_idle",
        "task_created",
        "task_completed",
        "skill_shell_command",
        "setup",
        "worktree_create",
        "worktree_remove",
    }
)
# A tool batch is a step (the session is busy), but its results came before it: it
# answers nothing that they did not.
_NEUTRAL = QUIET | {"tool_batch"}
DETAIL_MAX = 300
STUCK_GIVE_UP_MS = 24 * 3600 * 1000
# A session's last event that says a turn is under way (a session that only started,
# or that compacts, waits for nobody and is not stuck).
WORKING = frozenset(
    {
        "user_prompt",
        "agent_report",
        "prompt_expansion",
        "tool_call",
        "tool_result",
        "tool_error",
        "tool_batch",
        "permission_denied",
        "elicitation_result",
        "subagent_start",
        "message_display",
    }
)

Attention = dict[str, Any]  # {"reason", "since", "detail", "toolName"?, "toolUseId"?, "requestId"?}


def reason_for(ev: Event) -> str | None:
    """What ``ev`` says its session now waits for, if it says so."""
    et = ev.event_type
    if et == "permission_request":
        return PERMISSION
    if et == "elicitation":
        return ELICITATION
    if et == "notification":
        return _BY_NOTIFICATION.get(ev.notification_type or "")
    if et == "stop_failure":
        error = ev.data.get("error") if isinstance(ev.data, dict) else None
        return FAILURE if error in ACTION_ERRORS else None
    return None


def after_event(current: Attention | None, ev: Event) -> Attention | None:
    """The session's attention once ``ev`` has happened to it."""
    reason = reason_for(ev)
    if reason is None:
        if ev.event_type in _NEUTRAL:
            return current
        return None  # anything else the agent does answers the wait
    if current is not None and current["reason"] == reason and not _new_request(current, ev):
        return current  # the same wait said again (the Notification after the request)
    item: Attention = {"reason": reason, "since": ev.timestamp, "detail": _detail(ev)}
    if ev.tool_name:
        item["toolName"] = ev.tool_name
    if ev.tool_use_id:
        item["toolUseId"] = ev.tool_use_id
    if ev.event_type in ("permission_request", "elicitation"):
        item["requestId"] = ev.id  # what an answer from the dashboard names
    return item


def _new_request(current: Attention, ev: Event) -> bool:
    """A second PermissionRequest (another tool) is a new wait, not the same one."""
    return ev.event_type in ("permission_request", "elicitation") and current.get("requestId") != ev.id


def _detail(ev: Event) -> str:
    text = ev.summary or ev.event_type
    if ev.event_type == "notification" and isinstance(ev.data, dict) and isinstance(ev.data.get("message"), str):
        text = ev.data["message"]
    return text if len(text) <= DETAIL_MAX else text[: DETAIL_MAX - 1] + "…"


def queue(sessions: Iterable[Session], now_ms: int, stuck_after_ms: int | None) -> list[dict[str, Any]]:
    """Every session waiting for a person, longest wait first."""
    by_id = {s.session_id: s for s in sessions}
    items = []
    for s in by_id.values():
        if s.hidden:
            continue
        att = s.attention
        if att is None and stuck_after_ms is not None:
            att = stuck(s, by_id, now_ms, stuck_after_ms)
        if att is not None:
            items.append(item(s, att, by_id, now_ms))
    items.sort(key=lambda i: (i["since"], i["sessionId"]))
    return items


def stuck(s: Session, by_id: dict[str, Session], now_ms: int, stuck_after_ms: int) -> Attention | None:
    """A session that was at work (its last event is a step of a turn) but has not
    been heard from for ``stuck_after_ms``. After a day it is taken for gone (killed
    without a SessionEnd), not stuck: nobody is paged about it any more."""
    if s.status != "active" or s.last_event_type not in WORKING:
        return None
    if any(c is not None and c.status == "active" for c in map(by_id.get, s.child_session_ids)):
        return None  # a sub-agent is at work: it is the one stuck, if any
    last = last_heard(s, by_id)
    if last is None or not stuck_after_ms <= now_ms - last <= STUCK_GIVE_UP_MS:
        return None
    minutes = (now_ms - last) // 60_000
    return {
        "reason": STUCK,
        "since": last,
        "detail": f"no event for {minutes} min (last: {s.last_summary or s.last_event_type})",
    }


def last_heard(s: Session, by_id: dict[str, Session]) -> int | None:
    times = [s.last_event_time or 0]
    for cid in s.child_session_ids:
        child = by_id.get(cid)
        if child is not None and child.status == "active":
            times.append(child.last_event_time or 0)
    return max(times) or None


def item(s: Session, att: Attention, by_id: dict[str, Session], now_ms: int) -> dict[str, Any]:
    root = s
    seen = {s.session_id}
    while root.parent_session_id and root.parent_session_id in by_id and root.parent_session_id not in seen:
        root = by_id[root.parent_session_id]
        seen.add(root.session_id)
    return {
        "sessionId": s.session_id,
        "machineId": s.machine_id,
        "reason": att["reason"],
        "since": att["since"],
        "waitedMs": max(0, now_ms - att["since"]),
        "detail": att.get("detail"),
        "toolName": att.get("toolName"),
        "toolUseId": att.get("toolUseId"),
        "requestId": att.get("requestId"),
        "rootSessionId": root.session_id,
        "parentSessionId": s.parent_session_id,
        "workingDirectory": s.working_directory,
        "name": s.name or root.name,
        "agentType": s.agent_type,
    }


def summary(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Queue length, by reason, and the longest wait (for /metrics and status)."""
    by_reason = dict.fromkeys(REASONS, 0)
    for i in items:
        by_reason[i["reason"]] = by_reason.get(i["reason"], 0) + 1
    return {"count": len(items), "byReason": by_reason, "longestWaitMs": max((i["waitedMs"] for i in items), default=0)}
