"""The seq log: every numbered event found again on disk, across sessions and starts."""

from __future__ import annotations

import os

from contextuate_trio.core import events
from contextuate_trio.core.events import Event
from contextuate_trio.runtime.seqlog import RECORD
from contextuate_trio.runtime.store import FileStore, session_key


def line(i: int, sid: str) -> bytes:
    ev = Event(id=f"id-{i}", timestamp=1000 + i, session_id=sid, machine_id="m", event_type="stop")
    return events.encode(ev) + b"\n"


def write(store: FileStore, seqs: range, sessions: tuple[str, ...] = ("a", "b", "c")) -> dict[int, bytes]:
    batch = [(sessions[n % len(sessions)], 1000 + n, line(n, sessions[n % len(sessions)]), n) for n in seqs]
    store.append(batch)
    return {seq: text for _, _, text, seq in batch}


def opened(path) -> FileStore:
    store = FileStore(str(path))
    store.open()
    return store


def test_lines_after_any_number_in_order_across_sessions_and_starts(tmp_path):
    store = opened(tmp_path)
    lines = write(store, range(1, 500))
    lines |= write(store, range(500, 1200))
    assert store.lines_after(0, 5) == [(n, lines[n]) for n in range(1, 6)]
    assert store.lines_after(1000, 10_000) == [(n, lines[n]) for n in range(1001, 1200)]
    assert store.lines_after(1199, 10) == []
    store.close()
    again = opened(tmp_path)  # a new start finds the same numbers, and goes on
    assert (again.order.first_seq, again.order.last_seq) == (1, 1199)
    lines |= write(again, range(1200, 1210))
    assert [n for n, _ in again.lines_after(1190, 100)] == list(range(1191, 1210))
    assert all(text == lines[n] for n, text in again.lines_after(0, 2000))


def test_binary_search_beyond_one_read(tmp_path, monkeypatch):
    import contextuate_trio.runtime.seqlog as seqlog

    monkeypatch.setattr(seqlog, "SEARCH_READ", 4)
    store = opened(tmp_path)
    write(store, range(10, 3000, 3))  # numbers with holes (other runs, masked lines...)
    for since in (0, 9, 10, 11, 12, 13, 1500, 2995, 2996, 2997, 5000):
        want = [n for n in range(10, 3000, 3) if n > since][:7]
        assert [n for n, _ in store.lines_after(since, 7)] == want, since


def test_a_deleted_session_leaves_nothing_behind_even_when_its_key_comes_back(tmp_path):
    store = opened(tmp_path)
    write(store, range(1, 31))
    store.delete("b")
    assert {n % 3 for n, _ in store.lines_after(0, 100)} == {0, 2}  # a: 3, 6...; c: 2, 5...
    write(store, range(31, 40), sessions=("b",))  # a new session with the same key
    store.close()
    again = opened(tmp_path)
    found = dict(again.lines_after(0, 100))
    assert [n for n in found if n > 30] == list(range(31, 40))
    assert all(b'"sessionId":"b"' in found[n] for n in range(31, 40))
    assert not any(n % 3 == 1 and n < 31 for n in found)  # the old b's lines: gone


def test_torn_record_and_a_file_cut_short_are_skipped(tmp_path):
    store = opened(tmp_path)
    write(store, range(1, 21), sessions=("a",))
    store.close()
    with open(tmp_path / "seq.log", "ab") as f:
        f.write(b"\x01\x02\x03")  # a crash mid-record
    events_file = tmp_path / "sessions" / session_key("a") / "events.jsonl"
    size = os.path.getsize(events_file)
    with open(events_file, "rb+") as f:
        f.truncate(size - len(line(20, "a")))  # the last line lost (a repair cut it)
    again = opened(tmp_path)
    assert os.path.getsize(tmp_path / "seq.log") == 20 * RECORD.size
    assert [n for n, _ in again.lines_after(0, 100)] == list(range(1, 20))


def test_compaction_drops_deleted_sessions_anywhere_and_keeps_numbers_going(tmp_path):
    store = opened(tmp_path)
    write(store, range(1, 31), sessions=("old", "kept", "gone"))  # interleaved; 30 is old's
    store.delete("old")
    assert store.order.compact() == 0  # a third dead: not worth a rewrite yet
    store.delete("gone")
    assert store.order.compact() == 19  # the last record (30) stays: numbers go on from it
    assert os.path.getsize(tmp_path / "seq.log") == 11 * RECORD.size
    assert [n for n, _ in store.lines_after(0, 100)] == list(range(1, 31, 3))
    store.delete("kept")
    assert store.order.compact() == 10
    store.close()
    assert opened(tmp_path).order.last_seq == 30


def test_reading_on_in_chunks_from_the_last_number_got_gives_each_once(tmp_path):
    store = opened(tmp_path)
    write(store, range(1, 400))
    store.delete("b")  # dead records in between
    got, cursor = [], 0
    while chunk := store.lines_after(cursor, 7):
        got += [n for n, _ in chunk]
        cursor = chunk[-1][0]
    assert got == [n for n in range(1, 400) if n % 3 != 1]


def test_a_batch_stored_in_two_attempts_is_recorded_once_in_order(tmp_path, monkeypatch):
    from contextuate_trio.runtime.store import StoreError

    store = opened(tmp_path)
    write(store, range(1, 3), sessions=("a", "b"))
    batch = [("a", 1, line(3, "a"), 3), ("b", 1, line(4, "b"), 4), ("a", 1, line(5, "a"), 5)]
    real = store._append_session

    def full_disk(key, items):
        if key == "b":
            raise OSError(28, "No space left on device")
        return real(key, items)

    monkeypatch.setattr(store, "_append_session", full_disk)
    try:
        store.append(batch)
        raise AssertionError("the write should have failed")
    except StoreError as exc:
        assert exc.written == {"a"}
    assert store.order.last_seq == 2 and store.lines_after(2, 10) == []  # nothing of it yet
    monkeypatch.setattr(store, "_append_session", real)
    store.append([item for item in batch if item[0] == "b"])  # the broker's retry
    assert [n for n, _ in store.lines_after(0, 10)] == [1, 2, 3, 4, 5]
    store.close()
    assert opened(tmp_path).order.last_seq == 5


def test_read_after_says_through_which_number_it_read(tmp_path):
    """Up to a number: the events there, and how far the reader may go on; across a
    deleted session's numbers too (they hold nothing any more, not a gap to stop at)."""
    store = opened(tmp_path)
    lines = {}
    for first in range(1, 40, 10):  # 1..10 a, 11..20 b, 21..30 a, 31..40 b
        lines |= write(store, range(first, first + 10), ("a" if first % 20 == 1 else "b",))
    store.delete("b")
    assert store.read_after(0, 15, upto=15) == ([(n, lines[n]) for n in range(1, 11)], 15)
    assert store.read_after(10, 10, upto=20) == ([], 20)  # only b's numbers: gone, read through
    assert store.read_after(30, 100, upto=130) == ([], 40)  # the disk ends at 40
    got, through = store.read_after(0, 100, max_bytes=3 * len(lines[1]), upto=100)
    assert got == [(n, lines[n]) for n in (1, 2, 3)] and through == 3  # cut short: from 3 on
    path = os.path.join(store.sessions_dir, session_key("a"), "events.jsonl")
    store._close(session_key("a"))
    os.rename(path, path + ".away")
    os.mkdir(path)  # reading it fails (not as a file that is gone)
    assert store.read_after(0, 15, upto=15) == ([], None)  # a failed read: nothing to conclude
