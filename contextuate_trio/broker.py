"""The broker: every source feeds it, one pipeline task drains it.

    sources --(memory channel)--> dedupe -> sessions -> store -> acks -> subscribers

One task owns the session state and the files, so nothing needs a lock, and order is
the order of arrival. Sources block when the channel is full (back-pressure reaches
the hook, which then spools); subscribers never block the pipeline: each has a
bounded queue and is dropped when it is full.
"""

from __future__ import annotations

import collections
import json
import logging
import time
from typing import Callable, Optional

import attrs
import trio

from contextuate_trio import events
from contextuate_trio.events import Event
from contextuate_trio.sessions import Outcome, Session, SessionManager
from contextuate_trio.redact import Redactor, mask_values
from contextuate_trio.store import FileStore, StoreError, session_key

log = logging.getLogger("contextuate.broker")

MAX_BATCH = 1024
META_DELAY = 0.25  # seconds a changed session's meta.json may lag its events


@attrs.define(eq=False)
class Delivery:
    """One event on its way in; ``done`` is set once it is stored (or refused)."""

    event: Event
    done: Optional[trio.Event] = None
    ok: bool = False
    error: Optional[str] = None


class LiveEvent:
    """What subscribers and WebSocket resume need of an event besides its JSON line:
    the fields clients filter on. The event's payload is not kept (the line has it):
    the replay buffer holds tens of thousands of these."""

    __slots__ = ("id", "timestamp", "session_id", "parent_session_id", "machine_id",
                 "event_type", "tool_name")

    def __init__(self, ev: Event) -> None:
        self.id = ev.id
        self.timestamp = ev.timestamp
        self.session_id = ev.session_id
        self.parent_session_id = ev.parent_session_id
        self.machine_id = ev.machine_id
        self.event_type = ev.event_type
        self.tool_name = ev.tool_name


class RecentIds:
    """The ids seen lately, oldest forgotten first (a bounded ordered set)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._ids: dict[str, None] = {}

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._ids

    def add(self, event_id: str) -> None:
        self._ids[event_id] = None
        if len(self._ids) > self.cap:
            del self._ids[next(iter(self._ids))]

    def __len__(self) -> int:
        return len(self._ids)


class SeenIds:
    """Every id stored during this run, as a Bloom filter (1 MiB, 3 probes): "not
    seen" is certain, so only an id it may have seen — a real copy, or about one in
    7,000 after 150,000 events — costs a look on disk. Constant memory, O(1)."""

    BITS = 1 << 23
    _MASK = BITS - 1

    def __init__(self) -> None:
        self._bits = bytearray(self.BITS // 8)

    def _probes(self, event_id: str):
        h = hash(event_id) & 0xFFFF_FFFF_FFFF_FFFF
        return (h & self._MASK, (h >> 21) & self._MASK, (h >> 42) & self._MASK)

    def add(self, event_id: str) -> None:
        bits = self._bits
        for p in self._probes(event_id):
            bits[p >> 3] |= 1 << (p & 7)

    def __contains__(self, event_id: str) -> bool:
        bits = self._bits
        return all(bits[p >> 3] >> (p & 7) & 1 for p in self._probes(event_id))


class Subscription:
    """A sink's bounded queue of broker messages. Dropped (closed) when full.

    A *batched* subscription gets one ``{"type": "batch", "seq", "events": [...],
    "sessions": [...]}`` message per pipeline batch instead of one message per event,
    and its bound counts events, not messages: a reader that takes whatever is there
    whenever it wakes keeps up with bursts that would overflow a per-event queue."""

    def __init__(self, broker: "Broker", size: int, name: str, batched: bool = False) -> None:
        self.broker = broker
        self.name = name
        self.batched = batched
        self.max_events = size
        self.queued_events = 0  # batched only: events sent and not yet taken
        self.send, self.receive = trio.open_memory_channel(size)
        self.dropped: Optional[str] = None
        self.closed = trio.Event()  # set when dropped or closed

    def taken(self, message: dict) -> None:
        """The reader took ``message`` off the queue (batched accounting)."""
        if message.get("type") == "batch":
            self.queued_events -= len(message["events"])

    def close(self, why: Optional[str] = None) -> None:
        if self.dropped is None:
            self.dropped = why or "closed"
        self.broker._subscribers.discard(self)
        self.send.close()
        self.closed.set()


class Broker:
    def __init__(
        self,
        store: Optional[FileStore],
        manager: Optional[SessionManager] = None,
        *,
        channel_size: int = 10_000,
        recent_ids: int = 20_000,
        replay_size: int = 20_000,
        started_ms: Optional[int] = None,
        redactor: Optional[Redactor] = None,
    ) -> None:
        self.store = store
        self.redactor = redactor if redactor is not None else Redactor()
        self.manager = manager or SessionManager()
        self.send_channel, self._receive = trio.open_memory_channel(channel_size)
        self.recent = RecentIds(recent_ids)
        self.seen = SeenIds()
        self.started_ms = started_ms if started_ms is not None else int(time.time() * 1000)
        # Event numbers for WebSocket resume. They start where no earlier run's can
        # reach (the start time in µs), so a client resuming with a number from a
        # previous run is told to reset, with or without the run's epoch.
        self.seq = self.started_ms * 1000
        # (seq, message) pairs for WebSocket resume, newest last.
        self.replay: collections.deque = collections.deque(maxlen=replay_size)
        self._subscribers: set[Subscription] = set()
        self.counters: collections.Counter = collections.Counter()
        self.by_source: collections.Counter = collections.Counter()
        self.last_error: Optional[str] = None
        self.ready = trio.Event()
        self._dirty: dict[str, Session] = {}  # sessions whose meta.json is behind
        self._dirty_since = 0.0
        self.finished = trio.Event()
        self.on_stored: list[Callable[[list[Event]], None]] = []

    # --- start-up -----------------------------------------------------------------
    def load(self) -> int:
        """Sessions from disk; events written after their meta (a crash) replayed."""
        if self.store is None:
            return 0
        sessions, replay = self.store.open()
        for s in sessions:
            self.manager.restore(s)
        for raw in replay:
            try:
                ev = events.from_object(raw)
            except events.EventError:
                continue
            self.manager.apply(ev)
        if replay:
            log.warning("recovered %d events stored after the last metadata write", len(replay))
            self.store.save_sessions(self.manager.sessions.values())
        for eid in self.store.recent_ids(list(self.manager.sessions.values()), 20_000):
            self.recent.add(eid)
        return len(sessions)

    # --- sources' side --------------------------------------------------------------
    async def submit(self, event: Event, wait: bool = False) -> Delivery:
        """Hand an event to the pipeline; with ``wait``, return once it is stored."""
        d = Delivery(event, trio.Event() if wait else None)
        self.by_source[event.source or "unknown"] += 1
        await self.send_channel.send(d)
        if d.done is not None:
            await d.done.wait()
        return d

    async def enqueue(self, event: Event) -> Delivery:
        """Hand an event over without waiting; ``delivery.done`` tells when stored."""
        d = Delivery(event, trio.Event())
        self.by_source[event.source or "unknown"] += 1
        await self.send_channel.send(d)
        return d

    def queue_depth(self) -> int:
        return self._receive.statistics().current_buffer_used

    # --- sinks' side ----------------------------------------------------------------
    def subscribe(self, size: int = 1000, name: str = "subscriber", batched: bool = False) -> Subscription:
        sub = Subscription(self, size, name, batched)
        self._subscribers.add(sub)
        return sub

    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def _publish(self, message: dict, *, plain: bool = True, batched: bool = True) -> None:
        """Offer ``message`` to the per-message (``plain``) and/or ``batched``
        subscribers; one whose queue is full is dropped, never waited for."""
        for sub in list(self._subscribers):
            if not (batched if sub.batched else plain):
                continue
            try:
                if sub.batched and message.get("type") == "batch":
                    sub.queued_events += len(message["events"])
                    if sub.queued_events > sub.max_events:
                        raise trio.WouldBlock
                sub.send.send_nowait(message)
            except trio.WouldBlock:
                self.counters["dropped_subscribers"] += 1
                unit = "events" if sub.batched else "messages"
                log.warning("dropping %s: it fell %d %s behind", sub.name, sub.max_events, unit)
                sub.close("too slow")
            except trio.ClosedResourceError:
                sub.close()

    # --- the pipeline ---------------------------------------------------------------
    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Drain the channel until every sender has closed it (or we are cancelled)."""
        task_status.started()
        self.ready.set()
        try:
            async with self._receive:
                while True:
                    try:
                        batch = [await self._receive_or_flush()]
                    except trio.EndOfChannel:
                        return
                    while len(batch) < MAX_BATCH:
                        try:
                            batch.append(self._receive.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    await self.process(batch)
        finally:
            self.flush_sessions()
            self.finished.set()

    async def _receive_or_flush(self) -> Delivery:
        """The next delivery; while waiting for it, session metadata that changed is
        written once it is META_DELAY old (see ``flush_sessions``)."""
        while self._dirty:
            with trio.move_on_at(self._dirty_since + META_DELAY):
                return await self._receive.receive()
            self.flush_sessions()
        return await self._receive.receive()

    def flush_sessions(self) -> None:
        """Write the metadata of sessions changed since the last write.

        Deferred by up to META_DELAY, so a burst rewrites each session's meta.json
        once rather than once per batch (it was a fifth of the pipeline's time). Safe
        across a crash: each meta records the size of the events file it counts, and
        a start replays whatever was appended after it."""
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
        if self.store is None:
            return False
        if ev.timestamp >= self.started_ms and ev.id not in self.seen:
            return False  # certainly not stored during this run, and newer than it
        # An event from before this start (spool, a catch-up), or one this run may
        # have stored already: ask the disk, in the sessions it can belong to, reading
        # only the blocks around its time.
        root = self.manager.get(ev.session_id)
        if root is None:
            return False
        for sid in [root.session_id, *root.child_session_ids]:
            if self.store.contains(sid, ev.id, ev.timestamp):
                return True
        return False

    async def process(self, batch: list[Delivery]) -> None:
        accepted: list[tuple[Delivery, Event, bytes]] = []
        changed: dict[str, Session] = {}
        duplicates: list[Delivery] = []
        for d in batch:
            ev = d.event
            try:
                if self._duplicate(ev):
                    self.counters["duplicates"] += 1
                    duplicates.append(d)
                    continue
                outcome: Outcome = self.manager.apply(ev)
                line = self._redacted_line(ev, outcome.changed)
            except Exception as exc:  # one event must never take the pipeline down
                self._reject(d, exc)
                continue
            self.recent.add(ev.id)
            self.seen.add(ev.id)
            for s in outcome.changed:
                changed[s.session_id] = s
            if log.isEnabledFor(logging.DEBUG):
                log.debug("[%s] Received event from %s/%s: %s", (ev.source or "?").title(),
                          ev.machine_id, ev.session_id[:8], ev.event_type)
            accepted.append((d, ev, line))
        if self.store is not None and accepted:
            await self._write(accepted, changed)
        self.counters["events"] += len(accepted)
        for d, ev, line in accepted:
            d.ok = True
            if d.done is not None:
                d.done.set()
        for d in duplicates:
            d.ok = True
            if d.done is not None:
                d.done.set()
        if accepted:
            stored = [ev for _, ev, _ in accepted]
            for hook in self.on_stored:
                hook(stored)
            self._fan_out(accepted, changed)

    def _reject(self, d: Delivery, exc: Exception) -> None:
        """An event the pipeline could not handle (a bug): logged with its id and
        refused, so its producer keeps it (the hook spools it; the spool sets it aside)."""
        self.counters["rejected"] += 1
        log.exception("rejected event %s (%s from %s): %s", d.event.id, d.event.event_type,
                      d.event.source, exc)
        d.ok = False
        d.error = f"rejected: {type(exc).__name__}: {exc}"
        if d.done is not None:
            d.done.set()

    def _redacted_line(self, ev: Event, sessions: list) -> bytes:
        """The event's stored form: secrets masked, and text that cannot be UTF-8 (lone
        surrogates from ``\\ud800`` escapes) replaced. The event object and the text the
        sessions took from it are fixed too, so neither the disk nor a browser ever
        holds what was masked."""
        text = events.dumps(ev)
        masked = self.redactor.text(text)
        try:
            data = masked.encode("utf-8") + b"\n"
        except UnicodeEncodeError:
            masked = masked.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            data = masked.encode("utf-8") + b"\n"
        if masked != text:
            self.counters["redacted_events"] += 1
            old_summary = ev.summary
            try:
                obj = json.loads(masked)
            except ValueError:  # a (custom) pattern crossed a string's end: go value by value
                obj = mask_values(self.redactor, events.to_dict(ev))
            ev.data = obj.get("data", {})
            # The summary was cut from the unmasked payload (a cut secret no longer
            # matches its pattern): made again from the masked one.
            ev.summary = (events.summarize(ev.event_type, ev.data) if ev.from_hook and isinstance(ev.data, dict)
                          else obj.get("summary"))
            masked = events.dumps(ev)
            data = masked.encode("utf-8", "replace") + b"\n"
            mask = self.redactor.text
            for s in sessions:
                if s.last_summary is not None and s.last_summary == old_summary:
                    s.last_summary = ev.summary
                elif s.last_summary:
                    s.last_summary = mask(s.last_summary)
                s.description = mask(s.description) if s.description else s.description
                for spawn in s.pending_spawns:
                    if isinstance(spawn.get("description"), str):
                        spawn["description"] = mask(spawn["description"])
        return data

    async def _write(self, accepted, changed) -> None:
        delay = 0.1
        pending = accepted
        while True:
            try:
                self.store.append((ev.session_id, ev.timestamp, line) for _, ev, line in pending)
                break
            except StoreError as exc:
                self._store_failed(exc)
                # Sessions whose lines did land are not written twice.
                pending = [a for a in pending if session_key(a[1].session_id) not in exc.written]
                await trio.sleep(delay)  # a retry timer (the disk gives no signal to wait on)
                delay = min(delay * 2, 5.0)
        if not self._dirty:
            self._dirty_since = trio.current_time()
        self._dirty.update(changed)
        if trio.current_time() - self._dirty_since >= META_DELAY:
            self.flush_sessions()  # a steady stream: still at most every META_DELAY
        if self.last_error:
            log.warning("the store can write again; %d events kept in memory are stored", len(accepted))
            self.last_error = None

    def _store_failed(self, exc: Exception) -> None:
        if self.last_error != str(exc):
            log.error("store: %s; keeping events in memory and retrying", exc)
        self.last_error = str(exc)
        self.counters["store_errors"] += 1

    def _fan_out(self, accepted, changed) -> None:
        msgs = []
        for _, ev, line in accepted:
            self.seq += 1
            msg = {"type": "event", "seq": self.seq, "event": LiveEvent(ev), "line": line}
            self.replay.append(msg)
            msgs.append(msg)
        if any(not sub.batched for sub in self._subscribers):
            for msg in msgs:
                self._publish(msg, batched=False)
            for s in changed.values():
                self._publish({"type": "session_update", "seq": self.seq, "session": s}, batched=False)
        self._publish({"type": "batch", "seq": self.seq, "events": msgs,
                       "sessions": list(changed.values())}, plain=False)

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
        self._publish({"type": "session_deleted", "seq": self.seq, "sessionId": session_id})
        return True

    def prune(self, retention_days: Optional[float]) -> int:
        if self.store is None:
            return 0
        expired = self.store.expired(list(self.manager.sessions.values()), retention_days)
        for sid in expired:
            self.delete_session(sid)
        if expired:
            log.info("retention: removed %d sessions older than %s days", len(expired), retention_days)
        return len(expired)

    # --- actions people take from the dashboard (persisted, broadcast to every client) ---
    SESSION_ACTIONS = ("rename", "pin", "unpin", "hide", "unhide", "delete", "set_parent", "remove_parent")

    def session_action(self, action: str, session_id: str, value=None) -> tuple[bool, Optional[str]]:
        """Do ``action`` on a session, store it, tell every subscriber.

        ``value``: the new name for ``rename`` (empty or None: back to none), the
        parent's id for ``set_parent``. Returns (done, why not).
        """
        from contextuate_trio.sessions import ActionError, set_parent

        if action not in self.SESSION_ACTIONS:
            return False, f"unknown action {action!r} (one of {', '.join(self.SESSION_ACTIONS)})"
        s = self.manager.get(session_id)
        if s is None:
            return False, f"no such session {session_id!r}"
        if action == "delete":
            try:
                self.delete_session(session_id)
            except OSError as exc:
                return False, f"could not delete: {exc}"
            return True, None
        changed = [s]
        try:
            if action == "rename":
                if value is not None and not isinstance(value, str):
                    return False, "rename needs a string value"
                name = " ".join((value or "").split())[:200]
                s.name = name or None
            elif action in ("pin", "unpin"):
                s.pinned = action == "pin"
            elif action in ("hide", "unhide"):
                s.hidden = action == "hide"
            elif action == "set_parent":
                if not isinstance(value, str) or not value:
                    return False, "set_parent needs the parent's session id as value"
                changed = set_parent(self.manager, session_id, value)
            elif action == "remove_parent":
                changed = set_parent(self.manager, session_id, None)
        except ActionError as exc:
            return False, str(exc)
        if self.store is not None:
            try:
                self.store.save_sessions(changed)
            except StoreError as exc:
                self._store_failed(exc)
                return False, f"could not store the change: {exc}"
        self.counters["session_actions"] += 1
        for c in changed:
            self._publish({"type": "session_update", "seq": self.seq, "session": c})
        return True, None
