"""``/api/usage``: tokens and cost grouped by machine, model, day, hour or session."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from contextuate_trio.core import usage
from contextuate_trio.web.params import csv_param, error, int_param
from contextuate_trio.web.state import state_of


async def usage_view(request: Request) -> Response:
    """?by=machine|model|day|hour|session, optionally ?since=&until= (ms) and ?machine=a,b."""
    st = state_of(request)
    by = request.query_params.get("by") or "machine"
    try:
        since = int_param(request, "since")
        until = int_param(request, "until")
        machines = csv_param(request, "machine")
        result = usage.group(
            (
                (s.session_id, s.machine_id, s.usage)
                for s in st.broker.manager.sessions.values()
                if not machines or s.machine_id in machines
            ),
            by,
            st.prices,
            since,
            until,
        )
    except ValueError as exc:  # BadParam, or an unknown ?by
        return error(str(exc), 400)
    result["prices"] = st.prices.models
    return JSONResponse(result)


ROUTES = [Route("/api/usage", usage_view)]
