"""Health, status, config and metrics: what operators and scripts poll."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from contextuate_trio import __version__
from contextuate_trio import config as config_mod
from contextuate_trio.web.state import state_of

PROMETHEUS = "text/plain; version=0.0.4"


async def health(request: Request) -> Response:
    st = state_of(request)
    if not (st.broker.ready.is_set() and st.accepting.is_set()):
        return JSONResponse({"status": "starting"}, status_code=503)
    reasons = st.problems()
    return JSONResponse(
        {
            "status": "degraded" if reasons else "ok",
            "reasons": reasons,
            "mode": st.config.mode,
            "version": __version__,
            "uptimeMs": int((time.time() - st.started) * 1000),
        }
    )


async def status(request: Request) -> Response:
    return JSONResponse(state_of(request).status())


async def config_view(request: Request) -> Response:
    return JSONResponse(config_mod.public_dict(state_of(request).config))


async def metrics(request: Request) -> Response:
    return PlainTextResponse(state_of(request).metrics(), media_type=PROMETHEUS)


ROUTES = [
    Route("/api/health", health),
    Route("/api/status", status),
    Route("/api/config", config_view),
    Route("/metrics", metrics),
]
