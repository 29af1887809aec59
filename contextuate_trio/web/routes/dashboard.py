"""The dashboard: its page (with the server's settings and a strict CSP) and files."""

from __future__ import annotations

import html
import os

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from contextuate_trio import __version__
from contextuate_trio.core.access import host_name
from contextuate_trio.web.state import WebState, state_of

STATIC_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "static")
FALLBACK = (
    "<!doctype html><title>contextuate-trio</title><h1>contextuate-trio</h1>"
    "<p>The daemon is running. API: <a href='/api/sessions'>/api/sessions</a>, "
    "<a href='/api/health'>/api/health</a>.</p>"
)


def _server_meta(st: WebState) -> str:
    cfg = st.config
    return (
        f'<meta name="contextuate-ws-port" content="{st.ws_port()}">'
        f'<meta name="contextuate-auth" content="{"token" if st.guard.needs_token else "none"}">'
        f'<meta name="contextuate-mode" content="{html.escape(cfg.mode)}">'
        f'<meta name="contextuate-version" content="{html.escape(__version__)}">'
    )


def _headers(request: Request, ws_port: int) -> dict:
    host = host_name(request.headers.get("host") or "127.0.0.1")
    ws_host = f"[{host}]" if ":" in host else host
    csp = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src 'self' ws://{ws_host}:{ws_port}; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'none'"
    )
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cache-Control": "no-cache",
    }


def _read_page() -> str | None:
    path = os.path.join(STATIC_DIR, "index.html")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, ValueError):  # missing, unreadable or not UTF-8: the plain page
        return None


def index_route(page: str | None) -> Route:
    """``/``: the page read once, when the app is built; the server's settings and
    the CSP (which names the WebSocket's port) filled in per request."""

    async def index(request: Request) -> Response:
        if page is None:
            return HTMLResponse(FALLBACK)
        st = state_of(request)
        return HTMLResponse(
            page.replace("<!--SERVER-CONFIG-->", _server_meta(st), 1), headers=_headers(request, st.ws_port())
        )

    return Route("/", index)


def routes() -> list[BaseRoute]:
    out: list[BaseRoute] = [index_route(_read_page())]
    if os.path.isdir(STATIC_DIR):
        out.append(Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"))
    return out
