"""The daemon's clock and ids, handed to the sans-IO core (which has neither)."""

from __future__ import annotations

import time
import uuid

from contextuate_trio.core.events import Mint


def new_id() -> str:
    return str(uuid.uuid4())


def now_ms() -> int:
    return time.time_ns() // 1_000_000


SYSTEM_MINT = Mint(new_id=new_id, now_ms=now_ms)
