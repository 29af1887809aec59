"""An event's stored form: secrets masked, text made valid UTF-8. Plain code, no I/O.

What is masked is masked everywhere at once: in the line that goes to disk and to
browsers, in the event object, and in the text the sessions took from it (their last
summary, a sub-agent's description), so nothing downstream holds the secret.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import NamedTuple

from contextuate_trio.core import events
from contextuate_trio.core.events import Event
from contextuate_trio.core.redact import Redactor, mask_values
from contextuate_trio.core.sessions import Session


class StoredLine(NamedTuple):
    line: bytes  # the event's JSON and a newline
    masked: bool  # some secret was masked in it


def stored_line(redactor: Redactor, ev: Event, sessions: Iterable[Session]) -> StoredLine:
    """The event as it is stored and sent (see the module doc)."""
    return masked_line(redactor, ev, sessions, events.encode(ev) + b"\n")


def masked_line(redactor: Redactor, ev: Event, sessions: Iterable[Session], line: bytes) -> StoredLine:
    """``line`` (the event's encoding) with its secrets masked, in it and in ``ev``
    and ``sessions`` alike. The broker calls it only for the lines of a batch that
    ``Redactor.suspects`` names: most events hold no marker of a secret."""
    text = line.decode("utf-8")
    masked = redactor.text(text)
    if masked == text:
        return StoredLine(line, False)
    old_summary = ev.summary
    try:
        obj = json.loads(masked)
    except ValueError:  # a (custom) pattern crossed a string's end: go value by value
        obj = mask_values(redactor, events.to_dict(ev))
    ev.data = obj.get("data", {})
    # The summary was cut from the unmasked payload (a cut secret no longer matches
    # its pattern): made again from the masked one.
    if ev.from_hook and isinstance(ev.data, dict):
        ev.summary = events.summarize(ev.event_type, ev.data)
    else:
        ev.summary = obj.get("summary")
    _mask_sessions(redactor, sessions, old_summary, ev.summary)
    return StoredLine(events.encode(ev) + b"\n", True)


def _mask_sessions(redactor: Redactor, sessions: Iterable[Session], old_summary: object, new_summary: object) -> None:
    mask = redactor.text
    for s in sessions:
        if s.last_summary is not None and s.last_summary == old_summary:
            s.last_summary = new_summary if isinstance(new_summary, str) else None
        elif s.last_summary:
            s.last_summary = mask(s.last_summary)
        s.description = mask(s.description) if s.description else s.description
        for spawn in s.pending_spawns:
            if isinstance(spawn.get("description"), str):
                spawn["description"] = mask(spawn["description"])
