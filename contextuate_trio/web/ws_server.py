"""The WebSocket server (trio-websocket on ``server.wsPort``): live fan-out to dashboards.

The protocol is ``ws_protocol``'s; this module carries it: the handshake's checks
(Host, Origin, token), and per client three tasks in one nursery — a sender draining
the client's fan-out subscription, a reader answering requests (rate-limited), and a
keepalive. A client whose socket stops draining, or that does not answer pings, is
closed with a code and a log line. Nothing here ever blocks the broker.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import secrets
import time
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

from contextuate_trio.core.access import Scope
from contextuate_trio.core.sessions import Session
from contextuate_trio.runtime.broker import Broker
from contextuate_trio.runtime.clock import now_ms
from contextuate_trio.runtime.fanout import DropReason, StoredEvent, Subscription
from contextuate_trio.runtime.metrics import Metric
from contextuate_trio.web import ws_protocol as proto
from contextuate_trio.web.state import WebState

log = logging.getLogger("contextuate.ws")

REQUESTS_PER_S = 100  # a client's sustained request rate; beyond it, its reader waits
REQUESTS_BURST = 200
SENDER_BATCH = 64  # fan-out messages taken per wake-up
QUEUE_EVENTS = 5000  # events queued per client before it catches up from memory or disk
HISTORY_SESSIONS = 200  # newest sessions whose last events fill the first snapshot
HISTORY_PER_SESSION = 500


class BrokerBackend:
    """The broker as the protocol's ``Backend``."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    @property
    def seq(self) -> int:
        return self.broker.seq

    @property
    def replay(self) -> collections.deque:
        return self.broker.replay

    @property
    def sessions(self) -> dict[str, Session]:
        return self.broker.manager.sessions

    @property
    def has_store(self) -> bool:
        return self.broker.store is not None

    def stored_events(
        self, session_id: str, limit: int, before: int | None = None, after: int | None = None
    ) -> list[dict]:
        store = self.broker.store
        return [] if store is None else store.events(session_id, limit, before=before, after=after)

    def session_action(self, action: str, session_id: str, value: Any) -> None:
        self.broker.session_action(action, session_id, value)

    @property
    def first_on_disk(self) -> int:
        store = self.broker.store
        return 0 if store is None else store.order.first_seq

    @property
    def deletions(self) -> int:
        store = self.broker.store
        return 0 if store is None else store.deletions

    def stored_after(self, since: int, upto: int) -> tuple[list[dict], int | None]:
        store = self.broker.store
        if store is None:
            return [], since
        lines, through = store.read_after(since, upto - since, upto=upto)
        return [{"type": "event", "seq": seq, "event": StoredEvent(line), "line": line} for seq, line in lines], through


class Client:
    def __init__(self, ws: WebSocketConnection, state: proto.ClientState) -> None:
        self.ws = ws
        self.state = state
        self.remote = state.remote
        self.sub: Subscription | None = None
        self.cursor = 0  # the last event number this client has been sent (or skipped)
        self.catching_up = False  # served from memory or disk until live again
        self.connected = time.time()
        self.sent = 0
        self.closing: tuple[int, str] | None = None
        # Sends under way or cut off (the sender's and the reader's replies: a count,
        # so one that ends does not hide another cut off inside a frame).
        self.sending = 0
        self.tokens = float(REQUESTS_BURST)  # request budget (see WsServer._throttle)
        self.tokens_at = trio.current_time()

    def queue_depth(self) -> int:
        return 0 if self.sub is None else self.sub.queued_events


class WsServer:
    def __init__(self, state: WebState) -> None:
        self.state = state
        self.broker = state.broker
        server = state.config.server
        self.host = server.host
        self.port = server.ws_port
        self.guard = state.guard
        # Tunables (tests shrink them).
        # Events a client may lag behind in its queue; beyond, it is served from the
        # broker's memory or the disk instead (``catch_up``), never dropped for it.
        self.queue_size = QUEUE_EVENTS
        self.snapshot_events = 1000
        self.ping_interval = 20.0
        self.ping_timeout = 20.0
        # A client whose one message cannot be written for this long has stopped
        # reading: dropped (it may resume).
        self.send_timeout = 15.0
        self.max_message = proto.MAX_CLIENT_MESSAGE
        # A new epoch per daemon run: a ``since`` from another run means nothing here.
        self.protocol = proto.WsProtocol(
            BrokerBackend(self.broker),
            proto.Encoder(state.prices),
            epoch=secrets.token_hex(6),
            mode=state.config.mode,
            now_ms=now_ms,
        )
        self.counters = self.protocol.counters
        self.frames = proto.FrameCache()
        self.clients: set[Client] = set()
        self.bound_port: int | None = None

    @property
    def epoch(self) -> str:
        return self.protocol.epoch

    # --- life cycle -------------------------------------------------------------------
    def load_history(self, budget: int = proto.HISTORY_MAX) -> None:
        """The last events stored before this run, newest sessions first (read once)."""
        store = self.broker.store
        if store is None:
            return
        out: list[dict] = []
        sessions = sorted(self.broker.manager.sessions.values(), key=lambda s: s.last_event_time or 0, reverse=True)
        for s in sessions[:HISTORY_SESSIONS]:
            if len(out) >= budget:
                break
            try:
                out.extend(store.events(s.session_id, min(budget - len(out), HISTORY_PER_SESSION)))
            except Exception as exc:  # a damaged session must not stop the server
                log.warning("history of %s unreadable: %s", s.session_id, exc)
        out.sort(key=lambda e: e.get("timestamp") or 0)
        self.protocol.history = out[-budget:]

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.load_history()
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                lambda task_status: serve_websocket(
                    self._handle,
                    self.host,
                    self.port,
                    None,
                    message_queue_size=16,
                    max_message_size=self.max_message,
                    connect_timeout=10,
                    disconnect_timeout=2,
                    task_status=task_status,
                )
            )
            self.bound_port = server.port if len(server.listeners) == 1 else self.port
            host = f"[{self.host}]" if ":" in self.host else self.host
            task_status.started(f"ws://{host}:{self.bound_port}/")
            await trio.sleep_forever()

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

    def _refusal(self, request: WebSocketRequest) -> tuple[int, str] | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers}
        # wsproto takes Host out of the header list; it is on the handshake event.
        host = getattr(getattr(request, "_event", None), "host", None) or headers.get("host")
        origin = headers.get("origin")
        if not self.guard.host_ok(host):
            return 403, f"host {host!r} not allowed"
        if not self.guard.origin_ok(origin, self.state.dashboard_ports()):
            return 403, f"origin {origin!r} not allowed"
        if not self.guard.token_ok(self._authorization(request, headers)):
            return 401, "missing or wrong token"
        return None

    @staticmethod
    def _authorization(request: WebSocketRequest, headers: dict[str, str] | None = None) -> str | None:
        """The client's token as an Authorization header: the header itself, or the
        subprotocol a browser carries it in (it cannot set headers)."""
        if headers is None:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers}
        auth = headers.get("authorization")
        if auth is None:
            tok = proto.token_from_protocols(request.proposed_subprotocols)
            auth = f"Bearer {tok}" if tok is not None else None
        return auth

    async def _handle_one(self, request: WebSocketRequest) -> None:
        r = request.remote
        remote = str(r) if isinstance(r, str) else f"{r.address}:{r.port}"
        refusal = self._refusal(request)
        if refusal is not None:
            return await self._refuse(request, *refusal, remote)
        try:
            hs = proto.parse_handshake(request.path, self.snapshot_events)
        except ValueError as exc:  # BadRequest too
            return await self._refuse(request, 400, f"bad query: {exc}", remote)
        subprotocol = proto.SUBPROTOCOL if proto.SUBPROTOCOL in request.proposed_subprotocols else None
        ws = await request.accept(subprotocol=subprotocol)
        # Session actions over the socket need the admin scope, as over HTTP.
        may_act = self.guard.token_ok(self._authorization(request), Scope.ADMIN)
        client = Client(ws, proto.ClientState(hs.filter, remote, may_act))
        self.counters["connections"] += 1
        try:
            await self._run_client(client, hs)
        finally:
            self.clients.discard(client)
            if client.sub is not None:
                client.sub.close()
            self._forget_chunks_behind_every_client()

    async def _refuse(self, request: WebSocketRequest, status: int, why: str, remote: str) -> None:
        self.counters[f"refused_{status}"] += 1
        log.warning("refused a WebSocket from %s: %s", remote, why)
        body = json.dumps({"error": why}).encode()
        with trio.move_on_after(2):
            await request.reject(status, extra_headers=[(b"Content-Type", b"application/json")], body=body)

    # --- one client -------------------------------------------------------------------
    async def _run_client(self, client: Client, hs: proto.Handshake) -> None:
        # The one synchronous step (no await in between): subscribe, and take the
        # snapshot or the replay position.
        self._subscribe(client)
        first, client.cursor = self.protocol.first_messages(hs)
        client.catching_up = client.cursor < self.broker.seq
        self.clients.add(client)
        log.info(
            "WebSocket client %s connected (%s)",
            client.remote,
            "snapshot" if hs.since is None else f"resume since {hs.since}",
        )
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._sender, client, first, nursery.cancel_scope)
                nursery.start_soon(self._reader, client, nursery.cancel_scope)
                nursery.start_soon(self._keepalive, client, nursery.cancel_scope)
        except* ConnectionClosed:
            pass
        await self._close(client)
        log.info(
            "WebSocket client %s disconnected (%s, %d messages sent)",
            client.remote,
            client.closing[1] if client.closing else _reason(client.ws),
            client.sent,
        )

    def _subscribe(self, client: Client) -> Subscription:
        if client.sub is not None:
            client.sub.close()
        client.sub = self.broker.subscribe(self.queue_size, f"WebSocket client {client.remote}", batched=True)
        return client.sub

    async def _close(self, client: Client) -> None:
        if client.closing is None:
            return
        code, why = client.closing
        if client.sending:
            # Cancelled inside a send: a close frame now could follow half a
            # message. Cut the TCP connection instead (the client sees 1006).
            stream = getattr(client.ws, "_stream", None)
            if stream is not None:
                await trio.aclose_forcefully(stream)
        else:
            with trio.move_on_after(1):
                await client.ws.aclose(code, why)

    async def _send(self, client: Client, text: str, scope: trio.CancelScope) -> None:
        await self._send_all(client, [text], scope)

    async def _send_all(self, client: Client, texts: list[str], scope: trio.CancelScope) -> None:
        """Send ``texts`` in order. Several go out together, their frames in one writev:
        each ``send_message`` is two turns of Trio's loop (its lock, then the write), so a
        sender that sent its messages one by one got fewer turns than the pipeline
        needs per batch, fell out of its queue in every burst and was then served from
        disk on its own."""
        if not texts:
            return
        client.sending += 1
        with trio.move_on_after(self.send_timeout) as timer:
            # The timeout is per write of at most about WRITE_BYTES: a long catch-up to
            # a slow link that keeps reading is not one message that took too long.
            for group in _groups(texts, WRITE_BYTES):
                timer.deadline = trio.current_time() + self.send_timeout
                if _frames_writable(client.ws):
                    await _send_frames(client.ws, [self.frames.frame(text) for text in group])
                else:
                    for text in group:
                        await client.ws.send_message(text)
            client.sending -= 1
        if timer.cancelled_caught:
            self._drop(client, f"not reading (one message took over {self.send_timeout:g} s)", scope)
            return
        client.sent += len(texts)
        self.counters["messages_sent"] += len(texts)

    def _drop(self, client: Client, why: str, scope: trio.CancelScope) -> None:
        if client.closing is None:
            self.counters["dropped"] += 1
            log.warning(
                "dropping WebSocket client %s: %s (close code %d; it may resume)",
                client.remote,
                why,
                proto.CLOSE_TOO_SLOW,
            )
            client.closing = (proto.CLOSE_TOO_SLOW, "too slow: reconnect with ?since=<last seq>")
        scope.cancel()

    async def _sender(self, client: Client, first: list[str], scope: trio.CancelScope) -> None:
        await self._send_all(client, first, scope)
        while True:
            if client.catching_up:
                await self._catch_up_step(client, scope)
                continue
            sub = client.sub
            assert sub is not None
            try:
                batch = [await sub.receive.receive()]
            except (trio.EndOfChannel, trio.ClosedResourceError):
                if sub.too_slow:  # its queue overflowed: served from memory or disk instead
                    client.catching_up = True
                    continue
                client.closing = client.closing or (proto.CLOSE_SHUTDOWN, "server closing")
                scope.cancel()
                return
            while len(batch) < SENDER_BATCH:
                try:
                    batch.append(sub.receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
            if sub.too_slow:
                client.catching_up = True
                continue
            texts: list[str] = []
            for m in batch:
                sub.taken(m)
                texts += self._texts(client, m)
            await self._send_all(client, texts, scope)

    def _texts(self, client: Client, m: dict) -> list[str]:
        """A fan-out message's texts for the client, without the events it has had
        already (numbered up to its cursor: sent while it caught up). A pipeline
        batch wholly past the cursor (the usual case) is rendered once for every
        client with the same filter (``render_batch``)."""
        flt = client.state.filter
        if m["type"] != "batch":
            return self.protocol.render(flt, [m])
        evs = m["events"]
        if not evs or evs[0]["seq"] > client.cursor:
            texts = self.protocol.render_batch(flt, m)
        else:
            own = [e for e in evs if e["seq"] > client.cursor]
            texts = self.protocol.render(flt, [*own, *proto.session_updates(m)])
        if evs:
            client.cursor = max(client.cursor, evs[-1]["seq"])
        return texts

    async def _catch_up_step(self, client: Client, scope: trio.CancelScope) -> None:
        """Send the next events a lagging client has not had. A new subscription
        when the old one overflowed, taken in the same synchronous step as the
        catch-up (as at connect): exactly once, in order."""
        sub = client.sub
        if sub is not None and sub.dropped is DropReason.CLOSED:  # the daemon is stopping
            client.closing = client.closing or (proto.CLOSE_SHUTDOWN, "server closing")
            scope.cancel()
            return
        if sub is None or sub.too_slow:
            self._subscribe(client)
            self.counters["caught_up"] += 1
        texts, client.cursor = self.protocol.catch_up(client.state.filter, client.cursor)
        client.catching_up = client.cursor < self.broker.seq
        if not client.catching_up:
            # (not appended: ``texts`` may be the chunk's, shared with other clients)
            texts = [*texts, self.protocol.caught_up_text(client.state.filter, client.cursor)]
        self._forget_chunks_behind_every_client()
        await self._send_all(client, texts, scope)
        await trio.lowlevel.checkpoint()  # a long catch-up never starves the loop

    def _forget_chunks_behind_every_client(self) -> None:
        """The chunks read from disk for lagging clients are let go once every client
        is past them (one that is about to find it lags has its cursor behind)."""
        self.protocol.forget_chunks(min((c.cursor for c in self.clients), default=None))

    async def _reader(self, client: Client, scope: trio.CancelScope) -> None:
        while True:
            try:
                raw = await client.ws.get_message()
            except ConnectionClosed:
                scope.cancel()
                return
            self.counters["messages_received"] += 1
            await self._throttle(client)
            reply = self.protocol.reply(client.state, raw)
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
            # A client that stops reading is the sender's to notice (send_timeout).
            await trio.sleep(self.ping_interval)
            with trio.move_on_after(self.ping_timeout) as timer:
                await client.ws.ping()
            if timer.cancelled_caught:
                self.counters["keepalive_timeouts"] += 1
                log.warning("closing WebSocket client %s: no pong within %g s", client.remote, self.ping_timeout)
                client.closing = (proto.CLOSE_KEEPALIVE, "no pong")
                scope.cancel()
                return

    # --- metrics ----------------------------------------------------------------------
    def metrics(self) -> list[Metric]:
        depths = [c.queue_depth() for c in self.clients]
        c = self.counters
        return [
            Metric("contextuate_ws_clients", "Connected WebSocket clients.", "gauge", len(self.clients)),
            Metric(
                "contextuate_ws_queue_depth_max",
                "Deepest WebSocket client queue (messages).",
                "gauge",
                max(depths, default=0),
            ),
            Metric(
                "contextuate_ws_queue_depth_total", "Messages queued for all WebSocket clients.", "gauge", sum(depths)
            ),
            Metric("contextuate_ws_queue_capacity", "Queue size per WebSocket client.", "gauge", self.queue_size),
            Metric(
                "contextuate_ws_replay_events", "Events held for WebSocket resume.", "gauge", len(self.broker.replay)
            ),
            Metric("contextuate_ws_seq", "Last event sequence number.", "gauge", self.broker.seq),
            Metric("contextuate_ws_connections_total", "WebSocket connections accepted.", "counter", c["connections"]),
            Metric(
                "contextuate_ws_dropped_clients_total",
                "WebSocket clients dropped as too slow.",
                "counter",
                c["dropped"],
            ),
            Metric(
                "contextuate_ws_keepalive_timeouts_total",
                "WebSocket clients closed for not answering pings.",
                "counter",
                c["keepalive_timeouts"],
            ),
            Metric("contextuate_ws_resumes_total", "Successful resumes (?since).", "counter", c["resumes"]),
            Metric(
                "contextuate_ws_caught_up_total",
                "Times a client that fell out of its queue was served from memory or disk instead.",
                "counter",
                c["caught_up"],
            ),
            Metric(
                "contextuate_ws_caught_up_from_disk_events_total",
                "Events sent to resuming or lagging clients from disk (the seq log).",
                "counter",
                c["caught_up_from_disk"],
            ),
            Metric(
                "contextuate_ws_resets_total", "Resumes refused as too old (reset + snapshot).", "counter", c["resets"]
            ),
            Metric("contextuate_ws_messages_sent_total", "WebSocket messages sent.", "counter", c["messages_sent"]),
            Metric(
                "contextuate_ws_bad_messages_total",
                "Client messages answered with an error.",
                "counter",
                c["bad_messages"],
            ),
            Metric(
                "contextuate_ws_throttled_total",
                "Client requests held back by the per-client rate limit.",
                "counter",
                c["throttled"],
            ),
            Metric(
                "contextuate_ws_refused_total",
                "WebSocket handshakes refused, by HTTP status.",
                "counter",
                [({"status": str(s)}, c[f"refused_{s}"]) for s in (400, 401, 403)],
            ),
        ]


WRITE_BYTES = 256 * 1024  # texts sent as one write at most (each under its own timeout)


def _groups(texts: list[str], limit: int) -> list[list[str]]:
    """``texts`` in order, cut into runs of about ``limit`` characters (a longer text
    alone)."""
    out: list[list[str]] = []
    run: list[str] = []
    size = 0
    for text in texts:
        if run and size + len(text) > limit:
            out.append(run)
            run, size = [], 0
        run.append(text)
        size += len(text)
    if run:
        out.append(run)
    return out


def _frames_writable(ws: WebSocketConnection) -> bool:
    """Whether this trio-websocket has the parts ``_send_frames`` writes through
    (its own ``send_message`` uses them; they are not public), on a connection with
    no extension (a plain frame is what its peer expects)."""
    if not all(hasattr(ws, a) for a in ("_wsproto", "_stream_lock", "_stream", "_close_reason", "_abort_web_socket")):
        return False
    if not isinstance(ws._stream, trio.SocketStream) or not hasattr(os, "writev"):
        return False  # (TLS, or no writev: trio-websocket's own sends)
    conn = getattr(ws._wsproto, "connection", None)
    return not getattr(getattr(conn, "_proto", None), "extensions", True)


async def _send_frames(ws: Any, frames: list[bytes]) -> None:
    """What ``ws.send_message`` does for each text, for all the frames at once
    (made by ``text_frame``, shared: see ``FrameCache``): one writev while the kernel
    takes them, under the connection's send lock; no turn of Trio's loop unless the
    lock is held or the socket is full (see ``_write_all``)."""
    lock = ws._stream_lock
    try:
        lock.acquire_nowait()
    except trio.WouldBlock:
        await lock.acquire()
    try:
        # No write from a task cancelled meanwhile (a dropped client's reader handed
        # the lock after a torn frame), none after the Close frame: what Trio's own
        # send checked. (Neither yields when there is nothing to say.)
        await trio.lowlevel.checkpoint_if_cancelled()
        if ws._close_reason:
            raise ConnectionClosed(ws._close_reason)
        await _write_all(ws._stream, frames)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        await ws._abort_web_socket()
        raise ConnectionClosed(ws._close_reason) from None
    finally:
        lock.release()


IOV_MAX = 1024  # buffers one writev takes (Linux)


async def _write_all(stream: Any, frames: list[bytes]) -> None:
    """``stream.send_all`` of the frames, in one writev while the kernel takes them.
    Trio's ``send_all`` takes a turn of the loop after each write, and the lock
    another: in a burst each turn waited for a whole pipeline batch (~10 ms), so a
    sender that needed two writes a batch got one, fell out of its queue and was
    served from disk. Waits only when the socket is full; the frames, shared with
    other clients, are never joined into a copy per client."""
    sock = stream.socket
    views = [memoryview(f) for f in frames]
    i = 0
    while i < len(views):
        fd = sock.fileno()
        if fd < 0:
            raise trio.ClosedResourceError("the WebSocket's socket was closed")
        try:
            n = os.writev(fd, views[i : i + IOV_MAX])
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        while i < len(views) and len(views[i]) <= n:  # the buffers written whole
            n -= len(views[i])
            i += 1
        if n:
            views[i] = views[i][n:]


def _reason(ws: WebSocketConnection) -> str:
    r = ws.closed
    if r is None:
        return "closed"
    return f"code {r.code}" + (f" {r.reason}" if r.reason else "")
