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

from contextuate_trio.web.routes import dashboard, health, search, sessions, usage
from contextuate_trio.web.state import WebState

PUBLIC_PATHS = ("/api/health",)


class GuardMiddleware:
    """Refuse foreign Host headers (DNS rebinding), API calls made by other web pages
    (a cross-site ``<img src=…/api/search?…>`` carries no Origin, but browsers mark it
    with ``Sec-Fetch-Site``), and, with a token, anonymous calls."""

    def __init__(self, app: Any, state: WebState) -> None:
        self.app = app
        self.state = state
        self.guard = state.guard

    def _refusal(self, scope: dict) -> JSONResponse | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if not self.guard.host_ok(headers.get("host")):
            return JSONResponse({"error": "host not allowed"}, status_code=421)
        path = scope["path"]
        if not (path.startswith("/api/") or path == "/metrics"):
            return None
        if headers.get("sec-fetch-site") in ("cross-site", "same-site") or not self.guard.origin_ok(
            headers.get("origin"), self.state.dashboard_ports()
        ):
            return JSONResponse({"error": "not from another web page"}, status_code=403)
        if path not in PUBLIC_PATHS and not self.guard.token_ok(headers.get("authorization")):
            return JSONResponse(
                {"error": "missing or wrong token"}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
            )
        return None

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
        *extra_routes,
    ]
    app = Starlette(routes=routes)
    app.state.web = state
    return GuardMiddleware(app, state)
