"""The collector tuned for a long-running daemon with a steady stream of small objects.

CPython's default thresholds (700, 10, 10) run a young collection every 700 new
container objects, and a full one after every hundred of those: under ingest that
is a full walk of every live object (sessions, buffers, the imported modules) many
times a second, a stall that grows with the daemon's heap. What start-up made (the
modules, the sessions loaded from disk) is frozen out of the walks (``gc.freeze``),
and the thresholds are raised so collections are rarer and each finds more garbage.
Cycles are still collected; reference counting frees everything else at once.
"""

from __future__ import annotations

import gc

YOUNG = 50_000  # new container objects between young collections (default 700)
MIDDLE = 20  # young collections per middle one (default 10)
OLD = 50  # middle collections per full one (default 10)


def settle_after_start() -> None:
    """Collect once, freeze what survived, and raise the thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG, MIDDLE, OLD)
