"""Spelling of names across the contract: Python's snake_case, JSON's camelCase."""

from __future__ import annotations

import re

_UPPER = re.compile(r"(?<!^)(?=[A-Z])")


def camel(name: str) -> str:
    """``parent_session_id`` -> ``parentSessionId``."""
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def snake(name: str) -> str:
    """``PostToolUse`` -> ``post_tool_use`` (empty -> ``unknown``)."""
    return _UPPER.sub("_", name).lower() or "unknown"
