"""Tokens and cost, sans-IO: transcript bytes in, usage records out; records in,
per-model totals and dollars out.

Claude Code writes every model response into the session's transcript (JSONL), one
line per content block: a reply with thinking, text and two tool calls is four lines
with the same ``message.id`` and the same ``usage`` (early lines of a streamed reply
may carry a partial ``output_tokens``). A response is therefore one *record*, keyed by
its message id (``requestId``, then the line's ``uuid``, when there is none), whose
value is the largest usage seen for that key. Records are idempotent: seeing the same
record twice (a line repeated, a file re-read, a resumed session that copies its
history into a new file, two hook runs racing) adds nothing; seeing it grow adds the
growth. That single rule is what makes incremental reading safe.

Three layers, all plain code:

- ``FileState`` + ``read_chunk``: the bytes appended to one transcript since the last
  read -> the records that are new or grew (a partial last line waits for next time).
- ``Ledger``: the daemon-wide memory of what each key has already contributed, so a
  record is turned into a *delta* exactly once, whichever file or machine it came from.
- ``add``/``render``/``cost``: per-model totals (and hourly buckets for charts) in a
  compact form kept on each session, rendered with dollars from a ``PriceTable`` the caller passes in.

Standard library only and no ``import json`` at module level: the hook imports this
module (Redis mode, on Stop/SubagentStop) and passes its own JSON parser.
"""

from __future__ import annotations

# Not ``typing.TYPE_CHECKING``: ``typing`` imports ``re`` (and more) under 3.11, which
# the hook must not pay for. Type checkers treat this name the same way.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from typing import Any

    Prices = dict[str, float]  # a model's prices: field (``PRICE_FIELDS``) -> USD
    Record = list[Any]  # see the layout below
    Row = list[int]  # a model's totals: the six values, then the number of calls
    Usage = dict[str, Any]  # a session's usage: see ``empty``
    Samples = list[tuple[dict[str, str], float | str]]  # (labels, value) for ``/metrics``; a str as written

KINDS = ("input", "output", "cacheRead", "cacheWrite5m", "cacheWrite1h")
# A record on the wire: [key, model, timestampMs, input, output, cacheRead,
#                        cacheWrite5m, cacheWrite1h, webSearches, agentId]
R_KEY, R_MODEL, R_TS, R_TOKENS, R_WEB, R_AGENT = 0, 1, 2, 3, 8, 9
N_VALUES = 6  # the five token kinds and web searches: what a key contributes
# A model's totals: the six values, then the number of model calls.
CALLS = 6

HOUR_MS = 3_600_000
FILE_RECENT_KEYS = 512  # keys a file remembers (splits and nearby repeats)
LEDGER_KEYS = 50_000  # keys the daemon remembers across files

# --- prices ----------------------------------------------------------------------------
# USD per million tokens, from Anthropic's pricing page
# (https://platform.claude.com/docs/en/about-claude/pricing, checked for this release).
# Matched by the longest prefix of the model id (``claude-sonnet-4-5-20250929`` ->
# ``claude-sonnet-4-5``); platform prefixes (``us.anthropic.``) and suffixes
# (``@20250929``, ``-v1:0``, ``[1m]``) do not matter. Override or add models in the
# config's ``pricing.models``. webSearch: USD per 1,000 searches.
_WEB = 10.0


def _p(inp: float, out: float, w5: float, w1: float, read: float) -> Prices:
    return {"input": inp, "output": out, "cacheWrite5m": w5, "cacheWrite1h": w1, "cacheRead": read, "webSearch": _WEB}


DEFAULT_PRICES = {
    # Opus
    "claude-opus-4-5": _p(5, 25, 6.25, 10, 0.50),
    "claude-opus-4-6": _p(5, 25, 6.25, 10, 0.50),
    "claude-opus-4-7": _p(5, 25, 6.25, 10, 0.50),
    "claude-opus-4-8": _p(5, 25, 6.25, 10, 0.50),
    "claude-opus-4-1": _p(15, 75, 18.75, 30, 1.50),
    "claude-opus-4": _p(15, 75, 18.75, 30, 1.50),  # claude-opus-4-20250514
    "claude-opus-5": _p(5, 25, 6.25, 10, 0.50),
    "claude-opus-5-5": _p(4, 20, 5, 8, 0.20),
    "claude-3-opus": _p(15, 75, 18.75, 30, 1.50),
    # Sonnet
    "claude-sonnet-4-6": _p(3, 15, 3.75, 6, 0.30),
    "claude-sonnet-4-5": _p(3, 15, 3.75, 6, 0.30),
    "claude-sonnet-4": _p(3, 15, 3.75, 6, 0.30),  # claude-sonnet-4-20250514
    "claude-sonnet-5": _p(2, 10, 2.50, 4, 0.20),
    "claude-3-7-sonnet": _p(3, 15, 3.75, 6, 0.30),
    "claude-3-5-sonnet": _p(3, 15, 3.75, 6, 0.30),
    # Haiku
    "claude-haiku-4-5": _p(1, 5, 1.25, 2, 0.10),
    "claude-3-5-haiku": _p(0.80, 4, 1, 1.6, 0.08),
    "claude-3-haiku": _p(0.25, 1.25, 0.30, 0.50, 0.03),
}
PRICE_FIELDS = ("input", "output", "cacheWrite5m", "cacheWrite1h", "cacheRead", "webSearch")
# When a configured price gives only input/output: Anthropic's standard multipliers.
_DERIVED = {"cacheWrite5m": 1.25, "cacheWrite1h": 2.0, "cacheRead": 0.1}


def price_problems(models: Any) -> list[str]:
    """What is wrong with a ``pricing.models`` object (for config validation)."""
    out: list[str] = []
    if not isinstance(models, dict):
        return ["expected an object of model id prefix -> prices"]
    for name, entry in models.items():
        if entry is None:
            continue  # null removes a built-in price: that model's cost becomes unknown
        if not isinstance(entry, dict):
            out.append(
                f'{name!r}: expected an object like {{"input": 3, "output": 15}} (USD per million tokens) or null'
            )
            continue
        for field in ("input", "output"):
            if field not in entry:
                out.append(f"{name!r}: {field!r} is required")
        for field, value in entry.items():
            if field not in PRICE_FIELDS:
                out.append(f"{name!r}: unknown field {field!r} (one of {', '.join(PRICE_FIELDS)})")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or value != value:
                out.append(f"{name!r}.{field}: expected a number >= 0, got {value!r}")
    return out


def base_model(model: str) -> str:
    """``us.anthropic.claude-sonnet-4-5-20250929-v1:0`` -> ``claude-sonnet-4-5-20250929``."""
    m = model.strip().lower()
    i = m.find("claude-")
    if i > 0:
        m = m[i:]
    for sep in ("[", "@", ":"):
        m = m.split(sep, 1)[0]
    if m.endswith("-v1") or m.endswith("-v2"):
        m = m[:-3]
    return m


class PriceTable:
    """USD prices by model id prefix: the defaults with ``pricing.models`` layered over
    them. Built once from the config and passed to whatever renders dollars."""

    def __init__(self, models: dict[str, Prices]) -> None:
        self.models = models

    @classmethod
    def from_config(cls, overrides: dict[str, Any] | None = None) -> PriceTable:
        table = dict(DEFAULT_PRICES)
        for name, entry in (overrides or {}).items():
            if entry is None:
                table.pop(name, None)
                continue
            p = {"webSearch": _WEB}
            p.update({k: float(v) for k, v in entry.items()})
            for field, mult in _DERIVED.items():
                p.setdefault(field, p["input"] * mult)
            table[name] = p
        return cls(table)

    def price_for(self, model: str) -> tuple[str, Prices] | tuple[None, None]:
        """(prefix, prices) for a model id, or (None, None): never a guess."""
        table = self.models
        if model in table:
            return model, table[model]
        m = base_model(model)
        best: str | None = None
        for prefix in table:
            p = prefix.lower()
            if m == p or (m.startswith(p) and m[len(p)] in "-_."):
                # A prefix stops at a separator: claude-opus-4 does not match claude-opus-45.
                rest = m[len(p) + 1 :]
                # ...and the rest must be a date/version tag, not another minor version:
                # claude-opus-4 must not price claude-opus-4-5 when that is not in the table.
                if rest and rest.split("-", 1)[0].isdigit() and len(rest.split("-", 1)[0]) < 8:
                    continue
                if best is None or len(p) > len(best):
                    best = prefix
        return (best, table[best]) if best else (None, None)

    def cost(self, values: Row, model: str) -> float | None:
        """USD for one model's totals, or None when the model has no price."""
        _, p = self.price_for(model)
        if p is None:
            return None
        usd = (
            values[0] * p["input"]
            + values[1] * p["output"]
            + values[2] * p["cacheRead"]
            + values[3] * p["cacheWrite5m"]
            + values[4] * p["cacheWrite1h"]
        ) / 1e6
        return usd + values[5] * p.get("webSearch", _WEB) / 1000.0


DEFAULT_TABLE = PriceTable.from_config()


# --- timestamps ------------------------------------------------------------------------
def _days_from_civil(y: int, m: int, d: int) -> int:
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def iso_ms(text: Any) -> int:
    """``2025-10-01T12:34:56.789Z`` -> ms since the epoch (0 when unreadable).
    No ``datetime``: the hook cannot afford its import."""
    try:
        date, _, clock = text.partition("T")
        y, mo, d = (int(x) for x in date.split("-"))
        tz = 0
        for sign in ("Z", "+", "-"):
            i = clock.find(sign)
            if i >= 0:
                if sign != "Z":
                    hh, _, mm = clock[i + 1 :].partition(":")
                    tz = (int(hh) * 60 + int(mm or 0)) * (1 if sign == "+" else -1)
                clock = clock[:i]
                break
        hms = clock.split(":")
        h, mi = int(hms[0]), int(hms[1])
        s = float(hms[2]) if len(hms) > 2 else 0.0
        days = _days_from_civil(y, mo, d)
        return int(((days * 24 + h) * 60 + mi - tz) * 60_000 + s * 1000)
    except (ValueError, AttributeError, IndexError):
        return 0


def day_of(ms: int) -> str:
    """UTC day of a timestamp, ``YYYY-MM-DD`` (civil_from_days)."""
    z = ms // 86_400_000 + 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + (3 if mp < 10 else -9)
    y = yoe + era * 400 + (m <= 2)
    return "%04d-%02d-%02d" % (y, m, d)


# --- transcript lines -> records -------------------------------------------------------
def _int(v: object) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else 0


def record_from(obj: Any) -> Record | None:
    """A transcript line (parsed) -> a record, or None for anything but a model
    response with usage (user lines, tool results, summaries, ``<synthetic>``)."""
    if not isinstance(obj, dict) or obj.get("type") != "assistant":
        return None
    msg = obj.get("message")
    if not isinstance(msg, dict):
        return None
    u = msg.get("usage")
    if not isinstance(u, dict):
        return None
    model = msg.get("model")
    if not isinstance(model, str) or not model:
        model = "unknown"
    if model == "<synthetic>":
        return None  # Claude Code's own placeholder (an error, an interruption): no API call
    key = msg.get("id") or obj.get("requestId") or obj.get("uuid")
    if not isinstance(key, str) or not key:
        return None
    write = _int(u.get("cache_creation_input_tokens"))
    cc: dict[str, Any] = u["cache_creation"] if isinstance(u.get("cache_creation"), dict) else {}
    w1h = _int(cc.get("ephemeral_1h_input_tokens"))
    w5m = _int(cc.get("ephemeral_5m_input_tokens"))
    # Without the breakdown (older Claude Code) every write is a 5-minute one, the
    # default; a breakdown that falls short of the total gives the rest to 5m too.
    w5m = max(w5m, write - w1h)
    stu: dict[str, Any] = u["server_tool_use"] if isinstance(u.get("server_tool_use"), dict) else {}
    agent = obj.get("agentId") if obj.get("isSidechain") and isinstance(obj.get("agentId"), str) else None
    rec: Record = [
        key,
        model,
        iso_ms(obj.get("timestamp")),
        _int(u.get("input_tokens")),
        _int(u.get("output_tokens")),
        _int(u.get("cache_read_input_tokens")),
        w5m,
        w1h,
        _int(stu.get("web_search_requests")),
        agent,
    ]
    if not any(rec[R_TOKENS:R_AGENT]):
        return None
    return rec


def _valid_recent(value: Any) -> dict[str, list[int]]:
    """The ``recent`` keys of a saved state, each with its six values; anything else
    (a damaged or foreign state file) is dropped rather than trusted."""
    if not isinstance(value, dict):
        return {}
    return {
        k: v
        for k, v in value.items()
        if isinstance(k, str)
        and isinstance(v, list)
        and len(v) == N_VALUES
        and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
    }


class FileState:
    """What we know of one transcript: how far it was read, which file that was
    (device, inode, the first bytes), and the last keys it gave with their values."""

    __slots__ = ("offset", "dev", "ino", "head", "recent", "touched")

    def __init__(
        self,
        offset: int = 0,
        dev: int = 0,
        ino: int = 0,
        head: str = "",
        recent: dict[str, list[int]] | None = None,
        touched: int = 0,
    ) -> None:
        self.offset = offset
        self.dev = dev
        self.ino = ino
        self.head = head
        self.recent: dict[str, list[int]] = dict(recent or {})  # key -> its six values
        self.touched = touched

    def to_dict(self) -> dict[str, Any]:
        return {
            "offset": self.offset,
            "dev": self.dev,
            "ino": self.ino,
            "head": self.head,
            "recent": self.recent,
            "touched": self.touched,
        }

    @classmethod
    def from_dict(cls, d: Any) -> FileState:
        if not isinstance(d, dict):
            return cls()
        try:
            return cls(
                int(d.get("offset", 0)),
                int(d.get("dev", 0)),
                int(d.get("ino", 0)),
                str(d.get("head", "")),
                _valid_recent(d.get("recent")),
                int(d.get("touched", 0)),
            )
        except (TypeError, ValueError):
            return cls()

    def observe(self, dev: int, ino: int, size: int, head: str) -> bool:
        """The file as it is opened now: True when it was replaced or truncated since
        the last read (it is then read from the start). Both transcript readers, the
        daemon's and the hook's, call this before reading from ``offset``."""
        replaced = not self.same_file(dev, ino, size, head)
        if replaced:
            self.reset(dev, ino, head)
        self.dev, self.ino = dev, ino
        if len(head) > len(self.head):
            self.head = head
        return replaced

    def skip_unreadable(self, pending: int, budget: int) -> int:
        """A line of ``pending`` bytes longer than a whole read's ``budget`` can never be
        read: step over it. Returns the bytes still pending (0 when skipped)."""
        if budget > 0 and pending >= budget:
            self.offset += pending
            return 0
        return pending

    def same_file(self, dev: int, ino: int, size: int, head: str) -> bool:
        """Is the file at the path still the one we read (not rotated, not truncated,
        not rewritten)? If not, start again from 0."""
        if self.offset == 0 and not self.head:
            return True
        return (self.dev, self.ino) == (dev, ino) and size >= self.offset and head.startswith(self.head[: len(head)])

    def reset(self, dev: int, ino: int, head: str) -> None:
        self.offset, self.dev, self.ino, self.head = 0, dev, ino, head
        # ``recent`` is kept: a rewritten transcript repeats its old responses.


HEAD_BYTES = 64


def head_of(data: bytes) -> str:
    return data[:HEAD_BYTES].hex()


def read_chunk(state: FileState, data: bytes, loads: Callable[[str], Any], at_eof: bool = True) -> list[Record]:
    """Bytes read from ``state.offset`` -> the records that are new or grew.

    Only whole lines are consumed; a partial last line (Claude Code mid-write) stays
    for the next read, unless it is followed by nothing forever: a last line that
    parses as JSON is taken when ``at_eof`` says the file ended there.
    """
    end = data.rfind(b"\n") + 1
    tail = data[end:]
    consumed = end
    lines = data[:end].split(b"\n")
    if at_eof and tail.strip():
        try:
            loads(tail.decode("utf-8"))
            lines.append(tail)
            consumed = len(data)
        except Exception:  # incomplete; json's C scanner may even raise SystemError
            pass
    out: list[Record] = []
    where: dict[str, int] = {}  # key -> its record's index in ``out``
    recent = state.recent
    for line in lines:
        # Cheap filter before parsing: most lines (tool results, prompts) carry no usage.
        if b'"usage"' not in line or b'"assistant"' not in line:
            continue
        try:
            obj = loads(line.decode("utf-8"))
        except Exception:
            continue  # a torn or foreign line: skip it, never stop on it
        rec = record_from(obj)
        if rec is None:
            continue
        key = rec[R_KEY]
        values = rec[R_TOKENS:R_AGENT]
        seen = recent.get(key)
        if seen is not None:
            if all(v <= s for v, s in zip(values, seen, strict=False)):
                recent[key] = recent.pop(key)  # most recent last
                continue
            values = [max(v, s) for v, s in zip(values, seen, strict=False)]
            rec[R_TOKENS:R_AGENT] = values
        recent.pop(key, None)
        recent[key] = list(values)
        at = where.get(key)
        if at is None:
            where[key] = len(out)
            out.append(rec)
        else:
            out[at] = rec  # a response that grew within this read: one record, its largest
    while len(recent) > FILE_RECENT_KEYS:
        del recent[next(iter(recent))]
    state.offset += consumed
    return out


# --- records -> deltas (the daemon, once per key) ------------------------------------
class Ledger:
    """What each response key has contributed so far (bounded: the oldest keys are
    forgotten first). ``take`` turns a record into what it adds now."""

    def __init__(self, cap: int = LEDGER_KEYS) -> None:
        self.cap = cap
        self._seen: dict[str, tuple[int, ...]] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def take(self, rec: Record) -> tuple[list[int], bool] | None:
        """(delta values, is a new call) or None when the record adds nothing."""
        key = rec[R_KEY]
        values = [_int(v) for v in rec[R_TOKENS:R_AGENT]]
        seen = self._seen.pop(key, None)
        if seen is None:
            self._seen[key] = tuple(values)
            if len(self._seen) > self.cap:
                del self._seen[next(iter(self._seen))]
            return values, True
        merged = tuple(max(v, s) for v, s in zip(values, seen, strict=False))
        self._seen[key] = merged
        delta = [m - s for m, s in zip(merged, seen, strict=False)]
        return (delta, False) if any(delta) else None


def valid_record(rec: object) -> bool:
    return (
        isinstance(rec, list)
        and len(rec) >= R_AGENT
        and isinstance(rec[R_KEY], str)
        and isinstance(rec[R_MODEL], str)
        and all(isinstance(v, int) and not isinstance(v, bool) for v in rec[R_TS:R_AGENT])
    )


# --- a session's usage (compact, stored in its meta) ---------------------------------
def empty() -> Usage:
    """``models``: model -> [input, output, cacheRead, cacheWrite5m, cacheWrite1h,
    webSearches, calls]; ``hours``: hour index (ms // 3600000, as text) -> the same per
    model; ``estimate``: what the Agent tool reported when no transcript was read."""
    return {"models": {}, "hours": {}, "estimate": None}


def add(u: Usage, model: str, ts: int, delta: list[int], new_call: bool) -> None:
    for where in (u["models"], u["hours"].setdefault(str(ts // HOUR_MS), {})):
        row = where.get(model)
        if row is None:
            row = where[model] = [0] * (N_VALUES + 1)
        for i in range(N_VALUES):
            row[i] += delta[i]
        row[CALLS] += 1 if new_call else 0


# --- Claude Code's own figures (OpenTelemetry ``api_request``): authoritative ---------
# A session's ``usage["otel"]``: ``{"from": "logs" | "metrics", "models", "hours"}`` with
# rows of the seven values and then ``OTEL_COST``, the cost Claude Code itself reported
# (micro-dollars). When a session has them, its usage is those figures (``source``
# "otel"), not its transcript's priced by the table (``source`` "transcript").
OTEL_COST = 7
# A row as roll-ups add them up (``rows``): the seven values, the cost known from OTel
# (micro-dollars), then the six values that cost covers; the rest is priced by the table.
PAID = 8
WIDE = PAID + N_VALUES


def add_otel(u: Usage, model: str, ts: int, values: list[int], micros: int, calls: int, origin: str) -> None:
    """Add one ``api_request`` (``origin`` "logs") or a metric point of ``cost.usage`` /
    ``token.usage`` (``origin`` "metrics") to a session's OTel usage. Records win over
    metrics: the first record starts the figures over (the metrics counted the same
    requests); metrics after records add nothing."""
    o = u.get("otel")
    if o is None or (origin == "logs" and o.get("from") == "metrics"):
        o = u["otel"] = {"from": origin, "models": {}, "hours": {}}
    elif o.get("from") != origin:
        return
    for where in (o["models"], o["hours"].setdefault(str(ts // HOUR_MS), {})):
        row = where.get(model)
        if row is None:
            row = where[model] = [0] * (OTEL_COST + 1)
        for i in range(N_VALUES):
            row[i] += values[i]
        row[CALLS] += calls
        row[OTEL_COST] += micros


def source_of(u: Usage | None) -> str | None:
    """Where a session's figures come from: "otel", "transcript", or None (nothing)."""
    if not u:
        return None
    if u.get("wide"):
        s = u.get("sources") or {}
        return "mixed" if len(s) > 1 else next(iter(s), None)
    o = u.get("otel")
    if o and o.get("models"):
        return "otel"
    return "transcript" if u.get("models") else None


def _widen(row: Row, otel: bool) -> Row:
    if len(row) >= WIDE:
        return list(row)
    head = list(row[: CALLS + 1]) + [0] * (CALLS + 1 - len(row[: CALLS + 1]))
    if otel:
        return head + [row[OTEL_COST] if len(row) > OTEL_COST else 0] + head[:N_VALUES]
    return head + [0] * (1 + N_VALUES)


def rows(u: Usage) -> tuple[dict[str, Row], dict[str, dict[str, Row]]]:
    """A session's (or a merged) usage as wide rows, by model and by hour, from the
    source that counts (see ``source_of``)."""
    if u.get("wide"):
        return u.get("models", {}), u.get("hours", {})
    o = u.get("otel")
    otel = bool(o and o.get("models"))
    src = o if otel and o is not None else u
    models = {m: _widen(r, otel) for m, r in src.get("models", {}).items()}
    hours = {h: {m: _widen(r, otel) for m, r in ms.items()} for h, ms in src.get("hours", {}).items()}
    return models, hours


def _add_wide(dst: dict[str, Row], src: dict[str, Row]) -> None:
    for model, row in src.items():
        d = dst.setdefault(model, [0] * WIDE)
        for i, v in enumerate(row[:WIDE]):
            d[i] += v


def row_cost(prices: PriceTable, row: Row, model: str) -> float | None:
    """USD of a row: what OTel reported, plus the table's price of the rest (None when
    the rest has tokens of a model without a price)."""
    if len(row) < WIDE:
        return prices.cost(row, model)
    rest = [row[i] - row[PAID + i] for i in range(N_VALUES)]
    known = row[OTEL_COST] / 1e6
    if not any(rest):
        return known
    c = prices.cost(rest, model)
    return None if c is None else c + known


def _paid(row: Row) -> bool:
    """Is the whole row's cost the one OTel reported (nothing left to price)?"""
    return len(row) >= WIDE and not any(row[i] - row[PAID + i] for i in range(N_VALUES))


def merge(usages: Iterable[Usage | None]) -> Usage:
    """Sum several sessions' usage (a parent and its sub-agents; a machine), each from
    the source that counts for it; the result is in wide rows (see ``rows``)."""
    out: Usage = {"wide": True, "models": {}, "hours": {}, "estimate": None, "sources": {}}
    for u in usages:
        if not u:
            continue
        models, hours = rows(u)
        _add_wide(out["models"], models)
        for hour, ms in hours.items():
            _add_wide(out["hours"].setdefault(hour, {}), ms)
        src = source_of(u)
        if src == "mixed":
            for k, n in u["sources"].items():
                out["sources"][k] = out["sources"].get(k, 0) + n
        elif src is not None:
            out["sources"][src] = out["sources"].get(src, 0) + 1
        est = u.get("estimate")
        if est and not models:
            e = out["estimate"] or {"totalTokens": 0, "sessions": 0}
            e["totalTokens"] += est.get("totalTokens") or 0
            e["sessions"] += est.get("sessions") or 1
            out["estimate"] = e
    return out


def totals(models: dict[str, Row], prices: PriceTable) -> dict[str, Any]:
    """Per-model rows -> tokens by kind, calls, and dollars (None if any is unpriced)."""
    tokens = dict.fromkeys(KINDS, 0)
    calls = web = 0
    priced = 0.0
    unpriced: list[str] = []
    per_model: dict[str, dict[str, Any]] = {}
    for model, row in sorted(models.items()):
        c = row_cost(prices, row, model)
        entry: dict[str, Any] = {k: row[i] for i, k in enumerate(KINDS)}
        entry["total"] = sum(row[:5])
        entry.update(
            webSearches=row[5],
            calls=row[CALLS],
            costUsd=None if c is None else round(c, 6),
            pricedAs="otel" if _paid(row) else prices.price_for(model)[0],
        )
        per_model[model] = entry
        for i, k in enumerate(KINDS):
            tokens[k] += row[i]
        web += row[5]
        calls += row[CALLS]
        if c is None:
            if any(row[:N_VALUES]):
                unpriced.append(model)
        else:
            priced += c
    tokens["total"] = sum(tokens[k] for k in KINDS)
    return {
        "tokens": tokens,
        "calls": calls,
        "webSearches": web,
        "models": per_model,
        "costUsd": None if unpriced else round(priced, 6),
        "pricedCostUsd": round(priced, 6),
        "unpricedModels": unpriced,
    }


def render(u: Usage | None, prices: PriceTable) -> dict[str, Any] | None:
    """A session's usage as the API shows it (None: nothing known)."""
    if not u:
        return None
    models, _ = rows(u)
    out = totals(models, prices)
    out["estimate"] = u.get("estimate") if not models else None
    if out["estimate"]:
        out["costUsd"] = None  # only an estimate: the cost is not known
    out["source"] = source_of(u) or "transcript"
    if u.get("wide"):
        out["sources"] = dict(u.get("sources") or {})
    elif out["source"] == "otel":
        o = u["otel"]
        out["otelFrom"] = o.get("from")  # "logs": api_request records; "metrics": cost.usage only
        if u.get("models"):  # what the transcript says, beside it
            t = totals(u["models"], prices)
            out["transcript"] = {"costUsd": t["costUsd"], "calls": t["calls"], "tokens": t["tokens"]["total"]}
    return out


def bucket_rows(u: Usage, since: int = 0, until: int = 1 << 62) -> Iterator[tuple[int, str, Row]]:
    """(hour start ms, model, row) for the hours in [since, until)."""
    for hour, models in rows(u)[1].items():
        try:
            start = int(hour) * HOUR_MS
        except ValueError:
            continue
        if since <= start + HOUR_MS - 1 and start < until:
            for model, row in models.items():
                yield start, model, row


# --- the Agent tool's result (when the sub-agent's transcript is out of reach) -------
def estimate_from_agent_result(out: Any) -> dict[str, Any] | None:
    """``tool_response`` of Agent/Task -> an estimate, or None. Kept apart from the
    measured totals and never priced: it is what the tool reported, not the bill."""
    if not isinstance(out, dict):
        return None
    total = out.get("totalTokens")
    u = out.get("usage") if isinstance(out.get("usage"), dict) else None
    if not isinstance(total, int) and u is None:
        return None
    est: dict[str, Any] = {
        "source": "agentResult",
        "totalTokens": _int(total),
        "durationMs": _int(out.get("totalDurationMs")),
        "toolUses": _int(out.get("totalToolUseCount")),
    }
    if u is not None:
        est["lastCall"] = {
            "input": _int(u.get("input_tokens")),
            "output": _int(u.get("output_tokens")),
            "cacheRead": _int(u.get("cache_read_input_tokens")),
            "cacheWrite": _int(u.get("cache_creation_input_tokens")),
        }
    return est


# --- metrics ---------------------------------------------------------------------------
def usage_metrics(
    machine_usages: Iterable[tuple[str, Usage | None]], prices: PriceTable
) -> list[tuple[str, str, str, Samples]]:
    """Tokens, calls and dollars by machine and model, over the sessions held (they
    fall when sessions are deleted or expire, as a counter does on a restart), as
    (name, help, kind, [(labels, value)]) for the daemon's ``/metrics``."""
    by: dict[tuple[str, str], Row] = {}
    for machine, u in machine_usages:
        if not u:
            continue
        for model, row in rows(u)[0].items():
            dst = by.setdefault((machine, model), [0] * WIDE)
            for i, v in enumerate(row):
                dst[i] += v
    items = sorted(by.items())
    tokens: Samples = [
        ({"machine": m, "model": model, "kind": kind}, row[i])
        for (m, model), row in items
        for i, kind in enumerate(KINDS)
    ]
    calls: Samples = [({"machine": m, "model": model}, row[CALLS]) for (m, model), row in items]
    costs: Samples = []
    unpriced: Samples = []
    for (m, model), row in items:
        c = row_cost(prices, row, model)
        if c is None:
            unpriced.append(({"machine": m, "model": model}, sum(row[:5]) - sum(row[PAID : PAID + 5])))
        else:
            costs.append(({"machine": m, "model": model}, f"{c:.6f}"))
    return [
        (
            "contextuate_tokens_total",
            "Tokens by machine, model and kind (Claude Code's OTel api_request records where a session has them, else its transcripts).",
            "counter",
            tokens,
        ),
        ("contextuate_model_calls_total", "Model responses, by machine and model.", "counter", calls),
        (
            "contextuate_cost_usd_total",
            "Cost in USD by machine and model: Claude Code's own (OTel) where known, else from the price table "
            "(models without a price are left out; see contextuate_unpriced_tokens_total).",
            "counter",
            costs,
        ),
        ("contextuate_unpriced_tokens_total", "Tokens of models the price table does not know.", "counter", unpriced),
    ]


# --- roll-ups for the API -------------------------------------------------------------
GROUPS = ("machine", "model", "day", "hour", "session")


def group(
    sessions: Iterable[tuple[str, str, Usage | None]],
    by: str,
    prices: PriceTable,
    since: int | None = None,
    until: int | None = None,
) -> dict[str, Any]:
    """Usage of ``sessions`` ((session id, machine id, usage) triples) grouped ``by``
    machine, model, UTC day, hour or session; ``since``/``until`` (ms) cut by hour."""
    if by not in GROUPS:
        raise ValueError(f"by must be one of {', '.join(GROUPS)}")
    timed = since is not None or until is not None or by in ("day", "hour")
    lo, hi = since or 0, until if until is not None else 1 << 62
    grouped: dict[str | int | None, dict[str, Row]] = {}  # key -> model -> row
    everything: dict[str, Row] = {}
    for sid, machine, u in sessions:
        if not u:
            continue
        items: Iterator[tuple[int | None, str, Row]]
        if timed:
            items = ((start, model, row) for start, model, row in bucket_rows(u, lo, hi))
        else:
            items = ((None, model, row) for model, row in rows(u)[0].items())
        for start, model, row in items:
            key = {
                "machine": machine,
                "model": model,
                "session": sid,
                "day": None if start is None else day_of(start),
                "hour": start,
            }[by]
            for dst in (
                grouped.setdefault(key, {}).setdefault(model, [0] * WIDE),
                everything.setdefault(model, [0] * WIDE),
            ):
                for i, v in enumerate(row):
                    dst[i] += v
    out: list[dict[str, Any]] = []
    for key, models in grouped.items():
        t = totals(models, prices)
        t["key"] = key
        out.append(t)
    if by in ("day", "hour"):
        out.sort(key=lambda r: r["key"])
    else:
        out.sort(key=lambda r: (-(r["pricedCostUsd"] or 0), -r["tokens"]["total"], str(r["key"])))
    return {"by": by, "since": since, "until": until, "rows": out, "total": totals(everything, prices)}
