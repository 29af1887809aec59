"""What the web layer reads: handed over by the daemon, so the web never imports it.

Routes find it as ``request.app.state.web``; the WebSocket server is given it too.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import trio
from starlette.requests import Request

from contextuate_trio.config import Config
from contextuate_trio.core.access import Guard
from contextuate_trio.core.usage import PriceTable
from contextuate_trio.runtime.broker import Broker
from contextuate_trio.runtime.decisions import Decisions


@attrs.define(eq=False)
class WebState:
    broker: Broker
    config: Config
    prices: PriceTable
    started: float  # the daemon's start, epoch seconds (for uptime)
    accepting: trio.Event  # set once hooks can deliver: /api/health may say ok
    problems: Callable[[], list[str]]  # why the daemon is degraded (empty: it is not)
    status: Callable[[], dict]  # the /api/status document
    metrics: Callable[[], str]  # Prometheus text of every component
    ws_port: Callable[[], int]  # the WebSocket's bound port (for the page and its CSP)
    attention: Callable[[], list[dict]]  # the "needs you" queue, longest wait first
    stuck_after_ms: Callable[[], int | None]  # when an active session with no event counts as stuck
    http_urls: list[str] = attrs.Factory(list)  # filled in once hypercorn is bound
    machines: Callable[[], dict] = lambda: {"machines": []}  # /api/machines (the fleet, in Redis mode)
    # otel.forwardTo: (signal, content type, body) of each accepted OTLP request; None: off.
    otel_forward: Callable[[str, str, bytes], None] | None = None
    # Answers to Claude Code from the dashboard (config decisions); None: none here.
    decisions: Decisions | None = None
    # Who may connect, from ``config.server``: the one Guard every web entry shares.
    guard: Guard = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        s = self.config.server
        self.guard = Guard(s.allowed_hosts, s.token, s.host, s.api_tokens())

    def dashboard_ports(self) -> set[int]:
        """The ports the dashboard is served on: the only Origins allowed."""
        ports = {self.config.server.port}
        for url in self.http_urls:
            tail = url.rstrip("/").rsplit(":", 1)[-1]
            if tail.isdigit():
                ports.add(int(tail))
        return ports


def state_of(request: Request) -> WebState:
    state: WebState = request.app.state.web
    return state
