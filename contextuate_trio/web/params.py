"""Small helpers the route modules share: query parameters, errors, event answers."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import JSONResponse, Response


class BadParam(ValueError):
    """A query parameter that cannot be used; the message says which and why."""


def error(message: str, status: int, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def int_param(
    request: Request, name: str, default: int | None = None, lo: int | None = None, hi: int | None = None
) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadParam(f"{name} must be an integer") from None
    if lo is not None and value < lo:
        raise BadParam(f"{name} must be >= {lo}")
    if hi is not None and value > hi:
        value = hi
    return value


def csv_param(request: Request, name: str) -> set[str]:
    """``?machine=a,b`` -> {"a", "b"} (empty: no filter)."""
    return set(filter(None, (request.query_params.get(name) or "").split(",")))


def _stub(e: dict) -> dict:
    try:
        json.dumps(e)
        return e
    except RecursionError:
        head = {k: e.get(k) for k in ("id", "timestamp", "sessionId", "machineId", "eventType")}
        return head | {"data": {}, "truncated": "nested too deeply to show; export the session for all of it"}


def events_response(body: dict) -> Response:
    """JSON of stored events. An event nested too deeply to serialise here (a producer
    sent ~1000 levels; it was stored as it came) is replaced by a stub naming it, so
    it cannot make the whole answer fail."""
    try:
        return JSONResponse(body)
    except RecursionError:
        return JSONResponse(dict(body, events=[_stub(e) for e in body["events"]]))
