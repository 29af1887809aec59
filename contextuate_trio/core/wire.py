"""Framing of the socket protocol, sans-IO: newline-delimited JSON, one event per line.

Two kinds of producer share it. ``hook_emit.py`` sends a hook envelope with
``"ack": true`` and waits for ``{"ack": "<id>"}`` (or ``{"nack": ..., "error": ...}``)
once the event is stored. Anything else streams complete events and reads nothing.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

from contextuate_trio.core.events import Event, EventError, Mint, from_object


class LineTooLong(Exception):
    pass


class LineSplitter:
    """Bytes in, complete lines out; a line over ``max_line`` bytes is skipped whole
    and reported once (as a ``LineTooLong`` in the output list)."""

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._buf = bytearray()
        self._skipping = False

    def feed(self, data: bytes) -> list[bytes | LineTooLong]:
        out: list[bytes | LineTooLong] = []
        start = 0
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                break
            if self._skipping:
                self._skipping = False
            elif len(self._buf) + nl - start > self.max_line:
                self._buf.clear()
                out.append(LineTooLong(f"line longer than {self.max_line} bytes"))
            else:
                if self._buf:
                    self._buf += data[start:nl]
                    line = bytes(self._buf)
                    self._buf.clear()
                else:
                    line = data[start:nl]
                if line.strip():
                    out.append(line)
            start = nl + 1
        rest = len(data) - start
        if self._skipping:
            pass
        elif len(self._buf) + rest > self.max_line:
            self._buf.clear()
            self._skipping = True
            out.append(LineTooLong(f"line longer than {self.max_line} bytes"))
        elif rest:
            self._buf += data[start:]
        return out

    def pending(self) -> int:
        return len(self._buf)


def _finite(text: str) -> float | str:
    value = float(text)
    return value if math.isfinite(value) else text  # 1e400 is inf: kept as its text


def _may_hold_surrogates(data: bytes | str) -> bool:
    if isinstance(data, bytes):
        return b"\\ud" in data or b"\\uD" in data
    return "\\ud" in data or "\\uD" in data


def _no_lone_surrogates(value: Any) -> Any:
    """``"\\ud800"`` escapes give Python strings that no UTF-8 file, socket or browser
    takes: replaced (U+FFFD) once, here, before they reach sessions, disk or clients."""
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, list):
        return [_no_lone_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_no_lone_surrogates(k): _no_lone_surrogates(v) for k, v in value.items()}
    return value


def loads(data: bytes | str) -> Any:
    """JSON from any producer: invalid UTF-8 replaced; ``NaN``, ``Infinity`` and
    numbers too large for a float (which Python accepts and browsers do not) kept as
    strings; errors as ``EventError``.

    orjson first (5x faster than ``json``); it refuses the odd inputs above (and
    lone surrogates, nesting over 1,024), which the standard library then reads with
    the rules above. One difference from ``json``: an integer beyond 64 bits becomes
    a float (as in a browser), not an exact Python int."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return _loads_odd(data)


def _loads_odd(data: bytes | str) -> Any:
    try:
        try:
            obj = json.loads(data, parse_constant=str, parse_float=_finite)
        except UnicodeDecodeError:  # only bytes can fail to decode
            text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
            obj = json.loads(text, parse_constant=str, parse_float=_finite)
        if _may_hold_surrogates(data):
            obj = _no_lone_surrogates(obj)
        return obj
    except ValueError as exc:
        raise EventError(f"not JSON: {exc}") from None
    except RecursionError:
        raise EventError("JSON nested too deeply") from None


def to_event(obj: Any, source: str | None = None, *, mint: Mint) -> Event:
    """``events.from_object``, with any failure on a producer's odd values reported as
    an ``EventError`` (a bad line is counted and skipped; it never stops a source)."""
    try:
        return from_object(obj, source, mint=mint)
    except EventError:
        raise
    except Exception as exc:
        raise EventError(f"not an event: {type(exc).__name__}: {exc}") from None


def parse_line(line: bytes, source: str | None = None, *, mint: Mint) -> tuple[Event, bool, Any]:
    """One line -> (event, whether the producer asked for an acknowledgement, how
    many ms it waits for an answer from the dashboard: ``decide``, None mostly)."""
    obj = loads(line)
    event = to_event(obj, source, mint=mint)
    return event, bool(obj.get("ack") is True), obj.get("decide")


def answer(event_id: str, output: dict[str, Any]) -> bytes:
    """The line that hands a waiting hook Claude Code's answer (``hook.wire``)."""
    return orjson.dumps({"answer": event_id, "output": output}, option=orjson.OPT_APPEND_NEWLINE)


def ack(event_id: str) -> bytes:
    return b'{"ack":' + orjson.dumps(event_id) + b"}\n"


def nack(event_id: str | None, error: str) -> bytes:
    return orjson.dumps({"nack": event_id, "error": error}, option=orjson.OPT_APPEND_NEWLINE)
