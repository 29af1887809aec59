"""The daemon's clock and ids, handed to the sans-IO core (which has neither)."""

from __future__ import annotations

import os
import time

from contextuate_trio.core.events import Mint
from contextuate_trio.hook.paths import uuid4_text

_POOL = 16 * 256  # random bytes fetched at once: one getrandom() per 256 ids, not per id
_random = bytearray()


def new_id() -> str:
    """A random (version 4) UUID; the randomness fetched from the OS in bulk (one
    system call per event was 6% of the HTTP hook path)."""
    global _random
    if not _random:
        _random = bytearray(os.urandom(_POOL))
    b = _random[-16:]
    del _random[-16:]
    return uuid4_text(b)


def _forget_pool() -> None:
    _random.clear()  # a forked child must not hand out its parent's next ids


os.register_at_fork(after_in_child=_forget_pool)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


SYSTEM_MINT = Mint(new_id=new_id, now_ms=now_ms)
