""" "Needs you" at run time: the queue's clock, and alerts for what joins it.

The rules are in ``core.attention`` (no clock); this adds the time. New waits are
seen as the broker stores the events that cause them (``on_changed``); a session
that becomes ``stuck`` does so with no event at all, so a timer looks for those.
Each wait is alerted once, keyed by the session, its reason and since when.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

from contextuate_trio.core import attention
from contextuate_trio.core.sessions import Session
from contextuate_trio.runtime.broker import Broker
from contextuate_trio.runtime.clock import now_ms
from contextuate_trio.runtime.metrics import Metric

log = logging.getLogger("contextuate.needs_you")

Notify = Callable[[dict[str, Any]], None]
STUCK_CHECK_MAX_S = 5.0  # how late a stuck session may be noticed, at most


class NeedsYou:
    def __init__(self, broker: Broker, stuck_after_ms: int | None, notify: Notify | None = None) -> None:
        self.broker = broker
        self.stuck_after_ms = stuck_after_ms
        self.notify = notify
        self._alerted: dict[str, tuple] = {}  # session id -> (reason, since) last alerted
        self._cached: tuple | None = None
        self.alerts = 0

    def metrics(self) -> list[Metric]:
        summary = attention.summary(self.queue())
        return [
            Metric(
                "contextuate_attention_sessions",
                "Sessions waiting for a person now, by reason.",
                "gauge",
                [({"reason": r}, n) for r, n in summary["byReason"].items()],
            ),
            Metric(
                "contextuate_attention_longest_wait_seconds",
                "How long the session waiting longest has waited.",
                "gauge",
                round(summary["longestWaitMs"] / 1000, 3),
            ),
            Metric(
                "contextuate_attention_alerts_total",
                "Waits that joined the queue (each alerted once).",
                "counter",
                self.alerts,
            ),
        ]

    def queue(self) -> list[dict[str, Any]]:
        """The queue, made at most once a second while no event arrives (the API,
        /metrics and every dashboard ask for it; it walks every session)."""
        now = now_ms()
        key = (self.broker.seq, now // 1000)
        if self._cached is None or self._cached[0] != key:
            items = attention.queue(self.broker.manager.sessions.values(), now, self.stuck_after_ms)
            self._cached = (key, items, now)
        _, items, made = self._cached
        return [dict(i, waitedMs=i["waitedMs"] + now - made) for i in items]

    def still_waiting(self, item: dict[str, Any]) -> bool:
        """Is the wait ``item`` alerted still on (for alerts that had to wait)?"""
        s = self.broker.manager.sessions.get(item["sessionId"])
        if s is None or s.hidden:
            return False
        if item["reason"] == attention.STUCK:
            return s.attention is None and s.last_event_time == item["since"]
        return s.attention is not None and (s.attention["reason"], s.attention["since"]) == (
            item["reason"],
            item["since"],
        )

    def changed(self, sessions: list[Session]) -> None:
        """A stored batch changed these sessions: alert the waits that are new."""
        by_id = self.broker.manager.sessions
        now = now_ms()
        for s in sessions:
            if s.attention is None or s.hidden:
                self._alerted.pop(s.session_id, None)
                continue
            self._alert(attention.item(s, s.attention, by_id, now))

    def _alert(self, item: dict[str, Any]) -> None:
        key = (item["reason"], item["since"])
        if self._alerted.get(item["sessionId"]) == key:
            return
        self._alerted[item["sessionId"]] = key
        self.alerts += 1
        if self.notify is not None:
            self.notify(item)

    def check_stuck(self) -> None:
        for item in self.queue():
            if item["reason"] == attention.STUCK:
                self._alert(item)
        gone = [sid for sid in self._alerted if sid not in self.broker.manager.sessions]
        for sid in gone:  # deleted or expired sessions
            del self._alerted[sid]

    def _seed(self) -> None:
        """Waits restored from disk were alerted before the restart: not again.
        (One still queued for a webhook when the daemon stopped is lost.)"""
        for item in self.queue():  # stuck ones too: they were stuck before
            self._alerted[item["sessionId"]] = (item["reason"], item["since"])

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self._seed()
        self.broker.on_changed.append(self.changed)
        try:
            task_status.started()
            if self.stuck_after_ms is None:
                await trio.sleep_forever()
            every = min(STUCK_CHECK_MAX_S, self.stuck_after_ms / 1000 / 10)
            while True:
                await trio.sleep(every)  # a timer: becoming stuck is the absence of events
                self.check_stuck()
        finally:
            self.broker.on_changed.remove(self.changed)
