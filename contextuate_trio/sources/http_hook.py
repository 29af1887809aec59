"""Claude Code http hooks: ``POST /api/hooks`` with the hook's JSON as the body.

``hooks install --transport http`` wires every event but SessionStart (Claude Code
allows only command hooks there) as ``{"type": "http", "url": ".../api/hooks",
"headers": {"X-Contextuate-Machine": <machine>, "X-Contextuate-Parent":
"$CONTEXTUATE_PARENT_SESSION", "Authorization": ...}}``. No process per event; the
price is that an event sent while the daemon is down is lost (the command hook
spools it).

The event is normalised like the hook's (``events.from_payload``), timestamped on
arrival, and answered only once it is stored (200 ``{}``: an empty hook output, so
Claude Code does nothing more with it). The token is checked here as well as by the
app's guard; a request carrying an ``Origin`` (a web page, never Claude Code) is
refused, so a page in a browser cannot post events to a daemon on loopback.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from contextuate_trio.core import events
from contextuate_trio.core.access import Guard
from contextuate_trio.hook import paths as hook_paths
from contextuate_trio.runtime.broker import Broker
from contextuate_trio.runtime.clock import new_id, now_ms

MACHINE_HEADER = "x-contextuate-machine"
PARENT_HEADER = "x-contextuate-parent"
SOURCE = "http"


def endpoint(broker: Broker, guard: Guard, max_body: int) -> Callable[[Request], Awaitable[Response]]:
    """The ``POST /api/hooks`` handler; the daemon mounts it in the web app."""
    local_machine = hook_paths.machine_id(dict(os.environ))

    async def receive_hook(request: Request) -> Response:
        if request.headers.get("origin") is not None:
            return JSONResponse({"error": "hooks are not accepted from web pages"}, status_code=403)
        if not guard.token_ok(request.headers.get("authorization")):
            return JSONResponse(
                {"error": "missing or wrong token"}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
            )
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body:
                return JSONResponse({"error": f"body over {max_body} bytes"}, status_code=413)
        if not body.strip():
            return JSONResponse({"error": "empty body"}, status_code=400)
        try:
            payload = json.loads(bytes(body))
        except (ValueError, UnicodeDecodeError, RecursionError):
            payload = bytes(body).decode("utf-8", "replace")  # kept as an ``invalid`` event
        machine = (request.headers.get(MACHINE_HEADER) or "").strip() or local_machine
        parent = (request.headers.get(PARENT_HEADER) or "").strip() or None
        ev = events.from_payload(
            payload,
            event_id=new_id(),
            timestamp=now_ms(),
            machine_id=machine,
            parent_session_id=parent,
            source=SOURCE,
        )
        delivery = await broker.submit(ev, wait=True)
        if not delivery.ok:
            return JSONResponse({"error": delivery.error or "not stored"}, status_code=503)
        return JSONResponse({})

    return receive_hook
