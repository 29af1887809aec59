"""Alerts (webhooks) for the "needs you" queue, against a real HTTP server on 127.0.0.1:
bodies, retries, rate limit, redaction, a full queue, cancellation."""

from __future__ import annotations

import calendar
import functools
import json
import logging

import attrs
import h11
import pytest
import trio
from conftest import free_port

from contextuate_trio.config import WebhookConfig
from contextuate_trio.core.redact import Redactor
from contextuate_trio.runtime.alerts import Alerts
from contextuate_trio.runtime.metrics import render

SINCE = calendar.timegm((2025, 3, 1, 12, 3, 4, 0, 0, 0)) * 1000
ANTHROPIC = "sk-ant-api03-" + "A1b2C3d4E5" * 4
AWS = "AKIAIOSFODNN7EXAMPLE"
TOKEN_PATH = "/services/T0000/B0000/XXXXsecretXXXX"
HANG = "hang"


def item(reason="permission", session="abcd1234-5678", **over):
    it = {
        "sessionId": session,
        "machineId": "m1",
        "reason": reason,
        "since": SINCE,
        "detail": "npm test",
        "rootSessionId": None,
        "workingDirectory": "/src/app",
        "toolName": "Bash",
        "requestId": "r1",
    }
    it.update(over)
    return it


@attrs.define
class Rec:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    def json(self):
        return json.loads(self.body)


class Server:
    """A small HTTP/1.1 server (h11, keep-alive) that records every request and answers
    from a plan: a status, (status, headers), or HANG (never answers); 200 when the
    plan is used up. ``next()`` waits for the next request."""

    def __init__(self) -> None:
        self.plan: list = []
        self.records: list[Rec] = []
        self._send, self._recv = trio.open_memory_channel[Rec](1000)
        self.port = 0

    def url(self, path="/hook"):
        return f"http://127.0.0.1:{self.port}{path}"

    async def next(self, timeout: float = 5) -> Rec:
        with trio.fail_after(timeout):
            return await self._recv.receive()

    def pending(self) -> int:
        return self._recv.statistics().current_buffer_used

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                req, body = None, b""
                while True:
                    ev = conn.next_event()
                    if ev is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                    elif isinstance(ev, h11.Request):
                        req = ev
                    elif isinstance(ev, h11.Data):
                        body += ev.data
                    elif isinstance(ev, h11.EndOfMessage):
                        break
                    elif isinstance(ev, h11.ConnectionClosed):
                        return
                assert req is not None
                answer = self.plan.pop(0) if self.plan else 200
                status, extra = answer if isinstance(answer, tuple) else (answer, {})
                rec = Rec(
                    req.method.decode(),
                    req.target.decode(),
                    {k.decode().lower(): v.decode("latin-1") for k, v in req.headers},
                    body,
                    0 if answer == HANG else status,
                )
                self.records.append(rec)
                self._send.send_nowait(rec)
                if answer == HANG:
                    await trio.sleep_forever()
                headers = [("content-length", "2"), *extra.items()]
                await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
                await stream.send_all(conn.send(h11.Data(data=b"ok")))
                await stream.send_all(conn.send(h11.EndOfMessage()))
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (h11.RemoteProtocolError, trio.BrokenResourceError):
            return
        finally:
            await trio.aclose_forcefully(stream)


@pytest.fixture
async def server(nursery):
    srv = Server()
    listeners = await nursery.start(functools.partial(trio.serve_tcp, srv._handle, 0, host="127.0.0.1"))
    srv.port = listeners[0].socket.getsockname()[1]
    return srv


class Outcomes:
    """The alerts' outcome callback, as a channel the test can wait on."""

    def __init__(self) -> None:
        self.send, self.recv = trio.open_memory_channel[tuple[int, str]](10_000)

    def __call__(self, index: int, outcome: str) -> None:
        self.send.send_nowait((index, outcome))

    async def next(self, timeout: float = 5) -> tuple[int, str]:
        with trio.fail_after(timeout):
            return await self.recv.receive()

    async def until(self, outcome: str, index: int = 0, timeout: float = 5) -> list[tuple[int, str]]:
        seen = []
        while True:
            got = await self.next(timeout)
            seen.append(got)
            if got == (index, outcome):
                return seen


def make(hooks, *, outcomes=None, **kw):
    kw.setdefault("redactor", Redactor())
    kw.setdefault("dashboard_url", "http://127.0.0.1:3847")
    kw.setdefault("backoff", 0.01)
    kw.setdefault("timeout", 2.0)
    return Alerts(hooks, on_outcome=outcomes, **kw)


async def start(nursery, alerts):
    await nursery.start(alerts.run)
    return alerts


# --- bodies --------------------------------------------------------------------------
async def test_json_body_has_the_item_text_and_dashboard(server, nursery):
    out = Outcomes()
    a = await start(nursery, make([WebhookConfig(server.url(), headers={"X-Test": "yes"})], outcomes=out))
    a.notify(item(extra={"k": [1, 2]}))
    rec = await server.next()
    assert rec.method == "POST" and rec.path == "/hook" and rec.headers["content-type"] == "application/json"
    assert rec.headers["x-test"] == "yes"
    body = rec.json()
    assert body["text"] == "permission: Bash npm test — session abcd1234 on machine m1, waiting since 12:03:04 UTC"
    assert body["dashboard"] == "http://127.0.0.1:3847"
    for key, value in item(extra={"k": [1, 2]}).items():
        assert body[key] == value  # every field passes through, extra keys too
    assert await out.next() == (0, "sent")


async def test_slack_body(server, nursery):
    a = await start(nursery, make([WebhookConfig(server.url(), format="slack")]))
    a.notify(item(detail="a < b && c > d"))
    body = (await server.next()).json()
    assert list(body) == ["text"]
    first, link = body["text"].split("\n")
    assert first == (
        "*permission*: Bash a &lt; b &amp;&amp; c &gt; d — session `abcd1234` on machine m1, waiting since 12:03:04 UTC"
    )
    assert link == "<http://127.0.0.1:3847|Open the dashboard>"


async def test_ntfy_body_and_headers(server, nursery):
    a = await start(nursery, make([WebhookConfig(server.url("/mytopic"), format="ntfy")]))
    a.notify(item())
    a.notify(item(reason="idle", detail="", toolName=None))
    rec = await server.next()
    assert rec.path == "/mytopic" and rec.headers["content-type"].startswith("text/plain")
    assert rec.body.decode() == "permission: Bash npm test — session abcd1234 on machine m1, waiting since 12:03:04 UTC"
    assert rec.headers["title"] == "Claude Code needs you: permission"
    assert rec.headers["tags"] == "lock" and rec.headers["priority"] == "4"
    assert rec.headers["click"] == "http://127.0.0.1:3847"
    rec = await server.next()
    assert rec.body.decode().startswith("idle: waiting for your next prompt — session abcd1234")
    assert rec.headers["priority"] == "3"


async def test_reasons_filter_each_webhook(server, nursery):
    out = Outcomes()
    hooks = [WebhookConfig(server.url("/all")), WebhookConfig(server.url("/failures"), reasons=["failure"])]
    a = await start(nursery, make(hooks, outcomes=out))
    a.notify(item(reason="permission"))
    a.notify(item(reason="failure", session="ffff0000"))
    got = sorted([(await out.next()), (await out.next()), (await out.next())])
    assert got == [(0, "sent"), (0, "sent"), (1, "sent")]
    by_path = sorted((r.path, r.json()["reason"]) for r in server.records)
    assert by_path == [("/all", "failure"), ("/all", "permission"), ("/failures", "failure")]


# --- retries -------------------------------------------------------------------------
async def test_retry_after_500_then_success_delivers_once(server, nursery):
    out = Outcomes()
    a = await start(nursery, make([WebhookConfig(server.url())], outcomes=out, retries=3))
    server.plan = [500, 503]
    a.notify(item(requestId="first"))
    assert [(await server.next()).status for _ in range(3)] == [500, 503, 200]
    assert await out.next() == (0, "sent")
    a.notify(item(requestId="barrier"))  # one webhook delivers in order: nothing more of "first"
    assert (await server.next()).json()["requestId"] == "barrier"
    statuses = [(r.json()["requestId"], r.status) for r in server.records]
    assert statuses == [("first", 500), ("first", 503), ("first", 200), ("barrier", 200)]
    assert await out.next() == (0, "sent")
    assert (a.hooks[0].sent, a.hooks[0].failed) == (2, 0)


async def test_a_wait_answered_while_its_alert_waited_is_not_sent(server, nursery):
    out = Outcomes()
    over: set[str] = set()
    a = make(
        [WebhookConfig(server.url())],
        outcomes=out,
        retries=3,
        backoff=0.3,
        still_waiting=lambda i: i["requestId"] not in over,
    )
    await start(nursery, a)
    server.plan = [500]
    a.notify(item(requestId="answered-during-retry"))
    assert (await server.next()).status == 500
    over.add("answered-during-retry")  # the person answered in the terminal meanwhile
    assert await out.next() == (0, "answered")
    a.notify(item(requestId="still-on"))
    assert (await server.next()).json()["requestId"] == "still-on"
    assert [r.json()["requestId"] for r in server.records] == ["answered-during-retry", "still-on"]
    assert a.hooks[0].answered == 1


async def test_retries_exhausted_then_failed(server, nursery, caplog):
    caplog.set_level(logging.DEBUG, logger="contextuate.alerts")
    out = Outcomes()
    a = await start(nursery, make([WebhookConfig(server.url(TOKEN_PATH))], outcomes=out, retries=2))
    server.plan = [500, 500, 500]
    a.notify(item())
    assert await out.next() == (0, "failed")
    assert [r.status for r in server.records] == [500, 500, 500]
    assert any("failed after 3 attempts: HTTP 500" in r.getMessage() for r in caplog.records)
    assert all("XXXXsecretXXXX" not in r.getMessage() for r in caplog.records)


async def test_4xx_is_not_retried(server, nursery):
    out = Outcomes()
    a = await start(nursery, make([WebhookConfig(server.url())], outcomes=out, retries=5))
    server.plan = [404]
    a.notify(item(requestId="refused"))
    assert await out.next() == (0, "failed")
    a.notify(item(requestId="barrier"))
    assert await out.next() == (0, "sent")
    assert [(r.json()["requestId"], r.status) for r in server.records] == [("refused", 404), ("barrier", 200)]


async def test_429_honours_retry_after(server, nursery):
    out = Outcomes()
    # A backoff of 60 s would fail the test: Retry-After (0 s) is what it waits.
    a = await start(nursery, make([WebhookConfig(server.url())], outcomes=out, backoff=60))
    server.plan = [(429, {"Retry-After": "0"})]
    a.notify(item())
    assert await out.next(timeout=3) == (0, "sent")
    assert [r.status for r in server.records] == [429, 200]


async def test_timeout_then_retry(server, nursery):
    out = Outcomes()
    a = await start(nursery, make([WebhookConfig(server.url())], outcomes=out, timeout=0.3))
    server.plan = [HANG]
    a.notify(item())
    assert await out.next() == (0, "sent")
    assert [r.status for r in server.records] == [0, 200]


async def test_connection_refused_retried_then_failed_without_the_url_in_logs(nursery, caplog):
    caplog.set_level(logging.DEBUG, logger="contextuate.alerts")
    out = Outcomes()
    url = f"http://127.0.0.1:{free_port()}{TOKEN_PATH}"
    a = await start(nursery, make([WebhookConfig(url)], outcomes=out, retries=2))
    a.notify(item())
    assert await out.next() == (0, "failed")
    assert a.hooks[0].failed == 1 and a.hooks[0].sent == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("failed after 3 attempts" in m for m in messages)
    assert all("XXXXsecretXXXX" not in m and "/services/" not in m for m in messages)
    text = render(a.metrics())
    assert "XXXXsecretXXXX" not in text
    assert (
        f'contextuate_alerts_failed_total{{webhook="0",host="http://127.0.0.1:{url.split(":")[2].split("/")[0]}"}} 1'
        in text
    )


# --- rate limit ----------------------------------------------------------------------
async def test_rate_limit_folds_extra_items_into_one_summary(server, nursery):
    out = Outcomes()
    # 2 a "minute" of 3 s: a burst of 2, then a token every 1.5 s.
    a = await start(nursery, make([WebhookConfig(server.url())], outcomes=out, rate_per_minute=2, rate_window=3.0))
    reasons = ["permission", "idle", "failure", "permission", "stuck"]
    for i, reason in enumerate(reasons):
        a.notify(item(reason=reason, session=f"s{i}"))
    first, second = await server.next(), await server.next()
    assert [first.json()["sessionId"], second.json()["sessionId"]] == ["s0", "s1"]
    summary = await server.next()
    body = summary.json()
    assert body["summary"] is True and body["count"] == 3 and body["sessionIds"] == ["s2", "s3", "s4"]
    assert body["reasons"] == {"failure": 1, "permission": 1, "stuck": 1}
    assert body["text"].startswith("3 more sessions need you: ")
    assert "failure 1" in body["text"] and "stuck 1" in body["text"]
    seen = await out.until("sent")
    while seen.count((0, "sent")) < 3:
        seen += await out.until("sent")
    assert seen.count((0, "rate_limited")) == 3
    assert (a.hooks[0].sent, a.hooks[0].rate_limited, len(server.records)) == (3, 3, 3)


# --- secrets -------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["json", "slack", "ntfy"])
async def test_secrets_never_reach_the_server(server, nursery, fmt):
    out = Outcomes()
    a = await start(nursery, make([WebhookConfig(server.url(), format=fmt)], outcomes=out))
    a.notify(
        item(
            detail=f"export ANTHROPIC_API_KEY={ANTHROPIC} AWS={AWS}",
            toolName=f"Bash {AWS}",
            extra={"note": f"key {ANTHROPIC}", AWS: "as a key"},
        )
    )
    rec = await server.next()
    raw = rec.body + json.dumps(rec.headers).encode()
    assert ANTHROPIC.encode() not in raw and AWS.encode() not in raw
    assert b"[REDACTED:" in rec.body
    assert await out.next() == (0, "sent")


# --- the queue side: never blocks; cancellation ------------------------------------------
def test_notify_never_blocks_when_full(caplog):
    caplog.set_level(logging.WARNING, logger="contextuate.alerts")
    a = make([WebhookConfig("http://127.0.0.1:9/x"), WebhookConfig("http://127.0.0.1:9/y", reasons=["idle"])])
    # Not even running: notify is synchronous, and the queue (1000) fills up.
    for _ in range(1005):
        a.notify(item())
    assert a.hooks[0].dropped == 5 and a.hooks[1].dropped == 0  # the second does not want "permission"
    assert a.counters()[0]["queued"] == 1000
    warnings = [r for r in caplog.records if "dropping" in r.getMessage()]
    assert len(warnings) == 1 and "/x" not in warnings[0].getMessage()
    a.notify("not a dict")  # type: ignore[arg-type]
    text = render(a.metrics())
    assert 'contextuate_alerts_dropped_total{webhook="0",host="http://127.0.0.1:9"} 5' in text


async def test_cancel_is_clean_during_backoff_and_in_flight(server):
    for plan, kw in (([500] * 10, {"backoff": 30}), ([HANG], {"timeout": 30})):
        server.plan = list(plan)
        a = make([WebhookConfig(server.url())], retries=10, **kw)
        with trio.fail_after(3):
            async with trio.open_nursery() as n:
                await n.start(a.run)
                a.notify(item())
                await server.next()
                n.cancel_scope.cancel()
        assert a.hooks[0].sent == 0 and a.hooks[0].failed == 0
        while server.pending():
            await server.next()


async def test_no_webhooks_runs_and_cancels():
    a = make([])
    a.notify(item())
    with trio.move_on_after(0.05):
        async with trio.open_nursery() as n:
            await n.start(a.run)
    assert a.metrics()[0].value == []
