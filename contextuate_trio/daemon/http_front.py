"""The daemon's HTTP port: Claude Code's hooks answered lean, the rest by hypercorn.

Through hypercorn and Starlette a hook cost ~840 µs of daemon CPU (issue 12). So the
daemon owns the listening sockets (bound as hypercorn binds them) and runs one task
per connection. While a connection's requests are ``POST /api/hooks``, that task
parses them (httptools: llhttp, the C parser uvicorn uses) and answers them itself
through ``sources.http_hook.HookIntake``, with the app guard's checks. The first time
a request is anything else (another path or method, an upgrade, HTTP/2, bytes that
do not parse), the connection and every byte already read of it go to hypercorn's
own per-connection server, which serves it as it serves any connection.

One task reads and writes a connection while it carries hooks, so nothing on it can
send twice at once. A connection handed to hypercorn gets a stream whose
``send_eof`` cannot collide with a send (``HandedStream``: hypercorn's own race,
which logged ``BusyResourceError``).

Uses hypercorn's internals (``trio.tcp_server.TCPServer``, ``WorkerContext``,
``Lifespan``, as ``hypercorn.trio.run.worker_serve`` does): ``pyproject.toml`` pins
hypercorn to 0.18.x.
"""

from __future__ import annotations

import contextlib
import email.utils
import errno
import functools
import logging
import socket
import time
from collections.abc import Callable
from http import HTTPStatus
from math import inf
from typing import Any, cast

import attrs
import httptools
import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ASGIFramework, ConnectionState
from hypercorn.utils import repr_socket_addr, wrap_app

from contextuate_trio.sources.http_hook import MACHINE_HEADER, PARENT_HEADER, PATH, HookIntake, Reply

log = logging.getLogger("contextuate.http")

MAX_RECV = 1 << 16
MAX_CHUNK_LINE = 4096  # a chunk-size line with its extensions
LINGER_S = 1.0  # after a last answer, how long the client's leftovers are read before closing
HOOK_PATH = PATH.encode()
# A request line that may still become ``POST /api/hooks`` (with or without a query).
HOOK_LINES = (b"POST " + HOOK_PATH + b" ", b"POST " + HOOK_PATH + b"?")
HEXDIGITS = frozenset(b"0123456789abcdefABCDEF")
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# accept() failing for want of resources: wait and go on, as trio.serve_listeners does.
OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
ACCEPT_RETRY_S = 0.1
# A connection that went away before we took it, or one a firewall refused (as trio's
# own listener ignores them).
IGNORABLE_ACCEPT_ERRNOS = {
    getattr(errno, name)
    for name in (
        "ECONNABORTED",
        "EPERM",
        "EPROTO",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
    )
    if hasattr(errno, name)
}


class _HandOff(Exception):
    """This request is for hypercorn: the connection goes to it as read so far."""


@attrs.frozen
class Limits:
    """Timeouts and sizes, taken from the HyperConfig so both paths agree."""

    idle: float  # from the last answer until the next head is whole (hypercorn's keep_alive_timeout)
    read: float  # between two reads of a body: read_timeout, else keep_alive_timeout
    max_head: int  # the largest head (hypercorn's h11_max_incomplete_size)

    @classmethod
    def of(cls, config: HyperConfig) -> Limits:
        return cls(
            config.keep_alive_timeout, config.read_timeout or config.keep_alive_timeout, config.h11_max_incomplete_size
        )


class _Message:
    """One request as httptools reports it (the parser calls these methods).

    The parser and the message refer to each other (its callbacks are the message's
    bound methods): ``release`` breaks the cycle once the request is done. Left to the
    collector, every request was cyclic garbage, and a young collection of 50,000 of
    those objects held the loop 50-110 ms every 2 s at 2,000 requests/s."""

    __slots__ = ("parser", "url", "fields", "keep_alive", "version", "method", "body", "complete", "begun")

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.fields: list[tuple[bytes, bytes]] = []
        self.keep_alive = False
        self.version = ""
        self.method = b""
        self.body = bytearray()
        self.complete = False
        self.begun = 0

    def release(self) -> None:
        self.parser = None  # type: ignore[assignment]

    def on_message_begin(self) -> None:
        self.begun += 1

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        # Read here: llhttp forgets keep-alive once the message is complete.
        self.keep_alive = self.parser.should_keep_alive()
        self.version = self.parser.get_http_version()
        self.method = self.parser.get_method()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True

    def is_hook(self) -> bool:
        """A hook request this path may answer. HTTP/1.1 needs exactly one Host: h11
        refuses the others (400), so they go to hypercorn to be refused the same way."""
        if self.method != b"POST" or self.url.split(b"?", 1)[0] != HOOK_PATH:
            return False
        hosts = sum(1 for name, _ in self.fields if name.lower() == b"host")
        return hosts == 1 if self.version == "1.1" else self.version == "1.0" and hosts <= 1


def header_maps(fields: list[tuple[bytes, bytes]]) -> tuple[dict[str, str], dict[str, str]]:
    """Headers by lower-case name, values stripped as h11 strips them: one map where
    a repeated name keeps its first value (Starlette's ``request.headers``), one
    where it keeps its last (the app guard's). Usually the same map."""
    last = {n.decode("latin-1").lower(): v.strip(b" \t").decode("latin-1") for n, v in fields}
    if len(last) == len(fields):
        return last, last
    first: dict[str, str] = {}
    for n, v in fields:
        first.setdefault(n.decode("latin-1").lower(), v.strip(b" \t").decode("latin-1"))
    return first, last


class _Chunked:
    """Where a chunked body ends, and its length so far; llhttp then checks the
    bytes (this only frames them, so the next request starts at the right byte)."""

    def __init__(self, start: int) -> None:
        self.pos = start  # the next chunk-size line
        self.framed = 0  # the length of the chunks wholly in the buffer
        self.length = 0  # the body's length, with the chunk announced last

    def end(self, buf: bytearray, max_trailers: int) -> int | None:
        """The end of the body in ``buf``, None while incomplete; ValueError if bad."""
        while True:
            eol = buf.find(b"\r\n", self.pos, self.pos + MAX_CHUNK_LINE)
            if eol < 0:
                if len(buf) - self.pos >= MAX_CHUNK_LINE:
                    raise ValueError("chunk-size line too long")
                return None
            field = bytes(buf[self.pos : eol]).split(b";", 1)[0].strip(b" \t")
            if not field or len(field) > 15 or not HEXDIGITS.issuperset(field):
                raise ValueError("bad chunk size")
            size = int(field, 16)
            if size == 0:
                trailer_end = buf.find(b"\r\n\r\n", eol)
                if trailer_end < 0 and len(buf) - eol > max_trailers:
                    raise ValueError("trailers too long")
                return None if trailer_end < 0 else trailer_end + 4
            following = eol + 2 + size + 2
            self.length = self.framed + size
            if len(buf) < following:
                return None
            self.framed = self.length
            self.pos = following


@functools.lru_cache(maxsize=64)
def encode(reply: Reply, keep_alive: bool, http10: bool, date: str) -> bytes:
    """The answer's bytes (cached: the usual ones repeat within a second)."""
    head = [
        f"HTTP/1.1 {reply.status} {HTTPStatus(reply.status).phrase}",
        "content-type: application/json",
        f"content-length: {len(reply.body)}",
        f"date: {date}",
        *(f"{name}: {value}" for name, value in reply.headers),
    ]
    if not keep_alive:
        head.append("connection: close")
    elif http10:
        head.append("connection: keep-alive")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + reply.body


@functools.lru_cache(maxsize=2)
def _http_date(second: int) -> str:
    return email.utils.formatdate(second, usegmt=True)


def http_date() -> str:
    return _http_date(int(time.time()))


class HookConnection:
    """One connection while it carries hooks: read, parse, store, answer, in order,
    in the one task. Pipelined requests wait in ``buf`` and are answered in turn.

    It works on the socket itself (non-blocking, ``recv`` before ``wait_readable``):
    trio's stream layers cost as much per request as the parsing. A read that finds
    data does not yield; every request does, in ``HookIntake.store``. Timeouts come
    from the ``Reaper``, which reads ``expires``."""

    def __init__(self, sock: socket.socket, intake: HookIntake, limits: Limits) -> None:
        self.sock = sock
        self.intake = intake
        self.limits = limits
        self.buf = bytearray()
        self.head_size = 0  # the head of the request being read, at the start of ``buf``
        self.expires = inf  # while waiting on the client: when it has waited too long

    async def serve(self) -> bytes | None:
        """Serve hooks until the connection ends (None), or until a request is for
        hypercorn (every byte read from that request on)."""
        try:
            while await self._one():
                pass
        except _HandOff:
            return bytes(self.buf)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # gone, or closed by the Reaper
        return None

    async def _one(self) -> bool:
        """One request answered; False when the connection is to close."""
        msg = await self._head()
        if msg is None:
            return False
        try:
            return await self._answer(msg)
        finally:
            msg.release()

    async def _answer(self, msg: _Message) -> bool:
        first, last = header_maps(msg.fields)
        refusal = self.intake.guard_refusal(last) or self.intake.refusal(first)
        if refusal is not None:  # its body is not read: the connection cannot go on
            await self._last_answer(refusal)
            return False
        body = await self._body(msg, first)
        if body is None:
            return False
        reply = await self.intake.store(body, first.get(MACHINE_HEADER), first.get(PARENT_HEADER))
        if not msg.keep_alive:
            await self._last_answer(reply, msg.version == "1.0")
            return False
        await self._send(encode(reply, True, msg.version == "1.0", http_date()))
        return True

    async def _fill(self, until: float) -> bool:
        """Read more into ``buf``, waiting for it until ``until`` if need be; False
        once the client has gone. Reads first: under load the next request is often
        there already, and a wait costs a trip through the scheduler."""
        try:
            data = self.sock.recv(MAX_RECV)
        except BlockingIOError:
            self.expires = until
            try:
                await trio.lowlevel.wait_readable(self.sock)
            finally:
                self.expires = inf
            return True  # read on the next call
        except OSError:
            return False
        self.buf += data
        return bool(data)

    async def _send(self, data: bytes) -> None:
        """Send it all (at once, usually); BrokenResourceError if the client has gone."""
        sent = 0
        while True:
            try:
                sent += self.sock.send(data[sent:] if sent else data)
            except BlockingIOError:
                pass
            except OSError as exc:
                raise trio.BrokenResourceError from exc
            if sent == len(data):
                return
            self.expires = trio.current_time() + self.limits.idle  # a client that does not read
            try:
                await trio.lowlevel.wait_writable(self.sock)
            finally:
                self.expires = inf

    async def _head(self) -> _Message | None:
        """The next request's head once whole; None when the client has gone. The
        client has ``limits.idle`` from the last answer to send it all (hypercorn's
        idle timer, likewise, is not restarted by a piece of a head)."""
        buf = self.buf
        until = trio.current_time() + self.limits.idle
        while True:
            while buf.startswith(b"\r\n"):  # empty lines before a request (RFC 9112, 2.2)
                del buf[:2]
            if not buf.startswith(HOOK_LINES):
                start = bytes(buf[: len(HOOK_LINES[0])])
                if not (HOOK_LINES[0].startswith(start) or HOOK_LINES[1].startswith(start)):
                    raise _HandOff
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                return self._parse_head(end + 4)
            if len(buf) > self.limits.max_head:
                raise _HandOff  # hypercorn says why it is refused
            if not await self._fill(until):
                return None

    def _parse_head(self, size: int) -> _Message:
        msg = _Message()
        try:
            msg.parser.feed_data(self.buf[:size])
            ok = msg.is_hook()
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            ok = False
        if not ok:
            msg.release()
            raise _HandOff
        self.head_size = size
        return msg

    async def _body(self, msg: _Message, first: dict[str, str]) -> bytes | None:
        """The whole body, consumed from ``buf``; None when the connection is to close
        (the client went, or the body is too large: answered 413)."""
        if "transfer-encoding" in first:  # llhttp accepts it only ending in chunked
            return await self._chunked_body(msg, first)
        length = int(first.get("content-length") or 0)  # llhttp has checked it
        if length > self.intake.max_body:
            await self._last_answer(self.intake.too_large)
            return None
        end = self.head_size + length
        await self._continue(first, end)
        while len(self.buf) < end:
            if not await self._fill(trio.current_time() + self.limits.read):
                return None
        body = bytes(self.buf[self.head_size : end])
        del self.buf[:end]
        return body

    async def _chunked_body(self, msg: _Message, first: dict[str, str]) -> bytes | None:
        framing = _Chunked(self.head_size)
        await self._continue(first, self.head_size + 1)
        while True:
            try:
                end = framing.end(self.buf, self.limits.max_head)
            except ValueError:
                raise _HandOff from None  # hypercorn answers a malformed body
            # The framing counts too: 1-byte chunks with long extensions must not
            # make the buffer grow past the limit before the body does.
            if framing.length > self.intake.max_body or len(self.buf) - self.head_size > self._chunked_cap():
                await self._last_answer(self.intake.too_large)
                return None
            if end is not None:
                break
            if not await self._fill(trio.current_time() + self.limits.read):
                return None
        try:
            msg.parser.feed_data(self.buf[self.head_size : end])
        except httptools.HttpParserError:
            raise _HandOff from None
        if not msg.complete or msg.begun != 1:
            raise _HandOff  # llhttp framed it otherwise
        del self.buf[:end]
        return bytes(msg.body)

    def _chunked_cap(self) -> int:
        """Bytes a chunked body may take in the buffer: the body, and some framing."""
        return 2 * self.intake.max_body + 16 * MAX_CHUNK_LINE

    async def _continue(self, first: dict[str, str], needed: int) -> None:
        """``Expect: 100-continue``: the client waits for a go before its body."""
        if len(self.buf) < needed and first.get("expect", "").lower() == "100-continue":
            await self._send(CONTINUE)

    async def _last_answer(self, reply: Reply, http10: bool = False) -> None:
        """Answer, then close: the client's leftovers are read for a moment first, so
        that a reset does not destroy the answer before the client reads it."""
        await self._send(encode(reply, False, http10, http_date()))
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return
        until = trio.current_time() + LINGER_S
        with trio.move_on_at(until):
            while await self._fill(until):
                self.buf.clear()
                await trio.lowlevel.checkpoint()  # a client that floods us must not hold the loop


class Reaper:
    """Closes the hook connections that wait on their client too long: one timer for
    them all, as a deadline of each request's own costs about what its parsing does.

    ``notify_closing`` wakes a task only while it waits on the socket (with
    ClosedResourceError): a connection storing an event, or one just woken by data,
    is left alone."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.connections: set[HookConnection] = set()

    async def run(self) -> None:
        while True:
            await trio.sleep(self.every)
            now = trio.current_time()
            for conn in self.connections:
                if conn.expires < now:
                    trio.lowlevel.notify_closing(conn.sock)


class HandedStream(trio.abc.HalfCloseableStream):
    """A connection as hypercorn's ``TCPServer`` gets it: the bytes already read come
    first, then the socket's.

    Also keeps hypercorn from its own race: its ``_close`` calls ``send_eof`` without
    the lock its data sends take, and trio's ``send_eof`` marks the stream busy
    across a checkpoint, so a response being streamed meanwhile failed with
    ``BusyResourceError`` (issue 12). Here ``send_eof`` shuts the socket's write side
    at once, or not at all while a send is under way (``aclose`` follows anyway)."""

    def __init__(self, stream: trio.SocketStream, already: bytes) -> None:
        self.transport = stream
        self.socket = stream.socket  # TCPServer reads the addresses from it
        self._already = already
        self._sending = 0

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if not self._already:
            return await self.transport.receive_some(max_bytes)
        cut = len(self._already) if max_bytes is None else max_bytes
        data, self._already = self._already[:cut], self._already[cut:]
        await trio.lowlevel.checkpoint()
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._sending += 1
        try:
            await self.transport.send_all(data)
        finally:
            self._sending -= 1

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        if not self._sending and not self.socket.did_shutdown_SHUT_WR:
            try:
                self.socket.shutdown(trio.socket.SHUT_WR)
            except OSError:
                pass  # the peer has gone: nothing to end
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await self.transport.aclose()


class HttpFront:
    """The listeners, their lifespan and their connections (as ``worker_serve``)."""

    def __init__(self, app: object, config: HyperConfig, intake: HookIntake) -> None:
        self.config = config
        # The app is ASGI 3; its __call__ takes a plain dict scope, not hypercorn's TypedDicts.
        self.app = wrap_app(cast(ASGIFramework, app), config.wsgi_max_body_size, "asgi")
        self.intake = intake
        self.limits = Limits.of(config)
        self.reaper = Reaper(min(self.limits.idle, self.limits.read) / 4)
        self.context = WorkerContext(None)
        self._hypercorn: Callable[[Any], TCPServer] | None = None

    def listen(self) -> tuple[list[socket.socket], list[str]]:
        """Bind what hypercorn would bind (``config.bind``): sockets and URLs."""
        sockets = self.config.create_sockets().insecure_sockets
        for sock in sockets:
            sock.listen(self.config.backlog)
            sock.setblocking(False)
        return sockets, [f"http://{repr_socket_addr(s.family, s.getsockname())}" for s in sockets]

    async def serve(self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        """The app's lifespan, then the listeners; ``started`` with their URLs.
        Cancelling it ends every connection."""
        state: dict[str, Any] = {}
        lifespan = Lifespan(self.app, self.config, state)
        listeners: list[socket.socket] = []
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(lifespan.handle_lifespan)
                await lifespan.wait_for_startup()
                self._hypercorn = functools.partial(
                    TCPServer, self.app, self.config, self.context, ConnectionState(state.copy())
                )
                listeners, urls = self.listen()
                for url in urls:
                    await self.config.log.info(f"Running on {url} (CTRL + C to quit)")
                nursery.start_soon(self.reaper.run)
                for listener in listeners:
                    nursery.start_soon(self._accept, listener, nursery)
                task_status.started(urls)
                try:
                    await trio.sleep_forever()
                finally:
                    await self.context.terminated.set()  # no kept-alive connection is recycled
        finally:
            for listener in listeners:
                _close(listener)

    async def _accept(self, listener: socket.socket, nursery: trio.Nursery) -> None:
        """Accept connections, one task each (as ``trio.serve_listeners``, on the
        plain socket the lean path needs)."""
        while True:
            await trio.lowlevel.wait_readable(listener)
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno in OUT_OF_RESOURCES:
                    log.error("http: cannot accept a connection now (%s); trying again in a moment", exc)
                    await trio.sleep(ACCEPT_RETRY_S)  # a retry timer: the kernel gives no signal
                elif exc.errno not in IGNORABLE_ACCEPT_ERRNOS:
                    log.warning("http: accept failed: %s", exc)  # never the whole front
                continue
            sock.setblocking(False)
            with contextlib.suppress(OSError):  # a connection already reset, say
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            nursery.start_soon(self.connection, sock)

    async def connection(self, sock: socket.socket) -> None:
        """One accepted connection: hooks here while they last, then hypercorn."""
        try:
            already = await self._hooks(sock)
            if already is not None:
                assert self._hypercorn is not None
                stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
                await self._hypercorn(HandedStream(stream, already)).run()
        finally:
            _close(sock)

    async def _hooks(self, sock: socket.socket) -> bytes | None:
        conn = HookConnection(sock, self.intake, self.limits)
        self.reaper.connections.add(conn)
        try:
            return await conn.serve()
        except Exception:  # a bug here must not take the listeners down with it
            log.exception("http: a hook connection failed")
            return None
        finally:
            self.reaper.connections.discard(conn)


def _close(sock: socket.socket) -> None:
    trio.lowlevel.notify_closing(sock)
    sock.close()
