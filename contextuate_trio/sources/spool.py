"""The spool source: events the hook could not deliver, ingested once, oldest first.

Each file holds one wire line. A file is removed only after its event is stored; a
crash in between is harmless because the broker drops an id it already has.
"""

from __future__ import annotations

import logging
import os

import trio

from contextuate_trio.core import wire
from contextuate_trio.core.events import EventError
from contextuate_trio.hook.spool import pending
from contextuate_trio.runtime.broker import Broker
from contextuate_trio.runtime.clock import SYSTEM_MINT

log = logging.getLogger("contextuate.spool")

BATCH = 1000


def _set_aside(spool_dir: str, name: str, why: str) -> None:
    bad = os.path.join(spool_dir, "corrupt")
    os.makedirs(bad, mode=0o700, exist_ok=True)
    try:
        os.replace(os.path.join(spool_dir, name), os.path.join(bad, name.lstrip(".")))
    except FileNotFoundError:
        return
    log.warning("spool: %s is not an event (%s); moved to %s", name, why, bad)


async def drain_once(broker: Broker, spool_dir: str) -> int:
    """Ingest what the spool holds now; returns how many events were stored."""
    stored = 0
    names = pending(spool_dir)
    for i in range(0, len(names), BATCH):
        waiting = []
        for name in names[i : i + BATCH]:
            path = os.path.join(spool_dir, name)
            try:
                with open(path, "rb") as f:  # noqa: ASYNC230 - one small local file; a thread per file costs more
                    data = f.read()
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("spool: cannot read %s: %s", name, exc)
                continue
            try:
                event, _, _ = wire.parse_line(data.strip(), source="spool", mint=SYSTEM_MINT)
            except EventError as exc:
                broker.counters["bad_spool_files"] += 1
                _set_aside(spool_dir, name, str(exc))
                continue
            waiting.append((path, await broker.submit(event, track=True)))
            await trio.lowlevel.checkpoint()  # a backlog of files is read without holding the loop
        for path, d in waiting:
            assert d.done is not None  # submitted with track=True
            await d.done.wait()
            if d.ok:
                try:
                    os.unlink(path)
                    stored += 1
                except FileNotFoundError:
                    pass
            elif d.rejected:
                # The daemon cannot handle it (logged there): keep it, but stop retrying.
                broker.counters["bad_spool_files"] += 1
                _set_aside(spool_dir, os.path.basename(path), d.error or "rejected")
    if stored:
        log.info("spool: ingested %d undelivered events", stored)
    return stored


async def run(broker: Broker, spool_dir: str, interval: float = 1.0) -> None:
    """Drain now, then on a timer: hooks spool whenever the daemon is slow or away."""
    while True:
        try:
            await drain_once(broker, spool_dir)
        except OSError as exc:
            log.error("spool: %s", exc)
        await trio.sleep(interval)
