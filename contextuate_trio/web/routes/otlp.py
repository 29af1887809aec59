"""OTLP/HTTP: Claude Code's own OpenTelemetry, received on the daemon's port.

``POST /v1/logs``, ``/v1/metrics``, ``/v1/traces`` with a body in OTLP/JSON
(``application/json``) or OTLP protobuf (``application/x-protobuf``), gzip or not
(``Content-Encoding``). The app's guard has checked the request as it checks the API
(Host, cross-site calls, the token when one is set). The body is read up to
``otel.maxBodyBytes``, before and after gzip (a gzip bomb stops there); protobuf is
decoded with the ``opentelemetry-proto`` schema into the OTLP/JSON shape, then the
sans-IO core (``core.otel``) makes events of it, which enter the broker like any
source's (``Broker.submit``): stored, broadcast, relayed, learnt by the sessions.

Answers, as the OTLP/HTTP specification says, in the request's own content type:
200 with an empty ``Export*ServiceResponse`` (or its ``partial_success`` naming the
records refused: those without ``session.id``); 400 with a ``google.rpc.Status`` for
a body that does not decode; 413 past the size limit; 415 for another content type
or encoding; 503 (retryable, ``Retry-After``) when the events could not be stored
within ``STORE_WAIT_S`` (the store failing: the events wait in memory, a resend is the
same events) or when ``PARSERS`` requests are being read and decoded already (each may
hold ``otel.maxBodyBytes`` and more once decoded: memory stays bounded). Every request
and refused record is counted (``/metrics``: ``contextuate_otlp_*``).
"""

from __future__ import annotations

import base64
import functools
import logging
import os
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import orjson
import trio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from contextuate_trio.core import otel
from contextuate_trio.core.redact import Redactor
from contextuate_trio.hook import paths as hook_paths
from contextuate_trio.runtime.clock import now_ms
from contextuate_trio.web.state import WebState, state_of

if TYPE_CHECKING:
    from google.protobuf.message import Message

log = logging.getLogger("contextuate.otlp")

JSON = "application/json"
PROTOBUF = "application/x-protobuf"
_PROTOBUF_TYPES = (PROTOBUF, "application/protobuf")
THREAD_OVER = 64 * 1024  # a body larger than this is decoded in a worker thread
PARSERS = 4  # requests read, decoded and stored at once; more wait BUSY_WAIT_S, then 503
BUSY_WAIT_S = 0.5
STORE_WAIT_S = 5.0  # the most a request waits for its events to be stored, then 503
DEGRADED_WAIT_S = 0.25  # ...or this long when the store is failing (the broker says so)


@attrs.frozen
class _Protobuf:
    """The protobuf side: per signal the request and response messages and the
    partial success's count field; the parts of the library the receiver uses."""

    messages: dict[str, tuple[type[Message], type[Message], str]]
    json_format: Any
    decode_error: type[Exception]
    status: type[Message]


@functools.cache
def _proto() -> _Protobuf:
    """Imported at the first OTLP protobuf request: ~6 MB of memory in a daemon that
    receives none (Claude Code's ``http/json`` needs none of it)."""
    from google.protobuf import json_format
    from google.protobuf.message import DecodeError
    from google.rpc import status_pb2
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    messages: dict[str, tuple[type[Message], type[Message], str]] = {
        "logs": (
            logs_service_pb2.ExportLogsServiceRequest,
            logs_service_pb2.ExportLogsServiceResponse,
            "rejected_log_records",
        ),
        "metrics": (
            metrics_service_pb2.ExportMetricsServiceRequest,
            metrics_service_pb2.ExportMetricsServiceResponse,
            "rejected_data_points",
        ),
        "traces": (
            trace_service_pb2.ExportTraceServiceRequest,
            trace_service_pb2.ExportTraceServiceResponse,
            "rejected_spans",
        ),
    }
    return _Protobuf(messages, json_format, DecodeError, status_pb2.Status)


INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNIMPLEMENTED, UNAVAILABLE = 3, 8, 12, 14  # google.rpc.Code


class Refused(Exception):
    """A request answered with an error (``status``, a google.rpc.Status ``code``)."""

    def __init__(self, status: int, code: int, message: str, reason: str) -> None:
        super().__init__(message)
        self.status, self.code, self.reason = status, code, reason


def count(state: WebState, *key: str, n: int = 1) -> None:
    """The receiver's counters, kept with the broker's (``/metrics`` renders them)."""
    state.broker.counters[("otlp", *key)] += n


# --- the body ------------------------------------------------------------------------
async def read_body(request: Request, limit: int) -> bytes:
    """The body as sent, at most ``limit`` bytes (Refused 413 beyond)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Refused(413, RESOURCE_EXHAUSTED, f"body over {limit} bytes", "too_large")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise Refused(413, RESOURCE_EXHAUSTED, f"body over {limit} bytes", "too_large")
    except ClientDisconnect:
        raise Refused(400, INVALID_ARGUMENT, "the client went away mid-body", "truncated") from None
    return bytes(body)


MAX_MEMBERS = 64  # gzip members in one body, at most (each costs a decompressor)


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """``Content-Encoding`` undone, never past ``limit`` bytes of output nor
    ``MAX_MEMBERS`` gzip members (a body of many empty members cost minutes of CPU)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise Refused(415, INVALID_ARGUMENT, f"unsupported Content-Encoding {encoding!r}", "encoding")
    out = bytearray()
    view = memoryview(body)
    members = 0
    while view:
        members += 1
        if members > MAX_MEMBERS:
            raise Refused(400, INVALID_ARGUMENT, f"more than {MAX_MEMBERS} {encoding} members", "bad_encoding")
        # gzip: one or more members; deflate: zlib-wrapped (or, as some send it, raw).
        d = zlib.decompressobj(wbits=31 if encoding == "gzip" else 47)
        try:
            out += d.decompress(view, limit + 1 - len(out))
        except zlib.error:
            if encoding == "deflate" and not out:
                d = zlib.decompressobj(wbits=-15)
                try:
                    out += d.decompress(view, limit + 1 - len(out))
                except zlib.error as exc:
                    raise Refused(400, INVALID_ARGUMENT, f"not {encoding}: {exc}", "bad_encoding") from None
            else:
                raise Refused(400, INVALID_ARGUMENT, f"not {encoding} data", "bad_encoding") from None
        if len(out) > limit:
            raise Refused(413, RESOURCE_EXHAUSTED, f"body over {limit} bytes once decompressed", "too_large")
        if not d.eof:
            raise Refused(400, INVALID_ARGUMENT, f"truncated {encoding} data", "bad_encoding")
        view = view[len(view) - len(d.unused_data) :]
    return bytes(out)


def _hex(b64: Any) -> Any:
    """OTLP protobuf's ids (bytes; base64 in ``MessageToDict``) as OTLP/JSON's hex."""
    if not isinstance(b64, str) or not b64:
        return b64
    try:
        return base64.b64decode(b64).hex()
    except ValueError:
        return b64


_IDS = {
    "traces": ("resourceSpans", "scopeSpans", "spans"),
    "logs": ("resourceLogs", "scopeLogs", "logRecords"),
}


def _ids_to_hex(signal: str, doc: dict[str, Any]) -> None:
    path = _IDS.get(signal)
    if path is None:
        return
    top, scopes, items = path
    for group in doc.get(top, ()):
        for scope in group.get(scopes, ()):
            for item in scope.get(items, ()):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in item:
                        item[key] = _hex(item[key])
                for link in item.get("links", ()):
                    for key in ("traceId", "spanId"):
                        if key in link:
                            link[key] = _hex(link[key])


def decode(signal: str, body: bytes, protobuf: bool) -> Any:
    """The body -> the OTLP/JSON-shaped document the core reads."""
    if protobuf:
        pb = _proto()
        request_type = pb.messages[signal][0]
        try:
            msg = request_type.FromString(body)
        except (pb.decode_error, RuntimeWarning, ValueError) as exc:
            raise Refused(400, INVALID_ARGUMENT, f"not an OTLP protobuf {signal} request: {exc}", "bad_body") from None
        doc = pb.json_format.MessageToDict(msg, use_integers_for_enums=True)
        _ids_to_hex(signal, doc)
        return doc
    try:
        return orjson.loads(body) if body.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise Refused(400, INVALID_ARGUMENT, f"not JSON: {exc}", "bad_body") from None


def parse(
    signal: str, body: bytes, protobuf: bool, machine: str, received_ms: int, redactor: Redactor | None = None
) -> otel.Batch:
    """Decode and make events (plain code: may run in a worker thread). ``redactor``
    (the broker's) masks the long texts the core cuts."""
    doc = decode(signal, body, protobuf)
    try:
        return otel.to_events(signal, doc, machine=machine, received_ms=received_ms, redactor=redactor)
    except otel.OtlpError as exc:
        raise Refused(400, INVALID_ARGUMENT, f"not an OTLP {signal} request: {exc}", "bad_body") from None


# --- the answers ---------------------------------------------------------------------
def _answer(message: Message, status: int = 200) -> Response:
    return Response(message.SerializeToString(), status_code=status, media_type=PROTOBUF)


# The JSON answers: the proto3 JSON mapping of the messages (int64 as a string, default
# values left out), made without the protobuf classes, so that a daemon whose clients
# speak OTLP/JSON (Claude Code's ``http/json``) never imports them.
_REJECTED_JSON = {"logs": "rejectedLogRecords", "metrics": "rejectedDataPoints", "traces": "rejectedSpans"}


def success_json(signal: str, rejected: int, why: str | None) -> dict[str, Any]:
    if not rejected:
        return {}
    return {"partialSuccess": {_REJECTED_JSON[signal]: str(rejected), "errorMessage": why or "rejected"}}


def status_json(code: int, message: str) -> dict[str, Any]:
    return {k: v for k, v in (("code", code), ("message", message)) if v}


def success(signal: str, batch: otel.Batch, protobuf: bool) -> Response:
    if not protobuf:
        return Response(orjson.dumps(success_json(signal, batch.rejected, batch.why)), media_type=JSON)
    _request, response_type, rejected_field = _proto().messages[signal]
    response = response_type()
    if batch.rejected:
        partial = response.partial_success
        setattr(partial, rejected_field, batch.rejected)
        partial.error_message = batch.why or "rejected"
    return _answer(response)


def failure(refused: Refused, protobuf: bool) -> Response:
    if protobuf:
        response = _answer(_proto().status(code=refused.code, message=str(refused)), refused.status)
    else:
        body = orjson.dumps(status_json(refused.code, str(refused)))
        response = Response(body, status_code=refused.status, media_type=JSON)
    if refused.status == 503:
        response.headers["Retry-After"] = "1"
    return response


# --- the endpoint --------------------------------------------------------------------
def _content_type(request: Request) -> bool:
    """True for protobuf, False for JSON; Refused 415 for anything else."""
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype == JSON:
        return False
    if ctype in _PROTOBUF_TYPES:
        return True
    raise Refused(415, INVALID_ARGUMENT, f"unsupported Content-Type {ctype!r}: use {JSON} or {PROTOBUF}", "type")


async def _store(state: WebState, batch: otel.Batch) -> None:
    """Every event into the broker; back once all are stored (Refused 503 if not)."""
    deliveries = []
    try:
        for ev in batch.events:
            deliveries.append(await state.broker.submit(ev, track=True))
    except trio.ClosedResourceError:
        raise Refused(503, UNAVAILABLE, "the daemon is stopping", "unavailable") from None
    # Never unbounded: while the store fails the broker keeps the events and retries
    # for as long as it takes; the exporter is told to come back (a resend is the same
    # events: the broker's dedupe drops it, or stores it if the first copy never was).
    deadline = trio.current_time() + STORE_WAIT_S
    for d in deliveries:
        assert d.done is not None
        while not d.done.is_set():
            with trio.move_on_at(min(deadline, trio.current_time() + DEGRADED_WAIT_S)):
                await d.done.wait()
            if d.done.is_set():
                break
            if state.broker.last_error is not None or trio.current_time() >= deadline:
                why = state.broker.last_error or f"not stored within {STORE_WAIT_S:g} s"
                raise Refused(503, UNAVAILABLE, f"the events are not stored yet ({why}); retry", "unavailable")
        if d.rejected:  # the record itself was refused: sending it again cannot help
            raise Refused(400, INVALID_ARGUMENT, d.error or "refused", "bad_record")
        if not d.ok:
            raise Refused(503, UNAVAILABLE, d.error or "not stored", "unavailable")


def _decode(
    signal: str,
    raw: bytes,
    encoding: str,
    limit: int,
    protobuf: bool,
    machine: str,
    received_ms: int,
    redactor: Redactor | None = None,
) -> tuple[bytes, otel.Batch]:
    """The body decompressed and parsed (in a worker thread when large or compressed:
    the loop carries every hook's acknowledgement). Any failure of a body that decoded
    but holds values no record can take (numbers past 64 bits, nesting, wrong shapes)
    is a 400, never a 500."""
    body = decompress(raw, encoding, limit)
    try:
        return body, parse(signal, body, protobuf, machine, received_ms, redactor)
    except Refused:
        raise
    except Exception as exc:  # noqa: BLE001 - a client's bytes must never make a 500
        raise Refused(400, INVALID_ARGUMENT, f"records that cannot be read: {type(exc).__name__}", "bad_body") from None


async def _take_slot(parsers: trio.CapacityLimiter) -> None:
    """One of the ``PARSERS`` slots (waiting BUSY_WAIT_S at most; Refused 503 then)."""
    with trio.move_on_after(BUSY_WAIT_S):
        await parsers.acquire()
        return
    raise Refused(503, UNAVAILABLE, f"{parsers.total_tokens:g} OTLP requests are being read already", "busy")


async def _receive(
    request: Request, state: WebState, signal: str, machine: str, protobuf: bool
) -> tuple[bytes, otel.Batch]:
    limit = state.config.otel.max_body_bytes
    raw = await read_body(request, limit)
    encoding = request.headers.get("content-encoding", "")
    args = (signal, raw, encoding, limit, protobuf, machine, now_ms(), state.broker.redactor)
    if len(raw) > THREAD_OVER or encoding.strip().lower() not in ("", "identity"):
        body, batch = await trio.to_thread.run_sync(_decode, *args)
    else:
        body, batch = _decode(*args)
    await _store(state, batch)
    return body, batch


def endpoint(signal: str, machine: str, parsers: trio.CapacityLimiter) -> Callable[[Request], Any]:
    async def receive(request: Request) -> Response:
        state = state_of(request)
        protobuf = request.headers.get("content-type", "").split(";", 1)[0].strip().lower() in _PROTOBUF_TYPES
        if protobuf and not _proto.cache_info().currsize:
            try:  # the first protobuf request: imported off the loop
                await trio.to_thread.run_sync(_proto)
            except ImportError as exc:
                count(state, "requests", signal, "unsupported")
                log.warning("OTLP protobuf cannot be read here (%s): send OTLP/JSON", exc)
                return failure(Refused(415, UNIMPLEMENTED, f"no protobuf here: {exc}", "unsupported"), protobuf=False)
        try:
            protobuf = _content_type(request)
            await _take_slot(parsers)
            try:
                body, batch = await _receive(request, state, signal, machine, protobuf)
            finally:
                parsers.release()
        except Refused as refused:
            count(state, "requests", signal, refused.reason)
            log.info("OTLP %s refused (%d): %s", signal, refused.status, refused)
            return failure(refused, protobuf)
        if state.otel_forward is not None:
            state.otel_forward(signal, PROTOBUF if protobuf else JSON, body)
        count(state, "requests", signal, "ok")
        count(state, "records", signal, "accepted", n=batch.accepted)
        if batch.rejected:
            count(state, "records", signal, "rejected", n=batch.rejected)
        return success(signal, batch, protobuf)

    return receive


def routes() -> list[Route]:
    machine = hook_paths.machine_id(dict(os.environ))  # for records that name no host
    parsers = trio.CapacityLimiter(PARSERS)  # shared by the three signals
    return [Route(f"/v1/{signal}", endpoint(signal, machine, parsers), methods=["POST"]) for signal in otel.SIGNALS]


ROUTES = routes()
