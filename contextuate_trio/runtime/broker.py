"""The broker: every source feeds it through ``submit``, one pipeline task drains it.

    sources --submit--> channel --> dedupe -> sessions -> masking -> store -> acks -> fan-out

One task owns the session state and the files, so nothing needs a lock, and order is
the order of arrival. Sources block when the channel is full (back-pressure reaches
the hook, which then spools); sinks never block the pipeline (see ``fanout``).
This module is the channel, the batching, the acknowledgements and the retries; what
happens to one event is the sans-IO core's (``core.sessions``, ``core.masking``,
``core.dedupe``, ``core.actions``).
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import trio

from contextuate_trio.core import actions, events, secret_scan
from contextuate_trio.core.dedupe import RecentIds, SeenIds
from contextuate_trio.core.events import Event, Mint
from contextuate_trio.core.masking import masked_line
from contextuate_trio.core.redact import Redactor
from contextuate_trio.core.sessions import Session, SessionManager
from contextuate_trio.runtime.clock import now_ms
from contextuate_trio.runtime.fanout import FanOut, Subscription
from contextuate_trio.runtime.store import FileStore, StoreError, session_key

log = logging.getLogger("contextuate.broker")

MAX_BATCH = 1024
# Seconds a changed session's meta.json may lag its events: each write is a file
# replaced by rename (~0.5 ms here), and with 600 busy sessions (200 machines) writing
# every 0.25 s took 29% of the loop; a start replays what a crash left behind it.
META_DELAY = 2.0
RECENT_IDS_ON_START = 20_000  # ids read back from disk at start (exact dedupe)
RETRY_FIRST_S, RETRY_MAX_S = 0.1, 5.0  # store retries: doubling, capped
# Events kept in memory for WebSocket clients that resume or lag: few when the disk
# can give back the rest (the seq log), more when nothing is stored.
REPLAY_WITH_STORE = 2_000
REPLAY_IN_MEMORY = 20_000


@attrs.define(eq=False)
class Delivery:
    """One event on its way in; once it is stored or refused, ``done`` (when tracked)
    is set and ``on_done`` (when given) is called, in the pipeline's task."""

    event: Event
    done: trio.Event | None = None
    ok: bool = False
    error: str | None = None
    rejected: bool = False  # the pipeline failed on it: retrying cannot help
    on_done: Callable[[Delivery], None] | None = None

    def finish(self, ok: bool, error: str | None = None, rejected: bool = False) -> None:
        self.ok, self.error, self.rejected = ok, error, rejected
        if self.done is not None:
            self.done.set()
        if self.on_done is not None:
            try:
                self.on_done(self)
            except Exception:  # a source's callback must never stop the pipeline
                log.exception("a delivery callback failed")


@attrs.define
class Accepted:
    """An event that passed dedupe, masking and the session machine: its stored line
    and the sessions it changed."""

    delivery: Delivery
    event: Event
    line: bytes
    sessions: list[Session]
    seq: int = 0  # its number, given before the batch is stored (kept across store retries)


class Broker:
    def __init__(
        self,
        store: FileStore | None,
        manager: SessionManager | None = None,
        *,
        channel_size: int = 10_000,
        recent_ids: int = 20_000,
        replay_size: int | None = None,
        started_ms: int | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        self.store = store
        self.redactor = redactor if redactor is not None else Redactor()
        self.manager = manager or SessionManager()
        # The channel carries lists (one per ``submit_many``); its bound counts events
        # (``_queued``): a full channel makes senders wait in ``_room``.
        self.channel_size = channel_size
        self.send_channel, self._receive = trio.open_memory_channel[list[Delivery]](math.inf)
        self._queued = 0
        self._room = trio.lowlevel.ParkingLot()
        self._closed_to_senders = False  # the pipeline has ended: nobody waits for room
        self.stopped_taking = False  # ``stop_taking`` was called: a submit now fails
        self.recent = RecentIds(recent_ids)
        self.seen = SeenIds()
        self.started_ms = started_ms if started_ms is not None else now_ms()
        # Without a store, event numbers start where no earlier run's can reach (the
        # start time in µs): a client resuming with an earlier run's number is told to
        # reset. With one, ``load`` goes on from the last number on disk.
        if replay_size is None:
            replay_size = REPLAY_WITH_STORE if store is not None else REPLAY_IN_MEMORY
        self.fanout = FanOut(replay_size, first_seq=self.started_ms * 1000)
        self.counters: collections.Counter = collections.Counter()
        self.by_source: collections.Counter = collections.Counter()
        self.last_error: str | None = None
        self.ready = trio.Event()
        self._refusing: list[tuple[Delivery, str]] = []  # the batch's refused events, told once it is stored
        self._dirty: dict[str, Session] = {}  # sessions whose meta.json is behind
        # The store's file sizes when ``load`` read it (None: not loaded, nothing known).
        self._on_disk_at_start: dict[str, int | None] | None = None
        self._dirty_since = 0.0
        self._meta_changed = trio.Event()  # set when ``_dirty`` gets its first session
        self._meta_tried = trio.Event()  # set when the pipeline has tried to write it
        self.finished = trio.Event()
        self.on_stored: list[Callable[[list[Event]], None]] = []
        # Called with the sessions a stored batch changed (the "needs you" queue).
        self.on_changed: list[Callable[[list[Session]], None]] = []

    # --- start-up -----------------------------------------------------------------
    def load(self, mint: Mint) -> int:
        """Sessions from disk; events written after their meta (a crash) replayed."""
        if self.store is None:
            return 0
        sessions, replay = self.store.open()
        for s in sessions:
            self.manager.restore(s)
        for raw in replay:
            try:
                ev = events.from_object(raw, mint=mint)
            except events.EventError:
                continue
            self.manager.apply(ev)
        if replay:
            log.warning("recovered %d events stored after the last metadata write", len(replay))
            self.store.save_sessions(self.manager.sessions.values())
        self._on_disk_at_start = self.store.sizes()  # before this run stored anything
        for eid in self.store.recent_ids(list(self.manager.sessions.values()), RECENT_IDS_ON_START):
            self.recent.add(eid)
        # Numbers go on from the last one on disk, without a gap: a client of the
        # last run resumes from disk as if the daemon had never stopped.
        self.fanout.seq = self.store.order.last_seq or self.fanout.seq
        return len(sessions)

    # --- sources' side: the one entry point -------------------------------------------
    async def submit(
        self,
        event: Event,
        *,
        wait: bool = False,
        track: bool = False,
        on_done: Callable[[Delivery], None] | None = None,
    ) -> Delivery:
        """Hand an event to the pipeline. With ``wait``, return once it is stored (or
        refused); with ``track``, return at once with ``delivery.done`` to wait on;
        with ``on_done``, return at once and have it called when the event is stored
        or refused (a source that answers many producers from one task).
        ``submit_many`` for one event (see there)."""
        (d,) = await self.submit_many([event], wait=wait, track=track, on_done=on_done)
        return d

    async def submit_many(
        self,
        events: Sequence[Event],
        *,
        wait: bool = False,
        track: bool = False,
        on_done: Callable[[Delivery], None] | None = None,
    ) -> list[Delivery]:
        """Hand events to the pipeline, in order, in one step: their deliveries, with
        ``wait``, ``track`` and ``on_done`` as in ``submit`` for each. They go into
        one pipeline batch (but one refused early, a bad one, is finished before the
        others are stored: wait on each ``done`` that matters).

        One channel item for the lot: a source that reads hundreds of events at once
        pays the channel once, not once per event. When the channel has room this
        does not yield; when it holds ``channel_size`` events or more the caller
        waits (back-pressure), then hands over all of its events."""
        tracked = wait or track
        ds = [Delivery(ev, trio.Event() if tracked else None, on_done=on_done) for ev in events]
        if not ds:
            return ds
        while self._queued >= self.channel_size and not self._closed_to_senders:
            await self._room.park()
        self.send_channel.send_nowait(ds)
        self._queued += len(ds)
        by_source = self.by_source
        for ev in events:
            by_source[ev.source or "unknown"] += 1
        if wait:
            for d in ds:
                assert d.done is not None
                await d.done.wait()
        return ds

    def stop_taking(self) -> None:
        """No more events (the daemon stops): ``run`` ends once what is queued is
        stored; a submit from now on raises ``trio.ClosedResourceError``."""
        self.stopped_taking = True
        self.send_channel.close()

    def queue_depth(self) -> int:
        return self._queued

    def _taken(self, n: int) -> None:
        """The pipeline took ``n`` events off the channel: senders may go on."""
        self._queued -= n
        if self._queued < self.channel_size:
            self._room.unpark_all()

    # --- sinks' side ----------------------------------------------------------------
    @property
    def seq(self) -> int:
        return self.fanout.seq

    @property
    def replay(self) -> collections.deque:
        return self.fanout.replay

    def subscribe(self, size: int = 1000, name: str = "subscriber", batched: bool = False) -> Subscription:
        return self.fanout.subscribe(size, name, batched)

    def subscriber_count(self) -> int:
        return self.fanout.count()

    # --- the pipeline ---------------------------------------------------------------
    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Drain the channel until every sender has closed it (or we are cancelled)."""
        task_status.started()
        self.ready.set()
        try:
            async with self._receive, trio.open_nursery() as nursery:
                nursery.start_soon(self._meta_timer)
                while True:
                    try:
                        first = await self._receive.receive()
                    except trio.EndOfChannel:
                        break
                    batch, woken = [*first], not first  # (an empty submission: the timer's)
                    while len(batch) < MAX_BATCH:  # whole submissions: one is never split
                        try:
                            more = self._receive.receive_nowait()
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                        batch += more
                        woken = woken or not more
                    self._taken(len(batch))
                    if batch:
                        await self.process(batch)
                    if self._meta_due() or (woken and not self._meta_tried.is_set()):
                        # After the batch's acks. The timer waits for a write since its
                        # wake-up: one that came with a batch before it needs no other.
                        self.flush_sessions()
                nursery.cancel_scope.cancel()
        finally:
            self._closed_to_senders = True  # (before anything here can fail)
            self._room.unpark_all()  # senders waiting for room learn that the pipeline is gone
            try:
                self.flush_sessions()
            finally:
                self.finished.set()

    async def _meta_timer(self) -> None:
        """Wake the pipeline with an empty submission once changed session metadata
        is META_DELAY old, so it is written when no more events come (the pipeline
        writes it: it owns the files), then wait until it has tried. A timer beside
        the pipeline, not a deadline on each of its waits: a cancel scope per wait
        was ~8% of a command hook's instructions."""
        while True:
            if not self._dirty:
                self._meta_changed = trio.Event()
                await self._meta_changed.wait()
            await trio.sleep_until(self._dirty_since + META_DELAY)  # a timer: the delay is the point
            if self._meta_due():
                self._meta_tried = trio.Event()
                try:
                    self.send_channel.send_nowait([])
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    return  # the daemon is stopping: the pipeline writes it as it drains and ends
                await self._meta_tried.wait()  # (after a failure it is tried again later)

    def _meta_due(self) -> bool:
        """Has changed session metadata waited META_DELAY? (One test for the timer and
        the pipeline: two that disagreed by a rounding left the timer waiting.)"""
        return bool(self._dirty) and trio.current_time() >= self._dirty_since + META_DELAY

    def flush_sessions(self) -> None:
        """Write the metadata of sessions changed since the last write.

        Deferred by up to META_DELAY, so a burst rewrites each session's meta.json
        once rather than once per batch (it was a fifth of the pipeline's time). Safe
        across a crash: each meta records the size of the events file it counts, and
        a start replays whatever was appended after it."""
        self._meta_tried.set()
        if not self._dirty or self.store is None:
            self._dirty.clear()
            return
        try:
            self.store.save_sessions(list(self._dirty.values()))
        except StoreError as exc:
            self._store_failed(exc)
            self._dirty_since = trio.current_time()  # try again a little later
            return
        self._dirty.clear()

    def _duplicate(self, ev: Event) -> bool:
        if ev.id in self.recent:
            return True
        this_run = self.seen.add_new(ev.id)  # (an id refused later stays: a look on disk then says no)
        if self.store is None:
            return False
        if not this_run and (ev.timestamp >= self.started_ms or self._on_disk_at_start == {}):
            # Certainly not stored during this run, and newer than it, or the store
            # held nothing at start (a new monitor's catch-up: no look on disk for each).
            return False
        # An event from before this start (spool, a catch-up), or one this run may
        # have stored already: ask the disk, in the sessions it can belong to, reading
        # only the blocks around its time; and when this run certainly did not store
        # it, only what was on disk at start (a catch-up read every new line again).
        root = self.manager.get(ev.session_id)
        if root is None:
            return False
        before = None if this_run else self._on_disk_at_start
        sids = [root.session_id, *root.child_session_ids]
        return any(self.store.contains(sid, ev.id, ev.timestamp, before) for sid in sids)

    def _fresh(self, batch: list[Delivery], duplicates: list[Delivery]) -> list[Delivery]:
        """The deliveries that are no copy of a stored event (a copy is acknowledged
        with the batch, not stored). Each id is remembered at once: a second copy in
        this batch is one."""
        fresh: list[Delivery] = []
        remember = self.recent.add
        for d in batch:
            try:
                copy = self._duplicate(d.event)
            except Exception as exc:  # one event must never take the pipeline down
                self._reject(d, exc)
                continue
            if copy:
                self.counters["duplicates"] += 1
                duplicates.append(d)
                continue
            remember(d.event.id)
            fresh.append(d)
        return fresh

    def _masked_lines(self, fresh: list[Delivery]) -> list[bytes | None]:
        """Each event's line, its secrets masked (one scan for the batch: most hold no
        marker of one), before the session machine takes anything from it (a
        sub-agent's description, a last summary). None: refused."""
        lines: list[bytes | None] = []
        encode_line = events.encode_line
        for d in fresh:
            try:
                lines.append(encode_line(d.event))
            except Exception as exc:
                lines.append(None)
                self._reject(d, exc)
        suspects = secret_scan.suspects(self.redactor, [line or b"" for line in lines])
        for i in suspects:
            line = lines[i]
            if line is None:
                continue
            try:
                lines[i], masked = masked_line(self.redactor, fresh[i].event, line)
            except Exception as exc:  # never store what could not be masked
                lines[i], masked = None, False
                self._reject(fresh[i], exc)
            if masked:
                self.counters["redacted_events"] += 1
        return lines

    def _accept(self, fresh: list[Delivery], lines: list[bytes | None]) -> list[Accepted]:
        """The session machine over the batch; a line made again when it changed its
        event (moved it to a sub-agent, named a compaction's agent, listed unanswered
        calls)."""
        accepted: list[Accepted] = []
        apply = self.manager.apply
        debug = log.isEnabledFor(logging.DEBUG)
        for d, line in zip(fresh, lines, strict=True):
            if line is None:
                continue
            ev = d.event
            where = _placed(ev)
            try:
                outcome = apply(ev)
                if _placed(ev) != where:
                    line = events.encode_line(ev)
            except Exception as exc:
                self._reject(d, exc)
                continue
            if debug:
                log.debug(
                    "[%s] Received event from %s/%s: %s",
                    (ev.source or "?").title(),
                    ev.machine_id,
                    ev.session_id[:8],
                    ev.event_type,
                )
            accepted.append(Accepted(d, ev, line, outcome.changed))
        return accepted

    async def process(self, batch: list[Delivery]) -> None:
        self._refusing = []
        duplicates: list[Delivery] = []
        fresh = self._fresh(batch, duplicates)
        accepted = self._accept(fresh, self._masked_lines(fresh))
        for i, a in enumerate(accepted, self.fanout.seq + 1):
            a.seq = i
        changed = {s.session_id: s for a in accepted for s in a.sessions}
        if self.store is not None and accepted:
            await self._write(accepted, changed)
        self.counters["events"] += len(accepted)
        for a in accepted:
            a.delivery.finish(True)
        # Refusals too are told once the batch is stored: a source that moves on when
        # its last event is done (a Redis checkpoint) must not pass events still in memory.
        refusals, self._refusing = self._refusing, []
        for d, why in refusals:
            d.finish(False, why, rejected=True)
        refused = {d.event.id for d, _ in refusals}
        for d in duplicates:  # after the batch is stored: its first copy may be in it
            if d.event.id in refused:  # ...or refused: this copy is not stored either
                d.finish(False, "rejected: its first copy in the batch was refused", rejected=True)
            else:
                d.finish(True)
        if not accepted:
            return
        stored = [a.event for a in accepted]
        for hook in self.on_stored:
            _call(hook, stored)
        changed_list = list(changed.values())
        for changed_hook in self.on_changed:
            _call(changed_hook, changed_list)
        self.fanout.stored([(a.seq, a.event, a.line) for a in accepted], changed.values())

    def _reject(self, d: Delivery, exc: Exception) -> None:
        """An event the pipeline could not handle (a bug): logged with its id and
        refused, so its producer keeps it (the hook spools it; the spool sets it aside)."""
        self.counters["rejected"] += 1
        self.recent.discard(d.event.id)  # its producer may send it again
        log.exception("rejected event %s (%s from %s): %s", d.event.id, d.event.event_type, d.event.source, exc)
        self._refusing.append((d, f"rejected: {type(exc).__name__}: {exc}"))  # told with the batch

    async def _write(self, accepted: list[Accepted], changed: dict[str, Session]) -> None:
        """Append the batch, retrying while the store fails (events wait in memory)."""
        assert self.store is not None
        delay = RETRY_FIRST_S
        pending = accepted
        while True:
            try:
                self.store.append((a.event.session_id, a.event.timestamp, a.line, a.seq) for a in pending)
                break
            except StoreError as exc:
                self._store_failed(exc)
                # Sessions whose lines did land are not written twice.
                pending = [a for a in pending if session_key(a.event.session_id) not in exc.written]
                await trio.sleep(delay)  # a retry timer (the disk gives no signal to wait on)
                delay = min(delay * 2, RETRY_MAX_S)
        if not self._dirty:
            self._dirty_since = trio.current_time()
            self._meta_changed.set()  # (the timer starts counting)
        self._dirty.update(changed)
        if self.last_error:
            log.warning("the store can write again; %d events kept in memory are stored", len(accepted))
            self.last_error = None

    def _store_failed(self, exc: Exception) -> None:
        if self.last_error != str(exc):
            log.error("store: %s; keeping events in memory and retrying", exc)
        self.last_error = str(exc)
        self.counters["store_errors"] += 1

    # --- actions on sessions ----------------------------------------------------------
    def delete_session(self, session_id: str) -> bool:
        """Delete a session with its sub-agents (children would point at nothing)."""
        s = self.manager.remove(session_id)  # first: a cycle on disk cannot recurse forever
        if s is None:
            return False
        for child_id in list(s.child_session_ids):
            child = self.manager.get(child_id)
            if child is not None and child.parent_session_id == session_id:
                self.delete_session(child_id)
        self._dirty.pop(session_id, None)
        if self.store is not None:
            self.store.delete(session_id)
            parent = self.manager.get(s.parent_session_id or "")
            if parent is not None:
                self.store.save_sessions([parent])
        self.fanout.session_deleted(session_id)
        return True

    def prune(self, retention_days: float | None) -> int:
        if self.store is None:
            return 0
        expired = self.store.expired(list(self.manager.sessions.values()), retention_days)
        for sid in expired:
            self.delete_session(sid)
        if expired:
            log.info("retention: removed %d sessions older than %s days", len(expired), retention_days)
            try:
                self.store.order.compact()
            except OSError as exc:
                log.warning("retention: the seq log was not compacted: %s", exc)
        return len(expired)

    def session_action(self, action: str, session_id: str, value: Any = None) -> None:
        """Do ``action`` on a session (``core.actions``), store it, tell every subscriber.
        Raises ``actions.ActionError`` (``NoSuchSession`` for an unknown session)."""
        if action == "delete":
            actions.check(self.manager, action, session_id)
            try:
                self.delete_session(session_id)
            except OSError as exc:
                raise actions.ActionError(f"could not delete: {exc}") from None
            return
        changed = actions.apply(self.manager, action, session_id, value)
        if self.store is not None:
            try:
                self.store.save_sessions(changed)
            except StoreError as exc:
                self._store_failed(exc)
                raise actions.ActionError(f"could not store the change: {exc}") from None
        self.counters["session_actions"] += 1
        self.fanout.session_changed(changed)


def _call(hook: Callable[[Any], None], arg: Any) -> None:
    """A sink's callback (``on_stored``, ``on_changed``): its failure is logged, and
    never stops the pipeline."""
    try:
        hook(arg)
    except Exception:
        log.exception("a callback of the pipeline failed: %r", hook)


def _placed(ev: Event) -> tuple:
    """What the session machine may change on an event: where it belongs, what it is
    (a compaction's agent), the calls its turn left unanswered, the turn of a span
    (OTel's spans carry no prompt id: it is joined)."""
    return (ev.session_id, ev.parent_session_id, ev.event_type, ev.unanswered_calls is not None, ev.prompt_id)
