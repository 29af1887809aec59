"""Which lines of a batch may hold a secret: ``Redactor.may_hold_secret`` for a whole
batch in one pass. Plain code, no I/O.

The per-line pre-scan searches the text once per marker (35 searches); over the
events the daemon stores that was 12 µs an event, the largest cost of its pipeline.
One Aho-Corasick automaton over the batch finds every marker in a single pass. Not
in ``redact`` itself: the hook imports that module and must stay on the standard
library.

The automaton's walk costs ~10 ns a character, so an ASCII batch (most are) is first
cut down: lower-cased and stripped of all but the markers' letters and ``-_:/``
(digits, quotes, spaces, braces, commas go: ~30% of an event's JSON) in one
``translate``, then walked for the markers stripped the same way. A marker in a line is still there,
stripped, in the stripped line (nothing of it was removed), so no line is missed;
stripping can join text into a marker that was not there (``s9k-`` → ``sk-``), so
the lines found are then checked exactly as before (~7 ns a character instead of ~10).
"""

from __future__ import annotations

from bisect import bisect_right

import ahocorasick

from contextuate_trio.core.redact import MARKERS_LOWER, Redactor


def _automaton() -> ahocorasick.Automaton:
    auto = ahocorasick.Automaton()
    for marker in sorted(MARKERS_LOWER, key=lambda m: isinstance(m, tuple)):  # plain first
        if isinstance(marker, str):
            auto.add_word(marker, (marker,))
        elif not auto.exists(marker[0]):  # all must be there: found by the first
            auto.add_word(marker[0], marker)
    auto.make_automaton()
    return auto


_AUTOMATON = _automaton()

# What the stripped batch keeps: the markers' letters, "-_:/" and the separator. The
# rest of their characters (quotes, spaces, "=", "\\") end markers but are a fifth of
# an event's JSON: stripped from both sides too.
_MARKER_CHARS = "".join(m if isinstance(m, str) else "".join(m) for m in MARKERS_LOWER)
_KEPT = frozenset(c for c in _MARKER_CHARS.encode() if chr(c).isalpha() or chr(c) in "-_:/") | {0}
_LOWER = bytes.maketrans(bytes(range(65, 91)), bytes(range(97, 123)))
_DROP = bytes(b for b in range(256) if _LOWER[b] not in _KEPT)


def _stripped_automaton() -> ahocorasick.Automaton:
    """The markers as they look in stripped text (for a group: its first part)."""
    auto = ahocorasick.Automaton()
    for marker in MARKERS_LOWER:
        word = (marker if isinstance(marker, str) else marker[0]).encode().translate(_LOWER, _DROP).decode()
        assert word, marker  # an empty word would name every line
        auto.add_word(word, word)
    auto.make_automaton()
    return auto


_STRIPPED = _stripped_automaton()


def suspects(redactor: Redactor, lines: list[bytes]) -> list[int]:
    """Indexes of the UTF-8 ``lines`` that ``redactor`` must look at: every line
    ``may_hold_secret`` would name (the same lower-cased text, the same markers)."""
    if not redactor.enabled or not lines:
        return []
    if redactor.extra:  # custom patterns have no markers
        return list(range(len(lines)))
    blob = b"\0".join(lines)
    if not blob.isascii() or blob.count(b"\0") != len(lines) - 1:
        return _exact(lines)  # (non-ASCII text lower-cases beyond bytes.lower)
    maybe = _maybe(blob.translate(_LOWER, _DROP).decode("ascii"))
    if not maybe:
        return []
    return [maybe[k] for k in _exact([lines[i] for i in maybe])]


def _maybe(stripped: str) -> list[int]:
    """Indexes of the lines of a stripped batch that hold a stripped marker."""
    found: list[int] = []
    k = at = 0  # the line at ``at`` (hits come in order: separators counted once)
    for end, _word in _STRIPPED.iter(stripped):
        k += stripped.count("\0", at, end)
        at = end
        if not found or found[-1] != k:
            found.append(k)
    return found


def _exact(lines: list[bytes]) -> list[int]:
    """Indexes of the lines whose lower-cased text holds a marker (a group: all its parts)."""
    lows = [line.decode("utf-8", "replace").lower() for line in lines]
    starts, at = [], 0
    for low in lows:
        starts.append(at)
        at += len(low) + 1
    found: set[int] = set()
    for end, marker in _AUTOMATON.iter("\0".join(lows)):
        k = bisect_right(starts, end) - 1
        if k in found:
            continue
        if len(marker) == 1 or all(m in lows[k] for m in marker[1:]):
            found.add(k)
    return sorted(found)
