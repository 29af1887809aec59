"""Relay mode: a full local daemon that also forwards every event it stores to Redis.

Hooks reach the daemon on its Unix socket as in local mode and are acknowledged once
the event is on local disk; the machine keeps its own sessions and dashboard. This
sink then sends what the broker stored, oldest first and in order, to the machine's
stream ``<redis.stream>:{<machineId>}`` (XADD, MAXLEN ~ ``redis.streamMaxLen``), adds
the machine to the registry ``<redis.stream>:machines`` (SADD) and PUBLISHes each
event on ``redis.channel``, in pipelined batches (``relay.batchMax`` events a round
trip) over one kept-alive connection.

The queue is the store itself: every stored event has a number (``seqlog``) and
``FileStore.lines_after`` gives the stored lines after a number. The relay's
checkpoint (``relay-checkpoint.json`` beside the data) is the last number Redis
confirmed, written atomically after each confirmed batch: what is stored but not
confirmed is sent again after a lost connection, a sleeping laptop or a restart.

Exactly once: a batch whose replies were lost (the connection died after the send)
may be in the stream already. Before the first batch of a connection that follows
such a failure (and of every run), the relay reads the tail of each stream it is
about to write (XREVRANGE, as many entries as it will send) and leaves out the
events whose ids are there. A user not allowed XREVRANGE (a machine's ACL user) gets
them again in that case: the monitor drops the copies (same id, one event).

The forwarded line is the stored event's JSON (secrets already masked by the
broker), in the stream entry's field ``data``, as the monitor's Redis source reads
it. A relay has no Redis source: nothing read from Redis is ever sent back.

redis-py's calls run in worker threads (each returns within ``socket_timeout``), and
redis-py's own retries are off: a pipeline is never sent twice behind our back.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from typing import Any

import anyio.to_thread
import orjson
import redis
import trio

from contextuate_trio.config import RedisConfig, RelayConfig
from contextuate_trio.hook.paths import write_atomic
from contextuate_trio.hook.resp import machine_stream, registry_key
from contextuate_trio.hook.wire import as_machine
from contextuate_trio.runtime.metrics import Metric
from contextuate_trio.runtime.store import FileStore

log = logging.getLogger("contextuate.relay")

IDLE_PING_S = 5.0  # with nothing to send, the connection is checked this often
BATCH_MAX_BYTES = 8 << 20  # lines read (and sent) in one round trip, at most (one event at least)
_STR = rb'"((?:[^"\\]|\\.)*)"'
# How the broker writes every line: id, timestamp, sessionId, machineId first.
_HEAD = re.compile(rb'^\{"id":' + _STR + rb',"timestamp":-?\d+,"sessionId":"(?:[^"\\]|\\.)*","machineId":' + _STR)
_ID = re.compile(rb'^\{"id":' + _STR)


def checkpoint_file(persistence_dir: str) -> str:
    return os.path.join(persistence_dir, "relay-checkpoint.json")


class Refused(Exception):
    """Redis answered a command of the batch with an error (not a lost connection)."""


class Item:
    """One stored event on its way to Redis."""

    __slots__ = ("seq", "event_id", "machine", "key", "line")

    def __init__(self, seq: int, event_id: str, machine: str, key: str, line: bytes) -> None:
        self.seq = seq
        self.event_id = event_id
        self.machine = machine
        self.key = key
        self.line = line


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def event_id_of(data: Any) -> str | None:
    """The event id of a stream entry's ``data`` (our own lines start with it)."""
    if not isinstance(data, bytes):
        return None
    m = _ID.match(data)
    if m and b"\\" not in m.group(1):
        return _text(m.group(1))
    try:
        obj = orjson.loads(data)
    except ValueError:
        return None
    value = obj.get("id") if isinstance(obj, dict) else None
    return value if isinstance(value, str) else None


class Relay:
    def __init__(
        self,
        store: FileStore,
        cfg: RedisConfig,
        relay: RelayConfig,
        checkpoint_path: str,
        *,
        connect: Callable[[], Any],
        backoff: Callable[[int], float],
        server: str,
    ) -> None:
        self.store = store
        self.cfg = cfg
        self.relay = relay
        self.checkpoint_path = checkpoint_path
        self._connect = connect
        self._backoff = backoff
        self.server = server
        self.registry = registry_key(cfg.stream)
        self.checkpoint = self._load()
        self.state = "connecting"
        self.error: str | None = None
        self.attempts = 0
        self.errors = 0
        self.forwarded = 0  # events Redis confirmed, this run
        self.already_there = 0  # events found in the stream after an uncertain batch
        self.batches = 0
        self.unreadable = 0  # stored lines that were not events (skipped)
        self.last_forward_ms: int | None = None
        self.down_since: float | None = time.monotonic()  # not connected since (monotonic)
        self.machines: set[str] = set()
        self._wake = trio.Event()
        self._uncertain = True  # a batch may be in Redis but not in the checkpoint: look first
        self._can_look = True  # XREVRANGE allowed (a machine's ACL user may not be)
        self._sadded: set[str] = set()  # machines registered on this connection
        self._warned_publish = False
        self._warned_sadd: set[str] = set()

    # --- the checkpoint ------------------------------------------------------------------
    def _load(self) -> int:
        try:
            with open(self.checkpoint_path, "rb") as f:
                data = json.loads(f.read())
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            log.error("[Relay] %s is unreadable (%s): forwarding everything stored again", self.checkpoint_path, exc)
            return 0
        seq = data.get("seq") if isinstance(data, dict) else None
        return seq if isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0 else 0

    def _save(self) -> None:
        data = {"seq": self.checkpoint, "server": self.server, "savedAt": int(time.time() * 1000)}
        write_atomic(self.checkpoint_path, json.dumps(data).encode(), shared=False)

    # --- what health, status and /metrics show ----------------------------------------
    def backlog(self) -> int:
        """Events stored but not yet confirmed by Redis (numbers are consecutive; the
        records of sessions deleted meanwhile are counted too)."""
        order = self.store.order
        if not order.count or self.checkpoint >= order.last_seq:
            return 0
        if self.checkpoint < order.first_seq:
            return order.count
        return order.last_seq - self.checkpoint

    def connected(self) -> bool:
        return self.state == "connected"

    def down_for(self) -> float:
        return 0.0 if self.down_since is None else time.monotonic() - self.down_since

    def info(self) -> dict:
        return {
            "url": self.server,
            "stream": machine_stream(self.cfg.stream, self.cfg.machine_id or "<machineId>"),
            "channel": self.cfg.channel,
            "state": self.state,
            "attempts": self.attempts,
            "lastError": self.error,
            "downForMs": int(self.down_for() * 1000) if self.down_since is not None else None,
            "checkpoint": self.checkpoint,
            "backlog": self.backlog(),
            "forwarded": self.forwarded,
            "alreadyThere": self.already_there,
            "batches": self.batches,
            "unreadable": self.unreadable,
            "lastForwardedAt": self.last_forward_ms,
            "machines": sorted(self.machines),
            "streams": [machine_stream(self.cfg.stream, m) for m in sorted(self.machines)],
        }

    def problems(self) -> list[str]:
        out = []
        backlog = self.backlog()
        down = self.down_for()
        if self.down_since is not None and down >= self.relay.degraded_after_seconds:
            out.append(
                f"relay: cannot forward to Redis at {self.server} for {down:.0f} s ({self.error or self.state}); "
                f"{backlog} events stored here wait"
            )
        elif backlog > self.relay.backlog_max:
            out.append(f"relay: {backlog} events stored here are not forwarded to Redis yet (relay.backlogMax)")
        return out

    def metrics(self) -> list[Metric]:
        return [
            Metric(
                "contextuate_relay_connected", "1 when the relay is connected to Redis.", "gauge", int(self.connected())
            ),
            Metric(
                "contextuate_relay_backlog",
                "Events stored here and not yet confirmed by Redis.",
                "gauge",
                self.backlog(),
            ),
            Metric(
                "contextuate_relay_forwarded_total", "Events Redis confirmed (this run).", "counter", self.forwarded
            ),
            Metric(
                "contextuate_relay_already_there_total",
                "Events found in their stream after a batch whose replies were lost (not sent again).",
                "counter",
                self.already_there,
            ),
            Metric("contextuate_relay_batches_total", "Batches Redis confirmed.", "counter", self.batches),
            Metric("contextuate_relay_errors_total", "Failed connections and batches.", "counter", self.errors),
            Metric("contextuate_relay_checkpoint", "The last event number Redis confirmed.", "gauge", self.checkpoint),
        ]

    # --- the broker's side ----------------------------------------------------------------
    def wake(self, _stored: object = None) -> None:
        """``Broker.on_stored``: events were stored (their lines are on disk)."""
        self._wake.set()

    # --- the loop ---------------------------------------------------------------------------
    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        last = self.store.order.last_seq
        if self.checkpoint > last:
            # The data was wiped (or replaced) since: nothing after the checkpoint would ever be sent.
            log.warning(
                "[Relay] the checkpoint %d is past the last stored event %d: forwarding everything stored",
                self.checkpoint,
                last,
            )
            self.checkpoint = 0
        log.info(
            "[Relay] forwarding stored events to %s (%s), from event %d (%d waiting)",
            self.server,
            machine_stream(self.cfg.stream, self.cfg.machine_id or "<machineId>"),
            self.checkpoint,
            self.backlog(),
        )
        task_status.started()
        while True:
            client = None
            try:
                # In a worker thread: a cluster's client connects to its seeds as it is made.
                client = await anyio.to_thread.run_sync(self._connect, abandon_on_cancel=True)
                _no_retries(client)
                await anyio.to_thread.run_sync(client.ping, abandon_on_cancel=True)
                self.state = "connected"  # "down" ends with a batch confirmed (or nothing to send)
                self._sadded.clear()
                await self._pump(client)
            except Exception as exc:  # a bug must not take the daemon (and its hooks) down
                if not isinstance(exc, (redis.RedisError, redis.exceptions.RedisClusterException, OSError, Refused)):
                    log.exception("[Relay] unexpected error")
                self.attempts += 1
                self.errors += 1
                self.state = "error"
                self.error = _explain(exc)
                if self.down_since is None:
                    self.down_since = time.monotonic()
                delay = min(self._backoff(self.attempts), self.relay.retry_max_seconds)
                log.warning(
                    "[Relay] %s; %d events wait; retrying in %.1f s (attempt %d)",
                    self.error,
                    self.backlog(),
                    delay,
                    self.attempts,
                )
                await trio.sleep(delay)
            finally:
                if client is not None:
                    with trio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(client.close, abandon_on_cancel=True)

    async def _pump(self, client: Any) -> None:
        while True:
            wake = self._wake = trio.Event()
            items = self._next()
            if not items:
                self._healthy()
                with trio.move_on_after(IDLE_PING_S):
                    await wake.wait()
                    continue
                # Idle: a PING keeps the connection alive and finds a Redis gone quiet
                # (health says so even when no event is waiting).
                await anyio.to_thread.run_sync(client.ping, abandon_on_cancel=True)
                continue
            skip: set[str] = set()
            if self._uncertain and self._can_look:
                skip = await anyio.to_thread.run_sync(self._present, client, items, abandon_on_cancel=True)
            self._uncertain = True  # until the replies are in
            replies = await anyio.to_thread.run_sync(self._send, client, items, skip, abandon_on_cancel=True)
            self._confirm(items, skip, replies)

    def _next(self) -> list[Item]:
        """The next batch from disk, oldest first (in Trio's thread: the store's one reader)."""
        while True:
            rows = self.store.lines_after(self.checkpoint, self.relay.batch_max, BATCH_MAX_BYTES)
            if not rows:
                last = self.store.order.last_seq
                if last > self.checkpoint:  # only records of deleted sessions (or lines gone) left
                    self.checkpoint = last
                    self._save()
                return []
            items = self._items(rows)
            if items:
                return items
            self.checkpoint = rows[-1][0]  # nothing in these rows could be sent
            self._save()

    def _items(self, rows: list[tuple[int, bytes]]) -> list[Item]:
        forced = self.cfg.machine_id
        items = []
        for seq, raw in rows:
            line = raw.rstrip(b"\n")
            m = _HEAD.match(line)
            if m and b"\\" not in m.group(1) and b"\\" not in m.group(2):
                event_id, machine = _text(m.group(1)), _text(m.group(2))
            else:
                try:
                    obj = orjson.loads(line)
                    event_id, machine = str(obj["id"]), str(obj.get("machineId") or "unknown")
                except (ValueError, KeyError, TypeError, AttributeError):
                    self.unreadable += 1  # a corrupt line on disk: no monitor could take it either
                    log.error("[Relay] event %d on disk is not an event line; not forwarded: %r", seq, line[:80])
                    continue
            if forced and machine != forced:
                # redis.machineId (a machine's ACL user may write only that stream): the
                # event is sent as this machine's, or the monitor would refuse it.
                line, machine = as_machine(line, forced), forced
            items.append(Item(seq, event_id, machine, machine_stream(self.cfg.stream, machine), line))
        return items

    def _healthy(self) -> None:
        if self.attempts:
            log.info("[Relay] forwarding again after %d attempts", self.attempts)
        self.attempts, self.error, self.down_since = 0, None, None

    # --- worker threads --------------------------------------------------------------------
    def _present(self, client: Any, items: list[Item]) -> set[str]:
        """Ids of these events already in their streams (a batch whose replies were lost)."""
        per_key: dict[str, int] = {}
        for it in items:
            per_key[it.key] = per_key.get(it.key, 0) + 1
        pipe = client.pipeline(transaction=False)
        for key, n in per_key.items():
            pipe.xrevrange(key, "+", "-", count=n)
        found: set[str] = set()
        for reply in pipe.execute(raise_on_error=False):
            if isinstance(reply, redis.ResponseError):
                if "NOPERM" in str(reply) or "no permissions" in str(reply):
                    self._can_look = False
                    log.warning(
                        "[Relay] this Redis user may not XREVRANGE its stream: after a lost reply, events are "
                        "sent again (the monitor drops the copies): %s",
                        reply,
                    )
                    return set()
                raise reply
            for _entry_id, fields in reply or []:
                eid = event_id_of(fields.get(b"data")) if isinstance(fields, dict) else None
                if eid is not None:
                    found.add(eid)
        return found & {it.event_id for it in items}

    def _send(self, client: Any, items: list[Item], skip: set[str]) -> list:
        pipe = client.pipeline(transaction=False)
        for machine in sorted({it.machine for it in items} - self._sadded):
            pipe.sadd(self.registry, machine)
        maxlen, channel = self.cfg.stream_max_len, self.cfg.channel
        for it in items:
            if it.event_id in skip:
                continue
            pipe.xadd(it.key, {b"data": it.line}, maxlen=maxlen, approximate=True)
            pipe.execute_command("PUBLISH", channel, it.line)  # a cluster's pipeline blocks .publish()
        return pipe.execute(raise_on_error=False)

    # --- back in Trio's thread ---------------------------------------------------------------
    def _confirm(self, items: list[Item], skip: set[str], replies: list) -> None:
        """Advance the checkpoint over what Redis stored; raise ``Refused`` at the first
        event it did not (it is sent again, in order, after a back-off)."""
        machines = sorted({it.machine for it in items} - self._sadded)
        i = 0
        for machine in machines:
            reply = replies[i]
            i += 1
            if isinstance(reply, Exception):
                if machine in self._warned_sadd:
                    continue
                self._warned_sadd.add(machine)
                log.error(
                    "[Relay] SADD %s %s refused: %s (monitors may not find the stream)", self.registry, machine, reply
                )
            else:
                self._sadded.add(machine)
                self.machines.add(machine)
        done = 0
        refused: Exception | None = None
        last = self.checkpoint
        for it in items:
            if it.event_id in skip:
                last = it.seq
                continue
            added, published = replies[i], replies[i + 1]
            i += 2
            if isinstance(added, Exception):
                refused = added
                break
            if isinstance(published, Exception) and not self._warned_publish:
                self._warned_publish = True  # the stream has it: the channel is for live listeners
                log.warning("[Relay] PUBLISH on %s refused: %s", self.cfg.channel, published)
            last = it.seq
            done += 1
        if last != self.checkpoint:
            self.checkpoint = last
            self._save()
        self.forwarded += done
        self.already_there += len(skip)
        if refused is not None:
            raise Refused(f"Redis refused XADD: {refused}")
        self._uncertain = False
        self._healthy()
        self.batches += 1
        self.last_forward_ms = int(time.time() * 1000)


def _no_retries(client: Any) -> None:
    """redis-py would send a pipeline again on a lost connection (and so add it twice
    when the first one was executed): we retry ourselves, knowing what is confirmed."""
    try:
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        client.set_retry(Retry(NoBackoff(), 0))
    except (AttributeError, TypeError, ImportError):  # a client without it (a cluster's)
        pass


def _explain(exc: Exception) -> str:
    if isinstance(exc, redis.AuthenticationError) or "WRONGPASS" in str(exc) or "NOAUTH" in str(exc):
        return f"authentication failed ({exc}); check redis.username/redis.password"
    if isinstance(exc, redis.TimeoutError):
        return "no answer in time (Redis hung or unreachable)"
    if isinstance(exc, Refused):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
