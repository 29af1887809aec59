"""``otel.forwardTo``: what the daemon receives over OTLP, sent on to the person's own
OpenTelemetry collector, as it came (the body after gzip, its content type).

The receiver (``web/routes/otlp``) ``offer``s each accepted request; one task posts
them in order (``<forwardTo>/v1/<signal>``, ``otel.forwardHeaders``). It never holds
the receiver up: a full queue drops the request (counted), a collector that fails is
retried a few times, then the request is dropped (counted, logged once a minute).
"""

from __future__ import annotations

import collections
import logging

import attrs
import httpx
import trio

from contextuate_trio.runtime.metrics import Metric

log = logging.getLogger("contextuate.otel_forward")

QUEUE = 256  # requests waiting to be forwarded
TIMEOUT_S = 10.0
RETRIES = 3
RETRY_FIRST_S = 0.5
LOG_EVERY_S = 60.0


@attrs.frozen
class Export:
    signal: str  # "logs" | "metrics" | "traces"
    content_type: str
    body: bytes


class Forwarder:
    def __init__(self, base_url: str, headers: dict[str, str] | None = None, queue: int = QUEUE) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = dict(headers or {})
        self._send, self._receive = trio.open_memory_channel[Export](queue)
        self.counts: collections.Counter = collections.Counter()
        self._logged = -LOG_EVERY_S

    def offer(self, signal: str, content_type: str, body: bytes) -> None:
        """Queue one accepted request (never waits: dropped when the queue is full)."""
        try:
            self._send.send_nowait(Export(signal, content_type, body))
        except (trio.WouldBlock, trio.ClosedResourceError):
            self.counts["dropped"] += 1

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
            task_status.started()
            async for export in self._receive:
                await self._post(client, export)

    async def _post(self, client: httpx.AsyncClient, export: Export) -> None:
        url = f"{self.base_url}/v1/{export.signal}"
        delay = RETRY_FIRST_S
        why = ""
        for attempt in range(RETRIES):
            try:
                r = await client.post(
                    url, content=export.body, headers={**self.headers, "Content-Type": export.content_type}
                )
            except Exception as exc:  # noqa: BLE001 - httpx's errors and any other: never the daemon's end
                why = f"{type(exc).__name__}: {exc}"
                if not isinstance(exc, httpx.HTTPError):
                    break
            else:
                if r.status_code < 300:
                    self.counts["ok"] += 1
                    return
                why = f"HTTP {r.status_code}"
                if r.status_code not in (429, 502, 503, 504):  # the OTLP spec's retryable answers
                    break
            if attempt + 1 < RETRIES:
                await trio.sleep(delay)  # a retry timer: the collector gives no signal to wait on
                delay *= 2
        self.counts["failed"] += 1
        now = trio.current_time()
        if now - self._logged >= LOG_EVERY_S:
            self._logged = now
            log.warning("otel.forwardTo: %s of %s could not be sent (%s)", export.signal, self.base_url, why)

    def metrics(self) -> list[Metric]:
        return [
            Metric(
                "contextuate_otel_forwarded_total",
                "OTLP requests forwarded to otel.forwardTo, by outcome (ok, failed, dropped: the queue was full).",
                "counter",
                [({"outcome": k}, self.counts[k]) for k in ("ok", "failed", "dropped")],
            )
        ]
