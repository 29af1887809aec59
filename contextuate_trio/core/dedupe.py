"""Dedupe structures: has this event id been stored already? Plain code, no I/O.

Two layers, both constant in memory: the newest ids exactly (``RecentIds``), and every
id of this run as a Bloom filter (``SeenIds``), whose "maybe" sends the broker to the
disk and whose "no" is certain.
"""

from __future__ import annotations

import collections


class RecentIds:
    """The ids seen lately, oldest forgotten first (a bounded ordered set: a ring of
    ids and a set; deleting a dict's first key instead slowed as dead slots piled up
    in front, 5% of the pipeline's time)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._ids: set[str] = set()
        self._order: collections.deque[str] = collections.deque()

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._ids

    def add(self, event_id: str) -> None:
        if event_id in self._ids:
            return
        self._ids.add(event_id)
        self._order.append(event_id)
        if len(self._order) > self.cap:
            self._ids.discard(self._order.popleft())

    def discard(self, event_id: str) -> None:
        """Forget an id (its event was refused); its slot in the ring ages out as usual."""
        self._ids.discard(event_id)

    def __len__(self) -> int:
        return len(self._ids)


class SeenIds:
    """Every id the pipeline was handed during this run (stored, or a copy, or refused),
    as a Bloom filter (1 MiB, 3 probes): "not seen" is certain, so only an id it may
    have seen — a real copy, or about one in 7,000 after 150,000 ids — costs a look on
    disk, which has the last word. Constant memory, O(1)."""

    BITS = 1 << 23
    _MASK = BITS - 1

    def __init__(self) -> None:
        self._bits = bytearray(self.BITS // 8)

    def _probes(self, event_id: str) -> tuple[int, int, int]:
        h = hash(event_id) & 0xFFFF_FFFF_FFFF_FFFF
        return (h & self._MASK, (h >> 21) & self._MASK, (h >> 42) & self._MASK)

    def add(self, event_id: str) -> None:
        self.add_new(event_id)

    def add_new(self, event_id: str) -> bool:
        """Add ``event_id``; whether it may have been there already (``in`` and then
        ``add`` in one: the pipeline asks both of every event)."""
        bits = self._bits
        a, b, c = self._probes(event_id)
        ia, ib, ic = a >> 3, b >> 3, c >> 3
        ma, mb, mc = 1 << (a & 7), 1 << (b & 7), 1 << (c & 7)
        there = bool(bits[ia] & ma and bits[ib] & mb and bits[ic] & mc)
        bits[ia] |= ma
        bits[ib] |= mb
        bits[ic] |= mc
        return there

    def __contains__(self, event_id: str) -> bool:
        bits = self._bits
        a, b, c = self._probes(event_id)
        return bool(bits[a >> 3] >> (a & 7) & 1 and bits[b >> 3] >> (b & 7) & 1 and bits[c >> 3] >> (c & 7) & 1)
