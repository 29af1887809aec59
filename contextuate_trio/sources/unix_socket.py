"""The local source: a Unix socket speaking newline-delimited JSON (see ``wire``)."""

from __future__ import annotations

import errno
import logging
import os
import socket as _stdsocket
import stat

import trio

from contextuate_trio.core import wire
from contextuate_trio.core.events import EventError
from contextuate_trio.runtime.broker import Broker
from contextuate_trio.runtime.clock import SYSTEM_MINT

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


async def serve(broker: Broker, path: str, max_line: int, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    clear_stale(path)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket file is created 0600, never briefly wider
    try:
        await sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(1024)
    listener = trio.SocketListener(sock)
    log.info("listening on %s", path)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, lambda s: _connection(broker, s, max_line), [listener])
            task_status.started()
    finally:
        try:
            os.unlink(path)
        except OSError:  # already gone, or not ours to remove
            pass


async def _connection(broker: Broker, stream: trio.SocketStream, max_line: int) -> None:
    splitter = wire.LineSplitter(max_line)
    async with stream:
        while True:
            try:
                data = await stream.receive_some(1 << 16)
            except trio.BrokenResourceError:
                return
            if not data:
                if splitter.pending():
                    broker.counters["bad_lines"] += 1
                    log.warning(
                        "socket: connection closed in the middle of a line (%d bytes dropped)", splitter.pending()
                    )
                return
            for item in splitter.feed(data):
                if isinstance(item, wire.LineTooLong):
                    broker.counters["bad_lines"] += 1
                    log.warning("socket: rejected a %s", item)
                    continue
                if not await _line(broker, stream, item):
                    return


async def _line(broker: Broker, stream: trio.SocketStream, line: bytes) -> bool:
    """One line to the broker, acknowledged when the producer asked; False once the
    producer has gone (it gave up waiting: a hook has spooled, dedupe handles it)."""
    try:
        event, want_ack = wire.parse_line(line, source="socket", mint=SYSTEM_MINT)
    except EventError as exc:
        broker.counters["bad_lines"] += 1
        log.warning("socket: rejected a line: %s (starts %r)", exc, line[:80])
        return True
    delivery = await broker.submit(event, wait=want_ack)
    if not want_ack:
        return True
    reply = wire.ack(event.id) if delivery.ok else wire.nack(event.id, delivery.error or "not stored")
    try:
        await stream.send_all(reply)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return False
    return True
