"""The order log: where each numbered event (its WebSocket ``seq``) lies on disk.

Layout under ``persistence.dir``::

    seq.log    24 bytes per stored event, in seq order: seq, session number,
               offset and length of its line in that session's events.jsonl
    seq.keys   one session key per line; a session's number is its line's index

Why: the store keeps one file per session, but a WebSocket client resumes by number
across every session. With this log, "every event after N" is a binary search and
one read per run of lines, for any N still on disk, not only for the events the
broker holds in memory; and numbers go on across restarts. It costs one write per
batch (24 bytes an event).

A deleted session's number is retired (the key gets a new number if it comes back):
records of the old one point at nothing and are skipped, and once retention has
made them most of the log, ``compact`` drops them.
A torn last record (a crash mid-write) is cut off at start.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterable

from contextuate_trio.hook.paths import write_all, write_atomic

log = logging.getLogger("contextuate.seqlog")

RECORD = struct.Struct("<QIQI")  # seq, session number, offset, length
SEARCH_READ = 64  # records read at once when the binary search is close
COMPACT_READ = 1 << 16  # records read at once while compacting


class SeqLog:
    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, "seq.log")
        self.keys_path = os.path.join(directory, "seq.keys")
        self._keys: list[str] = []  # number -> session key
        self._numbers: dict[str, int] = {}  # live session key -> its number
        self._fd: int | None = None
        self._keys_fd: int | None = None
        self._keys_size = 0
        self.count = 0  # records in the log
        self.first_seq = 0  # 0: empty
        self.last_seq = 0
        self._memo = (-1, 0)  # (a seq, the index of the first record after it)

    def open(self, live_keys: Iterable[str]) -> None:
        """Read the keys and the log's ends; keys of sessions that are gone retire."""
        live = set(live_keys)
        try:
            with open(self.keys_path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = b""
        if data and not data.endswith(b"\n"):  # a torn last key: no record names it yet
            data = data[: data.rfind(b"\n") + 1]
            os.truncate(self.keys_path, len(data))
        self._keys = [k.decode("utf-8", "replace") for k in data.splitlines()]
        self._keys_size = len(data)
        self._numbers = {k: n for n, k in enumerate(self._keys) if k in live}
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        self._keys_fd = os.open(self.keys_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        size = os.fstat(self._fd).st_size
        if size % RECORD.size:
            log.warning("%s: cutting a torn last record", self.path)
            size -= size % RECORD.size
            os.ftruncate(self._fd, size)
        self.count = size // RECORD.size
        if self.count:
            self.first_seq = self._record(0)[0]
            self.last_seq = self._record(self.count - 1)[0]

    def close(self) -> None:
        for fd in (self._fd, self._keys_fd):
            if fd is not None:
                os.close(fd)
        self._fd = self._keys_fd = None

    def compact(self) -> int:
        """Drop the records of deleted sessions once they are most of the log (after
        retention); the number dropped. One pass over the log (24 bytes an event),
        written beside it and renamed over it. The last record stays, live or not:
        numbers go on from it at the next start."""
        if self._fd is None or self.count < 2:
            return 0
        keep = bytearray()
        for start in range(0, self.count, COMPACT_READ):
            for rec in self._records(start, min(self.count, start + COMPACT_READ)):
                if self._alive(rec[1]):
                    keep += RECORD.pack(*rec)
        last = self._record(self.count - 1)
        if not keep.endswith(RECORD.pack(*last)):
            keep += RECORD.pack(*last)
        dropped = self.count - len(keep) // RECORD.size
        if dropped * 2 < self.count:
            return 0  # not worth a rewrite yet
        write_atomic(self.path, bytes(keep), shared=False)
        fd, self._fd = self._fd, None  # never a stale number, should the open fail
        os.close(fd)
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND, 0o600)
        self.count -= dropped
        self.first_seq = self._record(0)[0]
        self._memo = (-1, 0)  # indexes moved
        return dropped

    def _alive(self, number: int) -> bool:
        return number < len(self._keys) and self._numbers.get(self._keys[number]) == number

    def retire(self, key: str) -> None:
        """The session was deleted: its records now point at nothing."""
        self._numbers.pop(key, None)

    def append(self, records: list[tuple[int, str, int, int]]) -> None:
        """(seq, session key, offset, length) for each event just written, in seq order."""
        records = [r for r in records if r[0] > self.last_seq]  # never out of order
        if not records or self._fd is None:
            return
        try:
            out = bytearray(RECORD.size * len(records))
            numbers: dict[str, int] = {}  # a batch holds few sessions: looked up once each
            pack = RECORD.pack_into
            for i, (seq, key, offset, length) in enumerate(records):
                n = numbers.get(key)
                if n is None:
                    n = numbers[key] = self._number(key)
                pack(out, i * RECORD.size, seq, n, offset, length)
            write_all(self._fd, out)
        except OSError as exc:
            # The events are stored; only resuming across them from disk is lost.
            log.warning("%s: %d events not recorded (%s)", self.path, len(records), exc)
            try:
                os.ftruncate(self._fd, self.count * RECORD.size)
            except OSError:
                pass
            # Numbers still go on past them (a client asking for them gets a reset).
            self.last_seq = records[-1][0]
            return
        if not self.count:
            self.first_seq = records[0][0]
        self.count += len(records)
        self.last_seq = records[-1][0]

    def _number(self, key: str) -> int:
        n = self._numbers.get(key)
        if n is None:
            assert self._keys_fd is not None
            line = key.encode("utf-8", "replace") + b"\n"
            try:
                write_all(self._keys_fd, line)
            except OSError:
                os.ftruncate(self._keys_fd, self._keys_size)  # no half key: numbers stay lines
                raise
            self._keys_size += len(line)
            n = self._numbers[key] = len(self._keys)
            self._keys.append(key)
        return n

    # --- reading ------------------------------------------------------------------
    def _record(self, i: int) -> tuple[int, int, int, int]:
        assert self._fd is not None
        seq, number, offset, length = RECORD.unpack(os.pread(self._fd, RECORD.size, i * RECORD.size))
        return seq, number, offset, length

    def _index_after(self, since: int) -> int:
        """The index of the first record numbered after ``since``. A client catching
        up asks for the next chunk after the last one it got: remembered, no search."""
        memo_seq, memo_index = self._memo
        if since == memo_seq and memo_index <= self.count:
            return memo_index
        lo, hi = 0, self.count
        while hi - lo > SEARCH_READ:
            mid = (lo + hi) // 2
            if self._record(mid)[0] <= since:
                lo = mid + 1
            else:
                hi = mid
        for i, (seq, *_rest) in enumerate(self._records(lo, hi)):
            if seq > since:
                return lo + i
        return hi

    def _records(self, start: int, end: int) -> list[tuple[int, int, int, int]]:
        assert self._fd is not None
        data = os.pread(self._fd, (end - start) * RECORD.size, start * RECORD.size)
        return list(RECORD.iter_unpack(data[: len(data) - len(data) % RECORD.size]))

    def after(self, since: int, limit: int, upto: int | None = None) -> list[tuple[int, str, int, int]]:
        """Up to ``limit`` records numbered after ``since`` (and up to ``upto``), oldest
        first, as (seq, session key, offset, length); records of retired sessions left
        out."""
        if self._fd is None or not self.count or since >= self.last_seq:
            return []
        start = self._index_after(since)
        out: list[tuple[int, str, int, int]] = []
        next_index = start
        while start < self.count and len(out) < limit:
            end = min(self.count, start + max(limit - len(out), SEARCH_READ))
            for i, (seq, number, offset, length) in enumerate(self._records(start, end), start):
                if len(out) >= limit or (upto is not None and seq > upto):
                    limit = len(out)  # (ends the outer loop too)
                    break
                next_index = i + 1
                if seq > since and self._alive(number):
                    out.append((seq, self._keys[number], offset, length))
            start = end
        if out:
            self._memo = (out[-1][0], next_index)
        return out
