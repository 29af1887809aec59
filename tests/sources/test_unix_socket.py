"""The socket source over a real Unix socket and a real broker and store: many
producers served by one task, acknowledgements once stored, producers that do not read
or give up, back-pressure."""

from __future__ import annotations

import json
import os
import selectors
import socket

import pytest
import trio
import trio.testing
from helpers import MINT

from contextuate_trio.runtime.broker import Broker
from contextuate_trio.runtime.store import FileStore
from contextuate_trio.sources import unix_socket


def hook_line(i: int, ack: bool = True) -> bytes:
    env = {
        "kind": "hook",
        "id": f"e-{i}",
        "timestamp": 1_000 + i,
        "machineId": "m",
        "payload": {"session_id": f"s{i % 5}", "hook_event_name": "PreToolUse", "tool_name": "Bash"},
    }
    if ack:
        env["ack"] = True
    return json.dumps(env).encode() + b"\n"


@pytest.fixture
async def source(nursery, tmp_path):
    """(broker, socket path) with the broker and the source running."""
    broker = Broker(FileStore(str(tmp_path / "data")), channel_size=16)
    broker.load(MINT)
    await nursery.start(broker.run)
    path = str(tmp_path / "s.sock")
    await nursery.start(unix_socket.serve, broker, path, 4096)
    return broker, path


async def connect(path: str) -> trio.SocketStream:
    return await trio.open_unix_socket(path)


async def read_lines(stream: trio.SocketStream, n: int) -> list[dict]:
    buf = b""
    with trio.fail_after(20):
        while buf.count(b"\n") < n:
            chunk = await stream.receive_some(1 << 16)
            assert chunk, "closed before every ack came"
            buf += chunk
    return [json.loads(x) for x in buf.splitlines()]


async def test_hundreds_of_hooks_at_once_each_acked_once_stored(source):
    broker, path = source

    async def hook(i: int) -> None:
        async with await connect(path) as s:
            await s.send_all(hook_line(i))
            assert await read_lines(s, 1) == [{"ack": f"e-{i}"}]

    async with trio.open_nursery() as n:
        for i in range(300):  # the channel holds 16: back-pressure throughout
            n.start_soon(hook, i)
    assert broker.counters["events"] == 300
    assert broker.by_source["socket"] == 300


async def test_lines_split_across_writes_several_per_connection_in_order(source):
    broker, path = source
    async with await connect(path) as s:
        data = hook_line(1) + hook_line(2) + hook_line(3, ack=False) + hook_line(4)
        for k in range(0, len(data), 7):  # 7 bytes at a time
            await s.send_all(data[k : k + 7])
        assert await read_lines(s, 3) == [{"ack": "e-1"}, {"ack": "e-2"}, {"ack": "e-4"}]
        await s.send_all(hook_line(5))  # the connection stays usable
        assert await read_lines(s, 1) == [{"ack": "e-5"}]
    with trio.fail_after(5):
        while broker.counters["events"] < 5:
            await trio.sleep(0.01)


async def test_a_producer_that_does_not_read_its_acks_gets_them_all_later(source):
    broker, path = source
    n = 20_000  # ~400 kB of acks: more than the socket buffers hold
    async with await connect(path) as s:
        data = b"".join(hook_line(i) for i in range(n))
        await s.send_all(data)
        with trio.fail_after(60):
            while broker.counters["events"] + broker.counters["duplicates"] < n:
                await trio.sleep(0.05)
        acks = await read_lines(s, n)
    assert [a["ack"] for a in acks] == [f"e-{i}" for i in range(n)]


async def test_producers_that_give_up_or_send_garbage_harm_nobody(source):
    broker, path = source
    for i in range(20):  # give up before the ack (a hook at its timeout)
        s = await connect(path)
        await s.send_all(hook_line(100 + i))
        await s.aclose()
    async with await connect(path) as s:
        await s.send_all(b"not json\n" + b"x" * 5000 + b"\n" + b'{"half": ')
    async with await connect(path) as s:
        await s.send_all(hook_line(1))
        assert await read_lines(s, 1) == [{"ack": "e-1"}]
    with trio.fail_after(5):
        while broker.counters["bad_lines"] < 3:
            await trio.sleep(0.01)
    assert broker.counters["bad_lines"] == 3  # not JSON, too long, cut off mid-line
    with trio.fail_after(5):
        while broker.counters["events"] < 21:
            await trio.sleep(0.01)


async def test_the_socket_is_private_and_removed_on_stop(nursery, tmp_path):
    broker = Broker(None)
    await nursery.start(broker.run)
    path = str(tmp_path / "s.sock")
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as inner:
            await inner.start(unix_socket.serve, broker, path, 4096)
            assert os.stat(path).st_mode & 0o777 == 0o600  # noqa: ASYNC240 (a test's one look)
            scope.cancel()
    assert not os.path.exists(path)  # noqa: ASYNC240


async def test_a_producer_that_never_reads_is_no_longer_read_then_resumes(source):
    broker, path = source
    n = 120_000  # ~2.6 MB of acks: past what the source holds for one connection (1 MiB)
    async with await connect(path) as s:
        data = b"".join(hook_line(i) for i in range(n))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(s.send_all, data)  # blocks once the daemon stops reading
            with trio.fail_after(60):
                while broker.counters["events"] < 40_000:
                    await trio.sleep(0.05)
            await trio.sleep(0.3)
            stalled_at = broker.counters["events"]
            assert stalled_at < n  # it stopped reading this producer
            acks = await read_lines(s, n)  # reading lets it go on, to the end
    assert [a["ack"] for a in acks] == [f"e-{i}" for i in range(n)]


async def test_a_hook_that_shuts_its_side_down_is_done_in_one_read(nursery, tmp_path):
    """A command hook shuts its side down as it sends its line (``hook.wire``): the
    source reads the line and the end in the one read (no wake-up of its own for the
    end), acknowledges once stored, and closes. One that keeps its side open is read
    on (its end comes later)."""
    broker = Broker(FileStore(str(tmp_path / "data")))
    broker.load(MINT)
    await nursery.start(broker.run)
    src = unix_socket.SocketSource(broker, str(tmp_path / "unused.sock"), 4096)
    try:
        for shut in (True, False):
            await _one_hook(src, shut)
    finally:
        src._selector.close()


async def _one_hook(src: unix_socket.SocketSource, shut: bool) -> None:
    ours, hooks = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    conn = unix_socket._Connection(ours, 4096)
    src._selector.register(ours, selectors.EVENT_READ, conn)
    hooks.sendall(hook_line(1 if shut else 2))
    if shut:
        hooks.shutdown(socket.SHUT_WR)
    await src._read(conn)
    assert conn.eof is shut and conn.owed == 1
    await trio.testing.wait_all_tasks_blocked()  # the broker's task has stored and acked it
    assert conn.owed == 0
    hooks.settimeout(5)
    assert json.loads(hooks.recv(4096)) == {"ack": f"e-{1 if shut else 2}"}
    assert conn.closed is shut
    if not shut:
        hooks.shutdown(socket.SHUT_WR)
        await src._read(conn)
        assert conn.closed
    assert hooks.recv(4096) == b""  # closed by the source
    hooks.close()
