"""Framing of the socket protocol (sans-IO)."""

from __future__ import annotations

import json

import pytest
from helpers import MINT
from hypothesis import given, settings
from hypothesis import strategies as st

from contextuate_trio.core import wire
from contextuate_trio.core.events import EventError


def split_all(chunks, max_line=1000):
    s = wire.LineSplitter(max_line)
    out = []
    for c in chunks:
        out.extend(s.feed(c))
    return out, s


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=50).map(lambda b: b.replace(b"\n", b"x")), max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=10),
)
def test_any_chunking_gives_the_same_lines(lines, cuts):
    data = b"".join(x + b"\n" for x in lines)
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0] + points, points + [len(data)], strict=False)]
    out, s = split_all(chunks)
    assert out == [x for x in lines if x.strip()]
    assert s.pending() == 0


def test_too_long_line_is_skipped_whole_and_reported_once():
    out, s = split_all([b"a" * 600, b"b" * 600, b"c" * 600, b"\nok\n"], max_line=1000)
    assert isinstance(out[0], wire.LineTooLong) and out[1:] == [b"ok"]
    out, _ = split_all([b"x" * 2000 + b"\nfine\n"], max_line=1000)
    assert isinstance(out[0], wire.LineTooLong) and out[1:] == [b"fine"]


def test_parse_line_kinds_and_errors():
    ev, ack, _ = wire.parse_line(
        b'{"kind":"hook","id":"a","timestamp":1,"machineId":"m","ack":true,'
        b'"payload":{"session_id":"s","hook_event_name":"Stop"}}',
        mint=MINT,
    )
    assert ack and ev.id == "a" and ev.event_type == "stop"
    ev, ack, _ = wire.parse_line(b'{"id":"b","sessionId":"s","eventType":"x","machineId":"m","timestamp":1}', mint=MINT)
    assert not ack and ev.id == "b"
    for bad in (b"nope", b"[1]", b'"s"', b"{" * 5, b"[" * 100000 + b"]" * 100000):
        with pytest.raises(EventError):
            wire.parse_line(bad, mint=MINT)
    ev, _, _ = wire.parse_line(b'{"id":"c","sessionId":"s\xff","eventType":"x"}', mint=MINT)
    assert ev.session_id == "s\ufffd"
    assert json.loads(wire.ack("a")) == {"ack": "a"}
    assert json.loads(wire.nack("a", "why")) == {"nack": "a", "error": "why"}
