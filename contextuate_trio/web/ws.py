"""The WebSocket server (trio-websocket on ``server.wsPort``): live fan-out to dashboards.

Protocol (JSON text messages, each with a ``type``; see the README for the full list):

- on connect: ``snapshot`` {seq, epoch, sessions, events}, then live ``event`` /
  ``events`` (a batch; ``seq`` is its last event's) and ``session_update`` /
  ``session_deleted``.
- ``?since=N&epoch=E``: instead of the snapshot, ``resume`` {seq, sessions} and every
  event numbered after N, in order, exactly once; when N is too old (or from another
  daemon run) ``reset`` and a fresh ``snapshot``.

Exactly-once resume rests on one rule: the client's broker subscription is registered
in the same synchronous step (no ``await`` in between) as its snapshot or replay is
taken, so every later event is in the queue and every earlier one is in the snapshot.

Each client has a bounded queue (the broker drops a client that falls too far behind);
a client whose socket stops draining, or that does not answer pings, is closed with a
code and a log line. Nothing here ever blocks the broker.
"""

from __future__ import annotations

import base64
import collections
import json
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any, Iterable, Optional
from urllib.parse import parse_qs, urlsplit

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

from contextuate_trio.web.security import Guard

if TYPE_CHECKING:
    from contextuate_trio.broker import Broker, Subscription
    from contextuate_trio.daemon import Daemon

log = logging.getLogger("contextuate.ws")

SUBPROTOCOL = "contextuate"
TOKEN_PROTOCOL_PREFIX = "contextuate.bearer."  # + base64url(token), no padding

# Close codes (4000-4999 are the application's own).
CLOSE_TOO_SLOW = 4008  # fell too far behind, or stopped reading: resume with ?since
CLOSE_KEEPALIVE = 4009  # no pong in time
CLOSE_SHUTDOWN = 1001  # the daemon is stopping

MAX_CLIENT_MESSAGE = 64 * 1024  # bytes a client may send in one message
BATCH_MAX = 500  # events in one ``events`` message
REQUESTS_PER_S = 100  # a client's sustained request rate; beyond it, its reader waits
REQUESTS_BURST = 200
LIVE_EVENT_MAX = 128 * 1024  # larger events are sent trimmed (``truncated: true``)
TRIM_STRING = 4096  # ... their strings cut to this many characters
HISTORY_MAX = 5000  # most events one history request or snapshot returns


def b64url_token(token: str) -> str:
    return base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


def _token_from_protocols(protocols: Iterable[str]) -> Optional[str]:
    for p in protocols:
        if p.startswith(TOKEN_PROTOCOL_PREFIX):
            raw = p[len(TOKEN_PROTOCOL_PREFIX):]
            try:
                return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
            except (ValueError, UnicodeDecodeError):
                return None
    return None


def _trim(value: Any, limit: int = TRIM_STRING) -> Any:
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + f"… [{len(value) - limit} more characters]"
    if isinstance(value, dict):
        return {k: _trim(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        out = [_trim(v, limit) for v in value[:200]]
        if len(value) > 200:
            out.append(f"… [{len(value) - 200} more items]")
        return out
    return value


def event_json(msg: dict) -> str:
    """A broker event message's event as JSON text, cached on the (shared) message;
    an oversized event is trimmed (the client asks ``get_event_detail`` for all of it)."""
    text = msg.get("_json")
    if text is None:
        line: bytes = msg["line"]
        if len(line) > LIVE_EVENT_MAX:
            d = json.loads(line)
            d["data"] = _trim(d.get("data"))
            d["truncated"] = True
            text = json.dumps(d, ensure_ascii=False, separators=(",", ":"))
        else:
            text = line.decode("utf-8", "surrogateescape").rstrip("\n")
        msg["_json"] = text
    return text


def dict_json(d: dict) -> str:
    """An event dict (from the store) as JSON text, trimmed when oversized."""
    text = json.dumps(d, ensure_ascii=False, separators=(",", ":"))
    if len(text) > LIVE_EVENT_MAX:
        d = dict(d, data=_trim(d.get("data")), truncated=True)
        text = json.dumps(d, ensure_ascii=False, separators=(",", ":"))
    return text


class BadRequest(ValueError):
    pass


def _str_list(value: Any, name: str) -> Optional[frozenset]:
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

    def __init__(self, sessions=None, machines=None, types=None, tools=None) -> None:
        self.sessions: Optional[frozenset] = sessions
        self.machines: Optional[frozenset] = machines
        self.types: Optional[frozenset] = types
        self.tools: Optional[frozenset] = tools

    @property
    def everything(self) -> bool:
        return not (self.sessions or self.machines or self.types or self.tools)

    def _session_ok(self, sid: Optional[str], parent: Optional[str]) -> bool:
        # A session's sub-agents come with it.
        return self.sessions is None or sid in self.sessions or (parent is not None and parent in self.sessions)

    def event_ok(self, ev) -> bool:
        if self.everything:
            return True
        return (self._session_ok(ev.session_id, ev.parent_session_id)
                and (self.machines is None or ev.machine_id in self.machines)
                and (self.types is None or ev.event_type in self.types)
                and (self.tools is None or ev.tool_name in self.tools))

    def dict_ok(self, d: dict) -> bool:
        if self.everything:
            return True
        return (self._session_ok(d.get("sessionId"), d.get("parentSessionId"))
                and (self.machines is None or d.get("machineId") in self.machines)
                and (self.types is None or d.get("eventType") in self.types)
                and (self.tools is None or d.get("toolName") in self.tools))

    def session_ok(self, s) -> bool:
        return (self._session_ok(s.session_id, s.parent_session_id)
                and (self.machines is None or s.machine_id in self.machines))

    def public(self) -> dict:
        def out(v):
            return sorted(v) if v else None
        return {"sessions": out(self.sessions), "machines": out(self.machines),
                "eventTypes": out(self.types), "tools": out(self.tools)}


class Client:
    def __init__(self, server: "WsServer", ws: WebSocketConnection, remote: str, flt: Filter) -> None:
        self.server = server
        self.ws = ws
        self.remote = remote
        self.filter = flt
        self.sub: Optional["Subscription"] = None
        self.connected = time.time()
        self.sent = 0
        self.closing: Optional[tuple[int, str]] = None
        self.sending = False  # inside send_message: a frame may be half written
        self.tokens = float(REQUESTS_BURST)  # request budget (see WsServer._throttle)
        self.tokens_at = trio.current_time()

    def queue_depth(self) -> int:
        if self.sub is None:
            return 0
        return self.sub.queued_events


class WsServer:
    def __init__(self, daemon: "Daemon") -> None:
        self.daemon = daemon
        self.broker: "Broker" = daemon.broker
        cfg = daemon.config
        self.host = cfg.server.host
        self.port = cfg.server.ws_port
        self.guard = Guard(cfg.server.allowed_hosts, cfg.server.token, cfg.server.host)
        # Tunables (tests shrink them).
        # Events a client may lag behind before it is dropped: as many as the broker
        # keeps for resume, so a dropped client can usually come back with ?since=.
        self.queue_size = self.broker.replay.maxlen or 20_000
        self.snapshot_events = 1000
        self.ping_interval = 20.0
        self.ping_timeout = 20.0
        self.send_timeout = 30.0
        self.max_message = MAX_CLIENT_MESSAGE
        # A new epoch per daemon run: a ``since`` from another run means nothing here.
        self.epoch = secrets.token_hex(6)
        self.clients: set[Client] = set()
        self.counters: collections.Counter = collections.Counter()
        self.history: list[dict] = []  # events stored before this run (snapshot filler)
        self.bound_port: Optional[int] = None

    # --- life cycle -------------------------------------------------------------------
    def load_history(self, budget: int = HISTORY_MAX) -> None:
        """The last events stored before this run, newest sessions first (read once)."""
        store = self.broker.store
        if store is None:
            return
        out: list[dict] = []
        sessions = sorted(self.broker.manager.sessions.values(),
                          key=lambda s: s.last_event_time or 0, reverse=True)
        for s in sessions[:200]:
            if len(out) >= budget:
                break
            try:
                out.extend(store.events(s.session_id, min(budget - len(out), 500)))
            except Exception as exc:  # a damaged session must not stop the server
                log.warning("history of %s unreadable: %s", s.session_id, exc)
        out.sort(key=lambda e: e.get("timestamp") or 0)
        self.history = out[-budget:]

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.load_history()
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                lambda task_status: serve_websocket(
                    self._handle, self.host, self.port, None,
                    message_queue_size=16, max_message_size=self.max_message,
                    connect_timeout=10, disconnect_timeout=2, task_status=task_status))
            self.bound_port = server.port if len(server.listeners) == 1 else self.port
            host = f"[{self.host}]" if ":" in self.host else self.host
            task_status.started(f"ws://{host}:{self.bound_port}/")
            await trio.sleep_forever()

    def dashboard_ports(self) -> set[int]:
        ports = {self.daemon.config.server.port}
        for url in getattr(self.daemon, "http_urls", None) or []:
            tail = url.rstrip("/").rsplit(":", 1)[-1]
            if tail.isdigit():
                ports.add(int(tail))
        return ports

    # --- handshake --------------------------------------------------------------------
    async def _handle(self, request: WebSocketRequest) -> None:
        """One connection. Whatever happens to it stays with it: trio-websocket hands
        a handler's exception to the server's nursery, which would end the daemon."""
        try:
            await self._handle_one(request)
        except* (ConnectionClosed, OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            self.counters["aborted"] += 1  # the peer went away mid-handshake or mid-message
        except* Exception:
            log.exception("WebSocket connection failed")
            self.counters["errors"] += 1

    async def _handle_one(self, request: WebSocketRequest) -> None:
        r = request.remote
        remote = f"{r.address}:{r.port}" if hasattr(r, "port") else str(r)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers}
        # wsproto takes Host out of the header list; it is on the handshake event.
        host = getattr(getattr(request, "_event", None), "host", None) or headers.get("host")
        origin = headers.get("origin")
        if not self.guard.host_ok(host):
            return await self._refuse(request, 403, f"host {host!r} not allowed", remote)
        if not self.guard.origin_ok(origin, self.dashboard_ports()):
            return await self._refuse(request, 403, f"origin {origin!r} not allowed", remote)
        if self.guard.token is not None:
            auth = headers.get("authorization")
            if auth is None:
                tok = _token_from_protocols(request.proposed_subprotocols)
                auth = f"Bearer {tok}" if tok is not None else None
            if not self.guard.token_ok(auth):
                return await self._refuse(request, 401, "missing or wrong token", remote)
        try:
            query = parse_qs(urlsplit(request.path).query)
            flt = Filter(
                sessions=_str_list(_q(query, "sessions"), "sessions"),
                machines=_str_list(_q(query, "machines"), "machines"),
                types=_str_list(_q(query, "types") or _q(query, "eventTypes"), "types"),
                tools=_str_list(_q(query, "tools"), "tools"),
            )
            since = _q(query, "since")
            since = int(since) if since not in (None, "") else None
            limit = _q(query, "limit")
            limit = min(max(int(limit), 0), HISTORY_MAX) if limit not in (None, "") else self.snapshot_events
        except (BadRequest, ValueError) as exc:
            return await self._refuse(request, 400, f"bad query: {exc}", remote)
        epoch = _q(query, "epoch")
        proto = SUBPROTOCOL if SUBPROTOCOL in request.proposed_subprotocols else None
        ws = await request.accept(subprotocol=proto)
        client = Client(self, ws, remote, flt)
        self.counters["connections"] += 1
        try:
            await self._run_client(client, since, epoch, limit)
        finally:
            self.clients.discard(client)
            if client.sub is not None:
                client.sub.close()

    async def _refuse(self, request: WebSocketRequest, status: int, why: str, remote: str) -> None:
        self.counters[f"refused_{status}"] += 1
        log.warning("refused a WebSocket from %s: %s", remote, why)
        body = json.dumps({"error": why}).encode()
        with trio.move_on_after(2):
            await request.reject(status, extra_headers=[(b"Content-Type", b"application/json")], body=body)

    # --- one client -------------------------------------------------------------------
    async def _run_client(self, client: Client, since: Optional[int], epoch: Optional[str], limit: int) -> None:
        # The one synchronous step: subscribe and take the snapshot/replay position.
        first = self._start(client, since, epoch, limit)
        self.clients.add(client)
        log.info("WebSocket client %s connected (%s)", client.remote,
                 "snapshot" if since is None else f"resume since {since}")
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._sender, client, first, nursery.cancel_scope)
                nursery.start_soon(self._reader, client, nursery.cancel_scope)
                nursery.start_soon(self._keepalive, client, nursery.cancel_scope)
        except* ConnectionClosed:
            pass
        if client.closing is not None:
            code, why = client.closing
            if client.sending:
                # Cancelled inside a frame: a close frame now would follow half a
                # message. Cut the TCP connection instead (the client sees 1006).
                stream = getattr(client.ws, "_stream", None)
                if stream is not None:
                    await trio.aclose_forcefully(stream)
            else:
                with trio.move_on_after(1):
                    await client.ws.aclose(code, why)
        log.info("WebSocket client %s disconnected (%s, %d messages sent)", client.remote,
                 client.closing[1] if client.closing else _reason(client.ws), client.sent)

    def _start(self, client: Client, since: Optional[int], epoch: Optional[str], limit: int) -> list[str]:
        """Subscribe and build the first messages. MUST NOT await (see the module doc)."""
        b = self.broker
        client.sub = b.subscribe(self.queue_size, f"WebSocket client {client.remote}", batched=True)
        seq = b.seq
        if since is not None:
            replay = self._replay_after(since, epoch)
            if replay is not None:
                self.counters["resumes"] += 1
                out = [self._dumps({"type": "resume", "seq": seq, "since": since, "epoch": self.epoch,
                                    "sessions": self._sessions(client.filter)})]
                msgs = [m for m in replay if client.filter.event_ok(m["event"])]
                for i in range(0, len(msgs), BATCH_MAX):
                    chunk = msgs[i:i + BATCH_MAX]
                    out.append(self._batch_text(chunk))
                return out
            self.counters["resets"] += 1
            reset = self._dumps({"type": "reset", "seq": seq, "epoch": self.epoch,
                                 "reason": "too old" if epoch in (None, self.epoch) else "daemon restarted"})
            return [reset, self._snapshot_text(client.filter, seq, limit)]
        return [self._snapshot_text(client.filter, seq, limit)]

    def _replay_after(self, since: int, epoch: Optional[str]) -> Optional[list[dict]]:
        """Every event message after ``since``, or None when they are not all held."""
        b = self.broker
        if epoch is not None and epoch != self.epoch:
            return None
        if since < 0 or since > b.seq:
            return None
        if since == b.seq:
            return []
        if not b.replay or b.replay[0]["seq"] > since + 1:
            return None
        first = b.replay[0]["seq"]
        # The deque holds consecutive seqs: index arithmetic instead of a scan.
        start = since + 1 - first
        return [b.replay[i] for i in range(start, len(b.replay))]

    def _sessions(self, flt: Filter) -> list[dict]:
        return [s.public() for s in self.broker.manager.sessions.values() if flt.session_ok(s)]

    def recent_event_texts(self, flt: Filter, limit: int) -> list[str]:
        """The newest ``limit`` events (oldest first), live ones with their seq in mind."""
        out: list[str] = []
        if limit <= 0:
            return out
        known = self.broker.manager.sessions
        for m in reversed(self.broker.replay):
            if len(out) >= limit:
                break
            ev = m["event"]
            if ev.session_id in known and flt.event_ok(ev):
                out.append(event_json(m))
        replay = self.broker.replay
        if len(out) < limit and replay and replay[0]["seq"] > 1:
            # Events of this run have left the replay: read the older ones from disk.
            seen = {m["event"].id for m in replay}
            oldest = replay[0]["event"].timestamp
            older: list[dict] = []
            store = self.broker.store
            for s in sorted(known.values(), key=lambda s: s.last_event_time or 0, reverse=True)[:200]:
                if store is None or len(older) >= 4 * limit:
                    break
                if (s.start_time or 0) > oldest:
                    continue
                for d in store.events(s.session_id, limit - len(out), before=oldest + 1):
                    if d.get("id") not in seen and flt.dict_ok(d):
                        older.append(d)
            older.sort(key=lambda d: d.get("timestamp") or 0)
            for d in reversed(older[-(limit - len(out)):]):
                out.append(dict_json(d))
        elif len(out) < limit:
            for d in reversed(self.history):
                if len(out) >= limit:
                    break
                if d.get("sessionId") in known and flt.dict_ok(d):
                    out.append(dict_json(d))
        out.reverse()
        return out

    def _snapshot_text(self, flt: Filter, seq: int, limit: int) -> str:
        head = self._dumps({"type": "snapshot", "seq": seq, "epoch": self.epoch,
                            "mode": self.daemon.config.mode, "filter": flt.public(),
                            "sessions": self._sessions(flt)})
        evs = ",".join(self.recent_event_texts(flt, limit))
        return head[:-1] + ',"events":[' + evs + "]}"

    @staticmethod
    def _dumps(obj: dict) -> str:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=_default)

    @staticmethod
    def _batch_text(msgs: list[dict]) -> str:
        if len(msgs) == 1:
            m = msgs[0]
            return '{"type":"event","seq":%d,"event":%s}' % (m["seq"], event_json(m))
        return '{"type":"events","seq":%d,"events":[%s]}' % (
            msgs[-1]["seq"], ",".join(event_json(m) for m in msgs))

    # --- the three tasks of a client ---------------------------------------------------------
    async def _send(self, client: Client, text: str, scope: trio.CancelScope) -> None:
        client.sending = True
        with trio.move_on_after(self.send_timeout) as timer:
            await client.ws.send_message(text)
            client.sending = False
        if timer.cancelled_caught:
            self._drop(client, f"not reading (one message took over {self.send_timeout:g} s)", scope)
            return
        client.sent += 1
        self.counters["messages_sent"] += 1

    def _drop(self, client: Client, why: str, scope: trio.CancelScope) -> None:
        if client.closing is None:
            self.counters["dropped"] += 1
            log.warning("dropping WebSocket client %s: %s (close code %d; it may resume)",
                        client.remote, why, CLOSE_TOO_SLOW)
            client.closing = (CLOSE_TOO_SLOW, "too slow: reconnect with ?since=<last seq>")
        scope.cancel()

    async def _sender(self, client: Client, first: list[str], scope: trio.CancelScope) -> None:
        for text in first:
            await self._send(client, text, scope)
        sub = client.sub
        assert sub is not None
        while True:
            try:
                batch = [await sub.receive.receive()]
            except (trio.EndOfChannel, trio.ClosedResourceError):
                if sub.dropped == "too slow":
                    self._drop(client, f"fell {self.queue_size} events behind", scope)
                else:
                    client.closing = client.closing or (CLOSE_SHUTDOWN, "server closing")
                    scope.cancel()
                return
            if sub.dropped == "too slow":
                self._drop(client, f"fell {self.queue_size} events behind", scope)
                return
            while len(batch) < 64:
                try:
                    batch.append(sub.receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
            for text in self._render(client, self._expand(sub, batch)):
                await self._send(client, text, scope)

    @staticmethod
    def _expand(sub, batch: list[dict]) -> list[dict]:
        """The broker's batch messages as the per-event and per-session messages
        ``_render`` takes (the subscription is batched: one message per pipeline
        batch, however many events it holds)."""
        out: list[dict] = []
        for m in batch:
            sub.taken(m)
            if m["type"] != "batch":
                out.append(m)
                continue
            out.extend(m["events"])
            seq = m["seq"]
            out.extend({"type": "session_update", "seq": seq, "session": s} for s in m["sessions"])
        return out

    def _render(self, client: Client, batch: list[dict]) -> list[str]:
        """Broker messages -> the texts to send: events batched, updates coalesced."""
        out: list[str] = []
        pending: list[dict] = []
        updates: dict[str, dict] = {}
        flt = client.filter

        def flush_events():
            for i in range(0, len(pending), BATCH_MAX):
                out.append(self._batch_text(pending[i:i + BATCH_MAX]))
            pending.clear()

        def flush_updates():
            for msg in updates.values():
                out.append(self._dumps(msg))
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
                    updates[s.session_id] = {"type": "session_update", "seq": m["seq"], "session": s.public()}
            else:
                flush_events()
                flush_updates()
                out.append(self._dumps({k: v for k, v in m.items() if not k.startswith("_")}))
        flush_events()
        flush_updates()
        return out

    async def _reader(self, client: Client, scope: trio.CancelScope) -> None:
        while True:
            try:
                raw = await client.ws.get_message()
            except ConnectionClosed:
                scope.cancel()
                return
            self.counters["messages_received"] += 1
            await self._throttle(client)
            reply = await self.handle_message(client, raw)
            if reply is not None:
                await self._send(client, reply, scope)

    async def _throttle(self, client: Client) -> None:
        """A token bucket per client (REQUESTS_PER_S, bursts of REQUESTS_BURST): a client
        that floods us with requests waits for its own replies; nobody else does."""
        now = trio.current_time()
        client.tokens = min(REQUESTS_BURST, client.tokens + (now - client.tokens_at) * REQUESTS_PER_S)
        client.tokens_at = now
        if client.tokens < 1:
            self.counters["throttled"] += 1
            await trio.sleep((1 - client.tokens) / REQUESTS_PER_S)
            client.tokens, client.tokens_at = 1.0, trio.current_time()
        client.tokens -= 1

    async def _keepalive(self, client: Client, scope: trio.CancelScope) -> None:
        while True:
            # Between pings, watch for the broker dropping this client: its sender
            # may be stuck writing to a socket nobody reads, so it cannot notice.
            with trio.move_on_after(self.ping_interval):
                if client.sub is not None:
                    await client.sub.closed.wait()
                    if client.sub.dropped == "too slow":
                        self._drop(client, f"fell {self.queue_size} events behind", scope)
                    return  # closed for another reason: the sender ends the connection
                await trio.sleep_forever()
            with trio.move_on_after(self.ping_timeout) as timer:
                await client.ws.ping()
            if timer.cancelled_caught:
                self.counters["keepalive_timeouts"] += 1
                log.warning("closing WebSocket client %s: no pong within %g s", client.remote, self.ping_timeout)
                client.closing = (CLOSE_KEEPALIVE, "no pong")
                scope.cancel()
                return

    # --- client messages --------------------------------------------------------------
    async def handle_message(self, client: Client, raw) -> Optional[str]:
        req_id = None
        try:
            if isinstance(raw, bytes):
                raise BadRequest("send JSON text messages, not binary")
            try:
                msg = json.loads(raw)
            except ValueError as exc:
                raise BadRequest(f"not JSON: {exc}") from None
            if not isinstance(msg, dict):
                raise BadRequest("a message must be a JSON object")
            req_id = msg.get("requestId")
            if req_id is not None and not isinstance(req_id, (str, int)):
                req_id = None
            kind = msg.get("type")
            handler = self._handlers.get(kind) if isinstance(kind, str) else None
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
        if isinstance(reply, _Raw):
            return self._dumps(dict(reply))[:-1] + ',"events":[' + ",".join(reply.texts) + "]}"
        return self._dumps(reply)

    def _m_ping(self, client, msg):
        return {"type": "pong", "seq": self.broker.seq, "time": int(time.time() * 1000)}

    def _m_filter(self, client, msg):
        client.filter = Filter(
            sessions=_str_list(msg.get("sessions", msg.get("sessionIds")), "sessions"),
            machines=_str_list(msg.get("machines"), "machines"),
            types=_str_list(msg.get("eventTypes", msg.get("types")), "eventTypes"),
            tools=_str_list(msg.get("tools"), "tools"),
        )
        return {"type": "filter", "filter": client.filter.public()}

    def _m_subscribe(self, client, msg):
        ids = _str_list(msg.get("sessionIds"), "sessionIds")
        f = client.filter
        client.filter = Filter(ids, f.machines, f.types, f.tools)
        return {"type": "subscribed", "sessionIds": sorted(ids) if ids else None}

    def _m_unsubscribe(self, client, msg):
        ids = _str_list(msg.get("sessionIds"), "sessionIds")
        f = client.filter
        if ids is None:  # unsubscribe from everything named: back to all sessions
            new = None
        else:
            new = frozenset((f.sessions or frozenset()) - ids) or None
            if f.sessions is None:
                # Subscribed to all: "all but these" is a filter on the other sessions.
                new = frozenset(set(self.broker.manager.sessions) - ids) or None
        client.filter = Filter(new, f.machines, f.types, f.tools)
        return {"type": "unsubscribed", "sessionIds": sorted(new) if new else None}

    def _m_get_sessions(self, client, msg):
        return {"type": "sessions", "seq": self.broker.seq, "sessions": self._sessions(Filter())}

    def _limit(self, msg, default=100) -> int:
        limit = msg.get("limit", default)
        if limit is None:
            return default
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise BadRequest("limit must be a non-negative integer")
        return min(limit, HISTORY_MAX)

    @staticmethod
    def _time(msg, name) -> Optional[int]:
        v = msg.get(name)
        if v is None:
            return None
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise BadRequest(f"{name} must be a timestamp in ms")
        return int(v)

    def _m_get_events(self, client, msg):
        sid = msg.get("sessionId")
        if not isinstance(sid, str) or not sid:
            raise BadRequest("get_events needs a sessionId")
        if self.broker.manager.get(sid) is None:
            raise BadRequest(f"no such session {sid!r}")
        limit = self._limit(msg)
        before, after = self._time(msg, "before"), self._time(msg, "after")
        evs = [] if self.broker.store is None else self.broker.store.events(sid, limit, before=before, after=after)
        return _Raw("history", {"sessionId": sid, "before": before, "after": after,
                                "hasMore": len(evs) >= limit > 0}, [dict_json(e) for e in evs])

    def _m_get_all_recent_events(self, client, msg):
        limit = self._limit(msg, 100)
        return _Raw("recent_events", {"seq": self.broker.seq}, self.recent_event_texts(Filter(), limit))

    def _m_get_event_detail(self, client, msg):
        eid = msg.get("eventId")
        if not isinstance(eid, str) or not eid:
            raise BadRequest("get_event_detail needs an eventId")
        found = self.find_event(eid, msg.get("sessionId"), msg.get("timestamp"))
        if found is None:
            raise BadRequest(f"no such event {eid!r}")
        return {"type": "event_detail", "event": found}

    def _m_session_action(self, client, msg):
        action = msg.get("action")
        sid = msg.get("sessionId")
        if not isinstance(action, str) or not isinstance(sid, str):
            raise BadRequest("session_action needs an action and a sessionId")
        try:
            ok, error = self.broker.session_action(action, sid, msg.get("value"))
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        if not ok:
            raise BadRequest(error or "action failed")
        log.info("session %s: %s (by %s)", sid, action, client.remote)
        return {"type": "action_done", "action": action, "sessionId": sid}

    _handlers = {
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

    # --- lookups ----------------------------------------------------------------------
    def find_event(self, event_id: str, session_id: Any = None, ts: Any = None) -> Optional[dict]:
        for m in reversed(self.broker.replay):
            if m["event"].id == event_id:
                return json.loads(m["line"])
        for d in self.history:
            if d.get("id") == event_id:
                return d
        store = self.broker.store
        if store is None or not isinstance(session_id, str) or self.broker.manager.get(session_id) is None:
            return None
        if isinstance(ts, int) and not isinstance(ts, bool):
            evs = store.events(session_id, 10_000, before=ts + 1, after=ts - 1)
        else:
            evs = store.events(session_id, HISTORY_MAX)
        return next((e for e in evs if e.get("id") == event_id), None)

    # --- metrics ----------------------------------------------------------------------
    def metrics_text(self) -> str:
        depths = [c.queue_depth() for c in self.clients]
        lines = []
        for name, help_, kind, value in (
            ("contextuate_ws_clients", "Connected WebSocket clients.", "gauge", len(self.clients)),
            ("contextuate_ws_queue_depth_max", "Deepest WebSocket client queue (messages).", "gauge",
             max(depths, default=0)),
            ("contextuate_ws_queue_depth_total", "Messages queued for all WebSocket clients.", "gauge", sum(depths)),
            ("contextuate_ws_queue_capacity", "Queue size per WebSocket client.", "gauge", self.queue_size),
            ("contextuate_ws_replay_events", "Events held for WebSocket resume.", "gauge", len(self.broker.replay)),
            ("contextuate_ws_seq", "Last event sequence number.", "gauge", self.broker.seq),
            ("contextuate_ws_connections_total", "WebSocket connections accepted.", "counter",
             self.counters["connections"]),
            ("contextuate_ws_dropped_clients_total", "WebSocket clients dropped as too slow.", "counter",
             self.counters["dropped"]),
            ("contextuate_ws_keepalive_timeouts_total", "WebSocket clients closed for not answering pings.",
             "counter", self.counters["keepalive_timeouts"]),
            ("contextuate_ws_resumes_total", "Successful resumes (?since).", "counter", self.counters["resumes"]),
            ("contextuate_ws_resets_total", "Resumes refused as too old (reset + snapshot).", "counter",
             self.counters["resets"]),
            ("contextuate_ws_messages_sent_total", "WebSocket messages sent.", "counter",
             self.counters["messages_sent"]),
            ("contextuate_ws_bad_messages_total", "Client messages answered with an error.", "counter",
             self.counters["bad_messages"]),
            ("contextuate_ws_throttled_total", "Client requests held back by the per-client rate limit.",
             "counter", self.counters["throttled"]),
        ):
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {value}"]
        lines += ["# HELP contextuate_ws_refused_total WebSocket handshakes refused, by HTTP status.",
                  "# TYPE contextuate_ws_refused_total counter"]
        for status in (400, 401, 403):
            lines.append(f'contextuate_ws_refused_total{{status="{status}"}} {self.counters[f"refused_{status}"]}')
        return "\n".join(lines) + "\n"


class _Raw(dict):
    """A reply whose ``events`` are already JSON texts (no decode/encode round trip)."""

    def __init__(self, kind: str, fields: dict, texts: list[str]) -> None:
        super().__init__(type=kind, **fields)
        self.texts = texts


def _default(o):
    if hasattr(o, "public"):
        return o.public()
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _q(query: dict, name: str) -> Optional[str]:
    v = query.get(name)
    return v[-1] if v else None


def _reason(ws: WebSocketConnection) -> str:
    r = ws.closed
    if r is None:
        return "closed"
    return f"code {r.code}" + (f" {r.reason}" if r.reason else "")
