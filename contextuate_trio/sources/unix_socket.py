"""The local source: a Unix socket speaking newline-delimited JSON (see ``wire``).

Every command hook opens a connection, sends one line, waits for its
acknowledgement and closes: hundreds of connections a second, each a few hundred
bytes. A Trio task and stream per connection cost ~400 µs of CPU each (measured: a
bare Trio echo server), several times the pipeline's own work. So one task serves
the listening socket and every connection, event-driven: they share one selector
(epoll on Linux) whose descriptor the task waits on through Trio; reads, the
acknowledgements (written from the broker's ``on_done`` callback) and closes are
non-blocking calls. Only back-pressure waits: when the broker's channel is full the
task stops reading until it has room, so every producer waits (and a hook spools).

A ``PermissionRequest`` hook that asks for an answer from the dashboard (``decide``)
keeps its connection open after the acknowledgement; the answer (``runtime.
decisions``) is written on it, or it is closed with none.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket as _stdsocket
import stat

import trio

from contextuate_trio.core import wire
from contextuate_trio.core.decisions import Refused
from contextuate_trio.core.events import Event, EventError
from contextuate_trio.runtime.broker import Broker, Delivery
from contextuate_trio.runtime.clock import SYSTEM_MINT
from contextuate_trio.runtime.decisions import Decisions

log = logging.getLogger("contextuate.socket")


class SocketInUse(Exception):
    """Another process answers on the socket path."""


def clear_stale(path: str) -> None:
    """Remove a socket file left by a crashed daemon; refuse if someone answers."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketInUse(f"{path} exists and is not a socket; move it away")
    probe = _stdsocket.socket(_stdsocket.AF_UNIX, _stdsocket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            log.info("removing stale socket %s left by a daemon that did not stop cleanly", path)
            os.unlink(path)
            return
        raise SocketInUse(f"{path}: {exc}") from None
    finally:
        probe.close()
    raise SocketInUse(f"another daemon is listening on {path}")


RECV = 1 << 16
BACKLOG = 1024
ACCEPT_RETRY_S = 0.1
OUT_MAX = 1 << 20  # acks waiting for a producer that does not read them, at most


class _Connection:
    """One producer's connection: its unsplit bytes, acks owed, bytes not yet sent."""

    __slots__ = ("sock", "splitter", "owed", "out", "eof", "closed", "waiting")

    def __init__(self, sock: _stdsocket.socket, max_line: int) -> None:
        self.sock = sock
        self.splitter = wire.LineSplitter(max_line)
        self.owed = 0  # lines that asked for an ack, not yet answered
        self.out = bytearray()  # acks the socket did not take yet
        self.eof = False  # the producer has finished sending
        self.closed = False
        self.waiting: str | None = None  # the request whose answer the hook waits for


class SocketSource:
    """The socket, its connections, and the one task that serves them."""

    def __init__(self, broker: Broker, path: str, max_line: int, decisions: Decisions | None = None) -> None:
        self.broker = broker
        self.decisions = decisions
        self.path = path
        self.max_line = max_line
        self._selector = selectors.DefaultSelector()
        self._listener: _stdsocket.socket | None = None
        self._conns: set[_Connection] = set()

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self._listener = _listen(self.path)
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        log.info("listening on %s", self.path)
        try:
            task_status.started()
            while True:
                await trio.lowlevel.wait_readable(self._selector.fileno())
                for key, mask in self._selector.select(0):
                    if key.data is None:
                        new, failed = self._accept_all()
                        for conn in new:
                            await self._read(conn)  # a hook writes as it connects: often there already
                        if failed:  # out of descriptors, say: the listener stays readable
                            await trio.sleep(ACCEPT_RETRY_S)  # a retry timer (no signal to wait on)
                    else:
                        await self._ready(key.data, mask)
        finally:
            self._shut()

    def _shut(self) -> None:
        for conn in list(self._conns):
            self._close(conn)
        self._selector.close()
        if self._listener is not None:
            self._listener.close()
        try:
            os.unlink(self.path)
        except OSError:  # already gone, or not ours to remove
            pass

    def _accept_all(self) -> tuple[list[_Connection], bool]:
        """The connections waiting, and whether accepting failed (to retry later)."""
        assert self._listener is not None
        new: list[_Connection] = []
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return new, False
            except OSError as exc:
                log.warning("socket: accept failed (%s); trying again in a moment", exc)
                return new, True
            sock.setblocking(False)
            conn = _Connection(sock, self.max_line)
            self._conns.add(conn)
            self._selector.register(sock, selectors.EVENT_READ, conn)
            new.append(conn)

    async def _ready(self, conn: _Connection, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush(conn)
        if mask & selectors.EVENT_READ and not conn.closed:
            await self._read(conn)

    async def _read(self, conn: _Connection) -> None:
        # After a short read, once more: the producer may have finished, and a command
        # hook says so as it sends its line (it shuts its side down). Its end is read
        # now, not on a wake-up of its own (a quarter of a hook's rounds of the loop).
        for _ in range(2):
            data = self._recv(conn)
            if data is None:
                return
            if not data:
                self._ended(conn)
                return
            await self._lines(conn, data)
            if len(data) == RECV or conn.closed:
                return

    def _recv(self, conn: _Connection) -> bytes | None:
        """What the socket holds (b"": the producer's end); None: nothing now, or the
        connection failed (then closed)."""
        try:
            return conn.sock.recv(RECV)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            self._close(conn)
            return None

    async def _lines(self, conn: _Connection, data: bytes) -> None:
        """A read's events go to the broker in runs (lines that ask for an ack, lines
        that do not): one ``submit_many`` each, in order, not one call per line."""
        run: list[Event] = []
        run_acked = False
        for item in conn.splitter.feed(data):
            if isinstance(item, wire.LineTooLong):
                self.broker.counters["bad_lines"] += 1
                log.warning("socket: rejected a %s", item)
                continue
            parsed = self._parse(item)
            if parsed is None:
                continue
            event, want_ack, decide = parsed
            if decide is not None and want_ack:  # rare: a hook that waits for an answer
                if run:
                    await self._submit(conn, run, run_acked)
                    run = []
                await self._submit_waiting(conn, event, decide)
                continue
            if run and want_ack != run_acked:
                await self._submit(conn, run, run_acked)
                run = []
            run_acked = want_ack
            run.append(event)
        if run:
            await self._submit(conn, run, run_acked)

    def _ended(self, conn: _Connection) -> None:
        """The producer sent its last byte: done once every ack it asked for is out."""
        if conn.splitter.pending():
            self.broker.counters["bad_lines"] += 1
            log.warning("socket: connection closed in the middle of a line (%d bytes dropped)", conn.splitter.pending())
        conn.eof = True
        if conn.waiting is not None:  # the hook stopped waiting for its answer
            self._close(conn)
        elif conn.owed == 0 and not conn.out:
            self._close(conn)
        else:
            self._watch(conn)

    def _parse(self, line: bytes) -> tuple[Event, bool, object] | None:
        try:
            return wire.parse_line(line, source="socket", mint=SYSTEM_MINT)
        except EventError as exc:
            self.broker.counters["bad_lines"] += 1
            log.warning("socket: rejected a line: %s (starts %r)", exc, line[:80])
            return None

    async def _submit(self, conn: _Connection, run: list[Event], acked: bool) -> None:
        if not acked:
            await self.broker.submit_many(run)
            return
        conn.owed += len(run)
        await self.broker.submit_many(run, on_done=lambda d: self._acked(conn, d))

    async def _submit_waiting(self, conn: _Connection, event: Event, decide: object) -> None:
        def done(d: Delivery) -> None:
            self._acked(conn, d, decide)

        conn.owed += 1
        await self.broker.submit(event, on_done=done)

    def _acked(self, conn: _Connection, d: Delivery, decide: object = None) -> None:
        """In the broker's task, once the event is stored (or refused); a hook that
        waits for an answer keeps its connection while the request is open."""
        conn.owed -= 1
        if conn.closed:
            return  # the producer gave up waiting (a hook has spooled; dedupe handles it)
        conn.out += wire.ack(d.event.id) if d.ok else wire.nack(d.event.id, d.error or "not stored")
        if decide is not None and d.ok and self.decisions is not None and not conn.eof:
            if self.decisions.waiting(d.event, decide, _Waiter(self, conn, d.event.id)):
                conn.waiting = d.event.id
        if decide is not None and conn.waiting is None:
            conn.eof = True  # no answer to wait for: closed once the ack is out (the hook says nothing)
        self._flush(conn)

    def answered(self, conn: _Connection, line: bytes | None) -> bool:
        """The request's end: its answer for the hook (or none), then the close.
        Whether the answer went out (or waits, the socket full, to go): False when
        the hook had gone or the write failed."""
        conn.waiting = None
        conn.eof = True
        if conn.closed:
            return False
        if line is not None:
            conn.out += line
        self._flush(conn)
        return not conn.closed or not conn.out

    def _flush(self, conn: _Connection) -> None:
        try:
            sent = conn.sock.send(conn.out) if conn.out else 0
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(conn)
            return
        del conn.out[:sent]
        if conn.eof and conn.owed == 0 and not conn.out and conn.waiting is None:
            self._close(conn)
        else:
            self._watch(conn)

    def _watch(self, conn: _Connection) -> None:
        """Wake up for what the connection still needs: reading until the producer
        is done, writing while acks wait in ``out``."""
        # A producer that does not read its acks is not read either once OUT_MAX of
        # them wait: back-pressure per connection, as a blocking send would give.
        reading = not conn.eof and len(conn.out) < OUT_MAX
        events = (selectors.EVENT_READ if reading else 0) | (selectors.EVENT_WRITE if conn.out else 0)
        try:
            if events:
                self._selector.modify(conn.sock, events, conn)
            else:
                self._selector.unregister(conn.sock)
        except KeyError:  # unregistered already (after its end): register again
            if events:
                self._selector.register(conn.sock, events, conn)

    def _close(self, conn: _Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._conns.discard(conn)
        if conn.waiting is not None and self.decisions is not None:
            self.decisions.gone(conn.waiting)
            conn.waiting = None
        try:
            self._selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()


def _listen(path: str) -> _stdsocket.socket:
    """The listening socket at ``path``, created 0600 (never briefly wider)."""
    clear_stale(path)
    sock = _stdsocket.socket(_stdsocket.AF_UNIX, _stdsocket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


class _Waiter:
    """``runtime.decisions.Waiter`` for a hook waiting on its connection."""

    def __init__(self, source: SocketSource, conn: _Connection, event_id: str) -> None:
        self.source, self.conn, self.event_id = source, conn, event_id

    async def claim(self) -> bool:
        if self.conn.closed or self.conn.waiting != self.event_id:
            raise Refused(404, f"request {self.event_id}: its hook stopped waiting")
        return True

    async def send(self, output: dict) -> bool:
        """Written to the hook's socket (it reads one line, then closes): False when
        the hook had gone, or the write failed."""
        if self.conn.closed or self.conn.waiting != self.event_id:
            return False
        return self.source.answered(self.conn, wire.answer(self.event_id, output))

    async def release(self) -> None:
        """Nothing to give back: the claim was this connection's own check."""
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        self.source.answered(self.conn, None)


async def serve(
    broker: Broker,
    path: str,
    max_line: int,
    decisions: Decisions | None = None,
    *,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    await SocketSource(broker, path, max_line, decisions).serve(task_status=task_status)
