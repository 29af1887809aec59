"""File persistence: per-session metadata and append-only event files.

Layout under ``persistence.dir``::

    sessions/<key>/events.jsonl   one event per line, in arrival order, append-only
    sessions/<key>/index.jsonl    one line per block of BLOCK events:
                                  [start, end, count, min_ts, max_ts] (byte offsets)
    sessions/<key>/meta.json      the session (as the API shows it) + "_bytes", the
                                  size events.jsonl had when it was written
    seq.log, seq.keys             where each numbered event lies (see ``seqlog``)

Why this shape: a restart reads one small meta file per session, never the events;
events written after the last meta (a crash) are found by comparing sizes and
replayed; "the last N events before T" reads only the blocks whose time range can
hold them; an exact "is this id stored?" reads only the blocks around its time.

Synchronous on purpose: called from the broker's single pipeline task, with batched
writes (one write call per session per batch), which is faster than a thread hop per
batch and keeps one writer for every file.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from io import FileIO

import orjson

from contextuate_trio.core.events import json_bytes
from contextuate_trio.core.sessions import Session
from contextuate_trio.hook.paths import write_atomic
from contextuate_trio.runtime.seqlog import SeqLog

log = logging.getLogger("contextuate.store")

BLOCK = 512
_SAFE = re.compile(r"^[A-Za-z0-9._:-]{1,120}$")
_ID_AT_START = re.compile(rb'^\{"id":"([^"\\]+)"')
# How the daemon writes every event line: id first, then the timestamp.
_TS_AT_START = re.compile(rb'^\{"id":"[^"\\]*","timestamp":(\d+)[,}]')


class StoreError(Exception):
    """The store cannot write; events are kept by the caller until it can.
    ``written``: the session keys an ``append`` did write before it failed."""

    written: set = set()


def session_key(session_id: str) -> str:
    if _SAFE.match(session_id) and session_id not in (".", ".."):
        return session_id
    return "h-" + hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()[:40]


class _Tail:
    """The unindexed last block of a session's file."""

    __slots__ = ("start", "end", "count", "min_ts", "max_ts")

    def __init__(self, start: int, end: int = -1) -> None:
        self.start = start
        self.end = start if end < 0 else end
        self.count = 0
        self.min_ts: int | None = None
        self.max_ts: int | None = None

    def add(self, ts: int, nbytes: int) -> None:
        self.count += 1
        self.end += nbytes
        self.min_ts = ts if self.min_ts is None else min(self.min_ts, ts)
        self.max_ts = ts if self.max_ts is None else max(self.max_ts, ts)

    def add_many(self, stamps: list[int], sizes: list[int]) -> None:
        """``add`` for each (timestamp, size): lines written at once."""
        if not stamps:
            return
        self.count += len(stamps)
        self.end += sum(sizes)
        lo, hi = min(stamps), max(stamps)
        self.min_ts = lo if self.min_ts is None else min(self.min_ts, lo)
        self.max_ts = hi if self.max_ts is None else max(self.max_ts, hi)

    def skip(self, nbytes: int) -> None:
        """A corrupt line: its bytes belong to the block, it is no event."""
        self.end += nbytes

    def as_block(self) -> list:
        return [self.start, self.end, self.count, self.min_ts, self.max_ts]

    @classmethod
    def from_meta(cls, value: object) -> _Tail | None:
        """The block a meta.json recorded (``as_block``), or None when it is not one."""
        if not isinstance(value, list) or len(value) != 5:
            return None
        start, end, count, min_ts, max_ts = value
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end, count)):
            return None
        if not all(v is None or isinstance(v, int) for v in (min_ts, max_ts)) or not 0 <= start <= end:
            return None
        tail = cls(start, end)
        tail.count, tail.min_ts, tail.max_ts = count, min_ts, max_ts
        return tail


def open_files_budget() -> int:
    """Events files kept open (one per session being written): a quarter of the
    process's file limit, 64 to 1,024. With fewer than the sessions writing at once,
    nearly every append reopens its file (200 machines' 600 sessions did)."""
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1024
    return max(64, min(1024, soft // 4))


class FileStore:
    def __init__(self, directory: str, max_open_files: int | None = None) -> None:
        self.dir = directory
        self.sessions_dir = os.path.join(directory, "sessions")
        self._files: OrderedDict[str, FileIO] = OrderedDict()
        self._max_open = max_open_files if max_open_files is not None else open_files_budget()
        self._tails: dict[str, _Tail] = {}
        self._blocks: dict[str, list] = {}  # session key -> index blocks, loaded lazily
        self._bytes: dict[str, int] = {}  # session key -> events.jsonl size
        self.degraded: str | None = None
        self.deletions = 0  # sessions removed: what a reader read before may be gone
        self.order = SeqLog(directory)
        self._landed: list[tuple[int, str, int, int]] = []  # seq records of a batch being stored
        self._unindexed: set[str] = set()  # keys whose index.jsonl missed blocks: a start must scan
        self._unopened: set[str] = set()  # sessions ``open`` could not read: their size is unknown
        self._sized_tails: dict[str, list] = {}  # each last block when ``sizes`` was asked
        self._blocks_at_sizes: dict[str, list] = {}  # ...and all of them then (``_blocks_then``)

    # --- start-up -----------------------------------------------------------------
    def open(self) -> tuple[list[Session], list[dict]]:
        """Sessions from their meta files, and the events stored after each meta
        was written (a crash): the caller replays those through the session manager."""
        os.makedirs(self.sessions_dir, mode=0o700, exist_ok=True)
        sessions: list[Session] = []
        replay: list[dict] = []
        for key in sorted(os.listdir(self.sessions_dir)):
            path = os.path.join(self.sessions_dir, key)
            if not os.path.isdir(path):
                continue
            try:
                s, tail_events = self._open_session(key, path)
            except Exception as exc:  # one broken session must not stop the others
                log.error("session %s could not be recovered: %s", key, exc)
                self._unopened.add(key)
                continue
            if s is not None:
                sessions.append(s)
            replay.extend(tail_events)
        replay.sort(key=lambda e: e.get("timestamp") or 0)
        self.order.open(self._bytes)
        return sessions, replay

    def _open_session(self, key: str, path: str):
        events_path = os.path.join(path, "events.jsonl")
        meta = self._read_meta(key, path)
        covered = meta.pop("_bytes", 0) if meta is not None and isinstance(meta.get("_bytes"), int) else 0
        tail = _Tail.from_meta(meta.pop("_tail", None)) if meta is not None else None
        size = _size(events_path)
        if meta is None or size != covered or tail is None or tail.end != size:
            size = self._repair_torn_tail(events_path)  # the meta is behind: a crash
            tail = None
        self._bytes[key] = size
        session = None
        if meta is not None:
            session = Session.from_dict(meta)
            if covered > size:  # meta newer than the events it counts: trust the events
                log.warning("session %s: meta counts more than is on disk; recounting", key)
                session, covered = None, 0
        if session is None:
            covered = 0
        replay = list(self._read_range(key, covered, size)) if size > covered else []
        if tail is not None:  # the meta knew the last block: no scan of it at start
            self._tails[key] = tail
        else:
            self._load_tail(key, size)
        return session, replay

    def _read_meta(self, key: str, path: str) -> dict | None:
        try:
            with open(os.path.join(path, "meta.json"), "rb") as f:
                meta = orjson.loads(f.read())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            log.warning("session %s: meta.json is corrupt (%s); rebuilding it from events", key, exc)
            return None
        return meta if isinstance(meta, dict) and isinstance(meta.get("sessionId"), str) else None

    def _repair_torn_tail(self, events_path: str) -> int:
        """A crash mid-write can leave a last line without its newline: set it aside."""
        size = _size(events_path)
        if size == 0:
            return 0
        with open(events_path, "rb+") as f:
            f.seek(max(size - 1, 0))
            if f.read(1) == b"\n":
                return size
            back = min(size, 1 << 20)
            while True:
                f.seek(size - back)
                chunk = f.read(back)
                nl = chunk.rfind(b"\n")
                if nl >= 0 or back == size:
                    break
                back = min(size, back * 4)
            keep = size - back + nl + 1 if nl >= 0 else 0
            f.seek(keep)
            torn = f.read()
            with open(events_path + ".torn", "ab") as t:
                t.write(torn + b"\n")
            f.truncate(keep)
            log.warning("%s: set aside a torn last line of %d bytes", events_path, len(torn))
            return keep

    def _load_tail(self, key: str, size: int) -> None:
        blocks = self._index(key)
        start = blocks[-1][1] if blocks else 0
        # An index ahead of a truncated file, or with a hole (a block whose write
        # failed, then one that did not): rebuilt, else the hole's events are in no
        # block, and no duplicate check or read finds them.
        if start > size or any(b[0] != a[1] for a, b in zip([[0, 0], *blocks], blocks, strict=False)):
            blocks = self._rebuild_index(key)
            start = blocks[-1][1] if blocks else 0
        tail = _Tail(start)
        for raw, ts in self._iter_timestamps(key, start, size):
            tail.add(ts, len(raw))
        tail.end = max(tail.end, size)  # corrupt lines count as bytes of the block
        self._tails[key] = tail

    def _rebuild_index(self, key: str) -> list:
        blocks = []
        tail = _Tail(0)
        for raw, ev in self._iter_lines(key, 0, self._bytes.get(key, 0)):
            if ev is None:
                tail.skip(len(raw))
                continue
            tail.add(_ts(ev), len(raw))
            if tail.count >= BLOCK:
                blocks.append(tail.as_block())
                tail = _Tail(tail.end)
        path = os.path.join(self.sessions_dir, key, "index.jsonl")
        with open(path, "w") as f:
            f.writelines(json.dumps(b) + "\n" for b in blocks)
        self._blocks[key] = blocks
        return blocks

    # --- writing ------------------------------------------------------------------
    def append(self, batch: Iterable[tuple[str, int, bytes, int | None]]) -> None:
        """Append (session_id, timestamp, line, seq) items, all or nothing per
        session; the seq log records where each numbered one landed."""
        grouped = _by_key(batch)
        written: set[str] = set()
        try:
            for key, items in grouped.items():
                self._landed += self._append_session(key, items)
                written.add(key)
        except OSError as exc:
            # The landed sessions' records wait for the retry of the rest: the seq log
            # stays in order, and names no event of a batch not yet wholly stored.
            self.degraded = f"cannot write to {self.dir}: {exc.strerror or exc}"
            err = StoreError(self.degraded)
            err.written = written  # sessions whose lines did land: not to be written again
            raise err from exc
        records, self._landed = self._landed, []
        records.sort()
        self.order.append(records)
        self.degraded = None

    def _append_session(self, key: str, items: list) -> list[tuple[int, str, int, int]]:
        f = self._file(key)
        before = self._bytes.get(key, 0)
        lines = [item[1] for item in items]
        data = b"".join(lines)
        try:
            view = memoryview(data)
            while view:
                view = view[f.write(view) :]
        except OSError:
            try:  # leave no partial line behind for the retry
                os.ftruncate(f.fileno(), before)
            except OSError:
                pass
            self._close(key)
            raise
        self._bytes[key] = before + len(data)
        sizes = [len(line) for line in lines]
        offsets = list(itertools.accumulate(sizes, initial=before))
        records = [
            (item[2], key, offset, size)
            for item, offset, size in zip(items, offsets, sizes, strict=False)
            if item[2] is not None
        ]
        new_blocks = self._add_to_blocks(key, before, [item[0] for item in items], sizes)
        if new_blocks:
            index = self._index(key)  # (loaded first: the file lacks them yet)
            index.extend(new_blocks)
            path = os.path.join(self.sessions_dir, key, "index.jsonl")
            try:
                if key in self._unindexed:  # an earlier block is missing from the file: all of it again
                    write_atomic(path, "".join(json.dumps(b) + "\n" for b in index).encode(), shared=False)
                    self._unindexed.discard(key)
                else:
                    with open(path, "a") as idx:
                        idx.writelines(json.dumps(b) + "\n" for b in new_blocks)
            except OSError as exc:
                # The events are written; the index is only a shortcut (a start that
                # finds it short scans the rest: the meta then records no last block).
                self._unindexed.add(key)
                log.warning("%s: index not updated (%s); it is rebuilt at start", path, exc)
        return records

    def _add_to_blocks(self, key: str, before: int, stamps: list[int], sizes: list[int]) -> list[list]:
        """Count lines just written into the session's last block; the blocks they
        filled (BLOCK lines each). A block's worth at a time, not line by line."""
        tail = self._tails.get(key)
        if tail is None:  # (not made for every batch only to be thrown away)
            tail = _Tail(before)
        new_blocks = []
        i = 0
        while i < len(sizes):
            j = i + max(1, BLOCK - tail.count)  # a tail read at start may hold more than BLOCK already
            tail.add_many(stamps[i:j], sizes[i:j])
            if tail.count >= BLOCK:
                new_blocks.append(tail.as_block())
                tail = _Tail(tail.end)
            i = j
        self._tails[key] = tail
        return new_blocks

    def _file(self, key: str) -> FileIO:
        f = self._files.get(key)
        if f is not None:
            self._files.move_to_end(key)
            return f
        d = os.path.join(self.sessions_dir, key)
        os.makedirs(d, mode=0o700, exist_ok=True)
        path = os.path.join(d, "events.jsonl")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        f = os.fdopen(fd, "ab", buffering=0)
        self._bytes.setdefault(key, os.fstat(fd).st_size)
        self._files[key] = f
        while len(self._files) > self._max_open:
            _, old = self._files.popitem(last=False)
            old.close()
        return f

    def _close(self, key: str) -> None:
        f = self._files.pop(key, None)
        if f is not None:
            try:
                f.close()
            except OSError:
                pass

    def events_file(self, session_id: str) -> str:
        """Where a session's events are appended (read by exports, as bytes)."""
        return os.path.join(self.sessions_dir, session_key(session_id), "events.jsonl")

    def save_sessions(self, sessions: Iterable[Session]) -> None:
        try:
            for s in sessions:
                key = session_key(s.session_id)
                d = os.path.join(self.sessions_dir, key)
                if key not in self._files:  # an open events file: its folder exists
                    os.makedirs(d, mode=0o700, exist_ok=True)
                meta = s.to_dict()
                meta["_bytes"] = self._bytes.get(key, 0)
                tail = self._tails.get(key)
                if tail is not None and key not in self._unindexed:  # a start need not scan it
                    meta["_tail"] = tail.as_block()
                # orjson (the standard library took ~12x as long, 86 µs for a 5.8 KB meta: 600 busy
                # sessions write theirs every META_DELAY). Text that cannot be UTF-8 (a
                # lone surrogate some producer sent) never stops a save. Not fsynced: a
                # start replays what a lost meta missed.
                write_atomic(os.path.join(d, "meta.json"), json_bytes(meta), shared=False)
        except OSError as exc:
            self.degraded = f"cannot write to {self.dir}: {exc.strerror or exc}"
            raise StoreError(self.degraded) from exc

    def flush(self) -> None:
        """Force written events to the disk itself (they already survive a crash of
        the daemon; this is for the machine's)."""
        for f in list(self._files.values()):
            try:
                os.fsync(f.fileno())
            except OSError:
                pass

    def close(self) -> None:
        self.flush()
        for key in list(self._files):
            self._close(key)
        self.order.close()

    def delete(self, session_id: str) -> None:
        key = session_key(session_id)
        self.deletions += 1
        self._close(key)
        self.order.retire(key)
        for d in (self._tails, self._blocks, self._bytes, self._sized_tails, self._blocks_at_sizes):
            d.pop(key, None)
        shutil.rmtree(os.path.join(self.sessions_dir, key), ignore_errors=True)

    # --- reading ------------------------------------------------------------------
    def _index(self, key: str) -> list:
        blocks = self._blocks.get(key)
        if blocks is None:
            blocks = []
            path = os.path.join(self.sessions_dir, key, "index.jsonl")
            try:
                with open(path, "rb") as f:
                    for line in f:
                        try:
                            b = json.loads(line)
                        except ValueError:
                            break  # a torn index line: the tail scan covers the rest
                        if isinstance(b, list) and len(b) == 5:
                            blocks.append(b)
            except FileNotFoundError:
                pass
            self._blocks[key] = blocks
        return blocks

    def _all_blocks(self, key: str) -> list:
        blocks = list(self._index(key))
        tail = self._tails.get(key)
        if tail is not None and tail.count:
            blocks.append(tail.as_block())
        return blocks

    def _iter_lines(self, key: str, start: int, end: int):
        path = os.path.join(self.sessions_dir, key, "events.jsonl")
        for raw in self._raw_lines(key, start, end):
            try:
                ev = json.loads(raw)
            except ValueError:
                ev = None
            if not isinstance(ev, dict):
                log.warning("%s: skipping a corrupt line at offset %d", path, start)
                ev = None
            start += len(raw)
            yield raw, ev  # None for a corrupt line: callers still count its bytes

    def _iter_timestamps(self, key: str, start: int, end: int):
        """(line, timestamp) of each event line, like ``_iter_lines`` but without
        parsing the lines the daemon wrote: their timestamp is read from the line's
        start. A start-up scans every session's unindexed tail (up to BLOCK lines
        each), and parsing them all was most of its time."""
        lines = []
        for raw in self._raw_lines(key, start, end):
            offset, start = start, start + len(raw)
            m = _TS_AT_START.match(raw)
            if m:
                lines.append((raw, int(m.group(1))))
                continue
            try:
                ev = json.loads(raw)
            except ValueError:
                log.warning("session %s: skipping a corrupt line at offset ~%d", key, offset)
                continue
            if isinstance(ev, dict):
                lines.append((raw, _ts(ev)))
        return lines

    def _read_bytes(self, key: str, start: int, end: int) -> bytes | None:
        """Bytes [start, end) of a session's events file; None when it is gone."""
        if end <= start:
            return b""
        try:
            with open(os.path.join(self.sessions_dir, key, "events.jsonl"), "rb") as f:
                f.seek(start)
                return f.read(end - start)
        except FileNotFoundError:
            return None

    def _raw_lines(self, key: str, start: int, end: int) -> list:
        return (self._read_bytes(key, start, end) or b"").splitlines(keepends=True)

    def _read_range(self, key: str, start: int, end: int):
        for _, ev in self._iter_lines(key, start, end):
            if ev is not None:
                yield ev

    def events(
        self, session_id: str, limit: int = 100, before: int | None = None, after: int | None = None
    ) -> list[dict]:
        """Oldest first. With only ``after``: the first ``limit`` events after it;
        otherwise the last ``limit`` events (before ``before``, after ``after``)."""
        key = session_key(session_id)
        blocks = self._all_blocks(key)
        lo = after if after is not None else None
        hi = before if before is not None else None

        def wanted(ts: int) -> bool:
            return (lo is None or ts > lo) and (hi is None or ts < hi)

        def useful(b) -> bool:
            return b[2] and (lo is None or b[4] > lo) and (hi is None or b[3] < hi)

        out: list[dict] = []
        if after is not None and before is None:
            for b in blocks:
                if useful(b):
                    out.extend(e for e in self._read_range(key, b[0], b[1]) if wanted(_ts(e)))
                    if len(out) >= limit:
                        break
            out.sort(key=_ts)
            return out[:limit]
        for b in reversed(blocks):
            if not useful(b):
                continue
            got = [e for e in self._read_range(key, b[0], b[1]) if wanted(_ts(e))]
            out[:0] = got
            if len(out) >= limit:
                break
        out.sort(key=_ts)
        return out[-limit:] if limit else []

    def raw_blocks(self, session_id: str, before: int | None = None, after: int | None = None):
        """The stored lines (bytes) of each block whose times may fall in (after,
        before), newest block first: for scans (search) that match text before they
        parse, and yield to other work between blocks."""
        key = session_key(session_id)
        for b in reversed(self._all_blocks(key)):
            if not b[2] or (after is not None and b[4] <= after) or (before is not None and b[3] >= before):
                continue
            yield self._raw_lines(key, b[0], b[1])

    def lines_after(self, since: int, limit: int, max_bytes: int = 4 << 20) -> list[tuple[int, bytes]]:
        """(seq, stored line) of up to ``limit`` events numbered after ``since``, in
        order, from disk: one read per run of adjacent lines in a session's file; at
        most about ``max_bytes`` of lines (at least one), so one step stays short."""
        return self.read_after(since, limit, max_bytes)[0]

    def read_after(
        self, since: int, limit: int, max_bytes: int = 4 << 20, upto: int | None = None
    ) -> tuple[list[tuple[int, bytes]], int | None]:
        """``lines_after`` (numbered up to ``upto`` too), and the number through which
        they are every event the disk holds (numbers of deleted sessions, or never
        recorded, are skipped): where a reader goes on from. None when a session's
        file could not be read: some lines are missing, for now."""
        records = self.order.after(since, limit, upto)
        total = 0
        cut = len(records) >= limit  # (then the next number may be there too)
        for i, (_seq, _key, _offset, length) in enumerate(records):
            total += length
            if total > max_bytes and i:
                records, cut = records[:i], True
                break
        by_key: dict[str, list[tuple[int, int, int]]] = {}
        for seq, key, offset, length in records:
            by_key.setdefault(key, []).append((offset, length, seq))
        found: list[tuple[int, bytes]] = []
        failed = False
        for key, items in by_key.items():
            try:
                found += self._read_records(key, items)
            except OSError as exc:  # one unreadable session must not stop a catch-up
                failed = True
                log.warning("session %s: cannot read events for a catch-up: %s", key, exc)
        found.sort()
        if failed:
            return found, None
        if cut:
            return found, records[-1][0]
        last = self.order.last_seq
        return found, max(since, last if upto is None else min(upto, last))

    def _read_records(self, key: str, items: list[tuple[int, int, int]]) -> list[tuple[int, bytes]]:
        """The lines at (offset, length) in a session's file, with their seqs; a line
        that is not there (a file cut short by a repair) is left out."""
        out: list[tuple[int, bytes]] = []
        items.sort()
        i = 0
        while i < len(items):
            j = i + 1  # a run of adjacent lines: one read
            while j < len(items) and items[j][0] == items[j - 1][0] + items[j - 1][1]:
                j += 1
            start = items[i][0]
            end = items[j - 1][0] + items[j - 1][1]
            data = self._read_bytes(key, start, end)
            if data is None:
                return out  # the session is gone
            for offset, length, seq in items[i:j]:
                line = data[offset - start : offset - start + length]
                if len(line) == length and line.endswith(b"\n") and line.startswith(b"{"):
                    out.append((seq, line))
            i = j
        return out

    def sizes(self) -> dict[str, int | None]:
        """Each session file's size now (None: not known, a session ``open`` could not
        read): what ``contains`` may be limited to later. Its last block as it is now
        is kept with it: the time range of what the file holds now (the block grows)."""
        out: dict[str, int | None] = dict(self._bytes)
        out.update((key, None) for key in self._unopened)
        self._sized_tails = {key: t.as_block() for key, t in self._tails.items()}
        self._blocks_at_sizes = {}
        return out

    def contains(self, session_id: str, event_id: str, ts: int, before: Mapping[str, int | None] | None = None) -> bool:
        """Exact duplicate check, reading only the blocks whose times cover ``ts``;
        with ``before`` (``sizes()`` taken earlier), only the bytes each file had then
        (a session not in it had none): the caller knows later lines lack the id."""
        key = session_key(session_id)
        limit = None if before is None else before.get(key, 0)
        if limit == 0:
            return False
        needle = ('"id":' + json.dumps(event_id)).encode()
        for b in self._all_blocks(key) if limit is None else self._blocks_then(key, limit):
            if b[3] is not None and b[3] <= ts <= b[4]:
                data = self._read_bytes(key, b[0], b[1] if limit is None else min(b[1], limit))
                if data is None:
                    return False
                if needle in data:
                    return True
        return False

    def _blocks_then(self, key: str, limit: int) -> list:
        """The blocks of the first ``limit`` bytes of a session's file, as they were
        when ``sizes`` said so: a block that grew since (the last one then) with its
        time range then. An event newer than all of it, as a catch-up's are, is not
        looked for on disk at all (it was read for every event of a catch-up)."""
        then = self._sized_tails.get(key)
        if then is None or then[1] != limit:  # not what ``sizes`` saw: every block up to it
            return [b for b in self._all_blocks(key) if b[0] < limit]
        blocks = self._blocks_at_sizes.get(key)
        if blocks is None:  # (they do not change: made once, not for every event)
            blocks = self._blocks_at_sizes[key] = [*(b for b in self._index(key) if b[1] <= then[0]), then]
        return blocks

    def recent_ids(self, sessions: list[Session], budget: int) -> list[str]:
        """Ids of the last events stored, newest sessions first, to prime dedupe."""
        ids: list[str] = []
        for s in sorted(sessions, key=lambda s: s.last_event_time or 0, reverse=True):
            if len(ids) >= budget:
                break
            key = session_key(s.session_id)
            for b in reversed(self._all_blocks(key)[-2:]):
                data = self._read_bytes(key, b[0], b[1])
                if data is None:
                    break
                for line in data.splitlines():
                    m = _ID_AT_START.match(line)
                    if m:
                        ids.append(m.group(1).decode())
        return ids[:budget]

    def expired(
        self, sessions: Iterable[Session], retention_days: float | None, now_ms: int | None = None
    ) -> list[str]:
        if not retention_days:
            return []
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        cutoff = now_ms - retention_days * 86_400_000
        return [s.session_id for s in sessions if (s.last_event_time or s.start_time or now_ms) < cutoff]

    def size_bytes(self) -> int:
        return sum(self._bytes.values())


def _by_key(batch: Iterable[tuple[str, int, bytes, int | None]]) -> dict[str, list]:
    """(timestamp, line, seq) items by session key, each in batch order. Grouped by
    session id first: a key is made once per session, not once per event."""
    batch = list(batch)
    by_sid: dict[str, list] = {}
    for sid, ts, line, seq in batch:
        items = by_sid.get(sid)
        if items is None:
            items = by_sid[sid] = []
        items.append((ts, line, seq))
    grouped: dict[str, list] = {}
    for sid, items in by_sid.items():
        key = session_key(sid)
        if key in grouped:  # two ids with one key (one named like a hashed one): slowly
            slow: dict[str, list] = {}
            for one_sid, ts, line, seq in batch:
                slow.setdefault(session_key(one_sid), []).append((ts, line, seq))
            return slow
        grouped[key] = items
    return grouped


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def _ts(ev: dict) -> int:
    ts = ev.get("timestamp")
    return ts if isinstance(ts, int) else 0
