"""``/api/machines``: every machine this monitor hears from, with what it may have missed.

``{"machines": [{"machineId", "stream", "lastSeen", "events", "missed", "lag", ...}],
"legacy": {...}}``: in Redis mode one row per machine with a stream of its own
(``missed``: entries trimmed before this monitor read them; ``lag``: entries not read
yet), then the machines known only from the sessions held (``stream`` null).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from contextuate_trio.web.state import state_of


async def machines_view(request: Request) -> Response:
    return JSONResponse(state_of(request).machines())


ROUTES = [Route("/api/machines", machines_view)]
