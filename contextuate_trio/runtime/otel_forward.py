"""``otel.forwardTo``: what the daemon receives over OTLP, sent on to the person's own
OpenTelemetry collector, as it came (the body after gzip, its content type).

The receiver (``web/routes/otlp``) ``offer``s each accepted request; one task posts
them in order (``<forwardTo>/v1/<signal>``, ``otel.forwardHeaders``). It never holds
the receiver up: the queue is bounded by requests (``QUEUE``) and by bytes
(``QUEUE_BYTES``: bodies are up to ``otel.maxBodyBytes`` each), and when full drops
its oldest request (counted, ``dropped``); a collector that fails is retried a few
times, then the request is dropped (counted, logged once a minute).
"""

from __future__ import annotations

import collections
import logging
from typing import TYPE_CHECKING

import attrs
import trio

from contextuate_trio.runtime.metrics import Metric

if TYPE_CHECKING:  # imported when forwarding is configured: ~7 MB of memory otherwise
    import httpx

log = logging.getLogger("contextuate.otel_forward")

QUEUE = 256  # requests waiting to be forwarded
QUEUE_BYTES = 32 * 1024 * 1024  # ...and their bodies' bytes, at most
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
    def __init__(
        self,
        base_url: str,
        headers: dict[str, str] | None = None,
        queue: int = QUEUE,
        queue_bytes: int = QUEUE_BYTES,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = dict(headers or {})
        self.queue, self.queue_bytes = queue, queue_bytes
        self._queue: collections.deque[Export] = collections.deque()
        self.queued_bytes = 0  # the bodies' bytes in ``_queue``
        self._wake = trio.Event()
        self.counts: collections.Counter = collections.Counter()
        self._logged = -LOG_EVERY_S

    def offer(self, signal: str, content_type: str, body: bytes) -> None:
        """Queue one accepted request (never waits). Past ``queue`` requests or
        ``queue_bytes`` bytes the oldest waiting ones are dropped (counted); a body
        larger than the whole budget is dropped itself."""
        if len(body) > self.queue_bytes:
            self.counts["dropped"] += 1
            return
        self._queue.append(Export(signal, content_type, body))
        self.queued_bytes += len(body)
        while len(self._queue) > self.queue or self.queued_bytes > self.queue_bytes:
            self._take()
            self.counts["dropped"] += 1
        self._wake.set()

    def _take(self) -> Export:
        export = self._queue.popleft()
        self.queued_bytes -= len(export.body)
        return export

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        import httpx

        async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
            task_status.started()
            while True:
                while not self._queue:
                    self._wake = trio.Event()
                    await self._wake.wait()
                await self._post(client, self._take())

    async def _post(self, client: httpx.AsyncClient, export: Export) -> None:
        import httpx

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
