"""``/api/search``: events across sessions by text, machine, type, tool, session, time.

Stored lines are matched as text first and parsed only when they may be a hit; the
search yields to the event loop between blocks, and a regex runs with a timeout (the
``regex`` package: ``re`` cannot be stopped), so no query can freeze ingest.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import attrs
import regex
import trio
import trio.lowlevel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from contextuate_trio.core.sessions import Session
from contextuate_trio.runtime.store import FileStore
from contextuate_trio.web.params import BadParam, csv_param, error, events_response, int_param
from contextuate_trio.web.state import state_of

SEARCH_MAX = 2000
REGEX_TIMEOUT_S = 0.05  # one stored event; a pattern slower than this is refused


@attrs.define
class Query:
    limit: int
    t_from: int | None
    t_to: int | None
    matcher: Callable[[str], object] | None
    machines: set[str]
    types: set[str]
    tools: set[str]
    only: set[str]

    def session_may_match(self, s: Session) -> bool:
        if self.machines and s.machine_id not in self.machines:
            return False
        if self.only and s.session_id not in self.only and (s.parent_session_id or "") not in self.only:
            return False
        if self.t_from is not None and (s.last_event_time or 0) < self.t_from:
            return False
        return not (self.t_to is not None and (s.start_time or 0) > self.t_to)

    def event_matches(self, e: dict) -> bool:
        ts = e.get("timestamp") or 0
        if (self.t_from is not None and ts < self.t_from) or (self.t_to is not None and ts > self.t_to):
            return False
        if self.types and e.get("eventType") not in self.types:
            return False
        return not (self.tools and e.get("toolName") not in self.tools)


def _matcher(request: Request) -> Callable[[str], object] | None:
    text = (request.query_params.get("q") or "").strip()
    if not text:
        return None
    if request.query_params.get("regex") in ("1", "true"):
        try:
            rx = regex.compile(text, regex.IGNORECASE)
        except regex.error as exc:
            raise BadParam(f"bad regex: {exc}") from None
        return lambda hay: rx.search(hay, timeout=REGEX_TIMEOUT_S)
    needle = text.lower()
    return lambda hay: needle in hay.lower()


def parse_query(request: Request) -> Query:
    return Query(
        limit=int_param(request, "limit", 200, lo=1, hi=SEARCH_MAX) or 1,
        t_from=int_param(request, "from"),
        t_to=int_param(request, "to"),
        matcher=_matcher(request),
        machines=csv_param(request, "machine"),
        types=csv_param(request, "type"),
        tools=csv_param(request, "tool"),
        only=csv_param(request, "session"),
    )


@attrs.define
class Scan:
    found: list[dict] = attrs.Factory(list)
    scanned: int = 0
    truncated: bool = False


async def _scan_session(store: FileStore, s: Session, q: Query, scan: Scan) -> None:
    """Newest first, at most ``q.limit`` hits from one session."""
    hits: list[dict] = []
    for lines in store.raw_blocks(
        s.session_id, before=None if q.t_to is None else q.t_to + 1, after=None if q.t_from is None else q.t_from - 1
    ):
        for raw in reversed(lines):
            scan.scanned += 1
            if q.matcher is not None and not q.matcher(raw.decode("utf-8", "replace")):
                continue
            try:
                e = json.loads(raw)
            except ValueError:
                continue
            if q.event_matches(e):
                hits.append(e)
                if len(hits) >= q.limit:
                    break
        await trio.lowlevel.checkpoint()  # let ingest and other clients run between blocks
        if len(hits) >= q.limit:
            scan.truncated = True
            break
    scan.found.extend(hits)


async def _scan(store: FileStore | None, candidates: list[Session], q: Query, scan: Scan) -> None:
    if store is not None:
        for s in candidates:
            await _scan_session(store, s, q, scan)


async def search(request: Request) -> Response:
    st = state_of(request)
    try:
        q = parse_query(request)
    except BadParam as exc:
        return error(str(exc), 400)
    candidates = [s for s in st.broker.manager.sessions.values() if q.session_may_match(s)]
    candidates.sort(key=lambda s: s.last_event_time or 0, reverse=True)
    scan = Scan()
    try:
        await _scan(st.broker.store, candidates, q, scan)
    except TimeoutError:
        return error("the regex takes too long on stored events; simplify it", 400)
    found = sorted(scan.found, key=lambda e: e.get("timestamp") or 0, reverse=True)
    if len(found) > q.limit:
        scan.truncated = True
        found = found[: q.limit]
    return events_response(
        {
            "events": found,
            "count": len(found),
            "truncated": scan.truncated,
            "sessionsScanned": len(candidates),
            "eventsScanned": scan.scanned,
        }
    )


ROUTES = [Route("/api/search", search)]
