"""Which lines of a batch may hold a secret: ``Redactor.may_hold_secret`` for a whole
batch in one pass. Plain code, no I/O.

The per-line pre-scan searches the text once per marker (35 searches); over the
events the daemon stores that was 12 µs an event, the largest cost of its pipeline.
One Aho-Corasick search over the lower-cased batch finds the lines with a marker.

The search is ahocorasick-rs in leftmost-first mode: its SIMD prefilter skips text
that cannot start a marker (the search ~0.2 µs for a 650-byte event, ~0.7 µs with
the lower-casing and the rest; pyahocorasick's walk, which reports every
overlapping match, took ~3 µs on text stripped to a quarter less, ~4.6 µs in all).
Leftmost-first reports no overlapping matches, but a line holding a marker still
has a match of its own: the search reaches the line's start before the marker's
(no marker holds the separator, so no match crosses a line), and from there it
reports the leftmost match, which starts at or before that marker. The lines it
names are then asked ``may_hold_secret`` itself (a group marker needs all of its
parts), so the answer is exactly the per-line one. Most batches hold no marker:
the lines' offsets are counted only when there is a match to place. Not in ``redact`` itself:
the hook imports that module and must stay on the standard library.
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate

import ahocorasick_rs

from contextuate_trio.core.redact import MARKERS_LOWER, Redactor

# A group of markers is found by its first part; the exact check asks for the rest.
_FIRST_PARTS = sorted({m if isinstance(m, str) else m[0] for m in MARKERS_LOWER})
_FINDER = ahocorasick_rs.BytesAhoCorasick(
    [m.encode() for m in _FIRST_PARTS],
    matchkind=ahocorasick_rs.MATCHKIND_LEFTMOST_FIRST,
    implementation=ahocorasick_rs.Implementation.DFA,
)


def suspects(redactor: Redactor, lines: list[bytes]) -> list[int]:
    """Indexes of the UTF-8 ``lines`` that ``redactor`` must look at: every line
    ``may_hold_secret`` would name, and no other."""
    if not redactor.enabled or not lines:
        return []
    if redactor.extra:  # custom patterns have no markers
        return list(range(len(lines)))
    low = b"\0".join(lines)
    if low.isascii():  # (most batches)
        low, searched = low.lower(), lines  # (lower-cased, each line keeps its length)
    else:  # str.lower can turn a non-ASCII letter into an ASCII one (KELVIN SIGN: "k")
        searched = [line.decode("utf-8", "replace").lower().encode() for line in lines]
        low = b"\0".join(searched)
    matches = _FINDER.find_matches_as_indexes(low)
    if not matches:
        return []
    starts = list(accumulate((len(x) + 1 for x in searched[:-1]), initial=0))
    found: list[int] = []
    for _pattern, start, _end in matches:
        k = bisect_right(starts, start) - 1
        if not found or found[-1] != k:  # (matches come in order)
            found.append(k)
    return [k for k in found if redactor.may_hold_secret(lines[k].decode("utf-8", "replace"))]
