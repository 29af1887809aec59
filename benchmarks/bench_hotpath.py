"""Benchmark 0 — the daemon's hot paths against their targets, side by side in one run.

Every case runs against a real daemon process (``C.Daemon``, a fresh one per case, so
no case inherits another's state). The load comes from this process alone: one
``selectors`` loop holding every socket (HTTP connections, hook connections, NDJSON
writers, WebSocket clients speaking RFC 6455 over a raw socket, a status poller), with
every request's bytes built before the clock starts and no ``http.client`` in the hot
loop, so on this 2-core machine the generator costs a fraction of what the daemon does.
The daemon's CPU is read from ``/proc/<pid>/stat`` before and after each phase, its RSS
from ``/proc/<pid>/status``, stored counts from ``/api/status``. The loop's GC is off
during measured phases.

1. HTTP hooks: ``POST /api/hooks`` (a Bash PreToolUse payload, unique tool_use_id, one
   session per connection), 8 kept-alive connections, closed loop (a connection sends
   its next request when the previous 200 arrived). Events/s, daemon CPU per event,
   and whether a healthy kept-alive connection ever sees ``Connection: close`` (or is
   closed by the server).
2. Command hooks over the Unix socket, as ``hook_emit.py`` delivers them: per event a
   new connection, one envelope line (``hook.wire.envelope``) with ``"ack": true``,
   wait for ``{"ack": id}``, close; paced at 500/s. Daemon CPU per hook, write -> ack.
3. Write -> WebSocket client: events carry ``data.bench_sent_ns`` (``time.time_ns()``
   just before the write); a WebSocket client records receive time - stamp. Sources:
   the socket (as in 2) and POST (a pool of 8 kept-alive connections: an event due
   while all 8 wait for their 200 waits too, so the rate reached says whether the
   daemon kept up). Paced at 500/s and 2,000/s; the pacer sends what is due at each
   wake-up (epoll waits >= 1 ms: at 2,000/s, pairs).
4. Bulk NDJSON: complete events (the contract's shape, as ``_producer.py`` sends
   them), 3 writers on their own connections, as fast as the socket takes them;
   stored/s (polling /api/status), then with 5 WebSocket subscribers that must each
   receive every event (counted by ``seq``): stored+delivered/s, subscribers dropped.
5. RSS after 20,000 events (a fresh daemon), and with a big history on disk:
   1,000,000 events (BENCH_QUICK: 200,000; the rows say which) in 1,000 sessions,
   written beforehand straight in the store's format with the project's code: each
   session's stored line comes from ``events.from_payload`` + ``masking.stored_line``
   (ids, times and tool ids filled in), ``FileStore.append`` writes the events, block
   index and seq log (numbered as a broker numbers what it stores), and
   ``FileStore.save_sessions`` the metas of sessions built by a
   ``SessionManager`` (first and last event applied, counts set: the same meta as
   applying every event, for this one-kind stream). Going through a ``Broker`` in
   process instead would take ~140 s for 1M (measured: 139 µs per event with 1,000
   sessions), so it is not used. The data set is cached in
   ``benchmarks/results/cache-1m/<count>-events/`` under a version key (the
   generator's version, the count, a fingerprint of the stored line, the session's
   fields and the store's layout as the code makes them now); it is checked on every
   use (files unchanged since written; ``FileStore.open``: every session, no events
   past its meta, the total count, the seq log's; lines read back and parsed by core
   code) and regenerated when the key or the check fails. Each daemon runs on a copy
   (the sessions' files hard-linked: new events go to new sessions, so they are not
   written; the rest copied); a cache file found changed afterwards is dropped, to be
   generated again. Start -> healthy (spawn until
   /api/health is ok and the socket exists) beside the same start on an empty data
   dir (the interpreter and imports), RSS after start and after 20,000 more events.
6. Flood: events over the socket as fast as possible (one writer) with one WebSocket
   client that reads (it must get every event exactly once, in order: each event
   carries ``data.bench_i``, and ``seq`` must have no gaps) and one that connects and
   never reads again (its receive buffer set to 64 KiB, so its socket stops taking
   data early): is it dropped (waited for up to BENCH_HOTPATH_DROP_WAIT s from the
   flood's start: the daemon drops a client whose socket takes no message within its
   send timeout), and the ingest rate meanwhile.

Besides the targets: the daemon log's warnings and errors per case; the generator's
CPU beside the daemon's (and its longest loop turn: how late it can have noticed a
reply); and the CPU other processes used meanwhile (this machine is shared: read the
figures with it). Every number and sample: ``results/hotpath.json`` (or latest.json).

The "before" column: figures from before this work, same machine (peers, same
machine: Bun+SQLite 6,658 ev/s at 124 µs/event, Node+SQLite 1,835 ev/s at 547 µs).

    .venv/bin/python benchmarks/bench_hotpath.py   # BENCH_QUICK=1: ~50 s; full: ~105 s
    (+10 s the first time: generating the 1M data set). BENCH_HOTPATH_CASES=http,ws:
    some cases only. Sizes: BENCH_HOTPATH_HTTP, _HOOK_SECONDS, _WS_SECONDS, _BULK,
    _HISTORY, _ROUNDS, _FLOOD, _DROP_WAIT.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import gc
import hashlib
import http.client
import json
import os
import re
import selectors
import shutil
import socket
import subprocess
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

NAME = "hotpath"
MB = 2**20
READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE

T_HTTP_RATE, T_HTTP_CPU = 8_000, 100e-6
T_HOOK_CPU, T_ACK_P50, T_ACK_P99 = 60e-6, 0.3e-3, 1e-3
T_WS_P50, T_WS_P99, T_WS_WORST = 0.3e-3, 1e-3, 10e-3
T_BULK, T_BULK_WS = 50_000, 40_000
T_RSS_20K, T_RSS_BIG, T_START = 60 * MB, 100 * MB, 1.0
PEERS_RATE = "peers: Bun+SQLite 6,658, Node+SQLite 1,835 ev/s"
PEERS_CPU = "peers: Bun 124 µs, Node 547 µs"

HTTP_CONNS = 8
HOOK_INFLIGHT = 256  # hooks waiting for their ack at once, at most
STAMP_HOLE = 1111111111111111111  # 19 digits, as time.time_ns() has until 2286
STAMP_RE = re.compile(rb'"bench_sent_ns":(\d+)')
INDEX_RE = re.compile(rb'"bench_i":(\d+)')
HEAD_RE = re.compile(rb'\{"type":"([a-z_]+)","seq":(\d+)')

HISTORY_SESSIONS = 1_000
GEN_VERSION = "hotpath-history-2"  # 2: metas record their last block (_tail)
CACHE = os.path.join(C.RESULTS, "cache-1m")


# --- the load generator: one selectors loop -----------------------------------------------
class Loop:
    """Every socket of the load generator in one thread; ``ticks`` run on every turn
    and say how soon they want to run again (None: not before some socket is ready)."""

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.ticks: list[Callable[[float], float | None]] = []
        self.mark()

    def mark(self) -> None:
        """Start the generator's own accounting: its CPU, and its longest turn (from a
        wake-up to the next wait: how late it can have noticed a socket was ready)."""
        self.cpu0 = time.process_time()
        self.max_turn = 0.0

    def report(self) -> dict:
        return {"generator_cpu_s": time.process_time() - self.cpu0, "generator_max_turn_s": self.max_turn}

    def add(self, sock: socket.socket, callback: Callable[[int], None], events: int = READ) -> None:
        self.sel.register(sock, events, callback)

    def modify(self, sock: socket.socket, callback: Callable[[int], None], events: int) -> None:
        self.sel.modify(sock, events, callback)

    def remove(self, sock: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(sock)

    def run(self, done: Callable[[], bool], timeout: float) -> bool:
        """Serve the sockets until ``done()`` (True) or ``timeout`` seconds (False)."""
        end = time.perf_counter() + timeout
        select = self.sel.select
        woke = None
        while not done():
            now = time.perf_counter()
            if now >= end:
                return False
            wait = min(0.05, end - now)
            for tick in self.ticks:
                w = tick(now)
                if w is not None and w < wait:
                    wait = max(w, 0.0)
            if woke is not None:
                self.max_turn = max(self.max_turn, time.perf_counter() - woke)
            ready = select(wait)
            woke = time.perf_counter()
            for key, mask in ready:
                key.data(mask)
        return True

    def idle(self, seconds: float) -> None:
        """Keep serving (WebSocket clients keep reading) for a while."""
        self.run(lambda: False, seconds)

    def close(self) -> None:
        for key in list(self.sel.get_map().values()):
            with contextlib.suppress(OSError):
                key.fileobj.close()
        self.sel.close()

    def __enter__(self) -> Loop:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def tcp(port: int, rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    return s


class HttpConn:
    """A kept-alive HTTP/1.1 connection, one request in flight; a connection the server
    closes (or announces closing) is counted and replaced."""

    def __init__(self, loop: Loop, port: int, on_response: Callable) -> None:
        self.loop, self.port, self.on_response = loop, port, on_response
        self.inflight: bytes | None = None
        self.t_sent = 0.0
        self.server_closed = 0
        self._connect()

    def _connect(self) -> None:
        self.sock = tcp(self.port)
        self.sock.setblocking(False)
        self.buf = bytearray()
        self.out = b""
        self.loop.add(self.sock, self._ready)

    def _reconnect(self) -> None:
        self.loop.remove(self.sock)
        self.sock.close()
        self._connect()

    def send(self, request: bytes) -> None:
        self.inflight = request
        self.t_sent = time.perf_counter()
        try:
            n = self.sock.send(request)
        except BlockingIOError:
            n = 0
        if n < len(request):
            self.out = request[n:]
            self.loop.modify(self.sock, self._ready, READ | WRITE)

    def _ready(self, mask: int) -> None:
        if mask & WRITE and self.out:
            self.out = self.out[self.sock.send(self.out) :]
            if not self.out:
                self.loop.modify(self.sock, self._ready, READ)
        if not mask & READ:
            return
        try:
            data = self.sock.recv(1 << 16)
        except BlockingIOError:
            return
        except ConnectionError:
            data = b""
        if not data:
            self.server_closed += 1
            request, self.inflight = self.inflight, None
            self._reconnect()
            if request is not None:  # lost with the connection: sent again
                self.send(request)
            return
        self.buf += data
        self._parse()

    def _parse(self) -> None:
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            i = head.find(b"\r\ncontent-length:")
            if i < 0:
                raise RuntimeError(f"response without a content-length: {head[:200]!r}")
            j = head.find(b"\r\n", i + 17)
            total = end + 4 + int(head[i + 17 : j if j >= 0 else len(head)])
            if len(self.buf) < total:
                return
            body = bytes(self.buf[end + 4 : total])
            del self.buf[:total]
            close = b"\r\nconnection: close" in head
            self.inflight = None
            if close:
                self._reconnect()
            self.on_response(self, int(head[9:12]), close, body)


class HttpPool:
    """``HTTP_CONNS`` kept-alive connections; an item starts only on an idle one."""

    def __init__(self, loop: Loop, port: int, conns: int = HTTP_CONNS) -> None:
        self.conns = [HttpConn(loop, port, self._response) for _ in range(conns)]
        self.idle = deque(self.conns)
        self.pacer: Pacer | None = None
        self.reset()

    def reset(self) -> None:
        self.done = self.non_200 = self.close_headers = 0
        self.lat: list[float] = []
        self.t_last = 0.0
        self.closed0 = sum(c.server_closed for c in self.conns)

    @property
    def server_closed(self) -> int:
        return sum(c.server_closed for c in self.conns) - self.closed0

    def start(self, request: bytes | tuple[bytes, bytes]) -> bool:
        if not self.idle:
            return False
        if isinstance(request, tuple):  # stamped: the send time goes in just now
            request = request[0] + str(time.time_ns()).encode() + request[1]
        self.idle.popleft().send(request)
        return True

    def _response(self, conn: HttpConn, status: int, close: bool, body: bytes) -> None:
        now = time.perf_counter()
        self.done += 1
        self.t_last = now
        self.lat.append(now - conn.t_sent)
        self.non_200 += status != 200
        self.close_headers += close
        self.idle.append(conn)
        if self.pacer is not None:
            self.pacer.pump(now)


class HookCall:
    """One command hook's delivery: connect, the envelope line, its ack, close."""

    __slots__ = ("loop", "sock", "buf", "t_write", "on_done")

    def __init__(self, loop: Loop, path: str, line: bytes | tuple[bytes, bytes], on_done: Callable) -> None:
        self.loop, self.on_done, self.buf = loop, on_done, b""
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.settimeout(5)
            self.sock.connect(path)
            if isinstance(line, tuple):
                line = line[0] + str(time.time_ns()).encode() + line[1]
            self.t_write = time.perf_counter_ns()
            self.sock.sendall(line)
            self.sock.shutdown(socket.SHUT_WR)  # as the hook does (hook.wire.deliver_socket)
            self.sock.setblocking(False)
        except OSError:
            self.sock.close()
            raise
        loop.add(self.sock, self._ready)

    def _ready(self, mask: int) -> None:
        try:
            data = self.sock.recv(4096)
        except BlockingIOError:
            return
        except ConnectionError:
            data = b""
        self.buf += data
        if data and b"\n" not in self.buf:
            return
        t = time.perf_counter_ns()
        self.loop.remove(self.sock)
        self.sock.close()
        self.on_done(self.buf.startswith(b'{"ack"'), self.t_write, t)


class HookSender:
    """Command hooks, each on its connection, at most HOOK_INFLIGHT at once."""

    def __init__(self, loop: Loop, path: str) -> None:
        self.loop, self.path = loop, path
        self.pacer: Pacer | None = None
        self.reset()

    def reset(self) -> None:
        self.inflight = self.done = self.failed = 0
        self.lat: list[float] = []
        self.t_last = 0.0

    def start(self, line: bytes | tuple[bytes, bytes]) -> bool:
        if self.inflight >= HOOK_INFLIGHT:
            return False
        try:
            HookCall(self.loop, self.path, line, self._done)
        except OSError:  # could not connect or write: a hook that would spool
            self.done += 1
            self.failed += 1
            return True
        self.inflight += 1
        return True

    def _done(self, ok: bool, t_write: int, t_ack: int) -> None:
        self.inflight -= 1
        self.done += 1
        self.t_last = t_ack / 1e9
        if ok:
            self.lat.append((t_ack - t_write) / 1e9)
        else:
            self.failed += 1
        if self.pacer is not None:
            self.pacer.pump(time.perf_counter())


class Pacer:
    """Starts items 0..n-1: at ``rate`` per second, what is due each time it is pumped
    (a sleep that overshoots does not lower the average), or with ``rate`` None as
    fast as the sender takes them (a closed loop: completions pump it)."""

    def __init__(self, items: list, rate: float | None, start: Callable[[object], bool]) -> None:
        self.items, self.rate, self.start = items, rate, start
        self.sent = 0
        self.t0: float | None = None

    def begin(self) -> None:
        self.t0 = time.perf_counter()
        self.pump(self.t0)

    def pump(self, now: float) -> float | None:
        if self.t0 is None:
            return None
        n = len(self.items)
        due = n if self.rate is None else min(n, int((now - self.t0) * self.rate) + 1)
        while self.sent < due:
            if not self.start(self.items[self.sent]):
                return None  # the sender is full: a completion pumps again
            self.sent += 1
        if self.sent >= n or self.rate is None:
            return None
        return self.t0 + self.sent / self.rate - now


def drive(loop: Loop, sender: HttpPool | HookSender, items: list, rate: float | None, timeout: float) -> dict:
    """Send ``items`` through ``sender`` (paced, or closed loop) until all are answered."""
    sender.reset()
    pacer = Pacer(items, rate, sender.start)
    sender.pacer = pacer
    loop.ticks.append(pacer.pump)
    try:
        pacer.begin()
        finished = loop.run(lambda: sender.done >= len(items), timeout)
    finally:
        loop.ticks.remove(pacer.pump)
        sender.pacer = None
    assert pacer.t0 is not None
    elapsed = sender.t_last - pacer.t0 if sender.done else float("nan")
    return {"finished": finished, "sent": pacer.sent, "answered": sender.done, "elapsed_s": elapsed}


class WsClient:
    """A WebSocket client on a raw socket (RFC 6455: handshake, unmasked server frames,
    pings answered, no extensions). Counts events by ``seq`` (the broker numbers every
    event consecutively); ``on_events(buf, start, end, t_ns)`` sees each event message."""

    def __init__(
        self, loop: Loop, port: int, on_events: Callable | None = None, rcvbuf: int | None = None, read: bool = True
    ) -> None:
        self.loop, self.on_events = loop, on_events
        self.first_seq: int | None = None
        self.seq = 0
        self.messages = 0
        self.t_last = 0.0
        self.closed: str | None = None
        self.frag: bytearray | None = None
        self.sock = tcp(port, rcvbuf)
        key = base64.b64encode(os.urandom(16))
        self.sock.sendall(
            b"GET /?limit=0 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (port, key)
        )
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise RuntimeError("the WebSocket server closed during the handshake")
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"WebSocket handshake refused: {head[:200]!r}")
        self.port = self.sock.getsockname()[1]
        self.buf = bytearray(rest)
        self.sock.setblocking(False)
        if read:
            loop.add(self.sock, self._ready)
            self._parse(time.time_ns())

    @property
    def ready(self) -> bool:
        return self.first_seq is not None or self.closed is not None

    @property
    def count(self) -> int:
        return 0 if self.first_seq is None else self.seq - self.first_seq

    def _ready(self, mask: int) -> None:
        if self.closed:
            return
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return
        except ConnectionError as exc:
            data, self.closed = b"", f"{type(exc).__name__}"
        t = time.time_ns()
        if not data:
            self.closed = self.closed or "connection closed without a close frame"
            self.loop.remove(self.sock)
            self.sock.close()
            return
        self.buf += data
        self._parse(t)

    def _parse(self, t: int) -> None:
        buf, pos, n = self.buf, 0, len(self.buf)
        while n - pos >= 2:
            b0, ln = buf[pos], buf[pos + 1] & 0x7F
            hl = 2
            if ln == 126:
                if n - pos < 4:
                    break
                ln, hl = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif ln == 127:
                if n - pos < 10:
                    break
                ln, hl = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            start = pos + hl
            if n - start < ln:
                break
            pos = start + ln
            self._frame(b0, buf, start, pos, t)
        if pos:
            del buf[:pos]

    def _frame(self, b0: int, buf: bytearray, start: int, end: int, t: int) -> None:
        op, fin = b0 & 0x0F, b0 & 0x80
        if op == 0x8:
            code = int.from_bytes(buf[start : start + 2], "big") if end - start >= 2 else None
            self.closed = f"{code} {bytes(buf[start + 2 : end]).decode('utf-8', 'replace')}"
            self.loop.remove(self.sock)
            self.sock.close()
        elif op == 0x9:  # ping: a pong (masked, as clients must; a zero key masks nothing)
            payload = bytes(buf[start:end])
            with contextlib.suppress(OSError):
                self.sock.send(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
        elif op in (0x0, 0x1, 0x2):
            if self.frag is not None or not fin:
                self.frag = (self.frag or bytearray()) + buf[start:end]
                if not fin:
                    return
                whole, self.frag = self.frag, None
                self._message(whole, 0, len(whole), t)
            else:
                self._message(buf, start, end, t)

    def _message(self, buf: bytearray, start: int, end: int, t: int) -> None:
        self.messages += 1
        m = HEAD_RE.match(buf, start)
        if m is None:
            return
        kind, seq = m.group(1), int(m.group(2))
        if kind == b"snapshot":
            self.first_seq = self.seq = seq
        elif kind in (b"event", b"events"):
            self.seq = seq
            self.t_last = time.perf_counter()
            if self.on_events is not None:
                self.on_events(buf, start, end, t)


class Writer:
    """Writes one blob of NDJSON into the socket as fast as it takes it, then closes."""

    def __init__(self, loop: Loop, path: str, blob: bytes) -> None:
        self.loop, self.view, self.off = loop, memoryview(blob), 0
        self.t_done: float | None = None
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(path)
        self.sock.setblocking(False)
        loop.add(self.sock, self._ready, WRITE)

    def _ready(self, mask: int) -> None:
        try:
            self.off += self.sock.send(self.view[self.off : self.off + (1 << 18)])
        except BlockingIOError:
            return
        if self.off >= len(self.view):
            self.t_done = time.perf_counter()
            self.loop.remove(self.sock)
            self.sock.close()


class StatusPoller:
    """``GET /api/status`` over a kept-alive connection every ``every`` s; notes when
    ``eventsStored`` first reaches ``target`` (the response's arrival time)."""

    def __init__(self, loop: Loop, port: int, target: int, every: float = 0.02) -> None:
        self.req = b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % port
        self.conn = HttpConn(loop, port, self._response)
        self.target, self.every = target, every
        self.stored = 0
        self.t_reached: float | None = None
        self.next_at = 0.0

    def tick(self, now: float) -> float | None:
        if self.t_reached is not None or self.conn.inflight is not None:
            return None  # done, or its answer will wake the loop
        if now >= self.next_at:
            self.conn.send(self.req)
            self.next_at = now + self.every
            return None
        return self.next_at - now

    def _response(self, conn: HttpConn, status: int, close: bool, body: bytes) -> None:
        if status == 200:
            self.stored = int(json.loads(body)["eventsStored"])
            if self.stored >= self.target and self.t_reached is None:
                self.t_reached = time.perf_counter()


# --- what is sent (built before the clock starts) -------------------------------------------
def http_requests(port: int, n: int, sessions: int, tag: str, stamped: bool = False) -> list:
    """``POST /api/hooks`` requests: bytes, or (head, tail) around the send stamp."""
    payload = _payload()
    head = (
        "POST /api/hooks HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
        "X-Contextuate-Machine: bench\r\nContent-Length: %d\r\n\r\n"
    )
    out: list = []
    for i in range(n):
        p = dict(payload, session_id=f"bench-{tag}-s{i % sessions}", tool_use_id=f"toolu_{tag}_{i}")
        if stamped:
            p["bench_sent_ns"] = STAMP_HOLE
        body = json.dumps(p, separators=(",", ":")).encode()
        req = (head % (port, len(body))).encode() + body
        out.append(tuple(req.split(b"%d" % STAMP_HOLE)) if stamped else req)
    return out


def hook_lines(n: int, tag: str, sessions: int = 4, stamped: bool = False) -> list:
    """The hook's envelope lines (``hook.wire.envelope``, as hook_emit builds them)."""
    from contextuate_trio.hook import paths, wire

    payload = _payload()
    ts = int(time.time() * 1000)
    out: list = []
    for i in range(n):
        p = dict(payload, session_id=f"bench-{tag}-s{i % sessions}", tool_use_id=f"toolu_{tag}_{i}")
        if stamped:
            p["bench_sent_ns"] = STAMP_HOLE
        line = wire.envelope(json.dumps(p).encode(), paths.new_id(), ts, "bench", None, ack=True)
        out.append(tuple(line.split(b"%d" % STAMP_HOLE)) if stamped else line)
    return out


def ndjson_blobs(n: int, producers: int, tag: str, sessions: int = 10) -> list[bytes]:
    """Complete events (the contract's shape), ``n`` in all, one blob per producer;
    ``data.bench_i`` numbers them 0..n-1 (each producer holds a consecutive range)."""
    payload = _payload()
    ev = {
        "id": "@ID@",
        "timestamp": 1111111111111,
        "sessionId": "@SID@",
        "machineId": "bench-host",
        "workingDirectory": payload.get("cwd"),
        "eventType": "tool_call",
        "hookType": "PreToolUse",
        "toolName": payload.get("tool_name"),
        "toolUseId": "@TID@",
        "data": dict(payload, session_id="@SID@", tool_use_id="@TID@", bench_i=2222222222),
    }
    tpl = json.dumps(ev, separators=(",", ":")) + "\n"
    prefix = os.urandom(4).hex()
    ts = int(time.time() * 1000)
    blobs = []
    first = 0
    for p in range(producers):
        lines = []
        for k in range(n // producers + (p < n % producers)):
            i = first + k
            sid = f"bench-{tag}{p}-s{k % sessions}"
            lines.append(
                tpl.replace("@ID@", f"{prefix}-{p:04x}-4000-a000-{k:012x}")
                .replace("@SID@", sid)
                .replace("@TID@", f"toolu_{tag}_{i}")
                .replace("1111111111111", str(ts + k // 20))
                .replace("2222222222", str(i))
            )
        blobs.append("".join(lines).encode())
        first += len(lines)
    return blobs


# --- measuring helpers ------------------------------------------------------------------------
@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def ingest(
    d: C.Daemon, loop: Loop, blobs: list[bytes], n: int, clients: list[WsClient] | None = None, timeout: float = 0
) -> dict:
    """Write ``blobs`` into the socket at once; until every event is stored (polled)
    and every client has received them all (or was closed)."""
    clients = clients or []
    base = d.events_stored()
    poller = StatusPoller(loop, d.port, base + n)
    counts0 = [c.count for c in clients]
    loop.ticks.append(poller.tick)
    try:
        with no_gc():
            loop.mark()
            cpu0 = C.cpu_seconds(d.pid)
            t0 = time.perf_counter()
            writers = [Writer(loop, d.socket_path, b) for b in blobs]
            finished = loop.run(
                lambda: (
                    poller.t_reached is not None
                    and all(c.count - c0 >= n or c.closed for c, c0 in zip(clients, counts0, strict=True))
                ),
                timeout or max(60.0, n / 1000),
            )
            cpu = C.cpu_seconds(d.pid) - cpu0
    finally:
        loop.ticks.remove(poller.tick)
    out: dict = {
        "events": n,
        "producers": len(blobs),
        "finished": finished,
        "stored": poller.stored - base,
        "write_s": max((w.t_done or float("nan")) - t0 for w in writers),
        "daemon_cpu_s": cpu,
        "cpu_per_event_s": cpu / n,
        "rss": C.rss_bytes(d.pid),
        **loop.report(),
    }
    if poller.t_reached is not None:
        out["stored_s"] = poller.t_reached - t0
        out["stored_per_s"] = n / out["stored_s"]
    if clients:
        got = [c.count - c0 for c, c0 in zip(clients, counts0, strict=True)]
        out["clients"] = [{"count": g, "closed": c.closed} for g, c in zip(got, clients, strict=True)]
        out["clients_complete"] = sum(g >= n and not c.closed for g, c in zip(got, clients, strict=True))
        if out["clients_complete"] == len(clients):
            out["delivered_s"] = max(c.t_last for c in clients) - t0
            out["delivered_per_s"] = n / out["delivered_s"]
    return out


def get_text(d: C.Daemon, path: str) -> str:
    c = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
    try:
        c.request("GET", path)
        return c.getresponse().read().decode()
    finally:
        c.close()


def metric(d: C.Daemon, name: str) -> float | None:
    for line in get_text(d, "/metrics").splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


# Expected of every benchmark daemon (its config sets no token): not a finding.
EXPECTED_WARNINGS = ("no token (server.token, server.tokens)",)


def log_findings(d: C.Daemon) -> list[str]:
    """The daemon log's warnings, errors and tracebacks (the time cut off), but for
    the ones every benchmark daemon logs."""
    try:
        with open(d.log_path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split(" ", 3)
        if len(parts) == 4 and parts[2] in ("WARNING", "ERROR", "CRITICAL"):
            if not any(w in parts[3] for w in EXPECTED_WARNINGS):
                out.append(f"{parts[2]} {parts[3]}")
        elif line.startswith("Traceback"):
            out.append(line)
    return out


def pct_ms(xs: list[float], p: float) -> str:
    return f"{C.pct(xs, p) * 1000:.2f}"


def verdicts(*checks: tuple[str, float | None, float, bool]) -> str:
    """'met', or 'MISSED' and which of the named checks missed."""
    missed = [name for name, value, target, higher in checks if C.verdict(value, target, higher) != "met"]
    if not missed:
        return "met"
    return "MISSED " + ",".join(missed) if len(checks) > 1 else "MISSED"


# --- 1. HTTP hooks ----------------------------------------------------------------------------
def case_http(n: int) -> dict:
    warm = 20 * HTTP_CONNS
    with C.Daemon() as d, Loop() as loop:
        reqs = http_requests(d.port, warm + n, HTTP_CONNS, "http")
        pool = HttpPool(loop, d.port)
        drive(loop, pool, reqs[:warm], None, 60)
        with no_gc():
            loop.mark()
            cpu0 = C.cpu_seconds(d.pid)
            res = drive(loop, pool, reqs[warm:], None, max(60.0, n / 200))
            cpu = C.cpu_seconds(d.pid) - cpu0
        res.update(loop.report())
        res.update(
            requests=n,
            connections=HTTP_CONNS,
            events_per_s=pool.done / res["elapsed_s"],
            daemon_cpu_s=cpu,
            cpu_per_event_s=cpu / max(pool.done, 1),
            non_200=pool.non_200,
            connection_close_headers=pool.close_headers,
            server_closed=pool.server_closed,
            request_p50_s=C.pct(pool.lat, 50),
            request_p99_s=C.pct(pool.lat, 99),
            stored=d.events_stored() - warm,
            rss=C.rss_bytes(d.pid),
        )
        res["log"] = log_findings(d)
    b = "hot 1 http hooks"
    rate, cpu_ev = res["events_per_s"], res["cpu_per_event_s"]
    note = (
        "" if res["finished"] and res["non_200"] == 0 else f" ({res['answered']:,} answered, {res['non_200']} not 200)"
    )
    closes = res["connection_close_headers"] + res["server_closed"]
    res["rows"] = [
        C.row(
            b,
            f"POST /api/hooks, {HTTP_CONNS} kept-alive conns, closed loop, {n:,} requests: events/s",
            f"{rate:,.0f} ev/s (request p50 {res['request_p50_s'] * 1000:.1f} ms){note}",
            f">= {T_HTTP_RATE:,}",
            C.verdict(rate, T_HTTP_RATE, True),
            f"1,176 ev/s ({PEERS_RATE})",
        ),
        C.row(
            b,
            "daemon CPU per event",
            f"{cpu_ev * 1e6:.0f} µs",
            f"<= {T_HTTP_CPU * 1e6:.0f} µs",
            C.verdict(cpu_ev, T_HTTP_CPU),
            f"838 µs ({PEERS_CPU})",
        ),
        C.row(
            b,
            "Connection: close seen on a healthy kept-alive connection",
            "never"
            if closes == 0
            else f"{res['connection_close_headers']} close headers, "
            f"{res['server_closed']} connections closed by the server",
            "never",
            "met" if closes == 0 else "MISSED",
        ),
    ]
    return res


# --- 2. command hooks over the socket -----------------------------------------------------------
def case_hook(seconds: int, rate: int = 500) -> dict:
    n = seconds * rate
    with C.Daemon() as d, Loop() as loop:
        lines = hook_lines(50 + n, "hook")
        hooks = HookSender(loop, d.socket_path)
        drive(loop, hooks, lines[:50], rate, 30)
        with no_gc():
            loop.mark()
            cpu0 = C.cpu_seconds(d.pid)
            res = drive(loop, hooks, lines[50:], rate, seconds * 3 + 30)
            cpu = C.cpu_seconds(d.pid) - cpu0
        res.update(loop.report())
        lat = hooks.lat
        res.update(
            hooks=n,
            rate=rate,
            failed=hooks.failed,
            daemon_cpu_s=cpu,
            cpu_per_hook_s=cpu / max(hooks.done, 1),
            reached_per_s=hooks.done / res["elapsed_s"],
            ack_p50_s=C.pct(lat, 50),
            ack_p99_s=C.pct(lat, 99),
            ack_max_s=max(lat) if lat else None,
            stored=d.events_stored() - 50,
            rss=C.rss_bytes(d.pid),
        )
        res["log"] = log_findings(d)
    res["floor"] = hook_floor(lines[50:], rate, seconds)
    b = "hot 2 command hooks"
    note = (
        "" if res["finished"] and not res["failed"] else f" ({res['answered']:,} answered, {res['failed']} not acked)"
    )
    p50, p99 = res["ack_p50_s"], res["ack_p99_s"]
    res["rows"] = [
        C.row(
            b,
            f"socket, new connection per hook, ack, {rate}/s for {seconds} s: daemon CPU per hook",
            f"{res['cpu_per_hook_s'] * 1e6:.0f} µs ({res['reached_per_s']:,.0f}/s reached){note}",
            f"<= {T_HOOK_CPU * 1e6:.0f} µs",
            C.verdict(res["cpu_per_hook_s"], T_HOOK_CPU),
        ),
        C.row(
            b,
            "write -> ack received p50 / p99 (max)",
            f"{pct_ms(lat, 50)} / {pct_ms(lat, 99)} ms ({(res['ack_max_s'] or 0) * 1000:.1f} ms)",
            f"<= {T_ACK_P50 * 1000:g} / {T_ACK_P99 * 1000:g} ms",
            verdicts(("p50", p50, T_ACK_P50, False), ("p99", p99, T_ACK_P99, False)),
        ),
    ]
    fl = res["floor"]
    res["rows"].append(
        C.row(
            b,
            "floor: a bare Python selectors server (accept, read, ack, close; no Trio, no store), same load",
            f"{fl['cpu_per_hook_s'] * 1e6:.0f} µs per hook; p50 / p99 {pct_ms(fl['lat'], 50)} / {pct_ms(fl['lat'], 99)} ms",
        )
    )
    res["samples"] = lat
    return res


def hook_floor(lines: list, rate: int, seconds: int) -> dict:
    """The same hooks against ``_ack_server.py``: what one connection costs here at all."""
    with C.temp_dir("ctx-bench-floor-") as tmp, C.processes() as procs, Loop() as loop:
        path = os.path.join(tmp, "floor.sock")
        server = subprocess.Popen(
            [sys.executable, os.path.join(C.HERE, "_ack_server.py"), path], stdout=subprocess.PIPE
        )
        procs.append(server)
        assert server.stdout is not None and server.stdout.readline().strip() == b"READY"
        hooks = HookSender(loop, path)
        drive(loop, hooks, lines[:50], rate, 30)
        with no_gc():
            cpu0 = C.cpu_seconds(server.pid)
            drive(loop, hooks, lines[50:], rate, seconds * 3 + 30)
            cpu = C.cpu_seconds(server.pid) - cpu0
        return {"cpu_per_hook_s": cpu / max(hooks.done, 1), "lat": hooks.lat}


# --- 3. write -> WebSocket client ---------------------------------------------------------------
class StampSink:
    """Receive time - send stamp of every stamped event a WebSocket client gets."""

    def __init__(self) -> None:
        self.lat: list[float] = []

    def feed(self, buf: bytearray, start: int, end: int, t: int) -> None:
        for m in STAMP_RE.finditer(buf, start, end):
            self.lat.append((t - int(m.group(1))) / 1e9)


def ws_phase(d: C.Daemon, loop: Loop, sink: StampSink, sender, items: list, rate: int, seconds: int) -> dict:
    n = len(items)
    sink.lat = []
    with no_gc():
        loop.mark()
        cpu0 = C.cpu_seconds(d.pid)
        res = drive(loop, sender, items, rate, seconds * 4 + 30)
        loop.run(lambda: len(sink.lat) >= n, 10)
        cpu = C.cpu_seconds(d.pid) - cpu0
    lat = sink.lat
    res.update(loop.report())
    res.update(
        answer_p50_s=C.pct(sender.lat, 50),
        answer_p99_s=C.pct(sender.lat, 99),
        rate=rate,
        events=n,
        received=len(lat),
        reached_per_s=sender.done / res["elapsed_s"],
        p50_s=C.pct(lat, 50),
        p99_s=C.pct(lat, 99),
        worst_s=max(lat) if lat else None,
        daemon_cpu_s=cpu,
        cpu_per_event_s=cpu / n,
        samples=lat,
    )
    return res


WS_PREV = {
    ("http", 500): "p50/p99 1.34 / 3.50 ms; worst stall 81 ms",
    ("http", 2000): "673/s reached",
}


def case_ws(seconds: int, rates: tuple[int, ...] = (500, 2000)) -> dict:
    out: dict = {"phases": []}
    with C.Daemon() as d, Loop() as loop:
        sink = StampSink()
        ws = WsClient(loop, d.ws_port, on_events=sink.feed)
        if not loop.run(lambda: ws.ready, 15) or ws.closed:
            raise RuntimeError(f"the WebSocket client got no snapshot ({ws.closed})")
        pool, hooks = HttpPool(loop, d.port), HookSender(loop, d.socket_path)
        sources = {
            "socket": (hooks, lambda n, tag: hook_lines(n, tag, stamped=True)),
            "http": (pool, lambda n, tag: http_requests(d.port, n, HTTP_CONNS, tag, stamped=True)),
        }
        for source, (sender, build) in sources.items():  # warm-up, not counted
            ws_phase(d, loop, sink, sender, build(100, "warm" + source), 500, 1)
        for rate in rates:
            for source, (sender, build) in sources.items():
                items = build(rate * seconds, f"ws{source}{rate}")
                r = ws_phase(d, loop, sink, sender, items, rate, seconds)
                r["source"] = source
                out["phases"].append(r)
                loop.idle(0.3)
        out["ws_closed"] = ws.closed
        out["rss"] = C.rss_bytes(d.pid)
        out["log"] = log_findings(d)
    rows = []
    for r in out["phases"]:
        lat = r["samples"]
        what = "socket hook (new connection, ack)" if r["source"] == "socket" else "POST (8 kept-alive conns)"
        short = "" if r["received"] >= r["events"] else f", {r['events'] - r['received']:,} never arrived"
        rows.append(
            C.row(
                "hot 3 write -> ws",
                f"{what} -> WebSocket client @{r['rate']:,}/s: p50 / p99 / worst (rate reached)",
                f"{pct_ms(lat, 50)} / {pct_ms(lat, 99)} / {(r['worst_s'] or 0) * 1000:.1f} ms "
                f"({r['reached_per_s']:,.0f}/s{short})",
                f"<= {T_WS_P50 * 1000:g} / {T_WS_P99 * 1000:g} / {T_WS_WORST * 1000:g} ms",
                verdicts(
                    ("p50", r["p50_s"], T_WS_P50, False),
                    ("p99", r["p99_s"], T_WS_P99, False),
                    ("worst", r["worst_s"], T_WS_WORST, False),
                    ("rate", r["reached_per_s"], 0.95 * r["rate"], True),
                    ("all", r["received"], r["events"], True),
                ),
                WS_PREV.get((r["source"], r["rate"]), ""),
            )
        )
    out["rows"] = rows
    return out


# --- 4. bulk NDJSON ------------------------------------------------------------------------------
def case_bulk(n: int, producers: int = 3, k: int = 5) -> dict:
    with C.Daemon() as d, Loop() as loop:
        plain = ingest(d, loop, ndjson_blobs(n, producers, "bulk"), n)
        plain["log"] = log_findings(d)
    with C.Daemon() as d, Loop() as loop:
        clients = [WsClient(loop, d.ws_port) for _ in range(k)]
        if not loop.run(lambda: all(c.ready for c in clients), 15):
            raise RuntimeError("the WebSocket subscribers got no snapshot")
        subs = ingest(d, loop, ndjson_blobs(n, producers, "bulkws"), n, clients)
        loop.idle(0.2)
        subs["dropped_metric"] = metric(d, "contextuate_ws_dropped_clients_total")
        subs["log"] = log_findings(d)
    dropped = sum(1 for c in subs["clients"] if c["closed"])
    b = "hot 4 bulk ndjson"
    rate = plain.get("stored_per_s")
    rows = [
        C.row(
            b,
            f"{n:,} complete events, {producers} writers, no subscribers: stored/s",
            f"{rate:,.0f} ev/s" if rate else f"only {plain['stored']:,} stored",
            f">= {T_BULK:,}",
            C.verdict(rate, T_BULK, True),
        ),
        C.row(
            b,
            "daemon CPU per event (no subscribers)",
            f"{plain['cpu_per_event_s'] * 1e6:.0f} µs",
            "",
            "",
            "76 µs",
        ),
    ]
    v = subs.get("delivered_per_s")
    got = min(c["count"] for c in subs["clients"])
    rows.append(
        C.row(
            b,
            f"{k} WebSocket subscribers each get every event: stored+delivered/s",
            f"{v:,.0f} ev/s" if v else f"incomplete: the slowest got {got:,}/{n:,}",
            f">= {T_BULK_WS:,}",
            C.verdict(v, T_BULK_WS, True),
        )
    )
    rows.append(
        C.row(
            b,
            "subscribers dropped (they read all the time)",
            f"{dropped} of {k} (daemon counter: {subs['dropped_metric']:.0f})"
            if subs["dropped_metric"] is not None
            else f"{dropped} of {k}",
            "0",
            "met" if dropped == 0 and not subs["dropped_metric"] else "MISSED",
        )
    )
    return {"no_subscribers": plain, "with_subscribers": subs, "rows": rows}


# --- 5. RSS, and a big history on disk ---------------------------------------------------------------
def case_rss(n: int = 20_000) -> dict:
    with C.Daemon() as d, Loop() as loop:
        time.sleep(0.3)
        rss0 = C.rss_bytes(d.pid)
        res = ingest(d, loop, ndjson_blobs(n, 2, "rss"), n)
        time.sleep(0.3)
        res.update(rss_start=rss0, rss_after=C.rss_bytes(d.pid))
        res["log"] = log_findings(d)
    v = res["rss_after"]
    res["rows"] = [
        C.row(
            "hot 5 memory",
            f"RSS after {n:,} events (fresh daemon; {rss0 / MB:.0f} MB at start)",
            f"{v / MB:.1f} MB",
            f"<= {T_RSS_20K // MB} MB",
            C.verdict(v, T_RSS_20K),
            "68.7 MB",
        )
    ]
    return res


def _stored_template(sid: str):
    """The stored line of a session's event, as the daemon writes it, with holes."""
    from contextuate_trio.core import events
    from contextuate_trio.core.masking import stored_line

    payload = _payload()
    ev = events.from_payload(
        dict(payload, session_id=sid, tool_use_id="@TID@"),
        event_id="@ID@",
        timestamp=1111111111111,
        machine_id="bench-host",
        source="socket",
    )
    return stored_line(_redactor(), ev).line.decode(), payload


@functools.cache
def _redactor():
    from contextuate_trio.core.redact import Redactor

    return Redactor()


@functools.cache
def _payload() -> dict:
    return C.pre_tool_use_payload()


def history_key(n: int) -> str:
    from contextuate_trio.core.sessions import Session
    from contextuate_trio.runtime.store import FileStore

    line, _ = _stored_template("bench-hist-0000")
    fields = ",".join(sorted(Session(session_id="x").to_dict()))
    layout = ",".join(sorted(vars(FileStore(os.devnull))))  # what the store keeps (no I/O)
    fp = hashlib.sha256(f"{line}|{fields}|{layout}".encode()).hexdigest()[:12]
    return f"{GEN_VERSION}-{n}-{HISTORY_SESSIONS}-{fp}"


def generate_history(data_dir: str, n: int) -> dict:
    """``n`` events in HISTORY_SESSIONS sessions, in the store's format (see the doc)."""
    from contextuate_trio.core import events
    from contextuate_trio.core.sessions import SessionManager
    from contextuate_trio.runtime.store import FileStore

    t0 = time.perf_counter()
    store = FileStore(data_dir)
    store.open()
    manager = SessionManager()
    per = n // HISTORY_SESSIONS
    base = int(time.time() * 1000) - 8 * 86_400_000
    # Numbered as a broker numbers what it stores (a run's first number is its start
    # time in µs), when the store keeps the numbers (its seq log).
    seq = base * 1000 if hasattr(store, "order") else None
    for j in range(HISTORY_SESSIONS):
        sid = f"bench-hist-{j:04d}"
        tpl, payload = _stored_template(sid)
        start = base + j * 600_000  # sessions 10 minutes apart, an event every 0.5 s
        prefix = os.urandom(4).hex()
        batch = []
        for k in range(per):
            ts = start + k * 500
            tid = f"toolu_h{j}_{k}"
            line = tpl.replace("@ID@", f"{prefix}-{j:04x}-4000-a000-{k:012x}").replace("@TID@", tid)
            line = line.replace("1111111111111", str(ts)).encode()
            if seq is None:
                batch.append((sid, ts, line))
            else:
                seq += 1
                batch.append((sid, ts, line, seq))
        store.append(batch)
        for k in (0, per - 1):  # the session as the manager makes it; counts as for all
            manager.apply(
                events.from_payload(
                    dict(payload, session_id=sid, tool_use_id=f"toolu_h{j}_{k}"),
                    event_id=f"{prefix}-{j:04x}-4000-a000-{k:012x}",
                    timestamp=start + k * 500,
                    machine_id="bench-host",
                    source="socket",
                )
            )
        s = manager.get(sid)
        assert s is not None
        s.event_count = s.tool_count = per
    store.save_sessions(manager.sessions.values())
    store.close()
    return {"generate_s": time.perf_counter() - t0, "bytes": store.size_bytes()}


def check_history(data_dir: str, n: int) -> str | None:
    """None if the data set is what the generator writes, else what is wrong."""
    from contextuate_trio.core import events
    from contextuate_trio.runtime.clock import SYSTEM_MINT
    from contextuate_trio.runtime.store import FileStore

    try:
        store = FileStore(data_dir)
        sessions, replay = store.open()
        total = sum(s.event_count for s in sessions)
        if len(sessions) != HISTORY_SESSIONS or replay or total != n - n % HISTORY_SESSIONS:
            return f"{len(sessions)} sessions, {total} events, {len(replay)} past their meta"
        order = getattr(store, "order", None)
        if order is not None and getattr(order, "count", total) != total:
            return f"the seq log holds {order.count} events, the sessions {total}"
        for sid in ("bench-hist-0000", f"bench-hist-{HISTORY_SESSIONS - 1:04d}"):
            got = store.events(sid, 3)
            if len(got) != 3 or len({events.from_object(e, mint=SYSTEM_MINT).id for e in got}) != 3:
                return f"session {sid}: its last events do not read back"
        store.close()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def tree_stamp(root: str) -> list:
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            st = os.stat(os.path.join(dirpath, f))
            out.append((os.path.relpath(os.path.join(dirpath, f), root), st.st_size, st.st_mtime_ns))
    return sorted(out)


def cached_history(n: int) -> tuple[str, dict]:
    """The data dir of ``n`` events (reused, or regenerated); what was done."""
    where = os.path.join(CACHE, f"{n}-events")
    data, key_file = os.path.join(where, "data"), os.path.join(where, "VERSION")
    key = history_key(n)
    info: dict = {"key": key, "dir": data}
    try:
        with open(key_file) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        saved = {}
    if saved.get("key") == key and saved.get("files") == json.loads(json.dumps(tree_stamp(data))):
        problem = check_history(data, n)
        if problem is None:
            info["reused"] = True
            info["bytes"] = sum(size for _, size, _ in saved["files"])
            return data, info
        info["check_failed"] = problem
    elif saved:
        info["stale"] = "another version key, or files changed since"
    shutil.rmtree(where, ignore_errors=True)
    os.makedirs(where, exist_ok=True)
    info.update(generate_history(data, n), reused=False)
    problem = check_history(data, n)
    if problem is not None:
        raise RuntimeError(f"the generated data set fails its own check: {problem}")
    files = tree_stamp(data)
    info["bytes"] = sum(size for _, size, _ in files)
    with open(key_file, "w") as f:
        json.dump({"key": key, "events": n, "files": files}, f)
    return data, info


def link_copy(src: str, dst: str) -> None:
    """A copy of a data dir for a daemon to run on: the sessions' files hard-linked
    (it appends only to sessions that get events: new ones here), the rest (the seq
    log, which it appends to) copied; a real copy across file systems."""
    for dirpath, _dirs, files in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        target = os.path.join(dst, rel)
        os.makedirs(target, mode=0o700, exist_ok=True)
        for f in files:
            a, b = os.path.join(dirpath, f), os.path.join(target, f)
            try:
                if rel.split(os.sep)[0] != "sessions":
                    raise OSError("copied")
                os.link(a, b)
            except OSError:
                shutil.copy2(a, b)


def history_daemon(data: str) -> C.Daemon:
    return C.Daemon(extra_config={"persistence": {"enabled": True, "retentionDays": None, "dir": data}})


def clear_stale_runs() -> None:
    """Copies left by runs that were killed before they could remove theirs."""
    for name in os.listdir(CACHE) if os.path.isdir(CACHE) else []:
        if name.startswith("run-") and not os.path.exists(f"/proc/{name[4:]}"):
            shutil.rmtree(os.path.join(CACHE, name), ignore_errors=True)


def case_history(n: int, rounds: int, more: int = 20_000) -> dict:
    clear_stale_runs()
    data, info = cached_history(n)
    stamp = tree_stamp(data)
    run_dir = os.path.join(CACHE, f"run-{os.getpid()}")
    res: dict = {"dataset": info, "events_on_disk": n, "healthy_empty_s": [], "healthy_s": []}
    try:
        link_copy(data, os.path.join(run_dir, "data"))
        for r in range(rounds):
            with C.Daemon() as d:
                res["healthy_empty_s"].append(d.start_to_healthy)
            with history_daemon(os.path.join(run_dir, "data")) as d:
                res["healthy_s"].append(d.start_to_healthy)
                if r < rounds - 1:
                    continue
                time.sleep(0.5)
                res["rss_start"] = C.rss_bytes(d.pid)
                res["sessions_loaded"] = d.get_json("/api/status")["sessions"]
                with Loop() as loop:
                    res["ingest"] = ingest(d, loop, ndjson_blobs(more, 2, "hist"), more)
                time.sleep(0.3)
                res["rss_after"] = C.rss_bytes(d.pid)
                res["log"] = log_findings(d)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        if tree_stamp(data) != stamp:  # a daemon wrote into the cache: never trust it again
            shutil.rmtree(os.path.dirname(data), ignore_errors=True)
            res["cache_invalidated"] = True
    h, e = C.pct(res["healthy_s"], 50), C.pct(res["healthy_empty_s"], 50)
    b = "hot 5 memory"
    how = "cached" if info.get("reused") else f"generated in {info['generate_s']:.0f} s"
    label = f"{n:,} events on disk"
    res["rows"] = [
        C.row(
            b,
            f"dataset: {label}, {res['sessions_loaded']:,} sessions, {info['bytes'] / 2**30:.2f} GiB ({how})",
            f"{res['sessions_loaded']:,} sessions loaded",
        ),
        C.row(
            b,
            f"start -> healthy, {label} (empty data dir), median of {rounds}",
            f"{h:.2f} s ({e:.2f} s)",
            f"<= {T_START:g} s",
            C.verdict(h, T_START),
        ),
        C.row(
            b,
            f"RSS right after start, {label}",
            f"{res['rss_start'] / MB:.1f} MB",
            f"<= {T_RSS_BIG // MB} MB",
            C.verdict(res["rss_start"], T_RSS_BIG),
        ),
        C.row(
            b,
            f"RSS after {more:,} more events, {label}",
            f"{res['rss_after'] / MB:.1f} MB",
            f"<= {T_RSS_BIG // MB} MB",
            C.verdict(res["rss_after"], T_RSS_BIG),
        ),
    ]
    return res


# --- 6. flood: one reader, one stalled client ------------------------------------------------------
class OrderCheck:
    """Every event exactly once and in order, by ``data.bench_i`` and ``seq``."""

    def __init__(self, n: int, client: WsClient | None = None) -> None:
        self.n = n
        self.seen = bytearray(n)
        self.next = 0
        self.received = self.duplicates = self.out_of_order = self.seq_gaps = 0
        self.client = client
        self.last_seq: int | None = None

    def feed(self, buf: bytearray, start: int, end: int, t: int) -> None:
        k = 0
        for m in INDEX_RE.finditer(buf, start, end):
            i = int(m.group(1))
            k += 1
            if i >= self.n or self.seen[i]:
                self.duplicates += 1
                continue
            self.seen[i] = 1
            self.received += 1
            self.out_of_order += i != self.next
            self.next = i + 1
        seq = self.client.seq if self.client is not None else None
        if seq is not None and self.last_seq is not None and seq - self.last_seq != k:
            self.seq_gaps += 1
        self.last_seq = seq


def stalled_drop(d: C.Daemon, port: int) -> str | None:
    """The daemon's log line dropping the client on local ``port``, if there is one."""
    for x in log_findings(d):
        if "dropping WebSocket client" in x and f":{port}: " in x:
            return x.split(f":{port}: ", 1)[1].split(" (close code")[0][:80]
    return None


def case_flood(n: int, drop_wait: float) -> dict:
    with C.Daemon() as d, Loop() as loop:
        check = OrderCheck(n)
        reader = WsClient(loop, d.ws_port, on_events=check.feed)
        check.client = reader
        stalled = WsClient(loop, d.ws_port, rcvbuf=64 * 1024, read=False)
        if not loop.run(lambda: reader.ready, 15):
            raise RuntimeError("the reading WebSocket client got no snapshot")
        check.last_seq = reader.seq
        t0 = time.perf_counter()
        res = ingest(d, loop, ndjson_blobs(n, 1, "flood"), n, [reader], timeout=max(60.0, n / 500))
        res["rss_after_flood"] = C.rss_bytes(d.pid)
        res["queue_depth_max"] = metric(d, "contextuate_ws_queue_depth_max")
        # A client that stops reading is dropped when its socket stops taking data
        # (the daemon's send timeout) or when it falls too far behind: wait for it.
        while (why := stalled_drop(d, stalled.port)) is None and time.perf_counter() - t0 < drop_wait:
            loop.idle(0.25)
        res["stalled_dropped"] = why
        res["stalled_dropped_after_s"] = time.perf_counter() - t0 if why else None
        loop.idle(0.3)
        res["reader"] = {
            "received": check.received,
            "duplicates": check.duplicates,
            "out_of_order": check.out_of_order,
            "seq_gaps": check.seq_gaps,
            "closed": reader.closed,
        }
        res["dropped_metric"] = metric(d, "contextuate_ws_dropped_clients_total")
        res["rss"] = C.rss_bytes(d.pid)
        res["log"] = log_findings(d)
        stalled.sock.close()
    r = res["reader"]
    exact = r["received"] == n and not (r["duplicates"] or r["out_of_order"] or r["seq_gaps"] or r["closed"])
    b = "hot 6 flood"
    rate = res.get("stored_per_s")
    gone = res["stalled_dropped"]
    res["rows"] = [
        C.row(
            b,
            f"{n:,} events as fast as possible: the reading client got every event once, in order",
            ("yes" if exact else "NO")
            + f" ({r['received']:,}/{n:,}, {r['duplicates']} twice, {r['out_of_order']} out of order"
            + (f", {r['seq_gaps']} seq gaps" if r["seq_gaps"] else "")
            + (f", closed: {r['closed']}" if r["closed"] else "")
            + ")",
            "yes",
            "met" if exact else "MISSED",
        ),
        C.row(
            b,
            "the stalled client (connects, never reads) is dropped",
            f"yes, {res['stalled_dropped_after_s']:.1f} s after the flood began ({gone})"
            if gone
            else f"no, not within {drop_wait:g} s (daemon counter: {res['dropped_metric'] or 0:.0f})",
            "yes",
            "met" if gone else "MISSED",
        ),
        C.row(
            b,
            "ingest rate during the flood (stored/s); RSS after it",
            (
                f"{rate:,.0f} ev/s (daemon CPU {res['cpu_per_event_s'] * 1e6:.0f} µs/event)"
                if rate
                else f"only {res['stored']:,} stored"
            )
            + f"; {res['rss_after_flood'] / MB:.0f} MB",
        ),
    ]
    return res


# --- the run -------------------------------------------------------------------------------------
def phases(obj) -> Iterator[dict]:
    """Every measured phase in a case's result (a dict with both CPU figures)."""
    if isinstance(obj, dict):
        if "generator_cpu_s" in obj and "daemon_cpu_s" in obj:
            yield obj
        for v in obj.values():
            yield from phases(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from phases(v)


def generator_row(results: dict) -> dict:
    """The load generator's CPU beside the daemon's, over every measured phase."""
    ps = list(phases(results))
    gen, daemon = sum(p["generator_cpu_s"] for p in ps), sum(p["daemon_cpu_s"] for p in ps)
    turn = max((p["generator_max_turn_s"] for p in ps), default=0.0)
    return C.row(
        "hot logs",
        "load generator CPU / daemon CPU over the measured phases (longest loop turn)",
        f"{gen:.1f} s / {daemon:.1f} s ({turn * 1000:.1f} ms)",
    )


def log_row(results: dict) -> dict:
    """What the daemons logged beyond info, per case (the stalled client's drop is expected)."""
    parts = []
    for name, res in results.items():
        lines = list(res.get("log", []))
        for sub in ("no_subscribers", "with_subscribers", "ingest"):
            lines += (res.get(sub) or {}).get("log", [])
        if name == "flood":
            lines = [x for x in lines if "dropping" not in x and "dropped" not in x]
        if lines:
            kinds = {re.sub(r"[0-9a-f]{6,}|\d+", "#", x)[:70] for x in lines}
            parts.append(f"{name}: {len(lines)} ({'; '.join(sorted(kinds)[:2])})")
    return C.row("hot logs", "daemon warnings/errors (beyond the stalled client's drop)", "; ".join(parts) or "none")


def machine_busy() -> float:
    """CPU seconds processes have used on the whole machine (user, nice, system), from /proc/stat."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:4]]
    return sum(ticks) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    """This process's CPU and its reaped children's (the daemons, once stopped)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def one_line(exc: Exception) -> str:
    lines = [x.strip() for x in str(exc).splitlines() if x.strip()] or [""]
    text = lines[0] + (f" ... {lines[-1]}" if len(lines) > 1 else "")
    return f"{type(exc).__name__}: {text}"[:160]


def run_case(name: str, case: Callable[[], dict]) -> dict:
    """One case; its failure is one ERROR row, the other cases still run. Also what
    the rest of the machine was doing meanwhile (other processes' CPU, in cores)."""
    t0, busy0, own0 = time.perf_counter(), machine_busy(), own_cpu()
    try:
        res = case()
    except Exception as exc:
        traceback.print_exc()
        res = {"error": one_line(exc), "rows": [C.row(f"hot {name}", "error", one_line(exc), "", "ERROR")]}
    res["seconds"] = time.perf_counter() - t0
    res["other_cpu_cores"] = max(0.0, (machine_busy() - busy0) - (own_cpu() - own0)) / res["seconds"]
    print(f"[hotpath] {name}: {res['seconds']:.1f} s", flush=True)
    return res


def run() -> dict:
    cases: list[tuple[str, Callable[[], dict]]] = [
        ("http", lambda: case_http(C.knob("hotpath_http", 6_000, 20_000))),
        ("hook", lambda: case_hook(C.knob("hotpath_hook_seconds", 3, 6))),
        ("ws", lambda: case_ws(C.knob("hotpath_ws_seconds", 2, 5))),
        ("bulk", lambda: case_bulk(C.knob("hotpath_bulk", 30_000, 100_000))),
        ("rss", lambda: case_rss(20_000)),
        (
            "history",
            lambda: case_history(C.knob("hotpath_history", 200_000, 1_000_000), C.knob("hotpath_rounds", 2, 3)),
        ),
        ("flood", lambda: case_flood(C.knob("hotpath_flood", 30_000, 100_000), C.knob("hotpath_drop_wait", 25, 30))),
    ]
    only = {x for x in os.environ.get("BENCH_HOTPATH_CASES", "").split(",") if x}
    result: dict = {"name": NAME, "quick": C.QUICK}
    rows = []
    for name, case in cases:
        if not only or name in only:
            result[name] = res = run_case(name, case)
            rows += res["rows"]
    done = {k: v for k, v in result.items() if isinstance(v, dict)}
    rows.append(log_row(done))
    rows.append(generator_row(done))
    other = {k: v["other_cpu_cores"] for k, v in done.items()}
    worst = max(other, key=other.get) if other else None
    rows.append(
        C.row(
            "hot logs",
            "other processes' CPU meanwhile (of 2 cores: noise), mean / busiest case",
            f"{sum(other.values()) / max(len(other), 1):.2f} / {other[worst]:.2f} cores ({worst})" if worst else "n/a",
        )
    )
    result["rows"] = rows
    charts = {}
    if "samples" in result.get("hook", {}):
        charts["0 hotpath: socket hook write -> ack @500/s"] = {"write -> ack": result["hook"]["samples"]}
    for r in result.get("ws", {}).get("phases", []):
        charts.setdefault("0 hotpath: write -> WebSocket client", {})[f"{r['source']} @{r['rate']}/s"] = r["samples"]
    result["charts"] = charts
    return result


if __name__ == "__main__":
    C.standalone(run)
