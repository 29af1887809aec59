"""``sources.redis.Stream.account``: exact counts of trimmed entries from XINFO STREAM
(no Redis needed: the replies are written out)."""

from __future__ import annotations

from contextuate_trio.sources.redis import Stream


def xinfo(added: int, length: int, first: str | None, last_gen: str) -> dict:
    entry = (first.encode(), {b"data": b"{}"}) if first else None
    return {
        "length": length,
        "entries-added": added,
        "first-entry": entry,
        "last-entry": (last_gen.encode(), {}) if first else None,
        "last-generated-id": last_gen.encode(),
    }


def test_fresh_monitor_counts_what_was_trimmed_before_it_ever_read():
    s = Stream(b"s:{a}", "a", "0", 0)
    assert s.account(xinfo(500, 102, "100-0", "500-0")) == 398
    assert s.missed == 398 and s.lag == 102
    s.read_id, s.read_pos = "500-0", s.read_pos + 102  # what _fetch does
    assert s.account(xinfo(500, 102, "100-0", "500-0")) == 0 and s.lag == 0


def test_nothing_missed_when_the_first_entry_is_not_past_the_checkpoint():
    s = Stream(b"s:{a}", "a", "200-0", 200)
    assert s.account(xinfo(300, 150, "150-0", "300-0")) == 0
    assert s.missed == 0 and s.lag == 100


def test_a_trim_that_raced_a_read_is_found_once_caught_up():
    s = Stream(b"s:{a}", "a", "10-0", 10)
    # Read 5 entries while 20 more were added and 10 of those trimmed unseen.
    s.read_id, s.read_pos = "40-0", 15
    assert s.account(xinfo(40, 20, "21-0", "40-0")) == 25
    assert s.missed == 25 and s.lag == 0


def test_an_empty_stream_trimmed_past_the_checkpoint():
    s = Stream(b"s:{a}", "a", "5-0", 5)
    assert s.account(xinfo(9, 0, None, "9-0")) == 4 and s.lag == 0


def test_an_old_checkpoint_without_a_count():
    s = Stream(b"s", None, "7-0", None)
    assert s.account(xinfo(50, 20, "5-0", "50-0")) == 0 and s.lag is None
    s.read_id = "50-0"
    assert s.account(xinfo(50, 20, "5-0", "50-0")) == 0 and s.lag == 0  # known from here on
    old = Stream(b"s", None, "7-0", None)
    assert old.account(xinfo(50, 20, "31-0", "50-0")) == 0
    assert old.missed_unknown and old.lag == 20


def test_a_stream_younger_than_the_checkpoint_is_read_again():
    s = Stream(b"s:{a}", "a", "9000-0", 40)
    assert s.account(xinfo(3, 3, "100-0", "102-0")) == 0
    assert s.read_id == "0" and s.read_pos == 0 and s.lag == 3


def test_redis_6_has_no_counts():
    s = Stream(b"s:{a}", "a", "0", 0)
    info = xinfo(5, 5, "1-0", "5-0")
    del info["entries-added"]
    assert s.account(info) == 0 and s.lag is None and s.missed == 0


def test_a_gap_is_counted_once_across_a_rewind():
    s = Stream(b"s:{a}", "a", "10-0", 10)
    assert s.account(xinfo(500, 100, "400-0", "500-0")) == 390
    assert s.counted == 400
    s.rewind()  # a reconnect before anything was committed
    assert (s.read_id, s.read_pos) == ("10-0", 10)
    assert s.account(xinfo(500, 100, "400-0", "500-0")) == 0
    assert s.missed == 390 and s.read_pos == 400 and s.lag == 100
    # Trimmed further while reading: only the new gap counts.
    s.read_id, s.read_pos = "420-0", 420
    s.rewind()
    assert s.account(xinfo(600, 100, "500-0", "600-0")) == 80  # 421..500; 401..420 were read
    assert s.missed == 470


def test_a_gap_is_counted_once_across_a_restart():
    s = Stream(b"s:{a}", "a", "10-0", 10)
    assert s.account(xinfo(500, 100, "400-0", "500-0")) == 390
    # What _save_checkpoints keeps for it: id and pos of what is stored, and counted.
    again = Stream(b"s:{a}", "a", s.stored_id, s.stored_pos, s.counted)
    assert again.account(xinfo(500, 100, "400-0", "500-0")) == 0 and again.lag == 100


def test_a_stream_trimmed_to_empty_reports_its_loss_once():
    s = Stream(b"s:{a}", "a", "5-0", 5)
    assert s.account(xinfo(9, 0, None, "9-0")) == 4
    for _ in range(3):  # restarts: nothing was read, the checkpoint did not move
        s = Stream(b"s:{a}", "a", "5-0", 5, s.counted)
        assert s.account(xinfo(9, 0, None, "9-0")) == 0 and s.missed == 0


def test_redis_lost_the_stream_the_loss_is_unknown_not_every_trimmed_entry():
    s = Stream(b"s:{a}", "a", "9000-0", 40)
    # Recreated after a Redis restart, already trimmed: 500 added, 100 held.
    assert s.account(xinfo(500, 100, "401-0", "500-0")) == 0
    assert s.missed == 0 and s.missed_unknown
    assert s.read_id == "0" and s.read_pos == 400 and s.lag == 100
    s.read_id, s.read_pos = "500-0", 500
    assert s.account(xinfo(500, 100, "401-0", "500-0")) == 0 and s.lag == 0


def test_a_brand_new_monitor_does_not_count_what_was_trimmed_before_it_existed():
    s = Stream(b"s:{a}", "a", "0", 0, fresh=True)
    assert s.account(xinfo(500, 102, "100-0", "500-0")) == 0
    assert s.missed == 0 and not s.missed_unknown and s.read_pos == 398 and s.lag == 102
    s.read_id, s.read_pos = "450-0", 448  # read 50, then 100 more added and trimmed past it
    assert s.account(xinfo(650, 100, "551-0", "650-0")) == 102  # 449..550: a real loss now
    # A stream missing from an existing checkpoint file: that monitor existed, so it counts.
    old = Stream(b"s:{b}", "b", "0", 0, fresh=False)
    assert old.account(xinfo(500, 102, "100-0", "500-0")) == 398


def test_registry_members_are_machine_names_and_capped(monkeypatch, caplog):
    from contextuate_trio.sources import redis as source

    monkeypatch.setattr(source, "MAX_MACHINES", 3)
    src = object.__new__(source.RedisSource)  # only what _machine_names reads
    src._logged = {"names": 0, "cap": 0}
    src.registry = b"s:machines"
    src.machines = {"z-known": Stream(b"s:{z-known}", "z-known", "0", 0)}
    members = [b"a", b"b", b"c", b"z-known", b"../x", b"a b", b"x" * 65, b"-dash"]
    with caplog.at_level("INFO", logger="contextuate.redis"):
        assert src._machine_names(members) == ["z-known", "a", "b"]  # the known ones first
        src._machine_names(members)
    assert caplog.text.count("not a machine name") == 1 and caplog.text.count("reading the first 3") == 1
