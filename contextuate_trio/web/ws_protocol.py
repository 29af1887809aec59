"""The WebSocket protocol, sans-IO: what the server says, whatever carries it.

As wsproto is to trio-websocket: this module turns a handshake's query and a client's
messages into replies and state, and the fan-out's messages into the texts to send; it
never awaits, sleeps or touches a socket. ``ws_server`` carries it over
trio-websocket, and ``contextuate-trio tail`` speaks it from the other end.

Messages (JSON text, each with a ``type``; the README has the full list):

- on connect: ``snapshot`` {seq, epoch, sessions, events}, then live ``event`` /
  ``events`` (a batch; ``seq`` is its last event's) and ``session_update`` /
  ``session_deleted``.
- ``?since=N``: instead of the snapshot, ``resume`` {seq, sessions} and every event
  numbered after N, in order, exactly once, from memory or from disk (numbers go on
  across daemon runs); when N is no longer on disk, ``reset`` and a fresh ``snapshot``.
- A client that falls behind is never dropped for it: it is served from memory or
  disk from the last number it was sent (``catch_up``) until it is live again.
"""

from __future__ import annotations

import base64
import collections
import json
import logging
import struct
import sys
from collections.abc import Callable, Iterable
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import attrs
import orjson

from contextuate_trio.core.actions import ActionError
from contextuate_trio.core.sessions import Session
from contextuate_trio.core.usage import PriceTable

log = logging.getLogger("contextuate.ws")

SUBPROTOCOL = "contextuate"
TOKEN_PROTOCOL_PREFIX = "contextuate.bearer."  # + base64url(token), no padding

# Close codes (4000-4999 are the application's own).
CLOSE_TOO_SLOW = 4008  # fell too far behind, or stopped reading: resume with ?since
CLOSE_KEEPALIVE = 4009  # no pong in time
CLOSE_SHUTDOWN = 1001  # the daemon is stopping

MAX_CLIENT_MESSAGE = 64 * 1024  # bytes a client may send in one message
BATCH_MAX = 500  # events in one ``events`` message
BATCH_BYTES = 256 * 1024  # ... and about this much text (a single event may be more)
LIVE_EVENT_MAX = 128 * 1024  # larger events are sent trimmed (``truncated: true``)
TRIM_STRING = 4096  # ... their strings cut to this many characters
TRIM_ITEMS = 200  # ... their lists to this many items
HISTORY_MAX = 5000  # most events one history request or snapshot returns
SESSIONS_FROM_DISK = 200  # newest sessions read for recent events older than the replay
CATCH_UP_CHUNK = 1000  # events read from disk per step of a client's catch-up
CHUNKS_KEPT = 4  # chunks read from disk kept for other clients catching up over them


# --- the token, as a subprotocol (browsers cannot set Authorization on a WebSocket) ----
def b64url_token(token: str) -> str:
    return base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


def token_from_protocols(protocols: Iterable[str]) -> str | None:
    for p in protocols:
        if p.startswith(TOKEN_PROTOCOL_PREFIX):
            raw = p[len(TOKEN_PROTOCOL_PREFIX) :]
            try:
                return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
            except (ValueError, UnicodeDecodeError):
                return None
    return None


# --- event texts -----------------------------------------------------------------------
def _trim(value: Any, limit: int = TRIM_STRING) -> Any:
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + f"… [{len(value) - limit} more characters]"
    if isinstance(value, dict):
        return {k: _trim(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        out = [_trim(v, limit) for v in value[:TRIM_ITEMS]]
        if len(value) > TRIM_ITEMS:
            out.append(f"… [{len(value) - TRIM_ITEMS} more items]")
        return out
    return value


def _compact(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def event_json(msg: dict) -> str:
    """A fan-out event message's event as JSON text, cached on the (shared) message;
    an oversized event is trimmed (the client asks ``get_event_detail`` for all of it)."""
    text = msg.get("_json")
    if text is None:
        line: bytes = msg["line"]
        if len(line) > LIVE_EVENT_MAX:
            d = json.loads(line)
            d["data"] = _trim(d.get("data"))
            d["truncated"] = True
            text = _compact(d)
        else:
            text = line.decode("utf-8", "surrogateescape").rstrip("\n")
        msg["_json"] = text
    return text


def dict_json(d: dict) -> str:
    """An event dict (from the store) as JSON text, trimmed when oversized."""
    text = _compact(d)
    if len(text) > LIVE_EVENT_MAX:
        text = _compact(dict(d, data=_trim(d.get("data")), truncated=True))
    return text


def batches(msgs: list[dict]) -> list[list[dict]]:
    """Event messages in groups of at most BATCH_MAX events and about BATCH_BYTES of
    text (one event alone may be larger): a client's message-size limit (1 MiB by
    default in most libraries) is never crossed by a burst of large events."""
    out: list[list[dict]] = []
    group: list[dict] = []
    size = 0
    for m in msgs:
        n = len(event_json(m))
        if group and (len(group) >= BATCH_MAX or size + n > BATCH_BYTES):
            out.append(group)
            group, size = [], 0
        group.append(m)
        size += n
    if group:
        out.append(group)
    return out


def batch_text(msgs: list[dict]) -> str:
    if len(msgs) == 1:
        m = msgs[0]
        return '{"type":"event","seq":%d,"event":%s}' % (m["seq"], event_json(m))
    return '{"type":"events","seq":%d,"events":[%s]}' % (msgs[-1]["seq"], ",".join(event_json(m) for m in msgs))


def text_frame(text: str) -> bytes:
    """``text`` as one final, unmasked WebSocket text frame (RFC 6455, 5.2): what a
    server writes, with no extension (trio-websocket's server negotiates none). The
    sender frames a client's texts itself, so the texts shared by every client are
    not each taken through wsproto (a frame object and copies per client). A lone
    surrogate becomes "?": a text frame must be valid UTF-8."""
    payload = text.encode("utf-8", "replace")
    n = len(payload)
    if n < 126:
        head = bytes((0x81, n))
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x81, 126, n)
    else:
        head = struct.pack("!BBQ", 0x81, 127, n)
    return head + payload


ENTRY_OVERHEAD = 200  # bytes of a FrameCache entry besides its text and frame (tuple, slot)


class FrameCache:
    """Frames of the texts several clients are sent, each made once: a batch's texts
    are shared by every client with the same filter, and making the frame (an
    encode and a copy of up to BATCH_BYTES) for each of five clients was a fifth of
    the fan-out. Keyed by the text object itself (held here, so its id is not reused
    while kept). Only texts of at least ``min_chars`` (a small one costs little to
    frame again; replies and updates would push the batches out); those used last
    are kept, about ``max_bytes`` of them in all, texts' memory included (what stays
    pinned when the daemon goes quiet); one over a quarter of that is framed each time."""

    def __init__(self, max_bytes: int = 4 * 1024 * 1024, min_chars: int = 2048) -> None:
        self.max_bytes = max_bytes
        self.min_chars = min_chars
        self.bytes = 0
        self._frames: collections.OrderedDict[int, tuple[str, bytes, int]] = collections.OrderedDict()

    def frame(self, text: str) -> bytes:
        if len(text) < self.min_chars:
            return text_frame(text)
        key = id(text)
        hit = self._frames.get(key)
        if hit is not None:  # (the text is held here: its id is no other's meanwhile)
            self._frames.move_to_end(key)
            return hit[1]
        frame = text_frame(text)
        cost = sys.getsizeof(text) + sys.getsizeof(frame) + ENTRY_OVERHEAD
        if cost > self.max_bytes // 4:
            return frame
        self._frames[key] = (text, frame, cost)
        self.bytes += cost
        while self.bytes > self.max_bytes:
            _, (_, _, old_cost) = self._frames.popitem(last=False)
            self.bytes -= old_cost
        return frame


class Raw(dict):
    """A reply whose ``events`` are already JSON texts (no decode/encode round trip)."""

    def __init__(self, kind: str, fields: dict, texts: list[str]) -> None:
        super().__init__(type=kind, **fields)
        self.texts = texts


class Encoder:
    """Messages to text; sessions rendered with the daemon's prices."""

    def __init__(self, prices: PriceTable) -> None:
        self.prices = prices

    def _default(self, o: Any) -> Any:
        if isinstance(o, Session):
            return o.public(self.prices)
        if isinstance(o, Filter):
            return o.public()
        if isinstance(o, (set, frozenset)):
            return sorted(o)
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")

    def dumps(self, obj: dict) -> str:
        try:
            text = orjson.dumps(obj, default=self._default).decode()
        except TypeError:  # what orjson refuses (a lone surrogate, a huge int): the stdlib
            text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=self._default)
        if isinstance(obj, Raw):
            return text[:-1] + ',"events":[' + ",".join(obj.texts) + "]}"
        return text


# --- what a client asks for --------------------------------------------------------------
class BadRequest(ValueError):
    pass


def str_list(value: Any, name: str) -> frozenset | None:
    """None or [] -> None (no filter); a list of strings -> a set; else BadRequest."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [v for v in value.split(",") if v]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"{name} must be a list of strings")
    if len(value) > 10_000:
        raise BadRequest(f"{name}: too many values")
    return frozenset(value) or None


class Filter:
    """What one client wants: None for a dimension means everything."""

    __slots__ = ("sessions", "machines", "types", "tools")

    def __init__(
        self,
        sessions: frozenset | None = None,
        machines: frozenset | None = None,
        types: frozenset | None = None,
        tools: frozenset | None = None,
    ) -> None:
        self.sessions = sessions
        self.machines = machines
        self.types = types
        self.tools = tools

    @property
    def everything(self) -> bool:
        return not (self.sessions or self.machines or self.types or self.tools)

    def _session_ok(self, sid: str | None, parent: str | None) -> bool:
        # A session's sub-agents come with it.
        return self.sessions is None or sid in self.sessions or (parent is not None and parent in self.sessions)

    def event_ok(self, ev: Any) -> bool:
        if self.everything:
            return True
        return (
            self._session_ok(ev.session_id, ev.parent_session_id)
            and (self.machines is None or ev.machine_id in self.machines)
            and (self.types is None or ev.event_type in self.types)
            and (self.tools is None or ev.tool_name in self.tools)
        )

    def dict_ok(self, d: dict) -> bool:
        if self.everything:
            return True
        return (
            self._session_ok(d.get("sessionId"), d.get("parentSessionId"))
            and (self.machines is None or d.get("machineId") in self.machines)
            and (self.types is None or d.get("eventType") in self.types)
            and (self.tools is None or d.get("toolName") in self.tools)
        )

    def key(self) -> tuple:
        """Equal for filters that pass the same things (clients that may share texts)."""
        return (self.sessions, self.machines, self.types, self.tools)

    def session_ok(self, s: Session) -> bool:
        return self._session_ok(s.session_id, s.parent_session_id) and (
            self.machines is None or s.machine_id in self.machines
        )

    def public(self) -> dict:
        def out(v: frozenset | None) -> list | None:
            return sorted(v) if v else None

        return {
            "sessions": out(self.sessions),
            "machines": out(self.machines),
            "eventTypes": out(self.types),
            "tools": out(self.tools),
        }


@attrs.define
class Handshake:
    """What a connecting client asked for in its URL."""

    filter: Filter
    since: int | None
    epoch: str | None
    limit: int


def _q(query: dict, name: str) -> str | None:
    v = query.get(name)
    return v[-1] if v else None


def parse_handshake(path: str, default_limit: int) -> Handshake:
    """``/?sessions=&machines=&types=&tools=&since=&epoch=&limit=``; BadRequest or
    ValueError for a query that cannot be used."""
    query = parse_qs(urlsplit(path).query)
    flt = Filter(
        sessions=str_list(_q(query, "sessions"), "sessions"),
        machines=str_list(_q(query, "machines"), "machines"),
        types=str_list(_q(query, "types") or _q(query, "eventTypes"), "types"),
        tools=str_list(_q(query, "tools"), "tools"),
    )
    since = _q(query, "since")
    limit = _q(query, "limit")
    return Handshake(
        filter=flt,
        since=int(since) if since not in (None, "") else None,
        epoch=_q(query, "epoch"),
        limit=min(max(int(limit), 0), HISTORY_MAX) if limit not in (None, "") else default_limit,
    )


# --- what the protocol needs of the daemon -------------------------------------------------
class Backend(Protocol):
    """The daemon's side, as the protocol sees it (the server adapts the broker)."""

    @property
    def seq(self) -> int: ...
    @property
    def replay(self) -> collections.deque: ...
    @property
    def sessions(self) -> dict[str, Session]: ...
    @property
    def has_store(self) -> bool: ...
    def stored_events(
        self, session_id: str, limit: int, before: int | None = None, after: int | None = None
    ) -> list[dict]: ...
    def session_action(self, action: str, session_id: str, value: Any) -> None: ...
    @property
    def first_on_disk(self) -> int:
        """The oldest event number the store can give back (0: none)."""
        ...

    def stored_after(self, since: int, upto: int) -> tuple[list[dict], int | None]:
        """Event messages (as the fan-out's) numbered after ``since`` and up to
        ``upto``, from disk, and the number through which they are all the disk holds
        (None: a session's file failed to read, for now)."""
        ...

    @property
    def deletions(self) -> int:
        """How many times events were removed from disk (a chunk read before is stale)."""
        ...


def replay_after(replay: collections.deque, seq: int, since: int) -> list[dict] | None:
    """Every event message after ``since``, or None when they are not all held."""
    if since < 0 or since > seq:
        return None
    if since == seq:
        return []
    if not replay or replay[0]["seq"] > since + 1:
        return None
    # The deque holds consecutive seqs: index arithmetic instead of a scan.
    start = since + 1 - replay[0]["seq"]
    return [replay[i] for i in range(start, len(replay))]


class WsProtocol:
    """One daemon run's side of the protocol: its epoch, the history before it, and
    the replies to every client's requests. Plain code over a ``Backend``."""

    def __init__(
        self,
        backend: Backend,
        encoder: Encoder,
        epoch: str,
        mode: str,
        now_ms: Callable[[], int],
        history: list[dict] | None = None,
    ) -> None:
        self.backend = backend
        self.encoder = encoder
        self.epoch = epoch
        self.mode = mode
        self.now_ms = now_ms
        self.history = history or []  # events stored before this run (snapshot filler)
        self.counters: collections.Counter = collections.Counter()
        # Chunks read from disk for lagging clients, by (after, upto), newest last,
        # and the backend's deletions count they were read at.
        self._chunks: collections.OrderedDict[tuple[int, int], dict] = collections.OrderedDict()
        self._chunks_at = 0

    # --- the first messages (the server takes them in the same step as it subscribes) ---
    def first_messages(self, hs: Handshake) -> tuple[list[str], int]:
        """The snapshot, or the resume and the events after ``since`` the memory
        holds, or a reset and a snapshot; and the number the client has had events
        up to (the sender ``catch_up``s from it when it is behind the live seq; the
        resume's ``seq`` says that number, so a client cut off meanwhile asks again
        from there). Exactly-once resume rests on the caller subscribing in the same
        synchronous step as this is built: every later event is in its queue, every
        earlier one in these messages or on disk."""
        seq = self.backend.seq
        if hs.since is None:
            return [self.snapshot_text(hs.filter, seq, hs.limit)], seq
        if self._held(hs.since, hs.epoch):
            self.counters["resumes"] += 1
            texts, cursor = self.catch_up(hs.filter, hs.since, memory_only=True)
            head = {
                "type": "resume",
                "seq": cursor,
                "since": hs.since,
                "epoch": self.epoch,
                "sessions": self.sessions(hs.filter),
            }
            return [self.encoder.dumps(head), *texts], cursor
        self.counters["resets"] += 1
        reason = "too old" if hs.epoch in (None, self.epoch) else "daemon restarted"
        return self._reset(hs.filter, reason, hs.limit), seq

    def _reset(self, flt: Filter, reason: str, limit: int) -> list[str]:
        seq = self.backend.seq
        reset = self.encoder.dumps({"type": "reset", "seq": seq, "epoch": self.epoch, "reason": reason})
        return [reset, self.snapshot_text(flt, seq, limit)]

    def _held(self, since: int, epoch: str | None = None) -> bool:
        """Every event after ``since`` can be given back: from disk (numbers there go
        on across runs), or from memory when ``since`` is of this run."""
        seq = self.backend.seq
        if since < 0 or since > seq:
            return False
        first = self.backend.first_on_disk
        if first and since + 1 >= first:
            return True
        if epoch not in (None, self.epoch):
            return False  # persistence off: another run's number means nothing here
        replay = self.backend.replay
        return since == seq or bool(replay) and replay[0]["seq"] <= since + 1

    def catch_up(self, flt: Filter, cursor: int, memory_only: bool = False) -> tuple[list[str], int]:
        """Texts of the events after ``cursor`` a client has not had, and the number
        it has had them up to: everything, when the memory holds it (call in the same
        step as subscribing); else the next chunk from disk. Events nobody holds any
        more (past retention, or never recorded on disk) are a reset and a snapshot."""
        seq = self.backend.seq
        if cursor >= seq:
            return [], seq
        held = replay_after(self.backend.replay, seq, cursor)
        if held is not None:
            return self.render(flt, held), seq
        if memory_only:
            return [], cursor
        replay = self.backend.replay
        chunk = None
        if self._held(cursor):
            # Up to the next multiple of the chunk size, and no further than what the
            # memory lacks.
            upto = cursor - cursor % CATCH_UP_CHUNK + CATCH_UP_CHUNK
            if replay:
                upto = min(upto, replay[0]["seq"] - 1)
            chunk = self._stored_chunk(cursor, upto)
        if chunk is None:
            self.counters["resets"] += 1
            return self._reset(flt, "too old", HISTORY_MAX), seq
        self.counters["caught_up_from_disk"] += len(chunk["events"])
        return self.render_batch(flt, chunk), chunk["seq"]

    def _stored_chunk(self, after: int, upto: int) -> dict | None:
        """The stored events numbered after ``after`` and up to ``upto`` as a batch (see
        ``render_batch``), or None when the disk has none of them. Shared by every
        client that catches up over the same numbers: steps end on multiples of
        CATCH_UP_CHUNK, so clients that fell out of their queues at different numbers
        read the same chunks after their first step, each read and rendered once
        (five dashboards behind a burst read the disk five times over before). A read
        that failed in part is sent to its client only: the next may succeed."""
        if self._chunks_at != self.backend.deletions:  # read before events were removed
            self._chunks.clear()
            self._chunks_at = self.backend.deletions
        key = (after, upto)
        chunk = self._chunks.get(key)
        if chunk is not None:
            self._chunks.move_to_end(key)
            return chunk
        msgs, through = self.backend.stored_after(after, upto)
        if through is None:  # a read failed in part: what it got, for this client only
            return {"type": "batch", "seq": msgs[-1]["seq"], "events": msgs, "sessions": []} if msgs else None
        if through <= after:
            return None
        # Through ``through``, also past the last event found: the numbers between are
        # of deleted sessions (a step that ended before them would find nothing next).
        chunk = self._chunks[key] = {"type": "batch", "seq": through, "events": msgs, "sessions": []}
        while len(self._chunks) > CHUNKS_KEPT:
            self._chunks.popitem(last=False)
        return chunk

    def forget_chunks(self, below: int | None = None) -> None:
        """Let go of the chunks read from disk that start before ``below`` (every
        client is past them), or of all of them."""
        for key in [k for k in self._chunks if below is None or k[0] < below]:
            del self._chunks[key]

    def caught_up_text(self, flt: Filter, cursor: int) -> str:
        """After a lagging client was served from memory or disk: the sessions as they
        are now (updates and deletions while it lagged were not queued for it)."""
        return self.encoder.dumps({"type": "caught_up", "seq": cursor, "sessions": self.sessions(flt)})

    def sessions(self, flt: Filter) -> list[dict]:
        prices = self.encoder.prices
        return [s.public(prices) for s in self.backend.sessions.values() if flt.session_ok(s)]

    def snapshot_text(self, flt: Filter, seq: int, limit: int) -> str:
        head = self.encoder.dumps(
            {
                "type": "snapshot",
                "seq": seq,
                "epoch": self.epoch,
                "mode": self.mode,
                "filter": flt.public(),
                "sessions": self.sessions(flt),
            }
        )
        return head[:-1] + ',"events":[' + ",".join(self.recent_event_texts(flt, limit)) + "]}"

    def recent_event_texts(self, flt: Filter, limit: int) -> list[str]:
        """The newest ``limit`` events (oldest first): the replay's, then older ones."""
        out: list[str] = []
        if limit <= 0:
            return out
        known = self.backend.sessions
        replay = self.backend.replay
        for m in reversed(replay):
            if len(out) >= limit:
                break
            ev = m["event"]
            if ev.session_id in known and flt.event_ok(ev):
                out.append(event_json(m))
        if len(out) < limit and replay and replay[0]["seq"] > 1:
            out += self._older_from_disk(flt, limit - len(out), limit)
        elif len(out) < limit:
            for d in reversed(self.history):
                if len(out) >= limit:
                    break
                if d.get("sessionId") in known and flt.dict_ok(d):
                    out.append(dict_json(d))
        out.reverse()
        return out

    def _older_from_disk(self, flt: Filter, want: int, limit: int) -> list[str]:
        """Events of this run that have left the replay, newest first, from the store."""
        replay = self.backend.replay
        seen = {m["event"].id for m in replay}
        oldest = replay[0]["event"].timestamp
        older: list[dict] = []
        newest = sorted(self.backend.sessions.values(), key=lambda s: s.last_event_time or 0, reverse=True)
        for s in newest[:SESSIONS_FROM_DISK]:
            if not self.backend.has_store or len(older) >= 4 * limit:
                break
            if (s.start_time or 0) > oldest:
                continue
            for d in self.backend.stored_events(s.session_id, want, before=oldest + 1):
                if d.get("id") not in seen and flt.dict_ok(d):
                    older.append(d)
        older.sort(key=lambda d: d.get("timestamp") or 0)
        return [dict_json(d) for d in reversed(older[-want:])]

    # --- live messages -------------------------------------------------------------------
    def render(self, flt: Filter, batch: list[dict]) -> list[str]:
        """Fan-out messages -> the texts to send: events batched, updates coalesced."""
        out: list[str] = []
        pending: list[dict] = []
        updates: dict[str, dict] = {}

        def flush_events() -> None:
            out.extend(batch_text(group) for group in batches(pending))
            pending.clear()

        def flush_updates() -> None:
            out.extend(self._update_text(msg) for msg in updates.values())
            updates.clear()

        for m in batch:
            t = m["type"]
            if t == "event":
                if updates:
                    flush_updates()
                if flt.event_ok(m["event"]):
                    pending.append(m)
            elif t == "session_update":
                s = m["session"]
                if flt.session_ok(s):
                    flush_events()
                    updates[s.session_id] = m  # (the fan-out's message, shared by every client)
            else:
                flush_events()
                flush_updates()
                out.append(self.encoder.dumps({k: v for k, v in m.items() if not k.startswith("_")}))
        flush_events()
        flush_updates()
        return out

    def render_batch(self, flt: Filter, batch: dict) -> list[str]:
        """A fan-out ``batch`` message's texts (its events, then its sessions' updates)
        for ``flt``: made once per filter and kept on the message, which every
        subscriber is handed (five dashboards that watch everything send the same
        texts; each rendering its own was most of the fan-out's cost)."""
        cache: dict[tuple, list[str]] = batch.setdefault("_texts", {})
        key = flt.key()
        texts = cache.get(key)
        if texts is None:
            texts = cache[key] = self.render(flt, [*batch["events"], *session_updates(batch)])
        return texts

    def _update_text(self, msg: dict) -> str:
        """A session_update's text, rendered once for every client that is sent this
        message (they render the same fan-out messages; ``Session.public`` was a tenth
        of their work), cached on the message as an event's text is."""
        text = msg.get("_text")
        if text is None:
            text = msg["_text"] = self.encoder.dumps({k: v for k, v in msg.items() if not k.startswith("_")})
        return text

    # --- requests --------------------------------------------------------------------------
    def reply(self, client: ClientState, raw: Any) -> str | None:
        """One client message -> the reply's text (None: no reply). Never raises."""
        req_id = None
        try:
            msg = _request(raw)
            req_id = msg.get("requestId")
            if req_id is not None and not isinstance(req_id, (str, int)):
                req_id = None
            kind = msg.get("type")
            handler = _HANDLERS.get(kind) if isinstance(kind, str) else None
            if handler is None:
                raise BadRequest(f"unknown message type {kind!r}")
            reply = handler(self, client, msg)
        except BadRequest as exc:
            self.counters["bad_messages"] += 1
            reply = {"type": "error", "message": str(exc)}
        except Exception as exc:  # a bug must not cost the connection
            log.exception("WebSocket request failed")
            reply = {"type": "error", "message": f"internal error: {exc}"}
        if reply is None:
            return None
        if req_id is not None:
            reply["requestId"] = req_id
        return self.encoder.dumps(reply)

    def find_event(self, event_id: str, session_id: Any = None, ts: Any = None) -> dict | None:
        for m in reversed(self.backend.replay):
            if m["event"].id == event_id:
                found: dict = json.loads(m["line"])
                return found
        for d in self.history:
            if d.get("id") == event_id:
                return d
        if not self.backend.has_store or not isinstance(session_id, str) or session_id not in self.backend.sessions:
            return None
        if isinstance(ts, int) and not isinstance(ts, bool):
            evs = self.backend.stored_events(session_id, 10_000, before=ts + 1, after=ts - 1)
        else:
            evs = self.backend.stored_events(session_id, HISTORY_MAX)
        return next((e for e in evs if e.get("id") == event_id), None)


def session_updates(batch: dict) -> list[dict]:
    """A fan-out batch's session_update messages, made once and shared by every client
    (each renders its text once: see ``WsProtocol._update_text``)."""
    updates = batch.get("_updates")
    if updates is None:
        seq = batch["seq"]
        updates = batch["_updates"] = [{"type": "session_update", "seq": seq, "session": s} for s in batch["sessions"]]
    return updates


@attrs.define(eq=False)
class ClientState:
    """What the protocol keeps per client: its filter, who it is (for logs), and
    whether its token may change sessions (the admin scope)."""

    filter: Filter
    remote: str
    may_act: bool = True


def _request(raw: Any) -> dict:
    if isinstance(raw, bytes):
        raise BadRequest("send JSON text messages, not binary")
    try:
        msg = json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"not JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise BadRequest("a message must be a JSON object")
    return msg


def _limit(msg: dict, default: int = 100) -> int:
    limit = msg.get("limit", default)
    if limit is None:
        return default
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise BadRequest("limit must be a non-negative integer")
    return min(limit, HISTORY_MAX)


def _time(msg: dict, name: str) -> int | None:
    v = msg.get(name)
    if v is None:
        return None
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise BadRequest(f"{name} must be a timestamp in ms")
    return int(v)


def _m_ping(p: WsProtocol, client: ClientState, msg: dict) -> dict:
    return {"type": "pong", "seq": p.backend.seq, "time": p.now_ms()}


def _m_filter(p: WsProtocol, client: ClientState, msg: dict) -> dict:
    client.filter = Filter(
        sessions=str_list(msg.get("sessions", msg.get("sessionIds")), "sessions"),
        machines=str_list(msg.get("machines"), "machines"),
        types=str_list(msg.get("eventTypes", msg.get("types")), "eventTypes"),
        tools=str_list(msg.get("tools"), "tools"),
    )
    return {"type": "filter", "filter": client.filter.public()}


def _m_subscribe(p: WsProtocol, client: ClientState, msg: dict) -> dict:
    ids = str_list(msg.get("sessionIds"), "sessionIds")
    f = client.filter
    client.filter = Filter(ids, f.machines, f.types, f.tools)
    return {"type": "subscribed", "sessionIds": sorted(ids) if ids else None}


def _m_unsubscribe(p: WsProtocol, client: ClientState, msg: dict) -> dict:
    ids = str_list(msg.get("sessionIds"), "sessionIds")
    f = client.filter
    if ids is None:  # unsubscribe from everything named: back to all sessions
        new = None
    elif f.sessions is None:
        # Subscribed to all: "all but these" is a filter on the other sessions.
        new = frozenset(set(p.backend.sessions) - ids) or None
    else:
        new = frozenset(f.sessions - ids) or None
    client.filter = Filter(new, f.machines, f.types, f.tools)
    return {"type": "unsubscribed", "sessionIds": sorted(new) if new else None}


def _m_get_sessions(p: WsProtocol, client: ClientState, msg: dict) -> dict:
    return {"type": "sessions", "seq": p.backend.seq, "sessions": p.sessions(Filter())}


def _m_get_events(p: WsProtocol, client: ClientState, msg: dict) -> dict:
    sid = msg.get("sessionId")
    if not isinstance(sid, str) or not sid:
        raise BadRequest("get_events needs a sessionId")
    if sid not in p.backend.sessions:
        raise BadRequest(f"no such session {sid!r}")
    limit = _limit(msg)
    before, after = _time(msg, "before"), _time(msg, "after")
    evs = p.backend.stored_events(sid, limit, before=before, after=after) if p.backend.has_store else []
    return Raw(
        "history",
        {"sessionId": sid, "before": before, "after": after, "hasMore": len(evs) >= limit > 0},
        [dict_json(e) for e in evs],
    )


def _m_get_all_recent_events(p: WsProtocol, client: ClientState, msg: dict) -> dict:
    return Raw("recent_events", {"seq": p.backend.seq}, p.recent_event_texts(Filter(), _limit(msg, 100)))


def _m_get_event_detail(p: WsProtocol, client: ClientState, msg: dict) -> dict:
    eid = msg.get("eventId")
    if not isinstance(eid, str) or not eid:
        raise BadRequest("get_event_detail needs an eventId")
    found = p.find_event(eid, msg.get("sessionId"), msg.get("timestamp"))
    if found is None:
        raise BadRequest(f"no such event {eid!r}")
    return {"type": "event_detail", "event": found}


def _m_session_action(p: WsProtocol, client: ClientState, msg: dict) -> dict:
    action = msg.get("action")
    sid = msg.get("sessionId")
    if not isinstance(action, str) or not isinstance(sid, str):
        raise BadRequest("session_action needs an action and a sessionId")
    if not client.may_act:
        raise BadRequest("this token lacks the 'admin' scope: session actions need it")
    try:
        p.backend.session_action(action, sid, msg.get("value"))
    except ActionError as exc:
        raise BadRequest(str(exc) or "action failed") from None
    log.info("session %s: %s (by %s)", sid, action, client.remote)
    return {"type": "action_done", "action": action, "sessionId": sid}


_HANDLERS: dict[str, Callable[[WsProtocol, ClientState, dict], dict | None]] = {
    "ping": _m_ping,
    "filter": _m_filter,
    "subscribe": _m_subscribe,
    "unsubscribe": _m_unsubscribe,
    "get_sessions": _m_get_sessions,
    "get_events": _m_get_events,
    "get_all_recent_events": _m_get_all_recent_events,
    "get_event_detail": _m_get_event_detail,
    "session_action": _m_session_action,
}


# --- the client's side (``contextuate-trio tail``) -------------------------------------
def handshake_query(
    sessions: Iterable[str] = (),
    machines: Iterable[str] = (),
    types: Iterable[str] = (),
    since: int | None = None,
    epoch: str | None = None,
    limit: int | None = None,
) -> dict[str, str]:
    """The query ``parse_handshake`` reads, from the client's side."""
    q: dict[str, str] = {}
    for name, values in (("sessions", sessions), ("machines", machines), ("types", types)):
        joined = ",".join(values)
        if joined:
            q[name] = joined
    if since is not None:
        q["since"] = str(since)
        if epoch:
            q["epoch"] = epoch
    if limit is not None:
        q["limit"] = str(limit)
    return q


@attrs.define
class Update:
    """What one server message means to a follower: events to show (in order), a
    note for the person, a session it learnt about."""

    events: list[dict] = attrs.Factory(list)
    note: str | None = None
    first: bool = False  # the first snapshot or resume of this follower


@attrs.define
class Follower:
    """A client that follows the stream and never shows an event twice or misses one
    while the daemon runs: it resumes with ``?since=<last seq>&epoch=…``, and after a
    reset (the daemon restarted) shows what came since the last event it showed."""

    history: int = 20  # events of the first snapshot to show
    since: int | None = None
    epoch: str | None = None
    started: bool = False
    resync: bool = False
    last_ts: int = 0
    shown: dict[str, None] = attrs.Factory(dict)  # ids shown lately (bounded)
    sessions: dict[str, dict] = attrs.Factory(dict)
    shown_max: int = 5000

    def query(
        self, sessions: Iterable[str] = (), machines: Iterable[str] = (), types: Iterable[str] = ()
    ) -> dict[str, str]:
        return handshake_query(
            sessions, machines, types, self.since, self.epoch, limit=self.history if self.since is None else None
        )

    def lost(self) -> None:
        """The connection could not be made at all: start over with a snapshot."""
        if not self.started:
            self.since = None

    def feed(self, msg: dict) -> Update:
        kind = msg.get("type")
        if kind in ("snapshot", "resume"):
            return self._first(msg)
        if kind == "reset":
            self.resync, self.since = True, None
            return Update(note=f"reconnected after a gap ({msg.get('reason', 'too old')})")
        if kind in ("event", "events"):
            evs = [msg["event"]] if kind == "event" else list(msg.get("events") or [])
            self.since = msg.get("seq", self.since)
            return Update(events=self._show(evs))
        if kind == "session_update":
            self._learn([msg.get("session")])
        elif kind == "caught_up":  # served from memory or disk after lagging: sessions now
            self.sessions.clear()
            self._learn(msg.get("sessions") or [])
            self.since = msg.get("seq", self.since)
        elif kind == "error":
            return Update(note=f"server: {msg.get('message')}")
        return Update()

    def _first(self, msg: dict) -> Update:
        self.epoch = msg.get("epoch", self.epoch)
        self._learn(msg.get("sessions") or [])
        evs = list(msg.get("events") or [])
        if msg["type"] == "snapshot" and self.resync:
            # After a gap: what came since the last event shown, once.
            evs = [e for e in evs if (e.get("timestamp") or 0) >= self.last_ts and e.get("id") not in self.shown]
        elif msg["type"] == "snapshot":
            evs = evs[-self.history :] if self.history else []
        else:
            evs = []
        self.resync = False
        first = not self.started
        self.started = True
        note = "reconnected; nothing missed" if msg["type"] == "resume" and not first else None
        self.since = msg.get("seq", self.since)
        return Update(events=self._show(evs), note=note, first=first)

    def _show(self, evs: list[dict]) -> list[dict]:
        for ev in evs:
            self.last_ts = max(self.last_ts, ev.get("timestamp") or 0)
            if ev.get("id"):
                self.shown[ev["id"]] = None
                if len(self.shown) > self.shown_max:
                    del self.shown[next(iter(self.shown))]
        return evs

    def _learn(self, sessions: list[Any]) -> None:
        for s in sessions:
            if isinstance(s, dict) and s.get("sessionId"):
                self.sessions[s["sessionId"]] = s
