"""Answers to Claude Code from the dashboard: the book of open requests, sans-IO.

A ``PermissionRequest`` (or ``Elicitation``) hook that may wait for an answer opens a
request here, named by its event's id; a person holding the ``decide`` scope answers
it once (``answer``), before it expires; the answer becomes the JSON the waiting hook
prints for Claude Code (``hook_output``) and an audit event (``audit_event``). A
request closes without an answer when the hook stops waiting (``close``), when it
expires, or when the session moved on (the prompt answered in the terminal:
``after_event``). Plain code: the caller gives the time and makes the ids.

Safe by construction: only ``allow``, ``deny`` (and for an elicitation ``accept``,
``decline``, ``cancel``) are understood; anything else is refused, and no answer at
all means the hook says nothing (Claude Code then asks as it would without us).
"""

from __future__ import annotations

import collections
from typing import Any

import attrs

from contextuate_trio.core.events import Event

PERMISSION, ELICITATION = "permission", "elicitation"
KIND_BY_TYPE = {"permission_request": PERMISSION, "elicitation": ELICITATION}
HOOK_NAME = {PERMISSION: "PermissionRequest", ELICITATION: "Elicitation"}
DECISIONS = {PERMISSION: ("allow", "deny"), ELICITATION: ("accept", "decline", "cancel")}
MESSAGE_MAX = 2000  # a deny's message goes to the model: a paragraph, not a file
CLOSED_KEPT = 10_000  # closed requests remembered: a late second answer gets 409, a copy of the event opens nothing
OPEN_MAX = 1000  # open requests at most (each a waiting hook): a flood of them opens no more
# Where "allow always" may write a rule: not the user's settings (every project).
DESTINATIONS = ("session", "localSettings", "projectSettings")
AUDIT_TYPE = "decision"
AUDIT_SOURCE = "dashboard"  # only the daemon's own audit events carry it (events.DAEMON_SOURCES)
ANSWERED_ON_ANOTHER = "answered on another monitor"


class Refused(Exception):
    """An answer that cannot be taken: ``status`` is the HTTP status that says why
    (400 malformed, 404 unknown or expired, 409 answered already)."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status
        self.why = why


@attrs.frozen
class Answer:
    decision: str
    message: str | None = None
    always: bool = False  # allow, and add the permission rules Claude Code suggested
    content: dict[str, Any] | None = None  # an accepted elicitation's form values
    by: str = "anonymous"  # the token's name
    origin: str | None = None  # where the answer came from (the client's address)


@attrs.define(eq=False)
class Request:
    request_id: str
    kind: str
    session_id: str
    machine_id: str
    opened_ms: int
    expires_ms: int
    tool_name: str | None = None
    tool_use_id: str | None = None
    agent_id: str | None = None
    suggestions: list[Any] = attrs.Factory(list)  # Claude Code's permission_suggestions
    answer: Answer | None = None
    closed: str | None = None  # why it closed without an answer from here

    def public(self) -> dict[str, Any]:
        """What the dashboard needs to offer an answer."""
        return {
            "requestId": self.request_id,
            "kind": self.kind,
            "decisions": list(DECISIONS[self.kind]),
            "expiresAt": self.expires_ms,
            "canAllowAlways": bool(always_rules(self.suggestions)),
            "alwaysRules": rule_texts(always_rules(self.suggestions)),
        }


def always_rules(suggestions: list[Any]) -> list[dict[str, Any]]:
    """What "allow always" grants: only the allow rules Claude Code suggested
    (``addRules``, e.g. ``Bash(npm test:*)``), rebuilt from the rules a person is shown
    (``rule_texts``) and kept out of the user's own settings (every project: written to
    this project's local settings instead). Claude Code's other suggestions are broader
    than the call asked about (``setMode`` acceptEdits lets every later edit through,
    ``addDirectories`` a whole folder): never granted from afar."""
    out = []
    for s in suggestions:
        if not isinstance(s, dict) or s.get("type") != "addRules" or s.get("behavior") != "allow":
            continue
        given = s.get("rules")
        rules = [
            {
                "toolName": r["toolName"],
                **({"ruleContent": r["ruleContent"]} if isinstance(r.get("ruleContent"), str) else {}),
            }
            for r in (given if isinstance(given, list) else [])
            if isinstance(r, dict) and isinstance(r.get("toolName"), str) and r["toolName"]
        ]
        if rules:
            dest = s.get("destination")
            out.append(
                {
                    "type": "addRules",
                    "rules": rules,
                    "behavior": "allow",
                    "destination": dest if dest in DESTINATIONS else "localSettings",
                }
            )
    return out


def rule_texts(grants: list[dict[str, Any]]) -> list[str]:
    """``Bash(npm test:*) (localSettings)`` for each rule ``always_rules`` grants: what
    a person reads before granting it, and what the audit event records."""
    out = []
    for g in grants:
        for r in g["rules"]:
            content = r.get("ruleContent")
            rule = f"{r['toolName']}({content})" if content else r["toolName"]
            out.append(f"{rule} ({g['destination']})")
    return out


def request_for(ev: Event, now_ms: int, wait_ms: int) -> Request | None:
    """The request a waiting hook's stored event opens, or None (not a kind of
    event one can answer)."""
    kind = KIND_BY_TYPE.get(ev.event_type)
    if kind is None:
        return None
    data = ev.data if isinstance(ev.data, dict) else {}
    suggestions = data.get("permission_suggestions")
    return Request(
        request_id=ev.id,
        kind=kind,
        session_id=ev.session_id,
        machine_id=ev.machine_id,
        opened_ms=now_ms,
        expires_ms=now_ms + max(0, wait_ms),
        tool_name=ev.tool_name,
        tool_use_id=ev.tool_use_id,
        agent_id=ev.agent_id,
        suggestions=suggestions if isinstance(suggestions, list) else [],
    )


def parse_answer(body: Any, kind: str, by: str, origin: str | None) -> Answer:
    """The answer a client sent (``{"decision", "message"?, "always"?, "content"?}``),
    checked against what a request of ``kind`` may be answered with."""
    if not isinstance(body, dict):
        raise Refused(400, "the body must be a JSON object")
    decision = body.get("decision")
    allowed = DECISIONS[kind]
    if decision not in allowed:
        raise Refused(400, f"decision must be one of {', '.join(allowed)}")
    message = body.get("message")
    if message is not None and (not isinstance(message, str) or len(message) > MESSAGE_MAX):
        raise Refused(400, f"message must be a string of at most {MESSAGE_MAX} characters")
    always = body.get("always", False)
    if not isinstance(always, bool) or (always and decision != "allow"):
        raise Refused(400, "always must be a boolean, and only with allow")
    content = body.get("content")
    if content is not None and (not isinstance(content, dict) or decision != "accept"):
        raise Refused(400, "content must be an object, and only with accept")
    return Answer(decision, message or None, always, content, by, origin)


def hook_output(req: Request, answer: Answer) -> dict[str, Any]:
    """What the waiting hook prints on stdout for Claude Code."""
    out: dict[str, Any] = {"hookEventName": HOOK_NAME[req.kind]}
    if req.kind == ELICITATION:
        out["action"] = answer.decision
        if answer.content is not None:
            out["content"] = answer.content
        return {"hookSpecificOutput": out}
    decision: dict[str, Any] = {"behavior": answer.decision}
    if answer.decision == "allow" and answer.always:
        decision["updatedPermissions"] = always_rules(req.suggestions)
    if answer.decision == "deny":
        decision["message"] = answer.message or "Denied from the contextuate-trio dashboard."
    out["decision"] = decision
    return {"hookSpecificOutput": out}


def audit_event(req: Request, answer: Answer, event_id: str, now_ms: int) -> Event:
    """The event that records an answer, in the session it answered."""
    data: dict[str, Any] = {
        "requestId": req.request_id,
        "kind": req.kind,
        "decision": answer.decision,
        "by": answer.by,
        "from": answer.origin,
        "waitedMs": max(0, now_ms - req.opened_ms),
    }
    if answer.message is not None:
        data["message"] = answer.message
    if answer.always:
        data["always"] = True
        data["granted"] = rule_texts(always_rules(req.suggestions))
    if answer.content is not None:
        data["content"] = answer.content
    what = f"{req.tool_name} " if req.tool_name else ""
    return Event(
        id=event_id,
        timestamp=now_ms,
        session_id=req.session_id,
        machine_id=req.machine_id,
        event_type=AUDIT_TYPE,
        data=data,
        tool_name=req.tool_name,
        tool_use_id=req.tool_use_id,
        agent_id=req.agent_id,
        summary=f"{what}{answer.decision} by {answer.by}" + (f" — {answer.message}" if answer.message else ""),
        source=AUDIT_SOURCE,
    )


def undelivered_event(req: Request, answer: Answer, audit_id: str, event_id: str, now_ms: int, why: str) -> Event:
    """The event that says a recorded answer did not reach Claude Code (the hook had
    stopped waiting): the audit of a decision that was not made."""
    return Event(
        id=event_id,
        timestamp=now_ms,
        session_id=req.session_id,
        machine_id=req.machine_id,
        event_type=AUDIT_TYPE,
        data={"requestId": req.request_id, "delivered": False, "auditId": audit_id, "why": why, "by": answer.by},
        tool_name=req.tool_name,
        agent_id=req.agent_id,
        summary=f"{answer.decision} by {answer.by} not delivered: {why}",
        source=AUDIT_SOURCE,
    )


class DecisionBook:
    """The open requests, and the recently closed ones (to tell 409 from 404)."""

    def __init__(self) -> None:
        self.open: dict[str, Request] = {}
        self._closed: collections.OrderedDict[str, Request] = collections.OrderedDict()
        self._by_session: dict[str, set[str]] = {}  # open request ids per session

    def add(self, req: Request) -> bool:
        """Open ``req``; False (not opened) for an id this book has known (a copy of
        its event read again: answered or closed once, never reopened) or when
        OPEN_MAX requests are open already."""
        if req.request_id in self.open or req.request_id in self._closed or len(self.open) >= OPEN_MAX:
            return False
        self.open[req.request_id] = req
        self._by_session.setdefault(req.session_id, set()).add(req.request_id)
        return True

    def get(self, request_id: str) -> Request | None:
        return self.open.get(request_id)

    def take(self, request_id: str, answer: Answer, now_ms: int) -> Request:
        """Mark the request answered (refused when it cannot be): the caller then
        records the answer and hands it to the hook."""
        req = self.open.get(request_id)
        if req is None:
            old = self._closed.get(request_id)
            if old is not None and (
                old.answer is not None or old.closed in ("answered elsewhere", ANSWERED_ON_ANOTHER)
            ):
                by = f" by {old.answer.by}" if old.answer is not None else " (in the terminal, or by a rule)"
                raise Refused(409, f"request {request_id} was answered already{by}")
            raise Refused(404, f"no open request {request_id} (unknown, expired, or its hook stopped waiting)")
        if now_ms >= req.expires_ms:
            self.close(request_id, "expired")
            raise Refused(404, f"request {request_id} expired")
        req.answer = answer
        self._retire(req)
        return req

    def undo(self, req: Request) -> None:
        """An answer that could not be recorded: the request is open again."""
        self._closed.pop(req.request_id, None)
        if req.closed is None:
            req.answer = None
            self.add(req)

    def lost(self, req: Request, why: str) -> None:
        """An answer taken here that did not reach the hook (another monitor answered
        first, or the hook stopped waiting): closed, without that answer."""
        req.answer = None
        req.closed = why

    def close(self, request_id: str, why: str) -> Request | None:
        req = self.open.get(request_id)
        if req is None:
            return None
        req.closed = why
        self._retire(req)
        return req

    def _retire(self, req: Request) -> None:
        self.open.pop(req.request_id, None)
        ids = self._by_session.get(req.session_id)
        if ids is not None:
            ids.discard(req.request_id)
            if not ids:
                del self._by_session[req.session_id]
        self._closed[req.request_id] = req
        while len(self._closed) > CLOSED_KEPT:
            self._closed.popitem(last=False)

    def expired(self, now_ms: int) -> list[Request]:
        """Close the requests whose time is up."""
        gone = [r for r in self.open.values() if now_ms >= r.expires_ms]
        for r in gone:
            self.close(r.request_id, "expired")
        return gone

    def next_expiry(self) -> int | None:
        return min((r.expires_ms for r in self.open.values()), default=None)

    def after_event(self, ev: Event, attention: dict[str, Any] | None) -> list[Request]:
        """A stored event of a session: its open requests that it shows were answered
        some other way (in the terminal, by a rule) close as answered elsewhere. A
        request that names its tool call closes with that call's result or denial,
        or with the end of the turn; one that does not, once the session no longer
        waits on it. The request's own event, and our audit event, close nothing."""
        ids = self._by_session.get(ev.session_id)
        if not ids or ev.event_type == AUDIT_TYPE or ev.id in self.open:
            return []
        waiting_on = attention.get("requestId") if attention else None
        done = [r for r in map(self.open.__getitem__, list(ids)) if _moved_on(r, ev, waiting_on)]
        for r in done:
            self.close(r.request_id, "answered elsewhere")
        return done


# Events that end the turn a request was asked in: nobody can answer it any more.
TURN_ENDS = frozenset({"user_prompt", "stop", "stop_failure", "session_end"})


def _moved_on(req: Request, ev: Event, waiting_on: str | None) -> bool:
    if ev.event_type in TURN_ENDS:
        return True
    if req.tool_use_id:
        return ev.tool_use_id == req.tool_use_id and ev.event_type not in KIND_BY_TYPE
    return waiting_on != req.request_id
