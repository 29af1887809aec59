"""Fan-out: what the pipeline stored, offered to every sink, and kept for resume.

Sinks never block the pipeline: each subscription has a bounded queue and is dropped
(closed, with a reason) when it is full. Every stored event gets the next ``seq``; the
newest ``replay_size`` of them are kept (slim records, see ``LiveEvent``) so a
WebSocket client can resume from a number without missing or repeating one.
"""

from __future__ import annotations

import collections
import enum
import logging
from collections.abc import Iterable
from typing import Any

import orjson
import trio

from contextuate_trio.core.events import Event
from contextuate_trio.core.sessions import Session

log = logging.getLogger("contextuate.fanout")


class DropReason(enum.Enum):
    """Why a subscription ended."""

    CLOSED = "closed"  # its owner closed it, or the daemon is stopping
    TOO_SLOW = "too slow"  # its queue was full: the reader fell behind


class LiveEvent:
    """What subscribers and WebSocket resume need of an event besides its JSON line:
    the fields clients filter on. The event's payload is not kept (the line has it):
    the replay buffer holds tens of thousands of these."""

    __slots__ = ("id", "timestamp", "session_id", "parent_session_id", "machine_id", "event_type", "tool_name")

    def __init__(self, ev: Event) -> None:
        self.id = ev.id
        self.timestamp = ev.timestamp
        self.session_id = ev.session_id
        self.parent_session_id = ev.parent_session_id
        self.machine_id = ev.machine_id
        self.event_type = ev.event_type
        self.tool_name = ev.tool_name


class StoredEvent:
    """A ``LiveEvent`` read from a stored line, parsed only when a field is asked for:
    a client that takes every event never asks, and parsing each line was the
    largest cost of catching a client up from disk."""

    __slots__ = ("_line", "_d")

    def __init__(self, line: bytes) -> None:
        self._line = line
        self._d: dict[str, Any] | None = None

    def _get(self, key: str) -> Any:
        if self._d is None:
            d = orjson.loads(self._line)
            self._d = d if isinstance(d, dict) else {}
        return self._d.get(key)

    id = property(lambda self: self._get("id"))
    timestamp = property(lambda self: self._get("timestamp"))
    session_id = property(lambda self: self._get("sessionId"))
    parent_session_id = property(lambda self: self._get("parentSessionId"))
    machine_id = property(lambda self: self._get("machineId"))
    event_type = property(lambda self: self._get("eventType"))
    tool_name = property(lambda self: self._get("toolName"))


class Subscription:
    """A sink's bounded queue of fan-out messages. Dropped (closed) when full.

    A *batched* subscription gets one ``{"type": "batch", "seq", "events": [...],
    "sessions": [...]}`` message per pipeline batch instead of one message per event,
    and its bound counts events, not messages: a reader that takes whatever is there
    whenever it wakes keeps up with bursts that would overflow a per-event queue."""

    def __init__(self, fanout: FanOut, size: int, name: str, batched: bool = False) -> None:
        self.fanout = fanout
        self.name = name
        self.batched = batched
        self.max_events = size
        self.queued_events = 0  # batched only: events sent and not yet taken
        self.send, self.receive = trio.open_memory_channel[dict](size)
        self.dropped: DropReason | None = None

    @property
    def too_slow(self) -> bool:
        return self.dropped is DropReason.TOO_SLOW

    def taken(self, message: dict) -> None:
        """The reader took ``message`` off the queue (batched accounting)."""
        if message.get("type") == "batch":
            self.queued_events -= len(message["events"])

    def close(self, why: DropReason = DropReason.CLOSED) -> None:
        if self.dropped is None:
            self.dropped = why
        self.fanout.unsubscribe(self)
        self.send.close()


class FanOut:
    """Subscriptions and the resume window. Owned by the pipeline task (no locks)."""

    def __init__(self, replay_size: int, first_seq: int) -> None:
        # Event numbers for WebSocket resume; see ``Broker`` for where they start.
        self.seq = first_seq
        # Event messages for WebSocket resume, consecutive seqs, newest last.
        self.replay: collections.deque = collections.deque(maxlen=replay_size)
        self._subscribers: set[Subscription] = set()
        self.dropped = 0

    def subscribe(self, size: int = 1000, name: str = "subscriber", batched: bool = False) -> Subscription:
        sub = Subscription(self, size, name, batched)
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    def count(self) -> int:
        return len(self._subscribers)

    def publish(self, message: dict, *, plain: bool = True, batched: bool = True) -> None:
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
                self.dropped += 1
                unit = "events" if sub.batched else "messages"
                # A WebSocket client then catches up from memory or disk.
                log.info("closing the queue of %s: it fell %d %s behind", sub.name, sub.max_events, unit)
                sub.close(DropReason.TOO_SLOW)
            except trio.ClosedResourceError:
                sub.close()

    def stored(self, stored: list[tuple[int, Event, bytes]], changed: Iterable[Session]) -> None:
        """What the pipeline just stored (numbered by it, the next seqs in order):
        kept for resume, offered to all."""
        msgs = []
        for seq, ev, line in stored:
            msg: dict[str, Any] = {"type": "event", "seq": seq, "event": LiveEvent(ev), "line": line}
            self.replay.append(msg)
            msgs.append(msg)
        if msgs:
            self.seq = msgs[-1]["seq"]
        sessions = list(changed)
        if any(not sub.batched for sub in self._subscribers):
            for msg in msgs:
                self.publish(msg, batched=False)
            for s in sessions:
                self.publish({"type": "session_update", "seq": self.seq, "session": s}, batched=False)
        self.publish({"type": "batch", "seq": self.seq, "events": msgs, "sessions": sessions}, plain=False)

    def session_changed(self, sessions: Iterable[Session]) -> None:
        for s in sessions:
            self.publish({"type": "session_update", "seq": self.seq, "session": s})

    def session_deleted(self, session_id: str) -> None:
        self.publish({"type": "session_deleted", "seq": self.seq, "sessionId": session_id})
