"""OTLP/HTTP at a real daemon: the OpenTelemetry SDK's own exporters (protobuf and
JSON), Claude Code's recorded bodies (tests/fixtures/otel), and what must be refused
(garbage, truncated, oversized, a gzip bomb, other content types) without hurting
ingest."""

from __future__ import annotations

import glob
import gzip
import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from conftest import FIXTURES, run_hook, wait_for
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2

OTEL = FIXTURES / "otel"
TOKEN = "otlp-test-token-0123456789"


def post(d, path: str, body: bytes, ctype: str = "application/json", headers: dict | None = None):
    h = {"Content-Type": ctype, **(headers or {})}
    req = urllib.request.Request(f"http://127.0.0.1:{d.port}{path}", data=body, headers=h, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("content-type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type"), e.read()


def metrics(d, headers: dict | None = None) -> str:
    req = urllib.request.Request(f"http://127.0.0.1:{d.port}/metrics", headers=headers or {})
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    """A sample's value in Prometheus text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    line = f"{name}{{{want}}} " if labels else f"{name} "
    for row in text.splitlines():
        if row.startswith(line):
            return float(row.split()[-1])
    return 0.0


def fixture_cost(name: str) -> dict[str, float]:
    """The cost of every api_request record of a recorded run, by agent id ('' main)."""
    out: dict[str, float] = {}
    for f in sorted(glob.glob(str(OTEL / name / "*-logs.json"))):
        for rl in json.loads(Path(f).read_text())["resourceLogs"]:
            for sl in rl["scopeLogs"]:
                for r in sl["logRecords"]:
                    a = {kv["key"]: next(iter(kv["value"].values()), None) for kv in r["attributes"]}
                    if a.get("event.name") == "api_request":
                        agent = a.get("agent_id") or ""
                        out[agent] = out.get(agent, 0) + float(a["cost_usd"])
    return out


# --- the SDK's exporters -------------------------------------------------------------
def sdk_export(endpoint: str, sid: str, kind: str, headers: dict | None = None, compression: bool = False) -> None:
    """Logs, a trace and metrics as Claude Code shapes them, through the SDK's OTLP/HTTP
    exporters (``kind`` "proto" or "json") to ``endpoint``."""
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.metrics import Counter, MeterProvider
    from opentelemetry.sdk.metrics.export import AggregationTemporality, PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    if kind == "proto":
        from opentelemetry.exporter.otlp.proto.http import Compression
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        extra = {"compression": Compression.Gzip} if compression else {}
    else:
        from opentelemetry.exporter.otlp.json.http._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.json.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.json.http.trace_exporter import OTLPSpanExporter

        extra = {}
    h = headers or {}
    resource = Resource.create({"service.name": "claude-code", "host.name": "sdk-host"})
    prompt = str(uuid.uuid4())

    logs = LoggerProvider(resource=resource)
    logs.add_log_record_processor(
        SimpleLogRecordProcessor(OTLPLogExporter(endpoint=f"{endpoint}/v1/logs", headers=h, **extra))
    )
    logger = logs.get_logger("com.anthropic.claude_code.events")
    common = {"session.id": sid, "prompt.id": prompt}
    logger.emit(
        body="claude_code.api_request",
        event_name="claude_code.api_request",
        attributes={
            **common,
            "event.name": "api_request",
            "model": "claude-sonnet-4-5",
            "input_tokens": 1000,
            "output_tokens": 200,
            "cache_read_tokens": 0,
            "cache_creation_tokens": 0,
            "cost_usd": 0.0075,
            "cost_usd_micros": 7500,
            "duration_ms": 800,
            "request_id": "req_sdk_1",
        },
    )
    logger.emit(
        body="claude_code.tool_decision",
        attributes={
            **common,
            "event.name": "tool_decision",
            "decision": "accept",
            "source": "user_temporary",
            "tool_name": "Bash",
            "tool_use_id": "toolu_sdk_1",
        },
    )
    logger.emit(
        body="claude_code.tool_result",
        attributes={
            **common,
            "event.name": "tool_result",
            "tool_name": "Bash",
            "tool_use_id": "toolu_sdk_1",
            "success": "true",
            "duration_ms": "250",
        },
    )
    logs.shutdown()

    traces = TracerProvider(resource=resource)
    traces.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces", headers=h, **extra))
    )
    tracer = traces.get_tracer("com.anthropic.claude_code.tracing")
    with tracer.start_as_current_span("claude_code.interaction", attributes={"session.id": sid}):
        with tracer.start_as_current_span(
            "claude_code.llm_request", attributes={"session.id": sid, "request_id": "req_sdk_1"}
        ):
            pass
        with tracer.start_as_current_span(
            "claude_code.tool", attributes={"session.id": sid, "tool_use_id": "toolu_sdk_1", "tool_name": "Bash"}
        ):
            pass
    traces.shutdown()

    # Lines as a cumulative counter (the SDK's default), commits as delta (Claude Code's).
    exporter = OTLPMetricExporter(
        endpoint=f"{endpoint}/v1/metrics", headers=h, preferred_temporality={Counter: AggregationTemporality.DELTA}
    )
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    meters = MeterProvider(resource=resource, metric_readers=[reader])
    meter = meters.get_meter("com.anthropic.claude_code")
    commits = meter.create_counter("claude_code.commit.count")
    active = meter.create_counter("claude_code.active_time.total", unit="s")
    commits.add(1, {"session.id": sid})
    active.add(2.5, {"session.id": sid, "type": "cli"})
    reader.force_flush()
    commits.add(2, {"session.id": sid})
    active.add(0.5, {"session.id": sid, "type": "cli"})
    meters.shutdown()


def check_sdk_session(d, sid: str, headers: dict | None = None) -> dict:
    def get():
        try:
            s = {x["sessionId"]: x for x in d.get("/api/sessions", headers=headers)["sessions"]}.get(sid)
        except OSError:
            return None
        return s if s and s.get("otel") and s["otel"].get("commits") == 3 and s["otel"].get("traces") else None

    s = wait_for(get, timeout=20, what=f"the SDK's session {sid}")
    assert s["machineId"] == "sdk-host"
    assert s["usage"]["source"] == "otel" and s["usage"]["otelFrom"] == "logs"
    assert s["usage"]["costUsd"] == pytest.approx(0.0075)
    assert s["usage"]["tokens"]["input"] == 1000 and s["usage"]["calls"] == 1
    o = s["otel"]
    assert o["decided"] == {"acceptedByConfig": 0, "acceptedByUser": 1, "rejected": 0}
    assert o["tools"]["Bash"]["totalMs"] == 250
    assert o["activeTimeS"] == {"cli": 3.0}
    # The trace found its turn through the llm_request's request id (or the tool's id).
    (trace,) = o["traces"].values()
    assert trace["promptId"] and trace["spans"] == 3
    return s


def test_sdk_protobuf_exporters_gzip_with_token(daemon):
    d = daemon({"server": {"token": TOKEN}})
    sid = str(uuid.uuid4())
    auth = {"Authorization": f"Bearer {TOKEN}"}
    sdk_export(f"http://127.0.0.1:{d.port}", sid, "proto", headers=auth, compression=True)
    check_sdk_session(d, sid, auth)
    # Without the token: refused like the API.
    status, _, _ = post(d, "/v1/logs", b"{}", headers={})
    assert status == 401
    m = metrics(d, auth)
    assert sample(m, "contextuate_otlp_requests_total", signal="logs", outcome="ok") >= 1
    assert sample(m, "contextuate_otel_commits_total", machine="sdk-host") == 3
    assert sample(m, "contextuate_cost_usd_total", machine="sdk-host", model="claude-sonnet-4-5") == pytest.approx(
        0.0075
    )


def test_sdk_json_exporters(daemon):
    d = daemon()
    sid = str(uuid.uuid4())
    sdk_export(f"http://127.0.0.1:{d.port}", sid, "json")
    check_sdk_session(d, sid)


# --- Claude Code's own bodies ----------------------------------------------------------
@pytest.mark.parametrize("kind", ["json", "protobuf"])
def test_recorded_claude_code_bodies(daemon, kind):
    """A real run with a sub-agent, as Claude Code 2.1.332 posted it: the cost per
    session is the sum of its api_request records; a resent batch adds nothing."""
    d = daemon()
    name, ext, ctype = (
        ("subagent", "json", "application/json")
        if kind == "json"
        else ("subagent-protobuf", "pb", "application/x-protobuf")
    )
    files = sorted(glob.glob(str(OTEL / name / f"*.{ext}")))
    for _ in range(2):  # the second time: an exporter's retry, every record again
        for f in files:
            signal = f.rsplit("-", 1)[1].split(".")[0]
            body = Path(f).read_bytes()
            status, rtype, answer = post(d, f"/v1/{signal}", gzip.compress(body), ctype, {"Content-Encoding": "gzip"})
            assert status == 200, answer
            assert rtype == ctype
            assert answer in (b"", b"{}")  # an empty Export*ServiceResponse: all accepted
    sessions = wait_for(lambda: len(d.sessions()) == 2 and d.sessions(), what="the session and its sub-agent")
    (root,) = [s for s in sessions.values() if not s.get("parentSessionId")]
    (child,) = [s for s in sessions.values() if s.get("parentSessionId")]
    if kind == "json":
        costs = fixture_cost("subagent")
        assert root["usage"]["costUsd"] == pytest.approx(costs[""])
        assert child["usage"]["costUsd"] == pytest.approx(costs[child["agentId"]])
        assert root["usageTotal"]["costUsd"] == pytest.approx(sum(costs.values()))
    assert root["usage"]["calls"] == 2 and child["usage"]["calls"] == 2  # not 4: the resend was dropped
    assert root["usage"]["source"] == child["usage"]["source"] == "otel"
    assert root["otel"]["tools"]["Agent"]["count"] == 1 and child["otel"]["tools"]["Bash"]["count"] == 1
    assert child["otel"]["decided"]["acceptedByConfig"] == 1
    # Spans stay on the root (one tree per turn), sub-agent spans included.
    spans = [e for e in d.events(root["sessionId"]) if e["eventType"] == "otel_spans"]
    names = [s["name"] for e in spans for s in e["data"]["spans"]]
    assert "interaction" in names and names.count("llm_request") == 4
    (trace,) = root["otel"]["traces"].values()
    assert trace["promptId"]
    assert {e.get("promptId") for e in spans} == {trace["promptId"]}  # stored with the turn joined


# --- what is refused -----------------------------------------------------------------
def huge_time_body() -> bytes:
    record = {
        "timeUnixNano": "9" * 400,
        "attributes": [
            {"key": "session.id", "value": {"stringValue": "s-huge"}},
            {"key": "event.name", "value": {"stringValue": "api_request"}},
        ],
    }
    return json.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": [record]}]}]}).encode()


def test_refusals_are_otlp_answers_and_counted(daemon, home):
    d = daemon({"otel": {"maxBodyBytes": 64 * 1024}})
    good = (OTEL / "subagent-protobuf" / "001-logs.pb").read_bytes()
    pb = "application/x-protobuf"

    def status_of(answer: bytes, ctype: str) -> status_pb2.Status:
        return status_pb2.Status.FromString(answer) if ctype == pb else status_pb2.Status(**json.loads(answer))

    cases = [
        ("garbage protobuf", b"\xff\xfe garbage \x00\x01", pb, {}, 400),
        ("truncated protobuf", good[: len(good) // 2 + 3], pb, {}, 400),
        ("garbage JSON", b'{"resourceLogs": [', "application/json", {}, 400),
        ("JSON of another shape", b'{"resourceLogs": 5}', "application/json", {}, 400),
        ("truncated gzip", gzip.compress(good)[:200], pb, {"Content-Encoding": "gzip"}, 400),
        ("oversized", b"x" * (65 * 1024), pb, {}, 413),
        ("gzip bomb", gzip.compress(b"\0" * (8 * 1024 * 1024)), pb, {"Content-Encoding": "gzip"}, 413),
        ("another content type", b"hello", "text/plain", {}, 415),
        ("another encoding", good, pb, {"Content-Encoding": "br"}, 415),
        # Many empty gzip members: each one was a decompressor and a copy of the rest.
        ("many gzip members", gzip.compress(b"") * 3000, pb, {"Content-Encoding": "gzip"}, 400),
        # Values no record can take: a 400, not a 500 (nor a 503 the exporter retries).
        ("a time past 64 bits", huge_time_body(), "application/json", {}, 400),
    ]
    for what, body, ctype, headers, want in cases:
        status, rtype, answer = post(d, "/v1/logs", body, ctype, headers)
        assert status == want, (what, answer)
        if want != 415:
            assert rtype == ctype, what
        st = status_of(answer, rtype)
        assert st.code in (3, 8) and st.message, what
    # Records without session.id: a partial success naming them.
    body = json.dumps(
        {
            "resourceLogs": [
                {
                    "scopeLogs": [
                        {
                            "logRecords": [
                                {
                                    "timeUnixNano": "1",
                                    "attributes": [{"key": "event.name", "value": {"stringValue": "x"}}],
                                }
                            ]
                        }
                    ]
                }
            ]
        }
    ).encode()
    status, _, answer = post(d, "/v1/logs", body)
    assert status == 200
    partial = json.loads(answer)["partialSuccess"]
    assert partial["rejectedLogRecords"] == "1" and "session.id" in partial["errorMessage"]
    resp = logs_service_pb2.ExportLogsServiceResponse()
    status, _, answer = post(d, "/v1/logs", logs_service_pb2.ExportLogsServiceRequest().SerializeToString(), pb)
    assert status == 200 and resp.FromString(answer).partial_success.rejected_log_records == 0

    m = metrics(d)
    assert sample(m, "contextuate_otlp_requests_total", signal="logs", outcome="bad_body") == 5
    assert sample(m, "contextuate_otlp_requests_total", signal="logs", outcome="bad_encoding") == 2
    assert sample(m, "contextuate_otlp_requests_total", signal="logs", outcome="too_large") == 2
    assert sample(m, "contextuate_otlp_requests_total", signal="logs", outcome="type") == 1
    assert sample(m, "contextuate_otlp_requests_total", signal="logs", outcome="encoding") == 1
    assert sample(m, "contextuate_otlp_records_total", signal="logs", outcome="rejected") == 1
    # Ingest is unharmed: a hook's event is stored as ever.
    r = run_hook(home, {"hook_event_name": "SessionStart", "session_id": "after-refusals", "cwd": "/tmp"})
    assert r.returncode == 0
    wait_for(lambda: "after-refusals" in d.sessions(), what="the hook's session")
    assert d.get("/api/health")["status"] == "ok"


# --- otel.forwardTo -------------------------------------------------------------------
class Collector:
    """A stand-in for the person's own OTLP collector: keeps what it is sent."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        got = self.got = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                got.append((self.path, self.headers.get("Content-Type"), self.headers.get("X-Team"), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_forward_to_the_persons_own_collector(daemon):
    collector = Collector()
    try:
        d = daemon({"otel": {"forwardTo": collector.url, "forwardHeaders": {"X-Team": "blue"}}})
        body = (OTEL / "subagent-protobuf" / "003-metrics.pb").read_bytes()
        status, _, _ = post(
            d, "/v1/metrics", gzip.compress(body), "application/x-protobuf", {"Content-Encoding": "gzip"}
        )
        assert status == 200
        status, _, _ = post(d, "/v1/logs", b"garbage", "application/x-protobuf")
        assert status == 400  # refused: not forwarded
        wait_for(lambda: collector.got, what="the forwarded request")
        assert collector.got == [("/v1/metrics", "application/x-protobuf", "blue", body)]
        wait_for(lambda: sample(metrics(d), "contextuate_otel_forwarded_total", outcome="ok") == 1, what="counted")
        assert d.get("/api/config")["otel"]["forwardHeaders"] == {"X-Team": "***"}
    finally:
        collector.close()


# --- bounded: a failing store, many bodies at once, the forward queue ------------------
def log_body(sid: str, n: int = 1) -> bytes:
    records = [
        {
            "timeUnixNano": str(1_700_000_000_000_000_000 + i),
            "attributes": [
                {"key": "session.id", "value": {"stringValue": sid}},
                {"key": "event.name", "value": {"stringValue": "tool_result"}},
                {"key": "tool_name", "value": {"stringValue": "Bash"}},
            ],
        }
        for i in range(n)
    ]
    return json.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": records}]}]}).encode()


def post_with_headers(d, path: str, body: bytes, timeout: float = 10):
    req = urllib.request.Request(
        f"http://127.0.0.1:{d.port}{path}", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def test_a_failing_store_is_a_prompt_503_then_the_resend_is_stored(daemon, home):
    """While the store cannot write, a request is answered 503 (Retry-After) within a
    few seconds instead of waiting for a write that does not come; once the store can
    write again, the exporter's resend is stored, once."""
    import time

    d = daemon()
    sessions = Path(home) / "data" / "sessions"
    moved = Path(home) / "data" / "moved-away"
    sessions.rename(moved)
    sessions.write_text("a file where the directory was: every write fails")
    body = log_body("otel-store-fails")
    try:
        started = time.monotonic()
        status, headers, answer = post_with_headers(d, "/v1/logs", body)
        took = time.monotonic() - started
        assert status == 503, answer
        assert took < 7, took
        assert headers.get("Retry-After") == "1"
        assert status_pb2.Status(**json.loads(answer)).code == 14  # UNAVAILABLE
        # Degraded: the next one does not wait the whole bound.
        wait_for(lambda: d.get("/api/health")["status"] == "degraded", what="degraded health")
        started = time.monotonic()
        status, _, _ = post_with_headers(d, "/v1/logs", log_body("otel-store-fails-2"))
        assert status == 503 and time.monotonic() - started < 2
    finally:
        sessions.unlink()
        moved.rename(sessions)
    wait_for(lambda: d.get("/api/health")["status"] == "ok", timeout=20, what="recovered")
    status, _, _ = post_with_headers(d, "/v1/logs", body)  # the exporter's retry
    assert status == 200
    wait_for(lambda: "otel-store-fails" in d.sessions(), what="the session")
    wait_for(lambda: len(d.events("otel-store-fails")) == 1, what="its one event")
    assert sample(metrics(d), "contextuate_otlp_requests_total", signal="logs", outcome="unavailable") >= 2


def test_bodies_parsed_at_once_are_bounded(daemon):
    """Clients that hold their bodies open take the parsing slots; one more request is
    answered 503 (Retry-After) at once rather than read into memory; the slots come
    back when those clients go."""
    import socket
    import time

    from contextuate_trio.web.routes import otlp

    d = daemon()
    slow = []
    try:
        for _ in range(otlp.PARSERS):
            s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
            s.sendall(
                b"POST /v1/logs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100000\r\n\r\n{"
            )
            slow.append(s)
        # They are being read (the server has them) before the next one comes.
        wait_for(lambda: post_with_headers(d, "/v1/logs", log_body("busy-probe"))[0] == 503, timeout=10, what="a 503")
        started = time.monotonic()
        status, headers, answer = post_with_headers(d, "/v1/logs", log_body("busy"))
        assert status == 503 and headers.get("Retry-After") == "1", answer
        assert time.monotonic() - started < otlp.BUSY_WAIT_S + 1.5
    finally:
        for s in slow:
            s.close()
    wait_for(lambda: post_with_headers(d, "/v1/logs", log_body("after-busy"))[0] == 200, what="slots back")
    assert sample(metrics(d), "contextuate_otlp_requests_total", signal="logs", outcome="busy") >= 1


def test_the_forward_queue_is_bounded_by_bytes_dropping_the_oldest():
    from contextuate_trio.runtime import otel_forward

    f = otel_forward.Forwarder("http://127.0.0.1:9", queue_bytes=25)
    for i in range(5):
        f.offer("logs", "application/json", bytes([48 + i]) * 10)
    assert f.queued_bytes == 20 and f.counts["dropped"] == 3
    assert [e.body[:1] for e in f._queue] == [b"3", b"4"]  # the newest kept
    f.offer("logs", "application/json", b"x" * 26)  # larger than the whole budget: dropped itself
    assert f.counts["dropped"] == 4 and f.queued_bytes == 20
    # The defaults: 256 bodies of 1 MiB stay within 32 MiB.
    g = otel_forward.Forwarder("http://127.0.0.1:9")
    for _ in range(256):
        g.offer("metrics", "application/x-protobuf", b"\0" * (1024 * 1024))
    assert g.queued_bytes <= otel_forward.QUEUE_BYTES == 32 * 1024 * 1024
    assert g.counts["dropped"] == 256 - 32


# --- the JSON answers, without the protobuf classes -------------------------------------
def test_json_answers_are_the_messages_json_mapping():
    """OTLP/JSON's answers are made by hand (a daemon that only hears JSON never
    imports protobuf): what ``json_format`` makes of the same messages."""
    from google.protobuf import json_format
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    from contextuate_trio.web.routes import otlp

    responses = {
        "logs": (logs_service_pb2.ExportLogsServiceResponse, "rejected_log_records"),
        "metrics": (metrics_service_pb2.ExportMetricsServiceResponse, "rejected_data_points"),
        "traces": (trace_service_pb2.ExportTraceServiceResponse, "rejected_spans"),
    }
    for signal, (cls, field) in responses.items():
        assert otlp.success_json(signal, 0, None) == json_format.MessageToDict(cls()) == {}
        msg = cls()
        setattr(msg.partial_success, field, 3)
        msg.partial_success.error_message = "no session.id"
        assert otlp.success_json(signal, 3, "no session.id") == json_format.MessageToDict(msg)
    for code, text in [(3, "bad"), (8, ""), (0, "x")]:
        want = json_format.MessageToDict(status_pb2.Status(code=code, message=text))
        assert otlp.status_json(code, text) == want


def test_a_daemon_that_hears_only_json_never_imports_protobuf():
    import subprocess
    import sys

    code = (
        "import sys; import contextuate_trio.daemon.daemon, contextuate_trio.web.app, contextuate_trio.cli.main; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'google', 'opentelemetry', 'httpx'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_protobuf_where_it_cannot_be_imported_is_a_415_in_json_and_json_still_works(daemon, tmp_path):
    """A daemon whose Python has no protobuf runtime answers OTLP protobuf with 415 and
    an OTLP/JSON Status (UNIMPLEMENTED), counts it, logs why, and goes on taking
    OTLP/JSON (Claude Code's ``http/json``)."""
    import os

    shadow = tmp_path / "shadow" / "google" / "protobuf"
    shadow.mkdir(parents=True)
    (shadow.parent / "__init__.py").write_text("")  # a package of its own: the real google.* is not searched
    (shadow / "__init__.py").write_text("raise ImportError('protobuf taken away by the test')\n")
    path = os.pathsep.join(p for p in (str(tmp_path / "shadow"), os.environ.get("PYTHONPATH")) if p)
    d = daemon(env={"PYTHONPATH": path})
    good = (OTEL / "subagent-protobuf" / "001-logs.pb").read_bytes()
    for _ in range(2):  # the failed import is not remembered as a success
        status, rtype, answer = post(d, "/v1/logs", good, "application/x-protobuf")
        assert status == 415 and rtype == "application/json", answer
        st = json.loads(answer)
        assert st["code"] == 12 and "protobuf taken away by the test" in st["message"]
    assert sample(metrics(d), "contextuate_otlp_requests_total", signal="logs", outcome="unsupported") == 2
    assert "OTLP protobuf cannot be read here" in d.log()
    sid = str(uuid.uuid4())
    body = json.dumps(
        {
            "resourceLogs": [
                {
                    "resource": {"attributes": [{"key": "session.id", "value": {"stringValue": sid}}]},
                    "scopeLogs": [
                        {
                            "logRecords": [
                                {
                                    "timeUnixNano": "1700000000000000000",
                                    "body": {"stringValue": "claude_code.user_prompt"},
                                    "attributes": [
                                        {"key": "event.name", "value": {"stringValue": "user_prompt"}},
                                        {"key": "session.id", "value": {"stringValue": sid}},
                                    ],
                                }
                            ]
                        }
                    ],
                }
            ]
        }
    ).encode()
    status, rtype, answer = post(d, "/v1/logs", body)
    assert status == 200 and rtype == "application/json", answer
    wait_for(lambda: sid in d.sessions(), timeout=10)
