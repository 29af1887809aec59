"""Answers from the dashboard at run time: the waiting hooks, the clock, the audit.

The rules are ``core.decisions``; this holds, per open request, the way back to the
hook that waits for it (a ``Waiter``: the socket connection in local mode, a Redis key
in Redis mode), expires requests on time, closes those the session answered some
other way, and records every answer as an event before the hook gets it.
"""

from __future__ import annotations

import collections
import logging
from typing import Any, Protocol

import trio

from contextuate_trio.core import decisions as core
from contextuate_trio.core.events import Event
from contextuate_trio.runtime.broker import Broker, Delivery
from contextuate_trio.runtime.clock import new_id, now_ms
from contextuate_trio.runtime.metrics import Metric

log = logging.getLogger("contextuate.decisions")

# A request closes this long before its hook stops waiting: an answer given at the
# last moment still has time to be recorded and to reach the hook.
MARGIN_MS = 300
AUDIT_WAIT_S = 2.0  # the most an answer waits for its audit event to be stored
STOPPING = "the daemon is stopping: the answer was not recorded, not sent"


class Waiter(Protocol):
    """The way back to one waiting hook."""

    async def claim(self) -> bool:
        """Before an answer is recorded: may this monitor answer? False when another
        monitor answered first (Redis mode). ``core.Refused`` 404 when the hook is
        known to have stopped waiting, 503 when it cannot tell (Redis unreachable)."""
        ...

    async def send(self, output: dict[str, Any]) -> bool:
        """Hand the hook Claude Code's answer; False when it did not get it."""
        ...

    async def release(self) -> None:
        """A claimed answer that was not recorded (so not sent): give the claim back,
        so that another answer, or another monitor's, may still take the request."""
        ...

    def close(self) -> None:
        """No answer: the hook says nothing and Claude Code asks as usual."""
        ...


class Decisions:
    def __init__(self, broker: Broker, enabled: bool, wait_ms: int) -> None:
        self.broker = broker
        self.enabled = enabled
        self.wait_ms = wait_ms
        self.book = core.DecisionBook()
        self._waiters: dict[str, Waiter] = {}
        self._replan = trio.Event()
        self.counters: collections.Counter[str] = collections.Counter()

    # --- sources' side ---------------------------------------------------------------
    def waiting(self, ev: Event, asked_ms: Any, waiter: Waiter, since_ms: int | None = None) -> bool:
        """A stored event whose hook waits up to ``asked_ms`` for an answer. False
        (the caller closes at once) when decisions are off or it is no request.
        ``since_ms``: when the hook began to wait, if not just now (Redis mode: when its
        event reached Redis); the request is open for what is left of the wait only, and
        not at all once it is over (a monitor catching up after an outage)."""
        if not self.enabled or isinstance(asked_ms, bool) or not isinstance(asked_ms, (int, float)):
            return False
        now = now_ms()
        wait = int(min(asked_ms, self.wait_ms)) - MARGIN_MS
        if since_ms is not None:
            wait -= max(0, now - since_ms)
        req = core.request_for(ev, now, wait)
        if req is None or req.expires_ms <= req.opened_ms or not self.book.add(req):
            return False  # (a copy of an event read again opens nothing: see DecisionBook.add)
        self._waiters[req.request_id] = waiter
        self.counters["opened"] += 1
        self._replan.set()
        return True

    def gone(self, request_id: str) -> None:
        """The hook stopped waiting (its connection closed)."""
        if self.book.close(request_id, "hook gone") is not None:
            self.counters["hook_gone"] += 1
        self._waiters.pop(request_id, None)

    # --- the API's side ----------------------------------------------------------------
    def offer(self, request_id: str | None) -> dict[str, Any] | None:
        """What the dashboard needs to answer ``request_id`` (None: not answerable)."""
        req = self.book.get(request_id) if request_id else None
        return req.public() if req is not None and request_id in self._waiters else None

    def decorate(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The "needs you" items, each answerable one with its ``decision`` offer."""
        if not self.book.open:
            return items
        for item in items:
            offer = self.offer(item.get("requestId"))
            if offer is not None:
                item["decision"] = offer
        return items

    async def answer(self, request_id: Any, body: Any, by: str, origin: str | None) -> dict[str, Any]:
        """Answer a request (``core.Refused`` says why not). In order: taken in the
        book (a second answer meanwhile gets 409), claimed from the hook's side (it
        still waits; no other monitor answered), recorded as an event (a store that
        fails refuses the answer: 503), then sent; an answer recorded but not
        delivered (the hook stopped waiting in between) is recorded as such: 404."""
        if not isinstance(request_id, str) or not request_id:
            raise core.Refused(400, "requestId must be a non-empty string")
        req = self.book.get(request_id)
        kind = req.kind if req is not None else core.PERMISSION
        answer = core.parse_answer(body, kind, by, origin)
        if answer.always and req is not None and not core.always_rules(req.suggestions):
            raise core.Refused(400, "this request offers no rule to allow always (allow it once)")
        if self.broker.stopped_taking:  # before anything is taken or claimed
            raise core.Refused(503, STOPPING)
        req = self.book.take(request_id, answer, now_ms())
        waiter = self._waiters.get(request_id)
        if waiter is None:  # (cannot be: an open request has its waiter)
            self.book.lost(req, "hook gone")
            raise core.Refused(404, f"request {request_id}: its hook stopped waiting")
        await self._claim(req, waiter)
        audit = core.audit_event(req, answer, new_id(), now_ms())
        try:
            recorded = await self._record(audit)
        except core.Refused:  # the daemon is stopping: the request stays as it was
            await self._undo(req, waiter)
            raise
        if not recorded:
            await self._undo(req, waiter)
            # Not stored in time: if it is stored later, what follows it says it was not sent.
            why = "not recorded in time (the store is failing or slow): not sent"
            await self._not_sent(core.undelivered_event(req, answer, audit.id, new_id(), now_ms(), why), wait=False)
            raise core.Refused(503, "the answer could not be recorded in time (the store is failing or slow); not sent")
        delivered = await waiter.send(core.hook_output(req, answer))
        self._waiters.pop(request_id, None)
        if not delivered:
            self.counters["hook_gone"] += 1
            self.book.lost(req, "hook gone")
            why = "the hook stopped waiting before the answer reached it"
            noted = await self._not_sent(core.undelivered_event(req, answer, audit.id, new_id(), now_ms(), why))
            raise core.Refused(
                404,
                f"request {request_id}: {why} ({'recorded as' if noted else 'the daemon is stopping:'} not delivered)",
            )
        self.counters[f"answered_{answer.decision}"] += 1
        log.info("request %s (%s) answered %s by %s from %s", request_id, req.tool_name, answer.decision, by, origin)
        return {"requestId": request_id, "decision": answer.decision, "by": by, "eventId": audit.id}

    async def _undo(self, req: core.Request, waiter: Waiter) -> None:
        """An answer taken and claimed, but not recorded: open again, on the hook's
        side first (a claim left behind in Redis would turn every other monitor's
        answer into a 409 until the hook stopped waiting), then here: an answer in
        between is refused by the book, never claimed twice."""
        try:
            await waiter.release()
        finally:
            self.book.undo(req)

    async def _claim(self, req: core.Request, waiter: Waiter) -> None:
        try:
            claimed = await waiter.claim()
        except core.Refused as exc:
            if exc.status == 404:  # the hook went: the request is over
                self._waiters.pop(req.request_id, None)
                self.counters["hook_gone"] += 1
                self.book.lost(req, "hook gone")
            else:
                self.book.undo(req)
            raise
        if claimed:
            return
        self._waiters.pop(req.request_id, None)
        self.counters["lost_race"] += 1
        self.book.lost(req, core.ANSWERED_ON_ANOTHER)
        raise core.Refused(409, f"request {req.request_id} was answered already (on another monitor)")

    async def _record(self, ev: Event) -> bool:
        """Store an audit event; False when it was refused or not stored within
        AUDIT_WAIT_S."""
        d = await self._submit(ev)
        assert d.done is not None
        with trio.move_on_after(AUDIT_WAIT_S):
            await d.done.wait()
        return d.done.is_set() and d.ok

    async def _submit(self, ev: Event) -> Delivery:
        """The event to the pipeline (tracked); ``core.Refused`` 503 once the pipeline
        takes no more (the daemon is stopping: an answer then is neither recorded nor sent)."""
        try:
            return await self.broker.submit(ev, track=True)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise core.Refused(503, STOPPING) from None

    async def _not_sent(self, ev: Event, wait: bool = True) -> bool:
        """Record that an answer did not reach its hook (with ``wait``: stored before the
        caller replies). False when the daemon is stopping and stores nothing more:
        the answer's own audit event then stands alone (said in the log)."""
        try:
            if wait:
                await self._record(ev)
            else:
                await self._submit(ev)
            return True
        except core.Refused:
            log.warning("answer %s: not recorded as not sent (the daemon is stopping)", ev.data.get("auditId"))
            return False

    # --- the clock, and sessions that moved on ----------------------------------------
    def stored(self, events: list[Event]) -> None:
        """``broker.on_stored``: close the requests these events answered elsewhere."""
        if not self.book.open:
            return
        sessions = self.broker.manager.sessions
        for ev in events:
            s = sessions.get(ev.session_id)
            for req in self.book.after_event(ev, s.attention if s is not None else None):
                self.counters["answered_elsewhere"] += 1
                self._drop_waiter(req.request_id)

    def _drop_waiter(self, request_id: str) -> None:
        waiter = self._waiters.pop(request_id, None)
        if waiter is not None:
            try:
                waiter.close()
            except Exception:  # a source's socket trouble must not stop the pipeline or the timer
                log.exception("closing the hook's wait for %s failed", request_id)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.broker.on_stored.append(self.stored)
        try:
            task_status.started()
            while True:
                due = self.book.next_expiry()
                self._replan = trio.Event()
                with trio.move_on_at(trio.current_time() + max(0, due - now_ms()) / 1000 if due else float("inf")):
                    await self._replan.wait()  # a new request, sooner than the next expiry
                for req in self.book.expired(now_ms()):
                    self.counters["expired"] += 1
                    self._drop_waiter(req.request_id)
        finally:
            self.broker.on_stored.remove(self.stored)
            for rid in list(self._waiters):
                self._drop_waiter(rid)

    def metrics(self) -> list[Metric]:
        c = self.counters
        samples: list[tuple[dict[str, str], int | float | str]] = [
            ({"outcome": o}, c[f"answered_{o}"]) for o in ("allow", "deny", "accept", "decline", "cancel")
        ]
        samples += [({"outcome": o}, c[o]) for o in ("expired", "answered_elsewhere", "hook_gone", "lost_race")]
        return [
            Metric(
                "contextuate_decision_requests_total",
                "Permission prompts and questions a hook waited on an answer for.",
                "counter",
                c["opened"],
            ),
            Metric(
                "contextuate_decision_requests_open",
                "Requests waiting for an answer now.",
                "gauge",
                len(self._waiters),
            ),
            Metric(
                "contextuate_decisions_total",
                "How requests ended: answered from here (by decision), expired, answered elsewhere, hook gone.",
                "counter",
                samples,
            ),
        ]
