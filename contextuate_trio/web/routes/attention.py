"""``/api/attention``: the sessions waiting for a person now, on every machine."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from contextuate_trio.core import attention
from contextuate_trio.web.params import csv_param, error
from contextuate_trio.web.state import state_of


async def attention_view(request: Request) -> Response:
    """Longest wait first; ``?reason=permission,idle`` and ``?machine=a,b`` narrow it."""
    st = state_of(request)
    reasons = csv_param(request, "reason")
    machines = csv_param(request, "machine")
    unknown = sorted(reasons - set(attention.REASONS))
    if unknown:
        return error(f"unknown reason {', '.join(unknown)}; one of {', '.join(attention.REASONS)}", 400)
    items = [
        i
        for i in st.attention()
        if (not reasons or i["reason"] in reasons) and (not machines or i["machineId"] in machines)
    ]
    return JSONResponse({"items": items, "stuckAfterMs": st.stuck_after_ms(), **attention.summary(items)})


ROUTES = [Route("/api/attention", attention_view)]
