"""The file store: append, indexed reads, crash recovery, retention."""

from __future__ import annotations

import json
import os

from helpers import append_events

from contextuate_trio.core.events import Event
from contextuate_trio.core.sessions import SessionManager
from contextuate_trio.runtime.store import BLOCK, FileStore, session_key


def ev(i, sid="s1", ts=None):
    return Event(
        id=f"id-{i}",
        timestamp=ts if ts is not None else 1000 + i,
        session_id=sid,
        machine_id="m",
        event_type="tool_call",
        data={"n": i},
    )


def test_last_n_before_after_across_blocks(tmp_path):
    st = FileStore(str(tmp_path))
    st.open()
    n = BLOCK * 3 + 17
    for i in range(0, n, 100):
        append_events(st, [ev(j) for j in range(i, min(i + 100, n))])
    assert len(st._index(session_key("s1"))) == 3
    last = st.events("s1", 10)
    assert [e["data"]["n"] for e in last] == list(range(n - 10, n))
    before = st.events("s1", 5, before=1000 + 600)
    assert [e["data"]["n"] for e in before] == list(range(595, 600))
    after = st.events("s1", 4, after=1000 + 10)
    assert [e["data"]["n"] for e in after] == [11, 12, 13, 14]
    both = st.events("s1", 1000, before=1000 + 520, after=1000 + 500)
    assert [e["data"]["n"] for e in both] == list(range(501, 520))
    assert st.contains("s1", "id-700", 1700) and not st.contains("s1", "id-700", 5)
    assert not st.contains("s1", "nope", 1700)
    # Reopening reads the index, not the events, and answers the same.
    st.close()
    st2 = FileStore(str(tmp_path))
    st2.open()
    assert st2.events("s1", 10) == last


def test_torn_last_line_is_set_aside(tmp_path):
    st = FileStore(str(tmp_path))
    st.open()
    append_events(st, [ev(i) for i in range(5)])
    st.close()
    path = tmp_path / "sessions" / "s1" / "events.jsonl"
    with open(path, "ab") as f:
        f.write(b'{"id":"torn","timest')
    st2 = FileStore(str(tmp_path))
    sessions, replay = st2.open()
    assert [e["id"] for e in st2.events("s1", 100)] == [f"id-{i}" for i in range(5)]
    assert path.read_bytes().endswith(b"\n")
    assert b"torn" in (tmp_path / "sessions" / "s1" / "events.jsonl.torn").read_bytes()
    append_events(st2, [ev(9)])
    assert [e["id"] for e in st2.events("s1", 100)][-1] == "id-9"


def test_weird_session_ids_get_safe_directories(tmp_path):
    st = FileStore(str(tmp_path))
    st.open()
    for sid in ("../../etc", "a/b", "", "ü" * 200):
        append_events(st, [ev(1, sid=sid)])
        assert st.events(sid, 10)[0]["sessionId"] == sid
    assert all(
        os.path.dirname(p) == str(tmp_path / "sessions") for p in (str(x) for x in (tmp_path / "sessions").iterdir())
    )


def test_retention(tmp_path):
    st = FileStore(str(tmp_path))
    m = SessionManager()
    now = 100 * 86_400_000
    for sid, ts in (("old", now - 40 * 86_400_000), ("new", now - 86_400_000)):
        m.apply(ev(1, sid=sid, ts=ts))
    assert st.expired(m.sessions.values(), 30, now_ms=now) == ["old"]
    assert st.expired(m.sessions.values(), None, now_ms=now) == []


def test_a_start_takes_the_last_block_from_the_meta_and_scans_only_when_it_is_behind(tmp_path, monkeypatch):
    st = FileStore(str(tmp_path))
    st.open()
    n = BLOCK + 40
    append_events(st, [ev(j) for j in range(n)])
    manager = SessionManager()
    for j in range(n):
        manager.apply(ev(j))
    st.save_sessions(manager.sessions.values())
    last = st.events("s1", 60)
    st.close()
    scans = []
    real = FileStore._load_tail
    monkeypatch.setattr(FileStore, "_load_tail", lambda self, key, size: scans.append(key) or real(self, key, size))
    st2 = FileStore(str(tmp_path))
    st2.open()
    assert scans == [] and st2.events("s1", 60) == last  # no scan: the meta knew the block
    append_events(st2, [ev(j) for j in range(n, n + 5)])  # stored after the meta: a crash
    st2.close()
    st3 = FileStore(str(tmp_path))
    sessions, replay = st3.open()
    assert scans == [session_key("s1")] and [e["data"]["n"] for e in replay] == list(range(n, n + 5))
    assert [e["data"]["n"] for e in st3.events("s1", 45)] == list(range(n - 40, n + 5))


def test_an_index_that_missed_blocks_makes_the_next_start_scan(tmp_path, monkeypatch):
    import builtins

    import contextuate_trio.runtime.store as store_module

    monkeypatch.setattr(store_module, "BLOCK", 4)
    st = FileStore(str(tmp_path))
    st.open()
    append_events(st, [ev(j) for j in range(4)])
    real_open = builtins.open

    def full_disk(path, *a, **k):
        if str(path).endswith("index.jsonl") and a and a[0] == "a":
            raise OSError(28, "No space left on device")
        return real_open(path, *a, **k)

    monkeypatch.setattr(store_module, "open", full_disk, raising=False)
    append_events(st, [ev(j) for j in range(4, 8)])  # its block is not indexed
    monkeypatch.delattr(store_module, "open")
    append_events(st, [ev(j) for j in range(8, 10)])
    manager = SessionManager()
    for j in range(10):
        manager.apply(ev(j))
    st.save_sessions(manager.sessions.values())
    st.close()
    again = FileStore(str(tmp_path))
    again.open()
    assert [e["data"]["n"] for e in again.events("s1", 100)] == list(range(10))
    assert again.contains("s1", "id-5", 1005)


def test_a_tail_longer_than_a_block_at_start_is_indexed_right(tmp_path):
    """A session whose index and meta were lost starts with every line in its tail
    (more than BLOCK of them): the next appends must still make blocks that end inside
    the file and count each line once, and every id stays findable."""
    st = FileStore(str(tmp_path))
    st.open()
    first = BLOCK + 88
    append_events(st, [ev(j) for j in range(first)])
    st.close()
    folder = os.path.join(str(tmp_path), "sessions", session_key("s1"))
    for name in ("index.jsonl", "meta.json"):
        if os.path.exists(os.path.join(folder, name)):
            os.remove(os.path.join(folder, name))
    again = FileStore(str(tmp_path))
    again.open()
    total = first + 2 * BLOCK
    append_events(again, [ev(j) for j in range(first, total)])
    size = os.path.getsize(os.path.join(folder, "events.jsonl"))
    blocks = again._all_blocks(session_key("s1"))
    assert all(b[1] <= size for b in blocks) and sum(b[2] for b in blocks) == total
    assert again.contains("s1", f"id-{total - 1}", 1000 + total - 1)
    assert [e["data"]["n"] for e in again.events("s1", total)] == list(range(total))


def test_contains_what_was_on_disk_at_start_reads_no_later_block(tmp_path):
    """``contains`` limited to what ``sizes`` saw: what was there is found (also in a
    block it has since filled), and an event newer than all of it reads nothing."""
    st = FileStore(str(tmp_path))
    st.open()
    append_events(st, [ev(i) for i in range(BLOCK + 10)])  # a block and a tail of 10
    st.close()
    st = FileStore(str(tmp_path))
    st.open()
    then = st.sizes()
    append_events(st, [ev(i, ts=5000 + i) for i in range(BLOCK + 10, 2 * BLOCK + 10)])  # the tail fills up
    reads = []
    real = st._read_bytes
    st._read_bytes = lambda key, start, end: reads.append((start, end)) or real(key, start, end)
    assert st.contains("s1", "id-3", 1003, then) and st.contains("s1", f"id-{BLOCK + 5}", 1000 + BLOCK + 5, then)
    assert len(reads) == 2 and max(end for _, end in reads) <= then[session_key("s1")]
    reads.clear()
    assert not st.contains("s1", f"id-{BLOCK + 20}", 5000 + BLOCK + 20, then)  # stored after: not looked for
    assert not st.contains("s1", "id-new", 9999, then) and reads == []
    assert st.contains("s1", f"id-{BLOCK + 20}", 5000 + BLOCK + 20)  # without the limit: found


def test_an_index_block_that_failed_to_write_leaves_no_hole(tmp_path):
    """A block's index line that could not be written, then the next that could: the
    index is written whole again (no hole), and a hole left by an older version is
    rebuilt at start; either way every event is found."""
    st = FileStore(str(tmp_path))
    st.open()
    append_events(st, [ev(i) for i in range(BLOCK)])
    idx = os.path.join(st.sessions_dir, session_key("s1"), "index.jsonl")
    os.rename(idx, idx + ".away")
    os.mkdir(idx)  # the next block's index line cannot be appended
    append_events(st, [ev(i) for i in range(BLOCK, 2 * BLOCK)])
    os.rmdir(idx)
    os.rename(idx + ".away", idx)
    append_events(st, [ev(i) for i in range(2 * BLOCK, 3 * BLOCK)])
    st.close()
    with open(idx) as f:
        blocks = [json.loads(x) for x in f]
    assert len(blocks) == 3 and [b[0] for b in blocks] == [0, blocks[0][1], blocks[1][1]]  # whole again
    again = FileStore(str(tmp_path))
    again.open()
    assert again.contains("s1", f"id-{BLOCK + 3}", 1000 + BLOCK + 3)
    again.close()
    # An index with a hole (as an older version left one; no meta says where the tail is).
    with open(idx) as f:
        lines = f.readlines()
    with open(idx, "w") as f:
        f.writelines([lines[0], lines[2]])
    third = FileStore(str(tmp_path))
    third.open()
    assert third.contains("s1", f"id-{BLOCK + 3}", 1000 + BLOCK + 3)
    assert [e["data"]["n"] for e in third.events("s1", 3, before=1000 + BLOCK + 3)] == [BLOCK, BLOCK + 1, BLOCK + 2]
