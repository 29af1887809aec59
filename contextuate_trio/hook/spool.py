"""The spool: events the hook could not deliver, one wire line per file.

Written by the hook (a private temp name, then a rename), taken along by a Redis-mode
hook that reaches Redis (a rename claims a file), and drained by the daemon
(``sources.spool``); ``pending`` is what both the daemon and the CLI count.
"""

import posix
import time

from contextuate_trio.hook.paths import SPOOL_NAME, SPOOL_SUFFIX, make_dirs, read_file, write_file

SPOOL_PIGGYBACK = 20  # spooled events a hook that reaches Redis takes along, at most
SPOOL_PIGGYBACK_BYTES = 1 << 20
STALE_CLAIM_SECONDS = 60  # a claimed spool file this old belongs to a hook that died
STALE_TMP_SECONDS = 60  # a temp file this old belongs to a hook that was killed
CLAIM_PREFIX = ".claim-"


def spool_dir(home: str) -> str:
    return home + "/" + SPOOL_NAME


def spool(home: str, line: bytes, event_id: str, ts: int) -> str:
    """Write the line to the spool atomically: a private temp name, then rename."""
    directory = spool_dir(home)
    make_dirs(directory)
    tmp = f"{directory}/.{event_id}.tmp"
    final = f"{directory}/{ts:013d}-{event_id}{SPOOL_SUFFIX}"
    write_file(tmp, line, posix.O_EXCL)
    posix.rename(tmp, final)
    return final


def claim_spooled(home: str, limit: int = SPOOL_PIGGYBACK, max_bytes: int = SPOOL_PIGGYBACK_BYTES):
    """Take the oldest spooled events for this run (rename = claim; a racing hook that
    loses gets ENOENT). Returns ([(claimed_path, original_path, line)], whether older
    events than the new one are left behind: then the new one must wait its turn)."""
    directory = spool_dir(home)
    try:
        listing = posix.listdir(directory)
    except OSError:
        return [], False
    now = time.time()
    for n in listing:  # a claim whose hook died (killed) goes back to the spool
        if n.startswith(CLAIM_PREFIX) and n.endswith(SPOOL_SUFFIX):
            try:
                # ctime: the claim's rename updates it (mtime keeps the spooling time).
                if now - posix.stat(directory + "/" + n).st_ctime > STALE_CLAIM_SECONDS:
                    posix.rename(directory + "/" + n, directory + "/" + n[len(CLAIM_PREFIX) :])
            except OSError:
                pass
    names = sorted(n for n in posix.listdir(directory) if n.endswith(SPOOL_SUFFIX) and not n.startswith("."))
    out = []
    total = 0
    looked = 0
    for name in names[:limit]:
        looked += 1
        path = directory + "/" + name
        claimed = directory + "/" + CLAIM_PREFIX + name
        try:
            posix.rename(path, claimed)
            data = read_file(claimed, max_bytes)
        except OSError:
            continue
        out.append((claimed, path, data.rstrip(b"\n")))
        total += len(data)
        if total >= max_bytes:
            break
    return out, looked < len(names)


def release_spooled(claimed: list, delivered: bool) -> None:
    for tmp, original, _ in claimed:
        try:
            if delivered:
                posix.unlink(tmp)
            else:
                posix.rename(tmp, original)
        except OSError:
            pass


def pending(directory: str) -> list:
    """Spooled files to ingest, oldest first: finished ones, and leftovers of hooks
    that died: a temp file never renamed, a Redis-mode claim never sent or released."""
    try:
        names = posix.listdir(directory)
    except FileNotFoundError:
        return []
    now = time.time()
    out = []
    for name in names:
        if name.endswith(SPOOL_SUFFIX) and not name.startswith("."):
            out.append(name)
            continue
        if name.startswith(CLAIM_PREFIX) and name.endswith(SPOOL_SUFFIX):
            stale = STALE_CLAIM_SECONDS
        elif name.startswith(".") and name.endswith(".tmp"):
            stale = STALE_TMP_SECONDS
        else:
            continue
        try:
            # ctime: a rename (the claim) updates it, mtime keeps the spooling time.
            if now - posix.stat(directory + "/" + name).st_ctime > stale:
                out.append(name)
        except FileNotFoundError:
            pass
    return sorted(out)


def backlog(home: str) -> int:
    """Spooled events not yet ingested (for status, metrics and doctor)."""
    return len(pending(spool_dir(home)))
