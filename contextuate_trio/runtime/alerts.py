"""Outgoing alerts ("webhooks") for the "needs you" queue.

The queue calls :meth:`Alerts.notify` with each item that starts needing the user
(a permission prompt, a question, a failure, a stuck session...). ``notify`` never
blocks: the item goes into a bounded channel per matching webhook (a full channel
drops it, counted and logged). :meth:`Alerts.run` runs one task per webhook, which
POSTs each item once, in order:

- failures (connection error, timeout, HTTP 5xx or 429) are retried with exponential
  backoff (0.5 s, 1, 2, 4... capped at 30 s; a 429's ``Retry-After`` seconds win) up to
  ``retries`` times, then counted as failed and logged; another 4xx fails at once;
- a token bucket per webhook (``rate_per_minute``, bursts of as many) limits the rate:
  the items over it are counted and folded into one summary ("3 more sessions need
  you: permission 2, idle 1") sent as soon as a token returns;
- every string of a body (and of the ntfy headers we make) passes through the
  redactor before it leaves; logs and metrics name a webhook by ``scheme://host`` and
  its index only (the path and query of a webhook URL are usually its token).

Bodies: ``json``: the item's fields plus ``text`` (one human line) and ``dashboard``;
``slack``: ``{"text": ...}`` (incoming-webhook, mrkdwn); ``ntfy``: the text as a plain
body with ``Title``, ``Tags``, ``Priority`` (and ``Click``: the dashboard) headers,
ntfy's publish-to-topic-URL convention.
"""

from __future__ import annotations

import base64
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import orjson
import trio

from contextuate_trio.config import WebhookConfig, webhook_origin
from contextuate_trio.core.redact import Redactor
from contextuate_trio.runtime.metrics import Metric

if TYPE_CHECKING:  # imported when a webhook is configured: ~7 MB of memory otherwise
    import httpx

log = logging.getLogger("contextuate.alerts")

QUEUE_SIZE = 1000
TIMEOUT_S = 5.0
BACKOFF_S = 0.5
BACKOFF_CAP_S = 30.0
RETRY_AFTER_CAP_S = 300.0  # a Retry-After longer than this is taken as this
DETAIL_CHARS = 300  # the detail's share of the human line
SUMMARY_SESSIONS = 50  # session ids listed in a summary's json body

_REASON_TEXT = {
    "permission": "waiting for a permission",
    "elicitation": "asking you a question",
    "idle": "waiting for your next prompt",
    "input": "waiting for your input",
    "failure": "failed",
    "stuck": "no progress",
}
# ntfy: emoji short codes (Tags) and priority (1 min ... 5 max).
_NTFY_TAGS = {
    "permission": "lock",
    "elicitation": "question",
    "idle": "hourglass",
    "input": "keyboard",
    "failure": "x",
    "stuck": "warning",
}
_NTFY_PRIORITY = {"permission": "4", "elicitation": "4", "failure": "4", "stuck": "4", "idle": "3", "input": "3"}


@attrs.define
class Request:
    """One POST: what :func:`build_request` makes of an item for a webhook's format."""

    content: bytes
    headers: dict[str, str]


class _Bucket:
    """Token bucket: ``rate`` tokens per ``window`` seconds, at most ``rate`` held."""

    def __init__(self, rate: int, window: float) -> None:
        self.capacity = float(rate)
        self.per_s = rate / window
        self.tokens = float(rate)
        self.at = trio.current_time()

    def _refill(self) -> None:
        now = trio.current_time()
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.per_s)
        self.at = now

    def take(self) -> bool:
        self._refill()
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def wait_s(self) -> float:
        """Seconds until a token is there (0: now)."""
        self._refill()
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.per_s


class _Hook:
    """One webhook's channel, counters and the items folded while over its rate."""

    def __init__(self, index: int, cfg: WebhookConfig, queue_size: int) -> None:
        self.index = index
        self.cfg = cfg
        self.where = webhook_origin(cfg.url)  # for logs and metrics: never the whole URL
        self.reasons = None if cfg.reasons is None else frozenset(cfg.reasons)
        self.send, self.receive = trio.open_memory_channel[dict](queue_size)
        self.sent = 0
        self.failed = 0
        self.rate_limited = 0
        self.dropped = 0
        self.answered = 0  # not sent: the wait was over before its turn came
        self.full = False  # dropping now (logged once per episode)
        self.folded: list[dict] = []

    def wants(self, item: dict) -> bool:
        return self.reasons is None or item.get("reason") in self.reasons

    def labels(self) -> dict[str, str]:
        return {"webhook": str(self.index), "host": self.where}


class Alerts:
    def __init__(
        self,
        webhooks: Sequence[WebhookConfig],
        *,
        redactor: Redactor,
        dashboard_url: str | None,
        rate_per_minute: int = 10,
        retries: int = 5,
        timeout: float = TIMEOUT_S,
        backoff: float = BACKOFF_S,
        backoff_cap: float = BACKOFF_CAP_S,
        queue_size: int = QUEUE_SIZE,
        rate_window: float = 60.0,  # seconds the rate is per (tests shorten it)
        transport: httpx.AsyncBaseTransport | None = None,
        # Called with (webhook index, "sent" | "failed" | "rate_limited" | "dropped" | "answered")
        # as each item's fate is known: for tests and status pages; must not block.
        on_outcome: Callable[[int, str], None] | None = None,
        # Is this item's wait still on? Asked before each attempt: a permission
        # answered while its alert waited (rate limit, retries) is not sent late.
        still_waiting: Callable[[dict], bool] | None = None,
    ) -> None:
        if rate_per_minute <= 0:
            raise ValueError("rate_per_minute must be greater than 0")
        self.redactor = redactor
        self.dashboard_url = dashboard_url
        self.rate_per_minute = rate_per_minute
        self.retries = max(0, retries)
        self.timeout = timeout
        self.backoff = backoff
        self.backoff_cap = backoff_cap
        self.rate_window = rate_window
        self._transport = transport
        self._on_outcome = on_outcome
        self.still_waiting = still_waiting or (lambda item: True)
        self.hooks = [_Hook(i, cfg, queue_size) for i, cfg in enumerate(webhooks)]

    def _count(self, hook: _Hook, outcome: str) -> None:
        setattr(hook, outcome, getattr(hook, outcome) + 1)
        if self._on_outcome is not None:
            try:
                self._on_outcome(hook.index, outcome)
            except Exception:
                log.exception("alerts: the outcome callback failed")

    # --- the queue's side -----------------------------------------------------------
    def notify(self, item: dict) -> None:
        """Queue ``item`` for every webhook that wants its reason. Never blocks, never
        raises: a webhook whose channel is full drops it (counted; logged once until
        the channel takes items again). Call it from the Trio thread."""
        if not isinstance(item, dict):
            log.warning("alert item ignored: not an object (%s)", type(item).__name__)
            return
        for hook in self.hooks:
            if not hook.wants(item):
                continue
            try:
                hook.send.send_nowait(item)
            except trio.WouldBlock:
                self._count(hook, "dropped")
                if not hook.full:
                    hook.full = True
                    log.warning(
                        "alerts to webhook %d (%s) are falling behind: %d items queued, dropping new ones",
                        hook.index,
                        hook.where,
                        hook.send.statistics().current_buffer_used,
                    )
            except trio.ClosedResourceError:
                self._count(hook, "dropped")  # run() has ended
            else:
                hook.full = False

    # --- delivery -------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver until cancelled: one task per webhook."""
        if not self.hooks:
            task_status.started()
            await trio.sleep_forever()
        import httpx

        async with httpx.AsyncClient(
            # trust_env: HTTPS_PROXY / NO_PROXY are honoured (Slack or ntfy behind a proxy).
            timeout=self.timeout,
            follow_redirects=False,
            transport=self._transport,
            trust_env=True,
        ) as client:
            async with trio.open_nursery() as nursery:
                for hook in self.hooks:
                    nursery.start_soon(self._worker, hook, client)
                task_status.started()

    async def _worker(self, hook: _Hook, client: httpx.AsyncClient) -> None:
        bucket = _Bucket(self.rate_per_minute, self.rate_window)
        while True:
            if hook.folded:
                wait = bucket.wait_s()
                if wait <= 0 and bucket.take():
                    folded, hook.folded = hook.folded, []
                    await self._deliver(
                        hook, client, summary_item(folded), summary=True, what=f"summary of {len(folded)} items"
                    )
                    continue
                item = None
                with trio.move_on_after(wait):
                    item = await hook.receive.receive()
                if item is None:
                    continue
            else:
                item = await hook.receive.receive()
            if not hook.folded and bucket.take():
                await self._deliver(hook, client, item, what=_what(item))
            else:
                if not hook.folded:
                    log.info(
                        "alerts to webhook %d (%s) over %d a minute: folding further items into one summary",
                        hook.index,
                        hook.where,
                        self.rate_per_minute,
                    )
                hook.folded.append(item)
                self._count(hook, "rate_limited")

    async def _deliver(
        self, hook: _Hook, client: httpx.AsyncClient, item: dict, *, what: str, summary: bool = False
    ) -> None:
        try:
            req = build_request(
                hook.cfg.format, item, redactor=self.redactor, dashboard_url=self.dashboard_url, summary=summary
            )
        except Exception as exc:  # an item we cannot render: its own problem, not the webhook's
            self._count(hook, "failed")
            log.warning("alert (%s) to webhook %d not sent: cannot build it: %s", what, hook.index, type(exc).__name__)
            return
        import httpx

        headers = httpx.Headers(req.headers)
        headers.update(hook.cfg.headers)  # the config's win (case-insensitively)
        attempt = 0
        while True:
            if not summary and not self.still_waiting(item):
                self._count(hook, "answered")
                log.info("alert (%s) to webhook %d not sent: answered meanwhile", what, hook.index)
                return
            problem, retry_after = await self._post(hook, client, req.content, headers)
            if problem is None:
                self._count(hook, "sent")
                return
            if retry_after is None or attempt >= self.retries:
                self._count(hook, "failed")
                tries = attempt + 1
                log.warning(
                    "alert (%s) to webhook %d (%s) failed after %d attempt%s: %s",
                    what,
                    hook.index,
                    hook.where,
                    tries,
                    "" if tries == 1 else "s",
                    problem,
                )
                return
            delay = retry_after if retry_after >= 0 else min(self.backoff_cap, self.backoff * 2 ** min(attempt, 30))
            log.debug("alert to webhook %d (%s): %s; retrying in %.1f s", hook.index, hook.where, problem, delay)
            attempt += 1
            await trio.sleep(delay)

    async def _post(
        self, hook: _Hook, client: httpx.AsyncClient, content: bytes, headers: httpx.Headers
    ) -> tuple[str | None, float | None]:
        """One attempt: (None, None) when delivered, else (the problem, whether to
        retry: None for no, -1 for the usual backoff, or the seconds Retry-After says)."""
        import httpx

        resp = None
        try:
            # httpx's timeout is per phase (connect, each read...): the deadline is the
            # whole request's.
            with trio.move_on_after(self.timeout):
                resp = await client.post(hook.cfg.url, content=content, headers=headers)
                await resp.aclose()
        except httpx.TimeoutException:
            pass
        except (httpx.HTTPError, OSError) as exc:
            return _scrub(f"{type(exc).__name__}: {exc}"), -1
        except Exception as exc:  # a header that cannot be sent...: retrying will not help
            return _scrub(f"{type(exc).__name__}: {exc}"), None
        if resp is None:
            return f"timed out after {self.timeout:g} s", -1
        code = resp.status_code
        if 200 <= code < 300:
            return None, None
        problem = f"HTTP {code}"
        if code == 429:
            return problem, _retry_after(resp.headers.get("retry-after"))
        if code >= 500:
            return problem, -1
        return problem, None  # 3xx (not followed) and other 4xx: retrying will not help

    # --- what the daemon reports ------------------------------------------------------
    def metrics(self) -> list[Metric]:
        def per_hook(attr: str) -> list[tuple[dict[str, str], int | float | str]]:
            return [(h.labels(), getattr(h, attr)) for h in self.hooks]

        return [
            Metric("contextuate_alerts_sent_total", "Alerts delivered, per webhook.", "counter", per_hook("sent")),
            Metric(
                "contextuate_alerts_failed_total",
                "Alerts given up on (retries exhausted, or refused with a 4xx), per webhook.",
                "counter",
                per_hook("failed"),
            ),
            Metric(
                "contextuate_alerts_rate_limited_total",
                "Items over a webhook's rate, folded into a summary message.",
                "counter",
                per_hook("rate_limited"),
            ),
            Metric(
                "contextuate_alerts_dropped_total",
                "Items dropped because a webhook's queue was full.",
                "counter",
                per_hook("dropped"),
            ),
            Metric(
                "contextuate_alerts_answered_total",
                "Items not sent: the wait was answered before they could go.",
                "counter",
                per_hook("answered"),
            ),
        ]

    def counters(self) -> list[dict]:
        """Per webhook (its index and ``scheme://host``): for a status page."""
        return [
            {
                "webhook": h.index,
                "host": h.where,
                "format": h.cfg.format,
                "sent": h.sent,
                "failed": h.failed,
                "rateLimited": h.rate_limited,
                "dropped": h.dropped,
                "answered": h.answered,
                "queued": h.send.statistics().current_buffer_used,
            }
            for h in self.hooks
        ]


# --- bodies (plain code) ---------------------------------------------------------------
def build_request(
    fmt: str, item: dict, *, redactor: Redactor, dashboard_url: str | None, summary: bool = False
) -> Request:
    """The body and headers ``item`` (a queue item, or with ``summary`` one made by
    :func:`summary_item`) is POSTed with in format ``fmt``, every string masked."""
    if fmt == "slack":
        text = summary_line(item, slack=True) if summary else item_line(item, slack=True)
        if dashboard_url:
            text += f"\n<{_slack_escape(dashboard_url)}|Open the dashboard>"
        return _json_request({"text": text}, redactor)
    text = summary_line(item) if summary else item_line(item)
    if fmt == "ntfy":
        reason = str(item.get("reason") or "")
        if summary:
            title = "Claude Code: " + text.split(":", 1)[0]
            tags = "bell"
            priority = "4"
        else:
            title = f"Claude Code needs you: {reason or 'attention'}"
            tags = _NTFY_TAGS.get(reason, "bell")
            priority = _NTFY_PRIORITY.get(reason, "3")
        headers = {
            "Content-Type": "text/plain; charset=utf-8",
            "Title": _header_value(redactor.text(title)),
            "Tags": tags,
            "Priority": priority,
        }
        if dashboard_url:
            headers["Click"] = _header_value(redactor.text(dashboard_url))
        return Request(redactor.text(text).encode("utf-8"), headers)
    body = {**item, "text": text, "dashboard": dashboard_url}
    return _json_request(body, redactor)


def _json_request(body: dict, redactor: Redactor) -> Request:
    content = orjson.dumps(_masked(redactor, body), default=str, option=orjson.OPT_NON_STR_KEYS)
    return Request(content, {"Content-Type": "application/json"})


def _masked(redactor: Redactor, value: Any) -> Any:
    """Every string masked, keys too (an item's extra keys are anyone's)."""
    if isinstance(value, str):
        return redactor.text(value)
    if isinstance(value, dict):
        return {(redactor.text(k) if isinstance(k, str) else k): _masked(redactor, v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_masked(redactor, v) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return redactor.text(str(value))  # anything else leaves as its (masked) text


def item_line(item: dict, *, slack: bool = False) -> str:
    """One human line, e.g. ``permission: Bash npm test — session abcd1234 on machine
    m1, waiting since 12:03:04 UTC``."""
    esc = _slack_escape if slack else _plain
    reason = _text(item.get("reason")) or "attention"
    detail = " ".join(_text(item.get("detail")).split())
    tool = _text(item.get("toolName"))
    if tool and not detail.startswith(tool):
        detail = f"{tool} {detail}".strip()
    if not detail:
        detail = _REASON_TEXT.get(reason, "needs you")
    if len(detail) > DETAIL_CHARS:
        detail = detail[: DETAIL_CHARS - 1] + "…"
    session = _text(item.get("sessionId"))[:8] or "?"
    machine = _text(item.get("machineId")) or "?"
    since = _clock(item.get("since"))
    if slack:
        head = f"*{esc(reason)}*: {esc(detail)} — session `{esc(session)}` on machine {esc(machine)}"
    else:
        head = f"{reason}: {detail} — session {session} on machine {machine}"
    return head + (f", waiting since {since}" if since else "")


def summary_item(folded: list[dict]) -> dict:
    """The one message standing for the items folded while a webhook was over its rate."""
    sessions: list[str] = []
    for it in folded:
        sid = _text(it.get("sessionId"))
        if sid and sid not in sessions:
            sessions.append(sid)
    reasons = Counter(_text(it.get("reason")) or "attention" for it in folded)
    return {
        "summary": True,
        "count": max(len(sessions), 1 if folded else 0),
        "items": len(folded),
        "reasons": dict(reasons.most_common()),
        "sessionIds": sessions[:SUMMARY_SESSIONS],
        "since": min((it["since"] for it in folded if isinstance(it.get("since"), int)), default=None),
    }


def summary_line(summary: dict, *, slack: bool = False) -> str:
    n = summary["count"]
    reasons = ", ".join(f"{r} {k}" for r, k in summary.get("reasons", {}).items())
    head = f"{n} more session{'' if n == 1 else 's'} need{'s' if n == 1 else ''} you"
    if slack:
        head = f"*{head}*"
        reasons = _slack_escape(reasons)
    return f"{head}: {reasons}" if reasons else head


def _what(item: dict) -> str:
    """An item in a log line: its reason and short session id (nothing of the detail)."""
    return f"{_text(item.get('reason'))[:20] or '?'} for session {_text(item.get('sessionId'))[:8] or '?'}"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))


def _plain(text: str) -> str:
    return text


def _slack_escape(text: str) -> str:
    """Slack's three control characters (its mrkdwn has no other escaping)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clock(ms: Any) -> str | None:
    if not isinstance(ms, (int, float)) or isinstance(ms, bool) or not math.isfinite(ms):
        return None
    try:
        t = time.gmtime(ms / 1000)
    except (OverflowError, OSError, ValueError):
        return None
    return time.strftime("%H:%M:%S UTC", t)


def _header_value(text: str) -> str:
    """A header value httpx can send: ASCII as is, else RFC 2047 (ntfy decodes it)."""
    text = " ".join(text.split())  # no CR/LF in a header
    try:
        text.encode("ascii")
    except UnicodeEncodeError:
        return "=?UTF-8?B?" + base64.b64encode(text.encode("utf-8")).decode("ascii") + "?="
    return text


def _retry_after(value: str | None) -> float:
    """Seconds to wait from a 429's Retry-After (-1: not given in seconds, back off)."""
    if value is None:
        return -1
    try:
        seconds = float(value.strip())
    except ValueError:
        return -1  # an HTTP date: the usual backoff
    if not math.isfinite(seconds) or seconds < 0:
        return -1
    return min(seconds, RETRY_AFTER_CAP_S)


_URL_RE = re.compile(r"""\b([a-z][a-z0-9+.-]*://)(?:[^@/\s'"]*@)?([^/\s'"?#]+)[^\s'"]*""", re.IGNORECASE)


def _scrub(text: str) -> str:
    """An error's text with any URL in it cut to ``scheme://host`` (a webhook URL's
    path, query and user:password@ are its token)."""
    return _URL_RE.sub(r"\1\2/…", text)[:300]
