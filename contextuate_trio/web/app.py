"""The HTTP API and the dashboard (Starlette, served by hypercorn on Trio).

The app is its route modules (``web/routes``) reading a ``WebState``; the daemon may
mount more routes (the HTTP hook source) without the web layer knowing sources.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute

from contextuate_trio.web.routes import attention, dashboard, decisions, health, machines, otlp, search, sessions, usage
from contextuate_trio.web.state import WebState


class GuardMiddleware:
    """Every request through ``Guard.refusal`` first (Host, cross-site calls, the
    token and the scope the request needs)."""

    def __init__(self, app: Any, state: WebState) -> None:
        self.app = app
        self.state = state
        self.guard = state.guard

    def _refusal(self, scope: dict) -> JSONResponse | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self.guard.refusal(scope["path"], headers, self.state.dashboard_ports, scope.get("method", "GET"))
        if refusal is None:
            return None
        status, why = refusal
        extra = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse({"error": why}, status_code=status, headers=extra)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            refusal = self._refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(state: WebState, extra_routes: Iterable[BaseRoute] = ()) -> GuardMiddleware:
    routes: list[BaseRoute] = [
        *dashboard.routes(),
        *health.ROUTES,
        *sessions.ROUTES,
        *search.ROUTES,
        *usage.ROUTES,
        *attention.ROUTES,
        *decisions.ROUTES,
        *machines.ROUTES,
        *(otlp.ROUTES if state.config.otel.enabled else ()),  # Claude Code's own OpenTelemetry
        *extra_routes,
    ]
    app = Starlette(routes=routes)
    app.state.web = state
    return GuardMiddleware(app, state)
