"""The HTTP API and the dashboard's files (Starlette app, served by hypercorn on Trio)."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from contextuate_trio import __version__, config as config_mod
from contextuate_trio.sources import http_hook, spool as spool_source
from contextuate_trio.web.security import Guard

if TYPE_CHECKING:
    from contextuate_trio.daemon import Daemon

PUBLIC_PATHS = ("/api/health",)


class GuardMiddleware:
    """Refuse foreign Host headers (DNS rebinding) and, with a token, anonymous calls."""

    def __init__(self, app, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if not self.guard.host_ok(headers.get("host")):
            resp = JSONResponse({"error": "host not allowed"}, status_code=421)
            return await resp(scope, receive, send)
        path = scope["path"]
        needs_token = path.startswith("/api/") or path == "/metrics"
        if needs_token and path not in PUBLIC_PATHS and not self.guard.token_ok(headers.get("authorization")):
            resp = JSONResponse({"error": "missing or wrong token"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
            return await resp(scope, receive, send)
        return await self.app(scope, receive, send)


def _int_param(request: Request, name: str, default=None, lo=None, hi=None):
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer") from None
    if lo is not None and value < lo:
        raise ValueError(f"{name} must be >= {lo}")
    if hi is not None and value > hi:
        value = hi
    return value


def create_app(daemon: "Daemon") -> Starlette:
    broker = daemon.broker
    cfg = daemon.config

    async def health(request: Request) -> Response:
        if not broker.ready.is_set():
            return JSONResponse({"status": "starting"}, status_code=503)
        reasons = daemon.problems()
        return JSONResponse({
            "status": "degraded" if reasons else "ok",
            "reasons": reasons,
            "mode": cfg.mode,
            "version": __version__,
            "uptimeMs": int((time.time() - daemon.started) * 1000),
        })

    async def status(request: Request) -> Response:
        return JSONResponse(daemon.status())

    async def sessions(request: Request) -> Response:
        items = list(broker.manager.sessions.values())
        machine = request.query_params.get("machine")
        state = request.query_params.get("status")
        if machine:
            items = [s for s in items if s.machine_id == machine]
        if state:
            items = [s for s in items if s.status == state]
        items.sort(key=lambda s: s.last_event_time or 0, reverse=True)
        return JSONResponse({"sessions": [s.public() for s in items]})

    async def session(request: Request) -> Response:
        s = broker.manager.get(request.path_params["session_id"])
        if s is None:
            return JSONResponse({"error": "no such session"}, status_code=404)
        return JSONResponse(s.public())

    async def session_events(request: Request) -> Response:
        sid = request.path_params["session_id"]
        if broker.manager.get(sid) is None:
            return JSONResponse({"error": "no such session"}, status_code=404)
        try:
            limit = _int_param(request, "limit", 100, lo=0, hi=10_000)
            before = _int_param(request, "before")
            after = _int_param(request, "after")
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        if broker.store is None:
            return JSONResponse({"events": []})
        return JSONResponse({"events": broker.store.events(sid, limit, before=before, after=after)})

    async def config_view(request: Request) -> Response:
        return JSONResponse(config_mod.public_dict(cfg))

    async def metrics(request: Request) -> Response:
        return PlainTextResponse(daemon.metrics_text(), media_type="text/plain; version=0.0.4")

    async def index(request: Request) -> Response:
        static = os.path.join(os.path.dirname(__file__), "static", "index.html")
        if os.path.exists(static):
            with open(static, encoding="utf-8") as f:
                return HTMLResponse(f.read())
        return HTMLResponse(
            "<!doctype html><title>contextuate-trio</title><h1>contextuate-trio</h1>"
            "<p>The daemon is running. API: <a href='/api/sessions'>/api/sessions</a>, "
            "<a href='/api/health'>/api/health</a>.</p>"
        )

    routes = [
        Route("/", index),
        Route("/api/health", health),
        Route("/api/status", status),
        Route("/api/sessions", sessions),
        Route("/api/sessions/{session_id}", session),
        Route("/api/sessions/{session_id}/events", session_events),
        Route("/api/config", config_view),
        Route("/metrics", metrics),
        Route("/api/hooks", http_hook.endpoint(daemon), methods=["POST"]),  # Claude Code http hooks
    ]
    app = Starlette(routes=routes)
    guard = Guard(cfg.server.allowed_hosts, cfg.server.token, cfg.server.host)
    return GuardMiddleware(app, guard)


def spool_backlog(home: str) -> int:
    return len(spool_source.pending(os.path.join(home, "spool")))
