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

``HookIntake`` is what the endpoint does, whichever server carries the request: the
daemon's lean HTTP front serves hooks itself, and the Starlette ``endpoint`` serves
those that arrive on a connection already handed to hypercorn.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping

import attrs
import trio
from starlette.requests import Request
from starlette.responses import Response

from contextuate_trio.core import events, wire
from contextuate_trio.core.access import Guard, allowed_scopes
from contextuate_trio.hook import paths as hook_paths
from contextuate_trio.runtime.broker import Broker
from contextuate_trio.runtime.clock import new_id, now_ms

MACHINE_HEADER = "x-contextuate-machine"
PARENT_HEADER = "x-contextuate-parent"
SOURCE = "http"
PATH = "/api/hooks"


@attrs.frozen
class Reply:
    """An answer to a hook request: status, JSON body, extra headers."""

    status: int
    body: bytes = b"{}"
    headers: tuple[tuple[str, str], ...] = ()


STORED = Reply(200)
ASK_FOR_TOKEN = (("www-authenticate", "Bearer"),)


def refused(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    """An error reply, rendered byte for byte as Starlette's ``JSONResponse`` did."""
    return Reply(status, json.dumps({"error": message}, ensure_ascii=False, separators=(",", ":")).encode(), headers)


def parse_body(body: bytes) -> object:
    """The payload, read as every producer's JSON is (``core.wire.loads``), else its
    text, kept as an ``invalid`` event."""
    try:
        return wire.loads(body)
    except events.EventError:
        return body.decode("utf-8", "replace")


class HookIntake:
    """The checks, the event and the reply of ``POST /api/hooks``."""

    def __init__(
        self, broker: Broker, guard: Guard, max_body: int, dashboard_ports: Callable[[], Iterable[int]]
    ) -> None:
        self.broker = broker
        self.guard = guard
        self.max_body = max_body
        self.dashboard_ports = dashboard_ports
        self.local_machine = hook_paths.machine_id(dict(os.environ))
        self.too_large = refused(413, f"body over {max_body} bytes")

    def guard_refusal(self, last: Mapping[str, str]) -> Reply | None:
        """The web app's guard (``Guard.refusal``) for requests that never reach the
        app. ``last``: headers by lower-case name, a repeated one keeping its last
        value (as the app's guard reads them)."""
        refusal = self.guard.refusal(PATH, last, self.dashboard_ports, "POST")
        if refusal is None:
            return None
        status, why = refusal
        return refused(status, why, ASK_FOR_TOKEN if status == 401 else ())

    def refusal(self, first: Mapping[str, str]) -> Reply | None:
        """The endpoint's own checks. ``first``: headers by lower-case name, a repeated
        one keeping its first value (as Starlette's ``request.headers`` reads them)."""
        if first.get("origin") is not None:
            return refused(403, "hooks are not accepted from web pages")
        if not self.guard.token_ok(first.get("authorization"), allowed_scopes("POST", PATH) or frozenset()):
            return refused(401, "missing or wrong token", ASK_FOR_TOKEN)
        return None

    async def store(self, body: bytes, machine: str | None, parent: str | None) -> Reply:
        """Turn the body into an event and answer once it is stored. Always yields
        (the lean path relies on it: a client pipelining requests cannot hold the loop)."""
        if not body.strip():
            await trio.lowlevel.checkpoint()
            return refused(400, "empty body")
        ev = events.from_payload(
            parse_body(body),
            event_id=new_id(),
            timestamp=now_ms(),
            machine_id=(machine or "").strip() or self.local_machine,
            parent_session_id=(parent or "").strip() or None,
            source=SOURCE,
        )
        try:
            delivery = await self.broker.submit(ev, wait=True)
        except trio.ClosedResourceError:  # the broker takes no more events: the daemon is stopping
            await trio.lowlevel.checkpoint()
            return refused(503, "the daemon is stopping")
        if not delivery.ok:
            return refused(503, delivery.error or "not stored")
        return STORED


def as_response(reply: Reply) -> Response:
    return Response(reply.body, status_code=reply.status, headers=dict(reply.headers), media_type="application/json")


def endpoint(intake: HookIntake) -> Callable[[Request], Awaitable[Response]]:
    """The Starlette handler, for hooks posted on a connection the daemon's front has
    handed to hypercorn (the app's guard has checked the request already)."""

    async def receive_hook(request: Request) -> Response:
        refusal = intake.refusal(request.headers)
        if refusal is not None:
            return as_response(refusal)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > intake.max_body:
                return as_response(intake.too_large)
        headers = request.headers
        return as_response(await intake.store(bytes(body), headers.get(MACHINE_HEADER), headers.get(PARENT_HEADER)))

    return receive_hook
