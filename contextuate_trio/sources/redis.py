"""The Redis source: many machines' hooks, one or several monitors, nothing lost.

Each machine's hook appends to its own stream, ``<redis.stream>:{<machineId>}``, and
adds its id to the registry set ``<redis.stream>:machines`` (see ``hook.resp``). This
monitor reads, with one XREAD, every registered stream and the legacy single stream
``<redis.stream>`` (producers from before per-machine streams), and finds new
machines without a restart (the registry is read again every ``SURVEY_S``). Three
tasks overlap, so the next read is in flight while the broker stores the last one:

    fetch (worker thread: XREAD + parsing) -> submit (to the broker) -> commit

and a stream's checkpoint (on disk, one per stream) advances only once its events
are stored: a monitor that was down catches up, and every monitor gets every event.
(Each stream's state is its own ``Stream``: with Redis Cluster, the streams of one node
are read by one such fetch loop, one loop per node; the hash tag keeps each machine's
stream whole in one slot.)

A machine's stream says who sent it: an event without a machine id gets the
stream's; one claiming another machine is refused and counted (``spoofed``), so an
ACL user allowed only its own stream cannot pass as another machine. Events from the
legacy stream and the channel keep their own machine id.

No silent loss: with each survey, ``XINFO STREAM`` tells how many entries were ever
added to a stream and which is the first still held; with the count of entries
before this monitor's checkpoint (kept with it), the entries trimmed before they were
read are counted exactly, per machine, and once (the position up to which they are
counted is kept with the checkpoint too; ``missed``: health is degraded, and it is
logged). A monitor that never ran (no checkpoint file) starts from each stream's first
entry and counts nothing trimmed before it existed; a stream younger than its
checkpoint (Redis lost it) is a loss of unknown size.

Registry members are machine names (``config.MACHINE_NAME_RE``, as ``fleet``), at most
``MAX_MACHINES``. A user without +smembers or +xinfo still reads (the legacy stream and
the machines known): what to grant is logged once and shown in health. The channel (``redis.channel``) is for producers that only PUBLISH (the
original Node hook, ``redis-cli``): a machine that has a stream of its own is heard
there only, once a survey or a read has seen that stream (an event that arrives both
ways is one event, same id; the channel copies ignored are counted).

Connection problems are retried with exponential backoff and jitter, forever; the
state (with the last error and the attempt count) is in ``/api/health`` and ``status``.

Answers from the dashboard (``runtime.decisions``): a machine's event that says its
hook waits (``decide``, a permission prompt) opens a request once it is stored, for
what is left of that wait since the entry reached Redis (none after an outage: not
offered). The hook waits with ``BLPOP <stream>:{<machine>}:answer:<event id>``; the
monitor that answers first takes ``<that key>:taken`` (``SET NX``) and ``LPUSH``es the
answer there; any other monitor finds it taken (409). Every monitor offers the request.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio.to_thread
import redis
import trio

from contextuate_trio.config import MACHINE_NAME_RE, RedisConfig
from contextuate_trio.core import events, wire
from contextuate_trio.core.decisions import Refused
from contextuate_trio.core.events import Mint
from contextuate_trio.hook.paths import uuid4_text, write_atomic
from contextuate_trio.hook.resp import answer_key, machine_stream, registry_key
from contextuate_trio.runtime.broker import Broker, Delivery
from contextuate_trio.runtime.clock import now_ms
from contextuate_trio.runtime.decisions import Decisions

log = logging.getLogger("contextuate.redis")

READ_COUNT = 5000  # entries per XREAD, shared among the streams read (each gets MIN_COUNT at least)
MIN_COUNT = 50
SUBMIT_CHUNK = 512  # events per submit_many (the broker's batches hold whole submissions, ~1,024)
# Give a claim back only if it is still this one (``AnswerWaiter.release``). The
# monitor's user needs +eval, and +get +del on the answer keys (docs/redis-setup.md).
GIVE_BACK = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
RELEASE_WAIT_S = 1.0
BLOCK_MS = 1000
SURVEY_S = 2.0  # how often the registry and each stream's XINFO are read
SURVEY_SOON_S = 0.2  # sooner when the channel hears from a machine not known yet
SOCKET_TIMEOUT = 5.0
BACKOFF_MIN, BACKOFF_MAX = 0.5, 30.0
SAVE_EVERY_S = 0.5  # the checkpoint file is written at most this often (and when reads go quiet)
LOGGED_MAX = 20  # bad or spoofed messages logged one by one (then only counted)
CLUSTER_IDLE_S = 0.2  # a cluster cannot block on many slots: idle reads wait this long, or for the channel
MAX_MACHINES = 10_000  # registry members read (the rest are logged, not read)
# A waiting hook's event that reached Redis this much after it happened was spooled
# (sent by a later run): nobody waits for its answer.
SPOOLED_AFTER_MS = 60_000

# The worker thread's ids for events that come without one (the daemon's pool of
# random bytes is not shared between threads).
THREAD_MINT = Mint(new_id=lambda: uuid4_text(bytearray(os.urandom(16))), now_ms=now_ms)


# What a lost, refused or unreachable Redis (or cluster) raises: retried with back-off.
# A cluster's own errors (no seed answers, a slot not covered) are not RedisErrors.
CONNECTION_ERRORS = (redis.RedisError, redis.exceptions.RedisClusterException, OSError)


def backoff(attempt: int) -> float:
    """Exponential, capped, with full jitter (so monitors do not reconnect in step)."""
    ceiling = min(BACKOFF_MAX, BACKOFF_MIN * (2 ** max(attempt - 1, 0)))
    return random.uniform(ceiling / 2, ceiling)


def client_kwargs(cfg: RedisConfig) -> dict:
    kw: dict = dict(socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=3.0, health_check_interval=10)
    if cfg.url:
        kw["url"] = cfg.url
    else:
        kw.update(host=cfg.host, port=cfg.port, db=cfg.db, password=cfg.password, username=cfg.username, ssl=cfg.tls)
    if cfg.tls or (cfg.url or "").startswith("rediss://"):
        kw.update(ssl_ca_certs=cfg.tls_ca_file, ssl_certfile=cfg.tls_cert_file, ssl_keyfile=cfg.tls_key_file)
    return kw


def make_client(cfg: RedisConfig, **overrides: Any) -> Any:
    """A redis-py client: ``redis.Redis``, or ``redis.RedisCluster`` for a cluster
    (its commands are the same; multi-key commands must stay in one slot);
    ``overrides`` replace ``client_kwargs`` (timeouts, retries)."""
    if cfg.is_cluster:
        return _cluster_client(cfg, overrides)
    kw = {**client_kwargs(cfg), **overrides}
    url = kw.pop("url", None)
    _drop_tls_files(kw, url)
    return redis.Redis.from_url(url, **kw) if url else redis.Redis(**kw)


def _drop_tls_files(kw: dict, url: str | None) -> None:
    if not kw.get("ssl") and not (url or "").startswith("rediss://"):
        for k in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
            kw.pop(k, None)


def node_kwargs(cfg: RedisConfig, **overrides: Any) -> dict:
    """What every node of a cluster is connected with: credentials, TLS, timeouts
    (from ``url`` too), but no host, port or db (a cluster has only db 0)."""
    kw = {**client_kwargs(cfg), **overrides}
    url = kw.pop("url", None)
    for k in ("db", "host", "port"):
        kw.pop(k, None)
    if url:
        parsed = redis.connection.parse_url(url)
        kw.update(username=parsed.get("username"), password=parsed.get("password"), ssl=url.startswith("rediss://"))
    _drop_tls_files(kw, None)
    return kw


def _cluster_client(cfg: RedisConfig, overrides: dict) -> redis.RedisCluster:
    """Seeds from ``redis.nodes``, else the url's or host's node. redis-py follows
    MOVED/ASK and finds a promoted replica itself; its retries stay few, as ours
    (with back-off) are around every loop."""
    kw = node_kwargs(cfg, **overrides)
    kw.update(cluster_error_retry_attempts=2, require_full_coverage=False)
    seeds = cfg.seed_nodes()
    if cfg.url and not cfg.nodes:
        parsed = redis.connection.parse_url(cfg.url)
        seeds = [(parsed.get("host") or "localhost", int(parsed.get("port") or 6379))]
    return redis.RedisCluster(startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in seeds], **kw)


def describe(cfg: RedisConfig) -> str:
    """Where this config reads from, without credentials (also the checkpoints' key)."""
    if cfg.nodes:
        return f"{'rediss' if cfg.tls else 'redis'}-cluster://{','.join(sorted(cfg.nodes))}"
    if cfg.url:
        scheme, _, rest = cfg.url.partition("://")
        where = f"{scheme}://{rest.rpartition('@')[2]}"
    else:
        where = f"{'rediss' if cfg.tls else 'redis'}://{cfg.host}:{cfg.port}/{cfg.db}"
    return where.replace("://", "-cluster://", 1) if cfg.cluster else where


def checkpoint_scope(cfg: RedisConfig) -> str:
    """What a stream's checkpoint is kept under: the server, or for a cluster the word
    itself (its seed list may change: a checkpoint keyed by it would be lost, and
    every trimmed entry counted as missed)."""
    return "redis-cluster" if cfg.is_cluster else describe(cfg)


def _explain(exc: Exception) -> str:
    if isinstance(exc, redis.AuthenticationError) or "WRONGPASS" in str(exc) or "NOAUTH" in str(exc):
        return f"authentication failed ({exc}); check redis.username/redis.password"
    if isinstance(exc, redis.TimeoutError):
        return f"no answer within {SOCKET_TIMEOUT:.0f} s (Redis hung or unreachable)"
    return f"{type(exc).__name__}: {exc}"


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def parse_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return 0, 0


def _single(group: BaseExceptionGroup) -> BaseException:
    """The first Redis or connection error in a nursery's group; the group itself if
    anything else is in it."""
    leaves: list[BaseException] = []
    todo: list[BaseException] = [group]
    while todo:
        e = todo.pop()
        if isinstance(e, BaseExceptionGroup):
            todo += reversed(e.exceptions)
        else:
            leaves.append(e)
    if leaves and all(isinstance(e, CONNECTION_ERRORS) for e in leaves):
        return leaves[0]
    return group


def checkpoint_file(persistence_dir: str) -> str:
    return os.path.join(persistence_dir, "redis-checkpoints.json")


class Stream:
    """One stream this monitor reads: where it has read to, what it has stored, and
    what it knows of the entries it never got.

    ``pos`` is the number of entries ever added to the stream up to and including
    the checkpoint (read or trimmed): with XINFO's ``entries-added`` it makes the
    count of trimmed entries exact. None: not known (a checkpoint from an older
    version, or Redis before 7)."""

    __slots__ = (
        "key",
        "name",
        "machine",
        "read_id",
        "read_pos",
        "stored_id",
        "stored_pos",
        "read",
        "spoofed",
        "missed",
        "missed_unknown",
        "added",
        "last_seen",
        "length",
        "counted",
        "seen",
        "fresh",
        "exists",
    )

    def __init__(
        self,
        key: bytes,
        machine: str | None,
        checkpoint: str,
        pos: int | None,
        counted: int | None = None,
        fresh: bool = False,
    ) -> None:
        self.key = key
        self.name = _text(key)
        self.machine = machine  # None: the legacy stream (each event names its machine)
        self.read_id, self.read_pos = checkpoint, pos
        self.stored_id, self.stored_pos = checkpoint, pos
        # Every entry up to this position is accounted for (read, or counted missed):
        # kept with the checkpoint, so a rewind or a restart does not count a gap twice.
        self.counted = counted
        self.seen = 0  # the furthest position read this run (re-read after a rewind)
        # This monitor never had a checkpoint file: entries trimmed before it existed
        # were never its to read (it starts from the first entry, counting nothing).
        self.fresh = fresh
        self.exists = False  # XINFO (or XREAD) has seen the stream
        self.read = 0  # entries read this run
        self.spoofed = 0  # events refused for claiming another machine
        self.missed = 0  # entries trimmed before this monitor read them (this run)
        self.missed_unknown = False  # a loss of unknown size (no ``pos``)
        self.added: int | None = None  # XINFO's entries-added, at the last survey
        self.last_seen: int | None = None  # ms of the newest entry (Redis's clock)
        self.length: int | None = None

    @property
    def lag(self) -> int | None:
        """Entries not read yet: those the last survey saw, less what was read since."""
        if self.added is None or self.read_pos is None:
            return None
        return max(self.added - self.read_pos, 0)

    def rewind(self) -> None:
        """A new connection reads again from what is stored (the rest is re-read;
        the broker drops the copies)."""
        if self.read_pos is not None:
            self.seen = max(self.seen, self.read_pos)
        self.read_id, self.read_pos = self.stored_id, self.stored_pos

    def info(self) -> dict:
        return {
            "stream": self.name,
            "machineId": self.machine,
            "checkpoint": self.stored_id,
            "read": self.read,
            "lag": self.lag,
            "length": self.length,
            "missed": self.missed,
            "missedUnknown": self.missed_unknown,
            "spoofed": self.spoofed,
            "lastSeen": self.last_seen,
        }

    # --- XINFO STREAM: trimmed entries and lag --------------------------------------------
    def account(self, xinfo: dict) -> int:
        """Update from ``XINFO STREAM`` taken while nothing is being read; returns the
        number of entries found trimmed before they were read."""
        self.exists = True
        self.length = int(xinfo.get("length") or 0)
        first = xinfo.get("first-entry")
        first_id = parse_id(_text(first[0])) if first else None
        last_gen = parse_id(_text(xinfo.get("last-generated-id") or b"0-0"))
        if first_id is None:
            last = None
        else:
            last_entry = xinfo.get("last-entry")
            last = parse_id(_text(last_entry[0])) if last_entry else None
        if last is not None:
            self.last_seen = max(self.last_seen or 0, last[0])
        added = xinfo.get("entries-added")
        here = parse_id(self.read_id)
        fresh, self.fresh = self.fresh, False
        if here > last_gen:  # the stream is younger than the checkpoint: Redis lost it, or it was deleted
            log.warning(
                "[Redis] %s restarted below this monitor's checkpoint %s: reading it again "
                "(an unknown number of its events may have been lost with it)",
                self.name,
                self.read_id,
            )
            self.read_id = "0"
            here = (0, 0)
            self.missed_unknown = True
            self.seen = 0
            # What the new stream trimmed is part of that loss of unknown size.
            self.read_pos = max(added - self.length, 0) if isinstance(added, int) else 0
            self.counted = self.read_pos
            fresh = True  # nothing more to count for this survey
        if not isinstance(added, int):  # Redis before 7: no counts
            self.added = None
            return 0
        self.added = added
        if self.read_pos is not None and added < self.read_pos:  # recreated since
            self.read_pos = 0
            self.seen = 0
        if self.counted is not None and added < self.counted:
            self.counted = None
        trimmed_past_us = (first_id is None and here < last_gen) or (first_id is not None and first_id > here)
        done = max(self.read_pos or 0, self.counted or 0, self.seen)  # read or counted already
        gone = 0
        if self.read_pos is None:
            if trimmed_past_us:
                self.missed_unknown = True
                log.warning(
                    "[Redis] %s: entries after this monitor's checkpoint %s were trimmed before it read them "
                    "(how many is not known: the checkpoint is from an older version)",
                    self.name,
                    self.read_id,
                )
                self.read_pos = added - self.length
            elif here == last_gen:
                self.read_pos = added
        elif trimmed_past_us:
            if fresh and self.read_id == "0":
                if added - self.length > done:
                    log.info(
                        "[Redis] %s: reading from its first entry; the %d trimmed before this monitor first ran "
                        "are not counted as missed",
                        self.name,
                        added - self.length - done,
                    )
            else:
                gone = added - self.length - done
            self.read_pos = added - self.length
        elif here == last_gen:
            gone = added - done  # trims that raced a read
            self.read_pos = added
        if self.read_pos is not None and trimmed_past_us:
            self.counted = max(self.counted or 0, self.read_pos)
        gone = max(gone, 0)
        self.missed += gone
        return gone


class Part:
    """What one XREAD gave from one stream, parsed (in the worker thread)."""

    __slots__ = ("stream", "last_id", "pos", "events", "bad", "spoofed", "n", "waits")

    def __init__(self, stream: Stream, last_id: str, pos: int | None, n: int) -> None:
        self.stream = stream
        self.last_id = last_id
        self.pos = pos
        self.n = n
        self.events: list[events.Event] = []
        self.bad: list[tuple[str, Any]] = []
        self.spoofed: list[str] = []
        # Events whose hook waits for an answer: id -> (its ``decide``, the entry's ms).
        self.waits: dict[str, tuple[Any, int]] = {}


def entry_line(fields: Any) -> Any:
    """A stream entry's event: its field ``data`` (``event`` for older producers, else
    the first field), from the fields as Redis sends them (``[name, value, ...]``) or
    as a dict."""
    if isinstance(fields, list):
        if len(fields) >= 2 and fields[0] == b"data":
            return fields[1]
        fields = dict(zip(fields[::2], fields[1::2], strict=False))
    if isinstance(fields, dict):
        return fields.get(b"data") or fields.get(b"event") or next(iter(fields.values()), b"")
    return fields


def raw_xread(response: Any, **_options: Any) -> list:
    """XREAD's reply as Redis sent it, ``[[key, [[id, [field, value, ...]], ...]], ...]``
    (a RESP3 map made a list): redis-py's own parsing builds a dict per entry, which
    cost more than the rest of the read here (15.7 against 2.7 µs an entry with hiredis)."""
    if not response:
        return []
    return [list(kv) for kv in response.items()] if isinstance(response, dict) else response


def decode(raw: Any, mint: Mint) -> events.Event:
    """One message (a stream entry's fields, or a channel message) as an event."""
    return decode_entry(raw, mint)[0]


def decode_entry(raw: Any, mint: Mint) -> tuple[events.Event, Any]:
    """``decode``, and how long its hook waits for an answer (``decide``; None mostly)."""
    raw = entry_line(raw)
    try:
        obj = wire.loads(raw)
        return wire.to_event(obj, source="redis", mint=mint), obj.get("decide") if isinstance(obj, dict) else None
    except TypeError as exc:
        raise events.EventError(str(exc)) from None


class AnswerWaiter:
    """``runtime.decisions.Waiter`` for a hook that waits on its answer key: the first
    monitor to take ``<key>:taken`` pushes the answer (in a worker thread, with the
    source's client); the others are told another monitor answered first. The keys
    expire after the hook's wait. No answer: nothing to do (the hook's BLPOP times out)."""

    __slots__ = ("source", "key", "event_id", "px", "_claim_value")

    def __init__(self, source: RedisSource, key: str, event_id: str, px: int) -> None:
        self.source, self.key, self.event_id, self.px = source, key, event_id, max(int(px), 1)
        self._claim_value: str | None = None  # the value of this waiter's last claim

    def _client(self) -> Any:
        client = self.source.answer_client
        if client is None:
            raise Refused(503, "not answered: this monitor is not connected to Redis")
        return client

    async def claim(self) -> bool:
        """Take ``<key>:taken`` (SET NX): False when another monitor took it first.
        Its value names this monitor, the event and this claim; a claim not given
        back (its release failed) is taken again as it is. An earlier claim of this
        monitor's that may still be given back (its release timed out) is a 503,
        not another monitor's answer: the request stays open."""
        client = self._client()
        mine = self._claim_value = (
            self._claim_value or f"{self.source.monitor_id}#{os.urandom(4).hex()} {self.event_id}"
        )
        ours = f"{self.source.monitor_id}#"

        def take() -> bool:
            taken = self.key + ":taken"
            if client.set(taken, mine, nx=True, px=self.px):
                return True
            held = _text(client.get(taken))
            if held != mine and held.startswith(ours):
                raise Refused(503, "not answered: an earlier answer from here is still being given back; try again")
            return held == mine  # a retried SET whose first reply was lost finds its own value: still ours

        try:
            return await anyio.to_thread.run_sync(take)
        except CONNECTION_ERRORS as exc:
            raise Refused(503, f"not answered: Redis unreachable ({_explain(exc)})") from None

    async def send(self, output: dict) -> bool:
        """Pushed for the hook's BLPOP (whether it still waits, Redis cannot say)."""
        line = wire.answer(self.event_id, output)

        def push() -> None:
            pipe = self._client().pipeline(transaction=False)
            pipe.lpush(self.key, line)
            pipe.pexpire(self.key, self.px)
            pipe.execute()

        try:
            await anyio.to_thread.run_sync(push)
        except (Refused, *CONNECTION_ERRORS) as exc:
            log.warning("answer %s recorded but not pushed to Redis: %s", self.event_id, exc)
            return False
        return True

    async def release(self) -> None:
        """Delete ``<key>:taken`` if it still holds this waiter's claim, in one script
        (a DEL retried after a lost reply, or sent after a failover, could otherwise
        delete another monitor's claim taken in between). Best effort, at most
        RELEASE_WAIT_S: a claim that stays expires with the hook's wait."""
        # Forgotten before the call: once it is sent it may still run, and a new claim
        # must not share its value (a cancel from outside included). Kept again only
        # when the call failed in its thread (it will not run later).
        mine, self._claim_value = self._claim_value, None
        if mine is None:
            await trio.lowlevel.checkpoint()
            return
        taken = self.key + ":taken"

        def give_back() -> None:
            self._client().eval(GIVE_BACK, 1, taken, mine)

        with trio.move_on_after(RELEASE_WAIT_S) as waited:
            try:
                await anyio.to_thread.run_sync(give_back, abandon_on_cancel=True)
            except (Refused, *CONNECTION_ERRORS) as exc:
                self._claim_value = mine  # not given back: an answer from here may take it again
                log.warning("answer %s: its claim stays in Redis until the hook's wait ends: %s", self.event_id, exc)
        if waited.cancelled_caught:
            log.warning("answer %s: Redis did not answer; its claim stays until the hook's wait ends", self.event_id)

    def close(self) -> None:
        pass


class RedisSource:
    def __init__(
        self, broker: Broker, cfg: RedisConfig, checkpoint_path: str, decisions: Decisions | None = None
    ) -> None:
        self.broker = broker
        self.cfg = cfg
        self.decisions = decisions if decisions is not None and decisions.enabled else None
        # Who took an answer key (``AnswerWaiter``): this host, this process, this run.
        self.monitor_id = f"{os.uname().nodename}/{os.getpid()}/{os.urandom(4).hex()}"
        self.answer_client: Any = None  # the stream loop's client, while it is connected
        self.checkpoint_path = checkpoint_path
        self.server = describe(cfg)
        self.scope = checkpoint_scope(cfg)
        self.registry = registry_key(cfg.stream).encode()
        self._fresh = not os.path.exists(checkpoint_path)  # never ran: see Stream.fresh
        self._saved = self._load_checkpoints()
        legacy = cfg.stream.encode()
        self.legacy = Stream(legacy, None, *self._checkpoint_of(legacy), fresh=self._fresh)
        self.streams: dict[bytes, Stream] = {legacy: self.legacy}
        self.machines: dict[str, Stream] = {}  # machine id -> its own stream
        self.state = {"stream": "connecting", "channel": "connecting"}
        self.error: str | None = None
        self.attempts = {"stream": 0, "channel": 0}
        self._logged = {"bad": 0, "spoofed": 0, "xinfo": 0, "save": 0, "names": 0, "cap": 0, "ignored": 0}
        self._denied: dict[str, str] = {}  # "smembers" / "xinfo" -> Redis's refusal
        self._last_save = 0.0
        self._survey_soon = False  # the channel heard a machine not known yet
        self._channel_only: set[str] = set()  # machines heard on the channel with no stream
        self._wake = trio.Event()  # set by the channel: something was published

    @property
    def last_id(self) -> str:
        return self.legacy.stored_id

    # --- what health, status and /api/machines show ---------------------------------------
    def connected(self) -> bool:
        return all(v == "connected" for v in self.state.values())

    def info(self) -> dict:
        return {
            "url": self.server,
            "stream": self.cfg.stream,
            "channel": self.cfg.channel,
            "state": dict(self.state),
            "attempts": dict(self.attempts),
            "lastError": self.error,
            "checkpoint": self.legacy.stored_id,
            "streams": len(self.streams),
            "missed": sum(s.missed for s in self.streams.values()),
            "spoofed": self.broker.counters["redis_spoofed"],
        }

    def stream_infos(self) -> list[dict]:
        """Every stream read: the legacy one first, then the machines' by name."""
        return [self.legacy.info()] + [self.machines[m].info() for m in sorted(self.machines)]

    def problems(self) -> list[str]:
        out = []
        for s in [self.legacy, *self.machines.values()]:
            who = f"machine {s.machine}" if s.machine is not None else f"the legacy stream {s.name}"
            if s.missed:
                out.append(
                    f"redis: {s.missed} events from {who} were trimmed from {s.name} before this monitor read them "
                    f"(raise redis.streamMaxLen)"
                )
            elif s.missed_unknown:
                out.append(
                    f"redis: an unknown number of events from {who} were trimmed or lost from {s.name} "
                    "before this monitor read them"
                )
        if "smembers" in self._denied:
            out.append(
                "redis: cannot list machines: grant +smembers to this monitor's Redis user "
                f"(reading only the legacy stream and the machines already known; {self._denied['smembers']})"
            )
        if "xinfo" in self._denied:
            out.append(
                "redis: cannot count events trimmed before this monitor read them: grant +xinfo to this "
                f"monitor's Redis user ({self._denied['xinfo']})"
            )
        return out

    # --- the checkpoints ------------------------------------------------------------------
    def _load_checkpoints(self) -> dict:
        try:
            with open(self.checkpoint_path) as f:
                data = json.load(f)
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _checkpoint_of(self, key: bytes) -> tuple[str, int | None, int | None]:
        """(entry id, pos, counted) for a stream; an older version's bare id has no pos."""
        value = self._saved.get(f"{self.scope}#{_text(key)}")
        if isinstance(value, str):
            return value, None, None
        if isinstance(value, dict) and isinstance(value.get("id"), str):
            pos, counted = (
                v if isinstance(v, int) and not isinstance(v, bool) else None
                for v in map(value.get, ("pos", "counted"))
            )
            return value["id"], pos, counted if pos is not None else None
        return "0", 0, None

    def _save_checkpoints(self) -> None:
        data = dict(self._saved)  # other servers' and streams' entries are kept
        for s in self.streams.values():
            if s.stored_id != "0" or s.stored_pos or s.counted:
                value: dict = {"id": s.stored_id}
                if s.stored_pos is not None:
                    value["pos"] = s.stored_pos
                    if s.counted is not None and s.counted > s.stored_pos:
                        value["counted"] = s.counted  # a gap counted past the checkpoint
                data[f"{self.scope}#{s.name}"] = value
        self._saved = data
        self._last_save = time.monotonic()
        try:
            os.makedirs(os.path.dirname(self.checkpoint_path), mode=0o700, exist_ok=True)
            write_atomic(self.checkpoint_path, json.dumps(data).encode())  # on the loop: no fsync
        except OSError as exc:  # the next save tries again; a restart re-reads (no loss)
            if not self._logged.get("save"):
                self._logged["save"] = 1
                log.error("[Redis] could not save the checkpoints to %s: %s", self.checkpoint_path, exc)
            return
        self._logged["save"] = 0

    # --- parsing ----------------------------------------------------------------------------
    def parse(self, raw) -> events.Event | None:
        """A channel message (in Trio's thread)."""
        try:
            return decode(raw, THREAD_MINT)
        except events.EventError as exc:
            self._bad(str(exc), raw)
            return None

    def _bad(self, why: str, raw: Any) -> None:
        self.broker.counters["bad_redis_messages"] += 1
        if self._logged["bad"] < LOGGED_MAX:
            self._logged["bad"] += 1
            log.warning(
                "[Redis] skipped a message that is not an event: %s (%r)",
                why,
                (raw[:80] if isinstance(raw, (bytes, str)) else raw),
            )

    # --- the loops ----------------------------------------------------------------------------
    async def run(self) -> None:
        log.info(
            "[Redis] reading %s: the machines' streams %s, the stream %s from %s and channel %s",
            self.server,
            machine_stream(self.cfg.stream, "*"),
            self.cfg.stream,
            self.legacy.stored_id,
            self.cfg.channel,
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._supervise, "stream", self._read_streams)
            nursery.start_soon(self._supervise, "channel", self._read_channel)

    async def _supervise(self, name: str, loop: Callable) -> None:
        while True:
            client = None
            try:
                # In a worker thread: a cluster's client connects to its seeds as it is made.
                client = await anyio.to_thread.run_sync(make_client, self.cfg)
                await anyio.to_thread.run_sync(client.ping)
                if self.attempts[name]:
                    log.info("[Redis] %s: connected again after %d attempts", name, self.attempts[name])
                self.state[name] = "connected"
                self.attempts[name] = 0
                if self.connected():
                    self.error = None
                try:
                    await loop(client)
                except ExceptionGroup as group:  # the loops' nurseries wrap what they raise
                    raise _single(group) from None
            except CONNECTION_ERRORS as exc:
                self.attempts[name] += 1
                self.state[name] = "error"
                self.error = _explain(exc)
                delay = backoff(self.attempts[name])
                log.warning(
                    "[Redis] %s: %s; retrying in %.1f s (attempt %d)", name, self.error, delay, self.attempts[name]
                )
                await trio.sleep(delay)
            finally:
                if client is not None:
                    with trio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(client.close)

    async def _read_streams(self, client: redis.Redis) -> None:
        client.set_response_callback("XREAD", raw_xread)
        for s in self.streams.values():
            s.rewind()
        to_submit, submitted = trio.open_memory_channel[list[Part]](1)
        to_commit, committed = trio.open_memory_channel[tuple[Delivery | None, list[Part]]](16)
        self.answer_client = client
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._submit, submitted, to_commit)
                nursery.start_soon(self._commit, committed)
                last_survey = -SURVEY_S
                async with to_submit:
                    while True:
                        since = trio.current_time() - last_survey
                        if since >= SURVEY_S or (self._survey_soon and since >= SURVEY_SOON_S):
                            self._survey_soon = False
                            await self._survey(client)
                            last_survey = trio.current_time()
                        wake = self._wake = trio.Event()
                        parts = await anyio.to_thread.run_sync(self._fetch, client)
                        if parts:
                            await to_submit.send(parts)
                        elif self.cfg.is_cluster:  # nothing blocked in Redis: wait here
                            with trio.move_on_after(CLUSTER_IDLE_S):
                                await wake.wait()
        finally:
            if self.answer_client is client:
                self.answer_client = None
            self._save_checkpoints()

    # --- survey: new machines, trimmed entries, lag ------------------------------------------
    async def _survey(self, client: redis.Redis) -> None:
        def ask() -> tuple[list | None, list]:
            try:
                members: list | None = list(client.smembers(self.registry))
                self._denied.pop("smembers", None)
            except redis.exceptions.NoPermissionError as exc:
                members = None
                self._refused("smembers", exc)
            names = self._machine_names(members) if members is not None else []
            keys = list(self.streams) + [
                k for k in (machine_stream(self.cfg.stream, m).encode() for m in names) if k not in self.streams
            ]
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.xinfo_stream(key)
            return names, list(zip(keys, pipe.execute(raise_on_error=False), strict=True))

        names, infos = await anyio.to_thread.run_sync(ask)
        for machine in names or ():
            if machine not in self.machines:
                key = machine_stream(self.cfg.stream, machine).encode()
                new = Stream(key, machine, *self._checkpoint_of(key), fresh=self._fresh)
                self.streams[key] = new
                self.machines[machine] = new
                log.info("[Redis] machine %s: reading its stream %s from %s", machine, new.name, new.read_id)
        counted = False
        for key, xinfo in infos:
            s = self.streams.get(key)
            if isinstance(xinfo, redis.exceptions.NoPermissionError):
                self._refused("xinfo", xinfo, _text(key))
                continue
            if isinstance(xinfo, Exception):
                # No such stream (yet): XINFO is allowed. Anything else (the cluster is
                # down, a slot moving) is not a refusal: the next survey asks again.
                if "no such key" in str(xinfo):
                    self._denied.pop("xinfo", None)
                    if s is not None:
                        s.fresh = False  # created after this monitor first ran: its trims are misses
                continue
            if s is None or not isinstance(xinfo, dict):
                continue
            self._denied.pop("xinfo", None)
            before = s.counted
            gone = s.account(xinfo)
            counted = counted or s.counted != before
            if gone:
                who = f"machine {s.machine}" if s.machine is not None else "the legacy stream"
                self.broker.counters["redis_missed"] += gone
                log.error(
                    "[Redis] %d events from %s were trimmed from %s before this monitor read them "
                    "(its checkpoint %s is older than the stream's first entry); raise redis.streamMaxLen",
                    gone,
                    who,
                    s.name,
                    s.read_id,
                )
        if counted or self._fresh:
            # A restart must not count the same gap again; and once a monitor has run, its
            # file exists (what is trimmed from now on is this monitor's loss).
            self._save_checkpoints()
        self._fresh = False  # machines found from now on appeared while this monitor ran

    def _machine_names(self, members: list) -> list[str]:
        """The registry's members that are machine names (``fleet``'s rule), at most
        MAX_MACHINES of them (those already read first)."""
        names = []
        for m in members:
            name = _text(m)
            if MACHINE_NAME_RE.match(name):
                names.append(name)
            elif not self._logged["names"]:
                self._logged["names"] = 1
                log.warning("[Redis] %s: ignored a member that is not a machine name: %r", self.registry, name[:80])
        names.sort(key=lambda n: (n not in self.machines, n))
        if len(names) > MAX_MACHINES:
            if not self._logged["cap"]:
                self._logged["cap"] = 1
                log.error(
                    "[Redis] %s lists %d machines: reading the first %d only",
                    _text(self.registry),
                    len(names),
                    MAX_MACHINES,
                )
            names = names[:MAX_MACHINES]
        return names

    def _refused(self, what: str, exc: Exception, key: str = "") -> None:
        """A command this monitor's Redis user may not run (logged once; health says it)."""
        if what not in self._denied:
            if what == "smembers":
                log.warning(
                    "[Redis] SMEMBERS %s refused (%s): cannot list machines, so machines not known yet are not "
                    "read; grant the monitor's user +smembers. Reading the legacy stream and the machines known.",
                    _text(self.registry),
                    exc,
                )
            elif not self._logged["xinfo"]:
                self._logged["xinfo"] = 1
                log.warning(
                    "[Redis] XINFO STREAM %s refused (%s): events trimmed before this monitor read them "
                    "cannot be counted; allow the monitor's user +xinfo|stream",
                    key,
                    exc,
                )
        self._denied[what] = str(exc)

    # --- fetch (a worker thread) -> submit -> commit ----------------------------------------
    def _fetch(self, client: Any) -> list[Part]:
        streams = list(self.streams.values())
        count = max(MIN_COUNT, READ_COUNT // len(streams))
        if self.cfg.is_cluster:
            reply = self._xread_each(client, streams, count)
        else:
            reply = client.xread({s.key: s.read_id for s in streams}, count=count, block=BLOCK_MS)
        if not reply:
            return []
        return [self._part(self.streams[key], entries) for key, entries in reply if entries]

    @staticmethod
    def _xread_each(client: Any, streams: list[Stream], count: int) -> list:
        """A cluster's XREAD: one per stream (each machine's is in a slot of its own and
        a command may not span slots), pipelined, so one round trip per node; none
        blocks (the caller waits for the channel instead)."""
        pipe = client.pipeline(transaction=False)
        for s in streams:
            pipe.xread({s.key: s.read_id}, count=count)
        out: list = []
        for reply in pipe.execute(raise_on_error=True):
            out += raw_xread(reply)  # whatever shape a cluster's pipeline parsed
        return out

    def _part(self, s: Stream, entries: list) -> Part:
        """One stream's entries, parsed in the worker thread (its read position moves on)."""
        last = _text(entries[-1][0])
        s.read_id = last
        s.exists = True
        if s.read_pos is not None:
            s.read_pos += len(entries)
        part = Part(s, last, s.read_pos, len(entries))
        machine = s.machine
        answering = self.decisions is not None and machine is not None
        for entry_id, fields in entries:
            try:
                ev, decide = decode_entry(fields, THREAD_MINT)
            except events.EventError as exc:
                part.bad.append((str(exc), fields))
                continue
            if machine is not None and ev.machine_id != machine:
                if ev.machine_id != "unknown":
                    part.spoofed.append(ev.machine_id)
                    continue
                ev.machine_id = machine
            part.events.append(ev)
            if decide is not None and answering:  # rare: a hook waits for an answer
                part.waits[ev.id] = (decide, parse_id(_text(entry_id))[0])
        return part

    async def _submit(self, submitted: trio.MemoryReceiveChannel, to_commit: trio.MemorySendChannel) -> None:
        async with to_commit:
            async for parts in submitted:
                last = await self._hand_over(parts)
                for p in parts:
                    self._note(p)
                await to_commit.send((last, parts))

    async def _hand_over(self, parts: list[Part]) -> Delivery | None:
        """The parts' events to the broker in order, SUBMIT_CHUNK at a time (one channel
        item per event was 5-8% of the daemon's time in a catch-up); the last one
        tracked, for the commit to wait on."""
        todo = [ev for p in parts for ev in self._own(p)]
        if not todo:
            return None
        waits = {k: (p.stream, *v) for p in parts for k, v in p.waits.items()}
        *head, tail = todo
        for run, on_done in self._runs(head, waits):
            await self.broker.submit_many(run, on_done=on_done)
            await trio.lowlevel.checkpoint()
        w = waits.get(tail.id)
        return await self.broker.submit(tail, track=True, on_done=self._request(*w) if w is not None else None)

    def _runs(self, todo: list[events.Event], waits: dict) -> Iterator[tuple[list[events.Event], Callable | None]]:
        """Chunks of at most SUBMIT_CHUNK events; an event whose hook waits for an
        answer goes alone, with its request (``on_done`` is one per submission)."""
        run: list[events.Event] = []
        for ev in todo:
            w = waits.get(ev.id) if waits else None
            if w is not None:
                if run:
                    yield run, None
                    run = []
                yield [ev], self._request(*w)
                continue
            run.append(ev)
            if len(run) == SUBMIT_CHUNK:
                yield run, None
                run = []
        if run:
            yield run, None

    def _request(self, s: Stream, decide: Any, entry_ms: int) -> Callable[[Delivery], None]:
        """Once its event is stored: the request of a hook that waits on its answer key.
        Its wait began when the entry reached Redis; an event that reached Redis long
        after it happened was spooled: its hook is gone."""

        def stored(d: Delivery) -> None:
            ev = d.event
            if not d.ok or self.decisions is None or s.machine is None:
                return
            if isinstance(decide, bool) or not isinstance(decide, (int, float)) or decide <= 0:
                return
            if ev.timestamp < entry_ms - SPOOLED_AFTER_MS:
                return
            key = answer_key(self.cfg.stream, s.machine, ev.id)
            self.decisions.waiting(ev, decide, AnswerWaiter(self, key, ev.id, int(decide)), since_ms=entry_ms)

        return stored

    def _own(self, p: Part) -> list[events.Event]:
        """A machine's events, without those that write into another machine's
        session: its stream proves who sent them, not whose session it is (in Trio's
        thread, where the sessions are). A sub-agent under another machine's session
        stays allowed (``CONTEXTUATE_PARENT_SESSION`` links work across machines); it
        keeps its own machine's name."""
        if p.stream.machine is None:
            return p.events
        sessions = self.broker.manager.sessions
        kept = []
        for ev in p.events:
            s = sessions.get(ev.session_id)
            if s is not None and s.machine_id not in ("unknown", ev.machine_id):
                p.spoofed.append(f"{s.machine_id} (its session {ev.session_id})")
            else:
                kept.append(ev)
        return kept

    def _note(self, p: Part) -> None:
        s = p.stream
        s.read += p.n
        s.last_seen = max(s.last_seen or 0, parse_id(p.last_id)[0])
        for why, raw in p.bad:
            self._bad(why, raw)
        if p.spoofed:
            s.spoofed += len(p.spoofed)
            self.broker.counters["redis_spoofed"] += len(p.spoofed)
            if self._logged["spoofed"] < LOGGED_MAX:
                self._logged["spoofed"] += 1
                log.warning(
                    "[Redis] refused %d events in %s (machine %s) that claim to come from %s",
                    len(p.spoofed),
                    s.name,
                    s.machine,
                    ", ".join(sorted(set(p.spoofed))),
                )

    async def _commit(self, committed: trio.MemoryReceiveChannel) -> None:
        """Checkpoints advance as batches are stored; the file is written at most every
        SAVE_EVERY_S (it holds every stream's checkpoint: written after each read, it
        took a quarter of the loop with 200 machines), and once the reads go quiet. A
        crash re-reads at most that much, which the broker drops as already seen."""
        behind = False  # stored, not yet in the file
        while True:
            got = None
            wait = SAVE_EVERY_S - (time.monotonic() - self._last_save) if behind else math.inf
            try:
                with trio.move_on_after(max(wait, 0)):
                    got = await committed.receive()
            except trio.EndOfChannel:
                return
            if got is not None:
                last, parts = got
                if last is not None:
                    assert last.done is not None  # submitted with track=True
                    await last.done.wait()  # the pipeline is in order: the batch is stored
                for p in parts:
                    p.stream.stored_id, p.stream.stored_pos = p.last_id, p.pos
                behind = True
            if behind and time.monotonic() - self._last_save >= SAVE_EVERY_S:
                self._save_checkpoints()
                behind = False

    # --- the channel ---------------------------------------------------------------------------
    def _ignored(self, machine: str) -> None:
        self.broker.counters["redis_channel_ignored"] += 1
        if not self._logged["ignored"]:
            self._logged["ignored"] = 1
            log.info(
                "[Redis] channel: ignoring messages from machine %s (and any other with a stream of its own): "
                "its stream carries them",
                machine,
            )

    def _intrudes(self, ev: events.Event) -> bool:
        """A channel event into the session of a machine that writes its own stream:
        anyone allowed to PUBLISH could send it, so it is refused and counted (that
        machine's events come by its stream)."""
        s = self.broker.manager.sessions.get(ev.session_id)
        owner = self.machines.get(s.machine_id) if s is not None and s.machine_id != ev.machine_id else None
        if owner is None or not owner.exists:
            return False
        owner.spoofed += 1
        self.broker.counters["redis_spoofed"] += 1
        if self._logged["spoofed"] < LOGGED_MAX:
            self._logged["spoofed"] += 1
            log.warning(
                "[Redis] channel: refused an event into session %s of machine %s (from %s)",
                ev.session_id,
                owner.machine,
                ev.machine_id,
            )
        return True

    async def _read_channel(self, client: redis.Redis) -> None:
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await anyio.to_thread.run_sync(pubsub.subscribe, self.cfg.channel)
            while True:
                msg = await anyio.to_thread.run_sync(lambda: pubsub.get_message(timeout=1.0))
                if msg is None or msg.get("type") != "message":
                    continue
                self._wake.set()  # a cluster's stream reader waits for this
                ev = self.parse(msg["data"])
                if ev is None:
                    continue
                own = self.machines.get(ev.machine_id)
                if own is not None and own.exists:
                    self._ignored(ev.machine_id)
                    continue  # its stream carries it
                if self._intrudes(ev):
                    continue
                if ev.machine_id not in self._channel_only:
                    # Perhaps a new machine: look at the registry without waiting.
                    self._survey_soon = True
                    if len(self._channel_only) < 10_000:
                        self._channel_only.add(ev.machine_id)
                await self.broker.submit(ev)
        finally:
            with trio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(pubsub.close)
