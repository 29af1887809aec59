"""Sessions: the list, one session, its events, its export, and actions on it."""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator

import trio
import trio.lowlevel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from contextuate_trio.core import usage
from contextuate_trio.core.actions import ActionError, NoSuchSession
from contextuate_trio.core.sessions import Session
from contextuate_trio.web.params import BadParam, error, events_response, int_param
from contextuate_trio.web.state import WebState, state_of

EXPORT_CHUNK = 256 * 1024
NO_SUCH_SESSION = "no such session"


def with_total(st: WebState, s: Session) -> dict:
    """A session as the API shows it, with its sub-agents' usage added up."""
    d = s.public(st.prices)
    d["usageTotal"] = usage.render(st.broker.manager.usage_total(s), st.prices)
    return d


async def list_sessions(request: Request) -> Response:
    st = state_of(request)
    items = list(st.broker.manager.sessions.values())
    machine = request.query_params.get("machine")
    state = request.query_params.get("status")
    if machine:
        items = [s for s in items if s.machine_id == machine]
    if state:
        items = [s for s in items if s.status == state]
    items.sort(key=lambda s: s.last_event_time or 0, reverse=True)
    return JSONResponse({"sessions": [with_total(st, s) for s in items]})


async def one_session(request: Request) -> Response:
    st = state_of(request)
    s = st.broker.manager.get(request.path_params["session_id"])
    if s is None:
        return error(NO_SUCH_SESSION, 404)
    return JSONResponse(with_total(st, s))


async def session_events(request: Request) -> Response:
    st = state_of(request)
    sid = request.path_params["session_id"]
    if st.broker.manager.get(sid) is None:
        return error(NO_SUCH_SESSION, 404)
    try:
        limit = int_param(request, "limit", 100, lo=0, hi=10_000)
        before = int_param(request, "before")
        after = int_param(request, "after")
    except BadParam as exc:
        return error(str(exc), 400)
    store = st.broker.store
    if store is None:
        return JSONResponse({"events": []})
    return events_response({"events": store.events(sid, limit or 0, before=before, after=after)})


async def _whole_lines(paths: list[tuple[str, int]]) -> AsyncIterator[bytes]:
    """Each file up to the size seen when the export began, whole lines only: a line
    being appended meanwhile is left for the next export."""
    for path, size in paths:
        with open(path, "rb") as f:  # noqa: ASYNC230 - local file in EXPORT_CHUNK pieces, a checkpoint between; a thread per chunk costs more than the read
            left, carry = size, b""
            while left > 0:
                chunk = f.read(min(EXPORT_CHUNK, left))
                if not chunk:
                    break
                left -= len(chunk)
                data = carry + chunk
                cut = data.rfind(b"\n") + 1
                carry = data[cut:]
                if cut:
                    yield data[:cut]
                await trio.lowlevel.checkpoint()


def _sizes(paths: list[str]) -> list[tuple[str, int]]:
    """Each file with its size now (the export stops there); missing ones left out."""
    out = []
    for path in paths:
        try:
            out.append((path, os.path.getsize(path)))
        except OSError:
            pass
    return out


async def export(request: Request) -> Response:
    """A session's stored events as JSONL (its sub-agents' after it, with ?children=1)."""
    st = state_of(request)
    sid = request.path_params["session_id"]
    s = st.broker.manager.get(sid)
    if s is None:
        return error(NO_SUCH_SESSION, 404)
    ids = [sid]
    if request.query_params.get("children") in ("1", "true"):
        ids += [c for c in s.child_session_ids if st.broker.manager.get(c) is not None]
    store = st.broker.store
    paths = _sizes([store.events_file(one) for one in ids]) if store is not None else []
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", sid)[:80]
    return StreamingResponse(
        _whole_lines(paths),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="session-{safe}.jsonl"'},
    )


async def action(request: Request) -> Response:
    """POST {"action": "rename"|"pin"|..., "value": ...}: the same as the WebSocket's
    session_action. JSON only (a form post from another site cannot send it)."""
    st = state_of(request)
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return error("send application/json", 415)
    if not st.guard.origin_ok(request.headers.get("origin"), st.dashboard_ports()):
        return error("origin not allowed", 403)
    try:
        body = json.loads(await request.body())
    except ValueError:
        return error("body is not JSON", 400)
    if not isinstance(body, dict) or not isinstance(body.get("action"), str):
        return error('expected {"action": ..., "value": ...}', 400)
    sid = request.path_params["session_id"]
    try:
        st.broker.session_action(body["action"], sid, body.get("value"))
    except NoSuchSession as exc:
        return error(str(exc), 404 if exc.session_id == sid else 400)
    except ActionError as exc:
        return error(str(exc), 400)
    s = st.broker.manager.get(sid)
    return JSONResponse({"ok": True, "session": s.public(st.prices) if s else None})


ROUTES = [
    Route("/api/sessions", list_sessions),
    Route("/api/sessions/{session_id}", one_session),
    Route("/api/sessions/{session_id}/events", session_events),
    Route("/api/sessions/{session_id}/export", export),
    Route("/api/sessions/{session_id}/actions", action, methods=["POST"]),
]
