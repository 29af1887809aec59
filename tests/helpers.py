"""Helpers the tests share (the fixtures are in conftest.py)."""

from __future__ import annotations

import itertools

from contextuate_trio.core.events import Mint
from contextuate_trio.core.usage import DEFAULT_TABLE, PriceTable


def fixed_mint(start_ms: int = 1_000) -> Mint:
    """Ids ``id-1``, ``id-2``, ... and a clock that says ``start_ms``: what the core
    uses for events that arrive without an id or a time, made predictable."""
    counter = itertools.count(1)
    return Mint(new_id=lambda: f"id-{next(counter)}", now_ms=lambda: start_ms)


MINT = fixed_mint()
PRICES: PriceTable = DEFAULT_TABLE
