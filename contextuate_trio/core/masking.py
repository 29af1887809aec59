"""An event's stored form: secrets masked, text made valid UTF-8. Plain code, no I/O.

Masking comes before the session machine takes anything from the event (its last
summary, a sub-agent's description): what is masked is masked in the line that goes
to disk and to browsers, in the event object, and so in everything made from it.
"""

from __future__ import annotations

import json
from typing import NamedTuple

from contextuate_trio.core import events
from contextuate_trio.core.events import Event
from contextuate_trio.core.redact import Redactor, mask_values


class StoredLine(NamedTuple):
    line: bytes  # the event's JSON and a newline
    masked: bool  # some secret was masked in it


def stored_line(redactor: Redactor, ev: Event) -> StoredLine:
    """The event as it is stored and sent (see the module doc)."""
    return masked_line(redactor, ev, events.encode_line(ev))


def masked_line(redactor: Redactor, ev: Event, line: bytes) -> StoredLine:
    """``line`` (the event's encoding) with its secrets masked, in it and in ``ev``.
    The broker calls it only for the lines of a batch that ``secret_scan.suspects``
    names (most events hold no marker of a secret), before the sessions see them."""
    text = line.decode("utf-8")
    masked = redactor.text(text)
    if masked == text:
        return StoredLine(line, False)
    try:
        obj = json.loads(masked)
    except ValueError:  # a (custom) pattern crossed a string's end: go value by value
        obj = mask_values(redactor, events.to_dict(ev))
    ev.data = obj.get("data", {})
    ev.extra = {k: obj.get(k) for k in ev.extra}  # a producer's own fields
    if isinstance(obj.get("workingDirectory"), str):
        ev.working_directory = obj["workingDirectory"]
    # The summary was cut from the unmasked payload (a cut secret no longer matches
    # its pattern): made again from the masked one.
    if ev.from_hook and isinstance(ev.data, dict):
        ev.summary = events.summarize(ev.event_type, ev.data)
    else:
        ev.summary = obj.get("summary")
    return StoredLine(events.encode_line(ev), True)
