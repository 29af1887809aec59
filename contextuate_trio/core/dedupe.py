"""Dedupe structures: has this event id been stored already? Plain code, no I/O.

Two layers, both constant in memory: the newest ids exactly (``RecentIds``), and every
id of this run as a Bloom filter (``SeenIds``), whose "maybe" sends the broker to the
disk and whose "no" is certain.
"""

from __future__ import annotations


class RecentIds:
    """The ids seen lately, oldest forgotten first (a bounded ordered set)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._ids: dict[str, None] = {}

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._ids

    def add(self, event_id: str) -> None:
        self._ids[event_id] = None
        if len(self._ids) > self.cap:
            del self._ids[next(iter(self._ids))]

    def discard(self, event_id: str) -> None:
        self._ids.pop(event_id, None)

    def __len__(self) -> int:
        return len(self._ids)


class SeenIds:
    """Every id stored during this run, as a Bloom filter (1 MiB, 3 probes): "not
    seen" is certain, so only an id it may have seen — a real copy, or about one in
    7,000 after 150,000 events — costs a look on disk. Constant memory, O(1)."""

    BITS = 1 << 23
    _MASK = BITS - 1

    def __init__(self) -> None:
        self._bits = bytearray(self.BITS // 8)

    def _probes(self, event_id: str) -> tuple[int, int, int]:
        h = hash(event_id) & 0xFFFF_FFFF_FFFF_FFFF
        return (h & self._MASK, (h >> 21) & self._MASK, (h >> 42) & self._MASK)

    def add(self, event_id: str) -> None:
        bits = self._bits
        for p in self._probes(event_id):
            bits[p >> 3] |= 1 << (p & 7)

    def __contains__(self, event_id: str) -> bool:
        bits = self._bits
        return all(bits[p >> 3] >> (p & 7) & 1 for p in self._probes(event_id))
