"""What the daemon reports about itself: ``/api/status``, ``/metrics``, health reasons."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from contextuate_trio import __version__
from contextuate_trio.core import attention, otel, usage
from contextuate_trio.hook import spool as hook_spool
from contextuate_trio.runtime.metrics import Metric, render

if TYPE_CHECKING:
    from contextuate_trio.daemon.daemon import Daemon

_COUNTERS = (
    ("contextuate_events_stored_total", "events", "Events stored (after dedupe)."),
    ("contextuate_duplicates_total", "duplicates", "Events dropped as already stored."),
    ("contextuate_bad_lines_total", "bad_lines", "Socket lines rejected."),
    ("contextuate_store_errors_total", "store_errors", "Failed store writes (retried)."),
    ("contextuate_rejected_events_total", "rejected", "Events the pipeline failed on (logged, refused)."),
    ("contextuate_bad_redis_messages_total", "bad_redis_messages", "Redis messages that were not events."),
)


def problems(d: Daemon) -> list[str]:
    out = []
    if d.broker.last_error:
        out.append(f"store: {d.broker.last_error}")
    if d.redis is not None and not d.redis.connected():
        out.append(f"redis: {d.redis.error or 'connecting'}")
    if d.redis is not None:
        out += d.redis.problems()  # events trimmed before this monitor read them
    if d.relay is not None:
        out += d.relay.problems()  # Redis unreachable for long, or a growing backlog
    return out


def machines(d: Daemon) -> dict:
    """``/api/machines``: every machine, by its Redis stream and the sessions held."""
    held: dict[str, list[int]] = {}  # machine -> [events, last event time]
    for s in d.broker.manager.sessions.values():
        h = held.setdefault(s.machine_id, [0, 0])
        h[0] += s.event_count
        h[1] = max(h[1], s.last_event_time or 0)
    rows = []
    streams = d.redis.stream_infos() if d.redis is not None else []
    for st in streams[1:]:  # the machines' own streams
        events, last = held.pop(st["machineId"], [0, 0])
        seen = max(st["lastSeen"] or 0, last) or None
        rows.append(dict(st, lastSeen=seen, events=events))
    for machine, (events, last) in sorted(held.items()):
        rows.append(
            {"machineId": machine, "stream": None, "lastSeen": last or None, "events": events, "missed": 0, "lag": None}
        )
    return {"machines": rows, "legacy": streams[0] if streams else None}


def status(d: Daemon) -> dict:
    b = d.broker
    by_status: dict[str, int] = {}
    for s in b.manager.sessions.values():
        by_status[s.status] = by_status.get(s.status, 0) + 1
    reasons = problems(d)
    return {
        "status": "degraded" if reasons else "ok",
        "reasons": reasons,
        "version": __version__,
        "pid": os.getpid(),
        "mode": d.config.mode,
        "home": d.home,
        "socketPath": d.config.socket_path,
        "dashboard": d.web.http_urls,
        "uptimeMs": int((time.time() - d.started) * 1000),
        "sessions": len(b.manager.sessions),
        "sessionsByStatus": by_status,
        "eventsStored": b.counters["events"],
        "eventsBySource": dict(b.by_source),
        "duplicates": b.counters["duplicates"],
        "badLines": b.counters["bad_lines"],
        "queueDepth": b.queue_depth(),
        "subscribers": b.subscriber_count(),
        "spoolBacklog": hook_spool.backlog(d.home),
        "store": None if b.store is None else {"dir": b.store.dir, "bytes": b.store.size_bytes()},
        "redis": None if d.redis is None else d.redis.info(),
        "relay": None if d.relay is None else d.relay.info(),
        "attention": attention.summary(d.needs_you.queue()),
    }


def daemon_metrics(d: Daemon) -> list[Metric]:
    b = d.broker
    out = [
        Metric(
            "contextuate_events_in_total",
            "Events received, by source.",
            "counter",
            [({"source": src}, n) for src, n in sorted(b.by_source.items())],
        )
    ]
    out += [Metric(name, help_, "counter", b.counters[key]) for name, key, help_ in _COUNTERS]
    out.append(
        Metric("contextuate_dropped_clients_total", "Subscribers dropped for being slow.", "counter", b.fanout.dropped)
    )
    out += [
        Metric("contextuate_queue_depth", "Events waiting in the broker.", "gauge", b.queue_depth()),
        Metric("contextuate_subscribers", "Live subscribers.", "gauge", b.subscriber_count()),
        Metric("contextuate_sessions", "Sessions known.", "gauge", len(b.manager.sessions)),
        Metric("contextuate_store_bytes", "Bytes of events on disk.", "gauge", b.store.size_bytes() if b.store else 0),
        Metric("contextuate_spool_backlog", "Spooled events not yet ingested.", "gauge", hook_spool.backlog(d.home)),
        Metric("contextuate_up", "1 when healthy, 0 when degraded.", "gauge", 0 if problems(d) else 1),
        Metric(
            "contextuate_redis_connected",
            "1 when both Redis readers are connected.",
            "gauge",
            int(bool(d.redis and d.redis.connected())),
        ),
    ]
    if d.relay is not None:
        out += d.relay.metrics()
    if d.redis is not None:
        streams = d.redis.stream_infos()
        out += [
            Metric(
                "contextuate_redis_spoofed_total",
                "Events refused for claiming another machine than their stream's.",
                "counter",
                b.counters["redis_spoofed"],
            ),
            Metric(
                "contextuate_redis_channel_ignored_total",
                "Channel messages ignored because the machine's own stream carries them.",
                "counter",
                b.counters["redis_channel_ignored"],
            ),
            Metric(
                "contextuate_redis_missed_events_total",
                "Events trimmed from a stream before this monitor read them, by machine ('' : the legacy stream).",
                "counter",
                [({"machine": s["machineId"] or ""}, s["missed"]) for s in streams],
            ),
            Metric(
                "contextuate_redis_lag",
                "Entries of a machine's stream not read yet (at the last survey).",
                "gauge",
                [({"machine": s["machineId"] or ""}, s["lag"]) for s in streams if s["lag"] is not None],
            ),
        ]
    return out


def otlp_metrics(d: Daemon) -> list[Metric]:
    """The OTLP receiver's counters (``web/routes/otlp``: ``("otlp", …)`` keys)."""
    requests: list[tuple[dict[str, str], int | float | str]] = []
    records: list[tuple[dict[str, str], int | float | str]] = []
    for key, n in sorted((k, v) for k, v in d.broker.counters.items() if isinstance(k, tuple) and k[0] == "otlp"):
        if key[1] == "requests":
            requests.append(({"signal": key[2], "outcome": key[3]}, n))
        elif key[1] == "records":
            records.append(({"signal": key[2], "outcome": key[3]}, n))
    return [
        Metric(
            "contextuate_otlp_requests_total",
            "OTLP requests (/v1/logs, /v1/metrics, /v1/traces) by signal and outcome: ok, or why refused "
            "(bad_body, bad_encoding, too_large, type, encoding, truncated, unavailable, unsupported: no protobuf "
            "runtime here).",
            "counter",
            requests,
        ),
        Metric(
            "contextuate_otlp_records_total",
            "OTLP records (log records, spans, data points) accepted or rejected (no session.id), by signal.",
            "counter",
            records,
        ),
    ]


def metrics_text(d: Daemon) -> str:
    sessions = d.broker.manager.sessions.values()
    usage_metrics = [Metric(*m) for m in usage.usage_metrics(((s.machine_id, s.usage) for s in sessions), d.prices)]
    otel_metrics = [Metric(*m) for m in otel.session_metrics((s.machine_id, s.otel) for s in sessions)]
    return render(
        [
            *daemon_metrics(d),
            *usage_metrics,
            *otel_metrics,
            *otlp_metrics(d),
            *(d.otel_forward.metrics() if d.otel_forward is not None else []),
            *d.ws.metrics(),
            *d.needs_you.metrics(),
            *d.decisions.metrics(),
            *d.alerts.metrics(),
        ]
    )
