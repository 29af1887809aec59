"""``/api/decisions``: answer a permission prompt (or an MCP server's question).

``POST {"requestId", "decision": "allow"|"deny", "message"?, "always"?}`` (for an
elicitation: ``"accept"|"decline"|"cancel"``, ``"content"?``) with a token of scope
``decide`` (the guard checks the scope: 401/403). 200 once the answer is recorded and
handed to the waiting hook; 400 malformed, 404 unknown or expired, 409 answered
already, 503 when it could not be recorded. Decisions need a named token even on
loopback: with no token configured at all, nobody can say who answered (403).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from contextuate_trio.core.decisions import Refused
from contextuate_trio.core.wire import loads
from contextuate_trio.web.params import error
from contextuate_trio.web.state import state_of

BODY_MAX = 64 * 1024


async def decide_view(request: Request) -> Response:
    st = state_of(request)
    if st.decisions is None or not st.decisions.enabled:
        return error("decisions are off (config decisions.enabled)", 404)
    if not st.guard.needs_token:
        return error(
            "answering needs a token with the decide scope (contextuate-trio token add NAME --scope decide)", 403
        )
    who = st.guard.who(request.headers.get("authorization"))
    body = await request.body()
    if len(body) > BODY_MAX:
        return error(f"body over {BODY_MAX} bytes", 413)
    try:
        doc = loads(body)
    except Exception as exc:
        return error(f"not JSON: {exc}", 400)
    origin = f"{request.client.host}:{request.client.port}" if request.client else None
    try:
        request_id = doc.get("requestId") if isinstance(doc, dict) else None
        done = await st.decisions.answer(request_id, doc, who.name if who else "anonymous", origin)
    except Refused as exc:
        return error(exc.why, exc.status)
    return JSONResponse(done)


ROUTES = [Route("/api/decisions", decide_view, methods=["POST"])]
