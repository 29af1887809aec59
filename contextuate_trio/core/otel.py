"""Claude Code's own OpenTelemetry, sans-IO: OTLP documents in, events out, and what
each of those events teaches a session.

Claude Code (``CLAUDE_CODE_ENABLE_TELEMETRY=1``) exports three signals over OTLP/HTTP:
log events (``api_request`` with tokens and its cost, ``api_error``, ``tool_decision``,
``tool_result``, ``hook_execution_complete``, ``subagent_completed`` …), metrics
(``claude_code.cost.usage``, ``token.usage``, ``active_time.total``,
``lines_of_code.count``, ``commit.count``, ``pull_request.count`` …) and, with
``CLAUDE_CODE_ENHANCED_TELEMETRY_BETA=1``, traces (one per turn: ``interaction`` ->
``llm_request`` / ``tool`` -> ``tool.blocked_on_user`` / ``tool.execution``). Every
record carries ``session.id`` (the hooks' ``session_id``); log records carry
``prompt.id`` (the hooks' ``prompt_id``), tool records ``tool_use_id``, records of a
sub-agent ``agent_id`` (the hooks' ``agent_id``).

The edge (``web/routes/otlp``) decodes a request body, JSON or protobuf, into the
OTLP/JSON shape (camelCase keys, ids in hex, 64-bit integers as strings or numbers,
``AnyValue`` objects); from there it is plain code:

- ``to_events``: a document -> events (``otel_log`` one per log record,
  ``otel_spans`` one per session and trace, ``otel_metrics`` one per session), with
  ids derived from the records, so a resent batch is the same events (the broker's
  dedupe drops them), and how many records were refused.
- ``learn``: what one such event adds to a session's ``otel`` figures and its usage
  (the cost and tokens of ``api_request``: authoritative, see ``usage.add_otel``; a
  record without ``cost_usd`` has its tokens priced by the table instead). Cumulative
  metric series are counted by their deltas, per series and start time, remembered
  with the session's figures (``series``): a daemon restart does not count a series
  again, an exporter restart (a new start time) starts a new one.
- ``Joins``: the daemon's memory of which prompt a request id, a tool use id or a
  trace belongs to, so a turn's spans get its ``promptId``.

Attribute texts longer than ``MAX_ATTR_TEXT`` are masked (``redact.Redactor``) before
they are cut: a secret cut in two no longer matches its pattern.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import attrs
import orjson

from contextuate_trio.core import usage as usage_mod
from contextuate_trio.core.events import Event
from contextuate_trio.core.redact import Redactor

SIGNALS = ("logs", "metrics", "traces")
SOURCE = "otel"
OTEL_LOG, OTEL_SPANS, OTEL_METRICS = "otel_log", "otel_spans", "otel_metrics"
EVENT_TYPES = frozenset({OTEL_LOG, OTEL_SPANS, OTEL_METRICS})

# Attributes every record repeats, or that the event carries as fields of its own.
_COMMON = frozenset(
    {
        "host.name",
        "user.id",
        "user.email",
        "user.account_uuid",
        "organization.id",
        "session.id",
        "prompt.id",
        "app.version",
        "terminal.type",
        "anthropic.provider",
        "anthropic.custom_base_url",
        "event.name",
        "event.timestamp",
        "event.sequence",
    }
)
# Log events that say nothing about a session's work: set-up (each hook and plugin
# registered at start) and the start of a hook run (its completion has the duration).
DROPPED_LOGS = frozenset({"hook_registered", "plugin_loaded", "managed_settings_resolved", "hook_execution_start"})
REDACTED = "<REDACTED>"  # Claude Code's placeholder for a prompt without OTEL_LOG_USER_PROMPTS
_SPAN_PREFIX = "claude_code."
MAX_ATTR_TEXT = 4096  # a longer attribute value is masked, then cut (a prompt logged with OTEL_LOG_USER_PROMPTS)
MAX_SERIES = 512  # cumulative metric series a session remembers (their start and last value)
MAX_ATTRS = 128  # attributes kept per record
JOIN_KEYS = 20_000  # ids the daemon remembers for joining spans to turns
MAX_TRACES = 32  # turns (traces) a session lists
STATUS_ERROR = 2  # OTLP Status.code ERROR


class OtlpError(ValueError):
    """A document that is not OTLP of the signal it was posted as (answered 400)."""


@attrs.frozen
class Batch:
    """What one OTLP request became: its events, and how many records were refused."""

    events: list[Event]
    accepted: int  # records turned into events (or deliberately dropped as noise)
    rejected: int  # records refused (no session.id, malformed)
    why: str | None = None  # the first refusal's reason


# --- OTLP/JSON values --------------------------------------------------------------
def any_value(v: Any) -> Any:
    """An OTLP ``AnyValue`` (``{"stringValue": …}``, ``{"intValue": "12"}``, arrays,
    key-value lists) -> a plain value; ``bytesValue`` stays its text (base64 or hex)."""
    if not isinstance(v, dict):
        return None
    for kind, x in v.items():
        if kind == "stringValue":
            return x if isinstance(x, str) else None
        if kind == "intValue":
            return _int(x)
        if kind == "doubleValue":
            return _float(x)
        if kind == "boolValue":
            return x if isinstance(x, bool) else None
        if kind == "arrayValue":
            values = x.get("values") if isinstance(x, dict) else None
            return [any_value(i) for i in values] if isinstance(values, list) else []
        if kind == "kvlistValue":
            return attributes(x.get("values") if isinstance(x, dict) else None)
        if kind == "bytesValue":
            return x if isinstance(x, str) else None
    return None


def attributes(kvs: Any) -> dict[str, Any]:
    """``[{"key", "value": AnyValue}]`` -> ``{key: value}``."""
    out: dict[str, Any] = {}
    for kv in kvs if isinstance(kvs, list) else ():
        if isinstance(kv, dict) and isinstance(kv.get("key"), str):
            out[kv["key"]] = any_value(kv.get("value"))
    return out


def _int(x: Any) -> int | None:
    """OTLP/JSON's 64-bit integers: a decimal string or a number."""
    if isinstance(x, bool):
        return None
    if isinstance(x, int):
        return x
    if isinstance(x, float):
        return int(x) if x == x and abs(x) < 1e300 else None
    if isinstance(x, str):
        try:
            return int(x)
        except ValueError:
            return None
    return None


def _float(x: Any) -> float | None:
    if isinstance(x, bool):
        return None
    if isinstance(x, (int, float)):
        return float(x)
    if isinstance(x, str):  # "NaN", "Infinity" and numbers as text
        try:
            return float(x)
        except ValueError:
            return None
    return None


def number(x: Any) -> float | None:
    """An attribute that is a number, whichever way it was sent (Claude Code sends
    ``duration_ms`` of ``tool_result`` as text, of ``api_request`` as an integer)."""
    v = _float(x)
    return v if v is not None and v == v and v not in (float("inf"), float("-inf")) else None


def _ms(nanos: Any) -> float | None:
    n = _int(nanos)
    return n / 1e6 if n else None


_BUILT_IN = Redactor()  # the built-in patterns, when the caller passes no redactor


def _kept(attrs_: dict[str, Any], redactor: Redactor | None = None) -> dict[str, Any]:
    """A record's own attributes: the common ones, placeholders and duplicates out,
    long texts masked (``redactor``: the daemon's, with the config's patterns) and
    then cut, at most MAX_ATTRS. Shorter texts are masked with the whole event."""
    out: dict[str, Any] = {}
    for k, v in attrs_.items():
        if k in _COMMON or v == REDACTED or k.startswith("gen_ai."):
            continue
        if isinstance(v, str) and len(v) > MAX_ATTR_TEXT:
            v = (redactor or _BUILT_IN).text(v)
            if len(v) > MAX_ATTR_TEXT:
                v = v[: MAX_ATTR_TEXT - 1] + "…"
        out[k] = v
        if len(out) >= MAX_ATTRS:
            break
    return out


def _str(d: dict[str, Any], key: str) -> str | None:
    v = d.get(key)
    return v if isinstance(v, str) and v else None


def _id(*parts: Any) -> str:
    """An event id made from what identifies the record: the same record sent twice
    (an exporter's retry, a relay's resend) is the same event."""
    digest = hashlib.blake2b(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS), digest_size=12).hexdigest()
    return f"otel-{digest}"


def _dict(d: Any, key: str) -> dict[str, Any]:
    v = d.get(key) if isinstance(d, dict) else None
    return v if isinstance(v, dict) else {}


def _list(d: Any, key: str) -> list[Any]:
    v = d.get(key) if isinstance(d, dict) else None
    return v if isinstance(v, list) else []


def _resources(doc: Any, top: str, scopes: str, items: str) -> Iterator[tuple[dict[str, Any], Any]]:
    """(resource attributes, record) for every record of a document; OtlpError when
    the document is not of that shape at all."""
    if not isinstance(doc, dict):
        raise OtlpError(f"expected a JSON object with {top!r}")
    groups = doc.get(top, [])
    if not isinstance(groups, list):
        raise OtlpError(f"{top!r} is not a list")
    for group in groups:
        if not isinstance(group, dict):
            raise OtlpError(f"an item of {top!r} is not an object")
        res = attributes(
            group.get("resource", {}).get("attributes") if isinstance(group.get("resource"), dict) else None
        )
        for scope in _list(group, scopes):
            for item in _list(scope, items):
                yield res, item


def _machine(res: dict[str, Any], rec: dict[str, Any], default: str) -> str:
    return _str(res, "host.name") or _str(rec, "host.name") or default


# --- logs --------------------------------------------------------------------------
def _log_summary(name: str, a: dict[str, Any]) -> str:
    tool = _str(a, "tool_name") or ""
    if name == "api_request":
        tokens = sum(int(number(a.get(k)) or 0) for k in ("input_tokens", "output_tokens", "cache_read_tokens"))
        tokens += int(number(a.get("cache_creation_tokens")) or 0)
        cost = number(a.get("cost_usd"))
        price = f", ${cost:.6g}" if cost is not None else ""
        return f"api_request {a.get('model') or '?'}: {tokens} tokens{price}, {_dur(a.get('duration_ms'))}"
    if name == "api_error":
        return (
            f"api_error {a.get('status_code') or ''} {a.get('error') or ''} (attempt {a.get('attempt') or 1})".replace(
                "  ", " "
            )
        )
    if name == "tool_decision":
        return f"{tool} {a.get('decision') or '?'} ({a.get('source') or '?'})"
    if name == "tool_result":
        ok = str(a.get("success")).lower() == "true"
        why = "" if ok else f" ({a.get('error_type') or a.get('error') or 'error'})"
        return f"{tool} {'ok' if ok else 'failed'}{why} in {_dur(a.get('duration_ms'))}"
    if name == "hook_execution_complete":
        return f"hook {a.get('hook_name') or a.get('hook_event') or '?'} {_dur(a.get('total_duration_ms'))}"
    if name == "subagent_completed":
        return (
            f"agent {a.get('agent_type') or '?'} done: {a.get('total_tokens') or 0} tokens, "
            f"{a.get('total_tool_uses') or 0} tool uses, {_dur(a.get('duration_ms'))}"
        )
    if name in ("user_prompt", "assistant_response"):
        n = a.get("prompt_length") or a.get("response_length")
        return f"{name.replace('_', ' ')} ({n} chars)" if n is not None else name.replace("_", " ")
    return name.replace("_", " ")


def _dur(v: Any) -> str:
    n = number(v)
    return f"{n:.0f} ms" if n is not None else "? ms"


def _log_event(
    res: dict[str, Any], rec: dict[str, Any], machine: str, received_ms: int, redactor: Redactor | None = None
) -> Event | None:
    """One log record -> its event; None for the records dropped as noise.
    ValueError for a record that cannot be one."""
    a = attributes(rec.get("attributes"))
    sid = _str(a, "session.id") or _str(res, "session.id")
    if sid is None:
        raise ValueError("a log record without session.id")
    name = _str(a, "event.name") or any_value(rec.get("body"))
    if not isinstance(name, str) or not name:
        raise ValueError("a log record without event.name")
    if name.startswith(_SPAN_PREFIX):
        name = name[len(_SPAN_PREFIX) :]
    if name in DROPPED_LOGS:
        return None
    ms = _ms(rec.get("timeUnixNano")) or _ms(rec.get("observedTimeUnixNano")) or float(received_ms)
    kept = _kept(a, redactor)
    duration = number(a.get("duration_ms")) if "duration_ms" in a else number(a.get("total_duration_ms"))
    return Event(
        id=_id("log", sid, name, rec.get("timeUnixNano"), a.get("event.sequence"), kept),
        timestamp=int(ms),
        session_id=sid,
        machine_id=_machine(res, a, machine),
        event_type=OTEL_LOG,
        tool_name=_str(a, "tool_name"),
        tool_use_id=_str(a, "tool_use_id"),
        duration_ms=duration,
        agent_id=_str(a, "agent_id"),
        prompt_id=_str(a, "prompt.id"),
        summary=_log_summary(name, a),
        source=SOURCE,
        data={"name": name, "attributes": kept},
    )


# --- traces ------------------------------------------------------------------------
def _span(rec: dict[str, Any], a: dict[str, Any], redactor: Redactor | None = None) -> dict[str, Any]:
    name = _str(rec, "name") or "span"
    if name.startswith(_SPAN_PREFIX):
        name = name[len(_SPAN_PREFIX) :]
    start = _ms(rec.get("startTimeUnixNano")) or 0.0
    end = _ms(rec.get("endTimeUnixNano")) or start
    kept = {
        k: v
        for k, v in _kept(a, redactor).items()
        if k not in ("span.type", "duration_ms", "interaction.duration_ms", "user_prompt")
    }
    span: dict[str, Any] = {
        "spanId": rec.get("spanId") if isinstance(rec.get("spanId"), str) else "",
        "parentSpanId": rec.get("parentSpanId") or None,
        "name": name,
        "startMs": round(start, 3),
        "durationMs": round(max(end - start, 0.0), 3),
        "attributes": kept,
    }
    status = rec.get("status")
    if isinstance(status, dict) and _int(status.get("code")) == STATUS_ERROR:
        span["error"] = status.get("message") if isinstance(status.get("message"), str) else "error"
    return span


_SPAN_ORDER = ("interaction", "llm_request", "tool", "tool.execution", "tool.blocked_on_user", "hook")


def _spans_summary(spans: list[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for s in spans:
        counts[s["name"]] = counts.get(s["name"], 0) + 1
    top = next((s for s in spans if s["name"] == "interaction"), None)
    head = f"turn {top['durationMs']:.0f} ms" if top else f"{len(spans)} spans"
    names = sorted(counts, key=lambda n: (_SPAN_ORDER.index(n) if n in _SPAN_ORDER else 99, n))
    return head + " · " + ", ".join(f"{counts[n]} {n}" for n in names if n != "interaction")


def _span_events(doc: Any, machine: str, redactor: Redactor | None = None) -> tuple[list[Event], int, int, str | None]:
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    machines: dict[tuple[str, str], str] = {}
    rejected, why = 0, None
    for res, rec in _resources(doc, "resourceSpans", "scopeSpans", "spans"):
        if not isinstance(rec, dict):
            rejected, why = rejected + 1, why or "a span that is not an object"
            continue
        a = attributes(rec.get("attributes"))
        sid = _str(a, "session.id") or _str(res, "session.id")
        trace = rec.get("traceId") if isinstance(rec.get("traceId"), str) else None
        if sid is None or not trace:
            rejected, why = rejected + 1, why or "a span without session.id or traceId"
            continue
        key = (sid, trace)
        grouped.setdefault(key, []).append(_span(rec, a, redactor))
        machines.setdefault(key, _machine(res, a, machine))
    out = []
    for (sid, trace), spans in grouped.items():
        spans.sort(key=lambda s: (s["startMs"], -s["durationMs"]))
        out.append(
            Event(
                id=_id("spans", sid, trace, sorted(s["spanId"] for s in spans)),
                timestamp=int(spans[0]["startMs"]),
                session_id=sid,
                machine_id=machines[(sid, trace)],
                event_type=OTEL_SPANS,
                duration_ms=max(s["startMs"] + s["durationMs"] for s in spans) - spans[0]["startMs"],
                summary=_spans_summary(spans),
                source=SOURCE,
                data={"traceId": trace, "spans": spans},
            )
        )
    return out, sum(len(v) for v in grouped.values()), rejected, why


# --- metrics -----------------------------------------------------------------------
_TEMPORALITY_CUMULATIVE = 2  # AggregationTemporality: 1 delta, 2 cumulative


def _points(metric: dict[str, Any]) -> Iterator[tuple[dict[str, Any], float | None, bool]]:
    """(point, value, cumulative) of a metric's sums, gauges and histograms (their sum)."""
    for kind in ("sum", "gauge", "histogram", "exponentialHistogram", "summary"):
        body = metric.get(kind)
        if not isinstance(body, dict):
            continue
        cumulative = kind != "gauge" and _int(body.get("aggregationTemporality")) == _TEMPORALITY_CUMULATIVE
        for p in _list(body, "dataPoints"):
            if not isinstance(p, dict):
                yield {}, None, cumulative
                continue
            if kind in ("sum", "gauge"):
                v = number(p["asDouble"]) if "asDouble" in p else number(_int(p.get("asInt")))
            else:
                v = number(p.get("sum"))
            yield p, v, cumulative


def _metric_events(
    doc: Any, machine: str, received_ms: int, redactor: Redactor | None = None
) -> tuple[list[Event], int, int, str | None]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    machines: dict[str, str] = {}
    rejected, why = 0, None
    for res, metric in _resources(doc, "resourceMetrics", "scopeMetrics", "metrics"):
        name = metric.get("name") if isinstance(metric, dict) else None
        if not isinstance(name, str) or not name:
            rejected, why = rejected + 1, why or "a metric without a name"
            continue
        short = name[len(_SPAN_PREFIX) :] if name.startswith(_SPAN_PREFIX) else name
        for p, value, cumulative in _points(metric):
            a = attributes(p.get("attributes"))
            sid = _str(a, "session.id") or _str(res, "session.id")
            if sid is None or value is None:
                rejected, why = rejected + 1, why or "a data point without session.id or a value"
                continue
            point: dict[str, Any] = {
                "name": short,
                "value": value,
                "attributes": _kept(a, redactor),
                "startMs": _ms(p.get("startTimeUnixNano")),
                "timeMs": _ms(p.get("timeUnixNano")) or float(received_ms),
            }
            if cumulative:
                point["cumulative"] = True
                start = _int(p.get("startTimeUnixNano"))
                if start:  # exact (startMs is a float): what tells one run of a series from the next
                    point["startNs"] = str(start)
            grouped.setdefault(sid, []).append(point)
            machines.setdefault(sid, _machine(res, a, machine))
    out = []
    for sid, points in grouped.items():
        out.append(
            Event(
                id=_id("metrics", sid, points),
                timestamp=int(max(p["timeMs"] for p in points)),
                session_id=sid,
                machine_id=machines[sid],
                event_type=OTEL_METRICS,
                summary=_metrics_summary(points),
                source=SOURCE,
                data={"points": points},
            )
        )
    return out, sum(len(v) for v in grouped.values()), rejected, why


def _metrics_summary(points: list[dict[str, Any]]) -> str:
    cost = sum(p["value"] for p in points if p["name"] == "cost.usage")
    names = sorted({p["name"] for p in points})
    head = f"metrics: ${cost:.6g} · " if cost else "metrics: "
    return head + ", ".join(names)


def to_events(signal: str, doc: Any, *, machine: str, received_ms: int, redactor: Redactor | None = None) -> Batch:
    """An OTLP/JSON-shaped document of ``signal`` ("logs", "metrics", "traces") ->
    its events. OtlpError when the document is not one (nothing is taken from it);
    records that cannot be events (no ``session.id``) are counted as rejected.
    ``redactor`` masks the texts cut to ``MAX_ATTR_TEXT`` (default: the built-in
    patterns; the daemon passes its own, with the config's)."""
    if signal == "logs":
        events: list[Event] = []
        accepted = rejected = 0
        why: str | None = None
        for res, rec in _resources(doc, "resourceLogs", "scopeLogs", "logRecords"):
            try:
                ev = _log_event(res, rec if isinstance(rec, dict) else {}, machine, received_ms, redactor)
            except ValueError as exc:
                rejected, why = rejected + 1, why or str(exc)
                continue
            accepted += 1
            if ev is not None:
                events.append(ev)
        return Batch(events, accepted, rejected, why)
    if signal == "traces":
        return Batch(*_span_events(doc, machine, redactor))
    if signal == "metrics":
        return Batch(*_metric_events(doc, machine, received_ms, redactor))
    raise OtlpError(f"unknown signal {signal!r}")


# --- joins ---------------------------------------------------------------------------
class Joins:
    """Which prompt (turn) a request id, a tool use id or a trace id belongs to: the
    daemon's memory, bounded (the oldest forgotten first) and not persisted (after a
    restart, spans of a turn already under way may lack their ``promptId``). The last
    values of cumulative metric series are not here but with each session's figures
    (``series``), persisted with it."""

    def __init__(self, cap: int = JOIN_KEYS) -> None:
        self.cap = cap
        self.prompts: dict[str, str] = {}  # request id, tool use id or trace id -> prompt id
        self.traces: dict[str, str] = {}  # request id or tool use id -> trace id

    def note(self, key: str | None, prompt_id: str | None) -> None:
        if key and prompt_id:
            self.prompts.pop(key, None)
            self.prompts[key] = prompt_id
            while len(self.prompts) > self.cap:
                del self.prompts[next(iter(self.prompts))]

    def prompt_of(self, trace_id: str, spans: Iterable[dict[str, Any]]) -> str | None:
        """The trace's prompt: known already, or found through one of its spans'
        request or tool use ids (then remembered for the trace's later spans)."""
        found = self.prompts.get(trace_id)
        for s in spans:
            a = s.get("attributes") or {}
            for key in (a.get("request_id"), a.get("tool_use_id")):
                if isinstance(key, str) and key:
                    found = found or self.prompts.get(key)
                    self.traces[key] = trace_id
        while len(self.traces) > self.cap:
            del self.traces[next(iter(self.traces))]
        self.note(trace_id, found)
        return found

    def trace_of(self, *keys: str | None) -> str | None:
        """The trace a request id or tool use id was seen in (from its spans)."""
        return next((self.traces[k] for k in keys if k and k in self.traces), None)


# --- what an event teaches a session -------------------------------------------------
def empty() -> dict[str, Any]:
    """A session's figures from its OTel (``Session.otel``)."""
    return {
        "apiRequests": 0,
        "apiErrors": 0,
        "retries": 0,
        "errorsByStatus": {},
        "decisions": {},
        "tools": {},
        "hooks": {},
        "activeTimeS": {},
        "linesAdded": 0,
        "linesRemoved": 0,
        "commits": 0,
        "pullRequests": 0,
    }


def _tally(table: dict[str, list[float]], key: str, ms: float | None, failed: bool = False) -> None:
    """``[count, failures, totalMs, maxMs]`` of a tool or a hook."""
    row = table.setdefault(key, [0, 0, 0, 0])
    row[0] += 1
    row[1] += 1 if failed else 0
    if ms is not None:
        row[2] = round(row[2] + ms, 3)
        row[3] = max(row[3], ms)


def _api_request(o: dict[str, Any], u: dict[str, Any], ev: Event, a: dict[str, Any]) -> None:
    o["apiRequests"] += 1
    if (number(a.get("attempt")) or 1) > 1:
        o["retries"] += 1
    ints = [int(number(a.get(k)) or 0) for k in ("input_tokens", "output_tokens", "cache_read_tokens")]
    w5m = int(number(a.get("cache_creation_5m_tokens")) or 0)
    w1h = int(number(a.get("cache_creation_1h_tokens")) or 0)
    w5m = max(w5m, int(number(a.get("cache_creation_tokens")) or 0) - w1h)  # no breakdown: 5-minute writes
    micros = number(a.get("cost_usd_micros"))
    if micros is None:
        usd = number(a.get("cost_usd"))
        micros = None if usd is None else usd * 1e6
    model = _str(a, "model") or "unknown"
    values = [*ints, w5m, w1h, 0]
    usage_mod.add_otel(u, model, ev.timestamp, values, round(micros or 0), calls=1, origin="logs")
    _cover(u, model, ev.timestamp, values, paid=micros is not None)


def _cover(u: dict[str, Any], model: str, ts: int, values: list[int], paid: bool) -> None:
    """Which of a model's OTel tokens Claude Code's cost covers. A row stays compact
    (all of them: the cost is the bill) until a record without ``cost_usd`` comes;
    then it is kept wide (``usage.WIDE``: the values the cost covers after the cost),
    and what is not covered is priced by the table when shown (``usage.row_cost``,
    with the config's price overrides), as a transcript's tokens are."""
    o = u.get("otel") or {}
    rows = [o.get("models", {}).get(model), o.get("hours", {}).get(str(ts // usage_mod.HOUR_MS), {}).get(model)]
    for row in rows:
        if row is None:
            continue
        if len(row) < usage_mod.WIDE:
            if paid:
                continue
            # Covered: every value before this record's.
            row[usage_mod.PAID :] = [row[i] - values[i] for i in range(usage_mod.N_VALUES)]
        elif paid:
            for i in range(usage_mod.N_VALUES):
                row[usage_mod.PAID + i] += values[i]


def _api_error(o: dict[str, Any], u: dict[str, Any], ev: Event, a: dict[str, Any]) -> None:
    o["apiErrors"] += 1
    if (number(a.get("attempt")) or 1) > 1:
        o["retries"] += 1
    status = str(a.get("status_code") or "unknown")
    o["errorsByStatus"][status] = o["errorsByStatus"].get(status, 0) + 1


def _decision(o: dict[str, Any], u: dict[str, Any], ev: Event, a: dict[str, Any]) -> None:
    by = o["decisions"].setdefault(str(a.get("decision") or "unknown"), {})
    source = str(a.get("source") or "unknown")
    by[source] = by.get(source, 0) + 1


def _tool_result(o: dict[str, Any], u: dict[str, Any], ev: Event, a: dict[str, Any]) -> None:
    failed = str(a.get("success")).lower() == "false"
    _tally(o["tools"], ev.tool_name or "unknown", ev.duration_ms, failed)


def _hook_run(o: dict[str, Any], u: dict[str, Any], ev: Event, a: dict[str, Any]) -> None:
    errors = sum(int(number(a.get(k)) or 0) for k in ("num_blocking", "num_non_blocking_error", "num_cancelled"))
    _tally(o["hooks"], str(a.get("hook_event") or "unknown"), ev.duration_ms, errors > 0)


def _agent_done(o: dict[str, Any], u: dict[str, Any], ev: Event, a: dict[str, Any]) -> None:
    o["agent"] = {
        "totalTokens": int(number(a.get("total_tokens")) or 0),
        "toolUses": int(number(a.get("total_tool_uses")) or 0),
        "durationMs": number(a.get("duration_ms")),
    }


_LEARN_LOG: dict[str, Callable[[dict[str, Any], dict[str, Any], Event, dict[str, Any]], None]] = {
    "api_request": _api_request,
    "api_error": _api_error,
    "tool_decision": _decision,
    "tool_result": _tool_result,
    "hook_execution_complete": _hook_run,
    "subagent_completed": _agent_done,
}
# metric name -> the session's figure it adds to
_COUNTED = {
    "lines_of_code.count": "lines",
    "commit.count": "commits",
    "pull_request.count": "pullRequests",
    "active_time.total": "activeTimeS",
}
_TOKEN_KIND = {"input": 0, "output": 1, "cacheRead": 2, "cacheCreation": 3}


def _start_ns(p: dict[str, Any]) -> int:
    """A cumulative point's start time (ns; 0 unknown): a new one is a new series."""
    ns = _int(p.get("startNs"))
    if ns:
        return ns
    ms = number(p.get("startMs"))  # events stored before startNs was kept
    return round(ms * 1e6) if ms else 0


def _cumulative(o: dict[str, Any], p: dict[str, Any], value: float) -> float:
    """What a cumulative point adds: its series' delta since the last value seen. A
    series is a metric and its attributes, from one start time; its start and last
    value are kept in the session's figures (``series``, persisted with them), so a
    daemon restart does not count it again. A new start time (the exporter, Claude
    Code, restarted) is a new series, counted from its value; a point from an older
    start than the one known (late) adds nothing; a value that fell within one start
    (a reset not said) counts from zero."""
    series: dict[str, list[Any]] = o.setdefault("series", {})
    key = orjson.dumps([p["name"], p["attributes"]], option=orjson.OPT_SORT_KEYS).decode()
    start = _start_ns(p)
    last = series.pop(key, None)
    if isinstance(last, list) and len(last) == 2 and isinstance(last[1], (int, float)):
        known = _int(last[0]) or 0
        if start < known:  # the previous run's, arriving late: counted already or lost
            series[key] = last
            return 0.0
        if start == known:
            series[key] = [str(start), value]
            return value - last[1] if value >= last[1] else value
    series[key] = [str(start), value]
    while len(series) > MAX_SERIES:
        del series[next(iter(series))]
    return value


def _metric_point(o: dict[str, Any], u: dict[str, Any], ev: Event, p: dict[str, Any], value: float) -> None:
    name, a = p["name"], p["attributes"]
    figure = _COUNTED.get(name)
    if figure == "lines":
        key = "linesAdded" if a.get("type") == "added" else "linesRemoved" if a.get("type") == "removed" else None
        if key:
            o[key] += int(value)
    elif figure == "activeTimeS":
        kind = str(a.get("type") or "total")
        o["activeTimeS"][kind] = round(o["activeTimeS"].get(kind, 0) + value, 3)
    elif figure is not None:
        o[figure] += int(value)
    elif name in ("cost.usage", "token.usage"):
        # Only the main thread's: a sub-agent's points name no agent id, and its
        # api_request records (or its transcript) count it on its own session.
        if a.get("query_source") == "subagent":
            o["subagentCostUsd"] = round(o.get("subagentCostUsd", 0) + (value if name == "cost.usage" else 0), 6)
            return
        model = str(a.get("model") or "unknown")
        values = [0] * usage_mod.N_VALUES
        micros = 0
        if name == "cost.usage":
            micros = round(value * 1e6)
        elif a.get("type") in _TOKEN_KIND:
            values[_TOKEN_KIND[str(a["type"])]] = int(value)
        usage_mod.add_otel(u, model, int(p["timeMs"]), values, micros, calls=0, origin="metrics")


def learn(o: dict[str, Any], u: dict[str, Any], ev: Event, joins: Joins) -> bool:
    """What an ``otel_*`` event adds to a session's figures ``o`` (``empty()``) and its
    usage ``u`` (``usage.empty()``). False when it taught nothing."""
    d = ev.data if isinstance(ev.data, dict) else {}
    if ev.event_type == OTEL_LOG:
        a = _dict(d, "attributes")
        joins.note(_str(a, "request_id"), ev.prompt_id)
        joins.note(ev.tool_use_id, ev.prompt_id)
        step = _LEARN_LOG.get(str(d.get("name")))
        if step is None:
            return False
        step(o, u, ev, a)
        return True
    if ev.event_type == OTEL_METRICS:
        for p in _list(d, "points"):
            if not isinstance(p, dict) or not isinstance(p.get("attributes"), dict) or number(p.get("value")) is None:
                continue
            value = float(p["value"])
            if p.get("cumulative"):
                value = _cumulative(o, p, value)
            if value:
                _metric_point(o, u, ev, p, value)
        return True
    if ev.event_type == OTEL_SPANS:
        spans = [s for s in _list(d, "spans") if isinstance(s, dict)]
        trace = d.get("traceId") if isinstance(d.get("traceId"), str) else ""
        if not trace or not spans:
            return False
        ev.prompt_id = ev.prompt_id or joins.prompt_of(trace, spans)
        _trace(o, trace, ev.prompt_id, spans)
        return True
    return False


def _trace(o: dict[str, Any], trace: str, prompt_id: str | None, spans: list[dict[str, Any]]) -> None:
    """The session's recent turns as traces: their prompt, time span and span count
    (the dashboard draws each turn's timeline from its ``otel_spans`` events)."""
    traces = o.setdefault("traces", {})
    t = traces.pop(trace, None) or {"promptId": None, "startMs": None, "endMs": None, "spans": 0}
    starts = [number(s.get("startMs")) or 0.0 for s in spans]
    ends = [st + (number(s.get("durationMs")) or 0.0) for st, s in zip(starts, spans, strict=True)]
    t["promptId"] = t["promptId"] or prompt_id
    t["startMs"] = min([*starts, *([t["startMs"]] if t["startMs"] is not None else [])])
    t["endMs"] = max([*ends, *([t["endMs"]] if t["endMs"] is not None else [])])
    t["spans"] += len(spans)
    top = next((s for s in spans if s.get("name") == "interaction"), None)
    if top is not None:
        t["sequence"] = (top.get("attributes") or {}).get("interaction.sequence")
    traces[trace] = t
    while len(traces) > MAX_TRACES:
        del traces[next(iter(traces))]


def late_prompt(root: dict[str, Any] | None, ev: Event, joins: Joins) -> bool:
    """A log record whose turn's spans came first: the root's trace gets its prompt."""
    if not root or not ev.prompt_id or ev.event_type != OTEL_LOG:
        return False
    a = _dict(ev.data, "attributes")
    trace = joins.trace_of(_str(a, "request_id"), ev.tool_use_id)
    t = root.get("traces", {}).get(trace or "")
    if t is None or t.get("promptId"):
        return False
    t["promptId"] = ev.prompt_id
    joins.note(trace, ev.prompt_id)
    return True


def public(o: dict[str, Any] | None) -> dict[str, Any] | None:
    """A session's OTel figures as the API shows them: tools and hooks as objects,
    the decisions summed up as a person reads them."""
    if not o:
        return None
    out = dict(o)
    out.pop("series", None)  # the cumulative series' last values: bookkeeping
    out["tools"] = {k: _row(r) for k, r in o.get("tools", {}).items()}
    out["hooks"] = {k: _row(r) for k, r in o.get("hooks", {}).items()}
    out["hookMsTotal"] = round(sum(r[2] for r in o.get("hooks", {}).values()), 3)
    dec = o.get("decisions", {})
    accepted = dec.get("accept", {})
    out["decided"] = {
        "acceptedByConfig": accepted.get("config", 0),
        "acceptedByUser": sum(n for s, n in accepted.items() if s.startswith("user")),
        "rejected": sum(dec.get("reject", {}).values()),
    }
    return out


def _row(r: list[float]) -> dict[str, float]:
    n = r[0] or 1
    return {"count": r[0], "failures": r[1], "totalMs": r[2], "maxMs": r[3], "avgMs": round(r[2] / n, 3)}


# --- metrics -------------------------------------------------------------------------
Samples = list[tuple[dict[str, str], float | int | str]]


def _add(table: dict[tuple[str, ...], float], key: tuple[str, ...], v: float) -> None:
    table[key] = table.get(key, 0) + v


def session_metrics(
    machine_figures: Iterable[tuple[str, dict[str, Any] | None]],
) -> list[tuple[str, str, str, Samples]]:
    """The sessions' OTel figures summed by machine (and tool, hook, decision …), as
    (name, help, kind, [(labels, value)]) for ``/metrics``; over the sessions held."""
    t: dict[str, dict[tuple[str, ...], float]] = {
        k: {} for k in ("req", "err", "retry", "dec", "tool_n", "tool_ms", "tool_fail", "hook_n", "hook_ms")
    }
    t.update({k: {} for k in ("active", "lines", "commits", "prs")})
    for m, o in machine_figures:
        if not o:
            continue
        _add(t["req"], (m,), o.get("apiRequests", 0))
        _add(t["retry"], (m,), o.get("retries", 0))
        for status, n in o.get("errorsByStatus", {}).items():
            _add(t["err"], (m, status), n)
        for decision, by in o.get("decisions", {}).items():
            for source, n in by.items():
                _add(t["dec"], (m, decision, source), n)
        for tool, r in o.get("tools", {}).items():
            _add(t["tool_n"], (m, tool), r[0])
            _add(t["tool_fail"], (m, tool), r[1])
            _add(t["tool_ms"], (m, tool), r[2])
        for hook, r in o.get("hooks", {}).items():
            _add(t["hook_n"], (m, hook), r[0])
            _add(t["hook_ms"], (m, hook), r[2])
        for kind, s in o.get("activeTimeS", {}).items():
            _add(t["active"], (m, kind), s)
        _add(t["lines"], (m, "added"), o.get("linesAdded", 0))
        _add(t["lines"], (m, "removed"), o.get("linesRemoved", 0))
        _add(t["commits"], (m,), o.get("commits", 0))
        _add(t["prs"], (m,), o.get("pullRequests", 0))

    def samples(table: str, *names: str) -> Samples:
        return [(dict(zip(("machine", *names), key, strict=True)), round(v, 3)) for key, v in sorted(t[table].items())]

    p = "contextuate_otel_"
    return [
        (
            p + "api_requests_total",
            "Claude Code's API requests (OTel api_request), by machine.",
            "counter",
            samples("req"),
        ),
        (
            p + "api_errors_total",
            "API errors (OTel api_error), by machine and HTTP status.",
            "counter",
            samples("err", "status"),
        ),
        (
            p + "api_retries_total",
            "API attempts after the first (OTel attempt > 1), by machine.",
            "counter",
            samples("retry"),
        ),
        (
            p + "tool_decisions_total",
            "Tool permission decisions (OTel tool_decision): accept/reject, by config or by the user.",
            "counter",
            samples("dec", "decision", "source"),
        ),
        (
            p + "tool_calls_total",
            "Tool runs (OTel tool_result), by machine and tool.",
            "counter",
            samples("tool_n", "tool"),
        ),
        (
            p + "tool_failures_total",
            "Tool runs that failed, by machine and tool.",
            "counter",
            samples("tool_fail", "tool"),
        ),
        (
            p + "tool_duration_ms_total",
            "Time tools ran (OTel tool_result duration_ms).",
            "counter",
            samples("tool_ms", "tool"),
        ),
        (
            p + "hook_runs_total",
            "Hook runs (OTel hook_execution_complete), by hook event.",
            "counter",
            samples("hook_n", "hook"),
        ),
        (
            p + "hook_duration_ms_total",
            "Time Claude Code waited for its hooks (ours among them), by hook event.",
            "counter",
            samples("hook_ms", "hook"),
        ),
        (
            p + "active_seconds_total",
            "Active time (OTel active_time.total), by type (user, cli).",
            "counter",
            samples("active", "type"),
        ),
        (
            p + "lines_of_code_total",
            "Lines changed (OTel lines_of_code.count), by type.",
            "counter",
            samples("lines", "type"),
        ),
        (p + "commits_total", "Commits made (OTel commit.count).", "counter", samples("commits")),
        (p + "pull_requests_total", "Pull requests made (OTel pull_request.count).", "counter", samples("prs")),
    ]
