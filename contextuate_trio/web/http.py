"""The HTTP API and the dashboard's files (Starlette app, served by hypercorn on Trio)."""

from __future__ import annotations

import html
import json
import os
import re
import time

import regex
from typing import TYPE_CHECKING

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from contextuate_trio import __version__, config as config_mod, usage as usage_mod
from contextuate_trio.sources import http_hook, spool as spool_source
from contextuate_trio.store import session_key
from contextuate_trio.web.security import Guard, host_name

STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")
SEARCH_MAX = 2000
REGEX_TIMEOUT_S = 0.05  # one stored event; a pattern slower than this is refused

if TYPE_CHECKING:
    from contextuate_trio.daemon import Daemon

PUBLIC_PATHS = ("/api/health",)


class GuardMiddleware:
    """Refuse foreign Host headers (DNS rebinding), API calls made by other web pages
    (a cross-site ``<img src=…/api/search?…>`` carries no Origin, but browsers mark it
    with ``Sec-Fetch-Site``), and, with a token, anonymous calls."""

    def __init__(self, app, guard: Guard, dashboard_ports: tuple = ()) -> None:
        self.app = app
        self.guard = guard
        self.dashboard_ports = dashboard_ports

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if not self.guard.host_ok(headers.get("host")):
            resp = JSONResponse({"error": "host not allowed"}, status_code=421)
            return await resp(scope, receive, send)
        path = scope["path"]
        needs_token = path.startswith("/api/") or path == "/metrics"
        if needs_token and (headers.get("sec-fetch-site") in ("cross-site", "same-site")
                            or not self.guard.origin_ok(headers.get("origin"), self.dashboard_ports)):
            resp = JSONResponse({"error": "not from another web page"}, status_code=403)
            return await resp(scope, receive, send)
        if needs_token and path not in PUBLIC_PATHS and not self.guard.token_ok(headers.get("authorization")):
            resp = JSONResponse({"error": "missing or wrong token"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
            return await resp(scope, receive, send)
        return await self.app(scope, receive, send)


def events_response(body: dict) -> Response:
    """JSON of stored events. An event nested too deeply to serialise here (a producer
    sent ~1000 levels; it was stored as it came) is replaced by a stub naming it, so
    it cannot make the whole answer fail."""
    try:
        return JSONResponse(body)
    except RecursionError:
        def safe(e: dict) -> dict:
            try:
                json.dumps(e)
                return e
            except RecursionError:
                return {k: e.get(k) for k in ("id", "timestamp", "sessionId", "machineId", "eventType")} | {
                    "data": {}, "truncated": "nested too deeply to show; export the session for all of it"}
        return JSONResponse(dict(body, events=[safe(e) for e in body["events"]]))


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
        if not (broker.ready.is_set() and daemon.accepting.is_set()):
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
        return JSONResponse({"sessions": [_with_total(s) for s in items]})

    def _with_total(s) -> dict:
        d = s.public()
        d["usageTotal"] = usage_mod.render(broker.manager.usage_total(s))  # sub-agents included
        return d

    async def session(request: Request) -> Response:
        s = broker.manager.get(request.path_params["session_id"])
        if s is None:
            return JSONResponse({"error": "no such session"}, status_code=404)
        return JSONResponse(_with_total(s))

    async def usage_view(request: Request) -> Response:
        """Tokens and cost grouped ?by=machine|model|day|hour|session, optionally
        ?since=&until= (ms) and ?machine=a,b."""
        by = request.query_params.get("by") or "machine"
        try:
            since = _int_param(request, "since")
            until = _int_param(request, "until")
            machines = set(filter(None, (request.query_params.get("machine") or "").split(",")))
            result = usage_mod.group(
                ((s.session_id, s.machine_id, s.usage) for s in broker.manager.sessions.values()
                 if not machines or s.machine_id in machines), by, since, until)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        result["prices"] = usage_mod.prices()
        return JSONResponse(result)

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
        return events_response({"events": broker.store.events(sid, limit, before=before, after=after)})

    async def config_view(request: Request) -> Response:
        return JSONResponse(config_mod.public_dict(cfg))

    async def metrics(request: Request) -> Response:
        return PlainTextResponse(daemon.metrics_text(), media_type="text/plain; version=0.0.4")

    async def metrics_all(request: Request) -> Response:
        text = daemon.metrics_text()
        ws = getattr(daemon, "ws", None)
        if ws is not None:
            text += ws.metrics_text()
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    async def index(request: Request) -> Response:
        static = os.path.join(STATIC_DIR, "index.html")
        if not os.path.exists(static):
            return HTMLResponse(
                "<!doctype html><title>contextuate-trio</title><h1>contextuate-trio</h1>"
                "<p>The daemon is running. API: <a href='/api/sessions'>/api/sessions</a>, "
                "<a href='/api/health'>/api/health</a>.</p>"
            )
        with open(static, encoding="utf-8") as f:
            page = f.read()
        ws_port = getattr(getattr(daemon, "ws", None), "bound_port", None) or cfg.server.ws_port
        meta = (f'<meta name="contextuate-ws-port" content="{ws_port}">'
                f'<meta name="contextuate-auth" content="{"token" if cfg.server.token else "none"}">'
                f'<meta name="contextuate-mode" content="{html.escape(cfg.mode)}">'
                f'<meta name="contextuate-version" content="{html.escape(__version__)}">')
        page = page.replace("<!--SERVER-CONFIG-->", meta, 1)
        host = host_name(request.headers.get("host") or "127.0.0.1")
        ws_host = f"[{host}]" if ":" in host else host
        csp = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
               f"connect-src 'self' ws://{ws_host}:{ws_port}; frame-ancestors 'none'; base-uri 'none'; "
               "form-action 'none'")
        return HTMLResponse(page, headers={
            "Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY", "Cache-Control": "no-cache"})

    async def search(request: Request) -> Response:
        """Events across sessions: text, machine, type, tool, session, time range."""
        qp = request.query_params
        try:
            limit = _int_param(request, "limit", 200, lo=1, hi=SEARCH_MAX)
            t_from = _int_param(request, "from")
            t_to = _int_param(request, "to")
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        text = (qp.get("q") or "").strip()
        matcher = None
        if text and qp.get("regex") in ("1", "true"):
            # The ``regex`` package, for its timeout: a pattern that backtracks
            # without end must not hold the event loop (``re`` cannot be stopped).
            try:
                rx = regex.compile(text, regex.IGNORECASE)
            except regex.error as exc:
                return JSONResponse({"error": f"bad regex: {exc}"}, status_code=400)

            def matcher(hay: str):
                return rx.search(hay, timeout=REGEX_TIMEOUT_S)
        elif text:
            needle = text.lower()
            matcher = lambda hay: needle in hay.lower()  # noqa: E731
        machines = set(filter(None, (qp.get("machine") or "").split(",")))
        types = set(filter(None, (qp.get("type") or "").split(",")))
        tools = set(filter(None, (qp.get("tool") or "").split(",")))
        only = set(filter(None, (qp.get("session") or "").split(",")))
        candidates = []
        for s in broker.manager.sessions.values():
            if machines and s.machine_id not in machines:
                continue
            if only and s.session_id not in only and (s.parent_session_id or "") not in only:
                continue
            if t_from is not None and (s.last_event_time or 0) < t_from:
                continue
            if t_to is not None and (s.start_time or 0) > t_to:
                continue
            candidates.append(s)
        candidates.sort(key=lambda s: s.last_event_time or 0, reverse=True)
        found: list[dict] = []
        scanned = 0
        truncated = False
        try:
            if broker.store is not None:
                for s in candidates:
                    hits = []
                    for lines in broker.store.raw_blocks(
                            s.session_id,
                            before=None if t_to is None else t_to + 1,
                            after=None if t_from is None else t_from - 1):
                        for raw in reversed(lines):
                            scanned += 1
                            # Match the stored text first; parse only what may be a hit.
                            if matcher is not None and not matcher(raw.decode("utf-8", "replace")):
                                continue
                            try:
                                e = json.loads(raw)
                            except ValueError:
                                continue
                            ts = e.get("timestamp") or 0
                            if (t_from is not None and ts < t_from) or (t_to is not None and ts > t_to):
                                continue
                            if types and e.get("eventType") not in types:
                                continue
                            if tools and e.get("toolName") not in tools:
                                continue
                            hits.append(e)
                            if len(hits) >= limit:
                                break
                        await trio.sleep(0)  # let ingest and other clients run between blocks
                        if len(hits) >= limit:
                            truncated = True
                            break
                    found.extend(hits)
        except TimeoutError:
            return JSONResponse({"error": "the regex takes too long on stored events; simplify it"},
                                status_code=400)
        found.sort(key=lambda e: e.get("timestamp") or 0, reverse=True)
        if len(found) > limit:
            truncated = True
            found = found[:limit]
        return events_response({"events": found, "count": len(found), "truncated": truncated,
                             "sessionsScanned": len(candidates), "eventsScanned": scanned})

    async def export(request: Request) -> Response:
        """A session's stored events as JSONL (its sub-agents' after it, with ?children=1)."""
        sid = request.path_params["session_id"]
        s = broker.manager.get(sid)
        if s is None:
            return JSONResponse({"error": "no such session"}, status_code=404)
        ids = [sid]
        if request.query_params.get("children") in ("1", "true"):
            ids += [c for c in s.child_session_ids if broker.manager.get(c) is not None]
        paths = []
        if broker.store is not None:
            for one in ids:
                path = os.path.join(broker.store.sessions_dir, session_key(one), "events.jsonl")
                try:
                    paths.append((path, os.path.getsize(path)))
                except OSError:
                    pass

        async def body():
            for path, size in paths:
                # Up to the size seen now, whole lines only: a line being appended
                # concurrently is left for the next export.
                with open(path, "rb") as f:
                    left, carry = size, b""
                    while left > 0:
                        chunk = f.read(min(256 * 1024, left))
                        if not chunk:
                            break
                        left -= len(chunk)
                        data = carry + chunk
                        cut = data.rfind(b"\n") + 1
                        carry = data[cut:]
                        if cut:
                            yield data[:cut]
                        await trio.sleep(0)

        safe = re.sub(r"[^A-Za-z0-9._-]", "_", sid)[:80]
        return StreamingResponse(body(), media_type="application/x-ndjson", headers={
            "Content-Disposition": f'attachment; filename="session-{safe}.jsonl"'})

    async def action(request: Request) -> Response:
        """POST {"action": "rename"|"pin"|..., "value": ...}: the same as the WebSocket's
        session_action. JSON only (a form post from another site cannot send it)."""
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return JSONResponse({"error": "send application/json"}, status_code=415)
        origin = request.headers.get("origin")
        ports = {cfg.server.port} | {int(u.rstrip("/").rsplit(":", 1)[-1]) for u in daemon.http_urls
                                     if u.rstrip("/").rsplit(":", 1)[-1].isdigit()}
        if not guard.origin_ok(origin, ports):
            return JSONResponse({"error": "origin not allowed"}, status_code=403)
        try:
            body = json.loads(await request.body())
        except ValueError:
            return JSONResponse({"error": "body is not JSON"}, status_code=400)
        if not isinstance(body, dict) or not isinstance(body.get("action"), str):
            return JSONResponse({"error": "expected {\"action\": ..., \"value\": ...}"}, status_code=400)
        sid = request.path_params["session_id"]
        ok, why = broker.session_action(body["action"], sid, body.get("value"))
        if not ok:
            status = 404 if why and why.startswith("no such session") and why.endswith(f"{sid!r}") else 400
            return JSONResponse({"error": why}, status_code=status)
        s = broker.manager.get(sid)
        return JSONResponse({"ok": True, "session": s.public() if s else None})

    routes = [
        Route("/", index),
        Route("/api/health", health),
        Route("/api/status", status),
        Route("/api/sessions", sessions),
        Route("/api/sessions/{session_id}", session),
        Route("/api/sessions/{session_id}/events", session_events),
        Route("/api/sessions/{session_id}/export", export),
        Route("/api/sessions/{session_id}/actions", action, methods=["POST"]),
        Route("/api/search", search),
        Route("/api/usage", usage_view),
        Route("/api/config", config_view),
        Route("/metrics", metrics_all),
        Route("/api/hooks", http_hook.endpoint(daemon), methods=["POST"]),  # Claude Code http hooks
    ]
    if os.path.isdir(STATIC_DIR):
        routes.append(Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"))
    app = Starlette(routes=routes)
    guard = Guard(cfg.server.allowed_hosts, cfg.server.token, cfg.server.host)
    return GuardMiddleware(app, guard, (cfg.server.port,))


def spool_backlog(home: str) -> int:
    return len(spool_source.pending(os.path.join(home, "spool")))
