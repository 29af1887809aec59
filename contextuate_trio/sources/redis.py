"""The Redis source: many machines' hooks, one or several monitors, nothing lost.

Two readers, each a loop of blocking redis-py calls run in worker threads (anyio,
so they are cancelled with the nursery; each call returns within about a second, so
shutdown never waits on Redis):

- the **stream** (``redis.stream``), read with XREAD from this monitor's own
  checkpoint, kept on disk and advanced only after the events are stored: a monitor
  that was down catches up, and every monitor gets every event;
- the **channel** (``redis.channel``), for producers that only PUBLISH (the original
  Node hook, ``redis-cli``). An event that arrives both ways is one event (same id).

Connection problems are retried with exponential backoff and jitter, forever; the
state (with the last error and the attempt count) is in ``/api/health`` and ``status``.
"""

from __future__ import annotations

import json
import logging
import os
import random

import anyio.to_thread
import redis
import trio

from contextuate_trio.config import RedisConfig
from contextuate_trio.core import events, wire
from contextuate_trio.hook.paths import write_atomic
from contextuate_trio.runtime.broker import Broker
from contextuate_trio.runtime.clock import SYSTEM_MINT

log = logging.getLogger("contextuate.redis")

READ_COUNT = 1000
BLOCK_MS = 1000
SOCKET_TIMEOUT = 5.0
BACKOFF_MIN, BACKOFF_MAX = 0.5, 30.0


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


def make_client(cfg: RedisConfig) -> redis.Redis:
    kw = client_kwargs(cfg)
    url = kw.pop("url", None)
    if url:
        if not url.startswith("rediss://"):
            for k in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
                kw.pop(k, None)
        return redis.Redis.from_url(url, **kw)
    if not kw.get("ssl"):
        for k in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
            kw.pop(k, None)
    return redis.Redis(**kw)


def describe(cfg: RedisConfig) -> str:
    if cfg.url:
        scheme, _, rest = cfg.url.partition("://")
        return f"{scheme}://{rest.rpartition('@')[2]}"
    return f"{'rediss' if cfg.tls else 'redis'}://{cfg.host}:{cfg.port}/{cfg.db}"


def _explain(exc: Exception) -> str:
    if isinstance(exc, redis.AuthenticationError) or "WRONGPASS" in str(exc) or "NOAUTH" in str(exc):
        return f"authentication failed ({exc}); check redis.username/redis.password"
    if isinstance(exc, redis.TimeoutError):
        return f"no answer within {SOCKET_TIMEOUT:.0f} s (Redis hung or unreachable)"
    return f"{type(exc).__name__}: {exc}"


class RedisSource:
    def __init__(self, broker: Broker, cfg: RedisConfig, checkpoint_path: str) -> None:
        self.broker = broker
        self.cfg = cfg
        self.checkpoint_path = checkpoint_path
        self.key = f"{describe(cfg)}#{cfg.stream}"
        self.last_id = self._load_checkpoint()
        self.state = {"stream": "connecting", "channel": "connecting"}
        self.error: str | None = None
        self.attempts = {"stream": 0, "channel": 0}
        self._bad_logged = 0

    # --- what health and status show ---------------------------------------------------
    def connected(self) -> bool:
        return all(v == "connected" for v in self.state.values())

    def info(self) -> dict:
        return {
            "url": describe(self.cfg),
            "stream": self.cfg.stream,
            "channel": self.cfg.channel,
            "state": dict(self.state),
            "attempts": dict(self.attempts),
            "lastError": self.error,
            "checkpoint": self.last_id,
        }

    # --- the checkpoint -------------------------------------------------------------------
    def _load_checkpoint(self) -> str:
        try:
            with open(self.checkpoint_path) as f:
                data = json.load(f)
            value = data.get(self.key)
            return value if isinstance(value, str) else "0"
        except (OSError, ValueError, AttributeError):
            return "0"

    def _save_checkpoint(self) -> None:
        try:
            with open(self.checkpoint_path) as f:
                data = json.load(f)
            if not isinstance(data, dict):
                data = {}
        except (OSError, ValueError):
            data = {}
        data[self.key] = self.last_id
        os.makedirs(os.path.dirname(self.checkpoint_path), mode=0o700, exist_ok=True)
        write_atomic(self.checkpoint_path, json.dumps(data).encode())  # on the loop: no fsync

    # --- parsing ----------------------------------------------------------------------------
    def parse(self, raw) -> events.Event | None:
        try:
            if isinstance(raw, dict):  # a stream entry: our field is "data"
                raw = raw.get(b"data") or raw.get(b"event") or next(iter(raw.values()), b"")
            return wire.to_event(wire.loads(raw), source="redis", mint=SYSTEM_MINT)
        except (TypeError, events.EventError) as exc:
            self.broker.counters["bad_redis_messages"] += 1
            if self._bad_logged < 20:
                self._bad_logged += 1
                log.warning(
                    "[Redis] skipped a message that is not an event: %s (%r)",
                    exc,
                    (raw[:80] if isinstance(raw, (bytes, str)) else raw),
                )
            return None

    # --- the loops ----------------------------------------------------------------------------
    async def run(self) -> None:
        log.info(
            "[Redis] reading %s stream %s from %s and channel %s",
            describe(self.cfg),
            self.cfg.stream,
            self.last_id,
            self.cfg.channel,
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._supervise, "stream", self._read_stream)
            nursery.start_soon(self._supervise, "channel", self._read_channel)

    async def _supervise(self, name: str, loop) -> None:
        while True:
            client = make_client(self.cfg)
            try:
                await anyio.to_thread.run_sync(client.ping)
                if self.attempts[name]:
                    log.info("[Redis] %s: connected again after %d attempts", name, self.attempts[name])
                self.state[name] = "connected"
                self.attempts[name] = 0
                if self.connected():
                    self.error = None
                await loop(client)
            except (redis.RedisError, OSError) as exc:
                self.attempts[name] += 1
                self.state[name] = "error"
                self.error = _explain(exc)
                delay = backoff(self.attempts[name])
                log.warning(
                    "[Redis] %s: %s; retrying in %.1f s (attempt %d)", name, self.error, delay, self.attempts[name]
                )
                await trio.sleep(delay)
            finally:
                with trio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(client.close)

    async def _read_stream(self, client: redis.Redis) -> None:
        while True:
            reply = await anyio.to_thread.run_sync(
                lambda: client.xread({self.cfg.stream: self.last_id}, count=READ_COUNT, block=BLOCK_MS)
            )
            if not reply:
                continue
            # RESP2's shape, [[stream, entries]]: redis-py keeps it on RESP3 wires too
            # (``legacy_responses``, on by default); the dict shapes are opt-in.
            assert isinstance(reply, list), "XREAD reply in a non-legacy shape"
            entries = reply[0][1]
            deliveries = []
            for _entry_id, fields in entries:
                ev = self.parse(fields)
                if ev is not None:
                    deliveries.append(await self.broker.submit(ev, track=True))
                await trio.lowlevel.checkpoint()  # up to READ_COUNT parses: let others run between
            for d in deliveries:
                assert d.done is not None  # submitted with track=True
                await d.done.wait()
            last = entries[-1][0]
            self.last_id = last.decode() if isinstance(last, bytes) else str(last)
            self._save_checkpoint()

    async def _read_channel(self, client: redis.Redis) -> None:
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await anyio.to_thread.run_sync(pubsub.subscribe, self.cfg.channel)
            while True:
                msg = await anyio.to_thread.run_sync(lambda: pubsub.get_message(timeout=1.0))
                if msg is None or msg.get("type") != "message":
                    continue
                ev = self.parse(msg["data"])
                if ev is not None:
                    await self.broker.submit(ev)
        finally:
            with trio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(pubsub.close)


def checkpoint_file(persistence_dir: str) -> str:
    return os.path.join(persistence_dir, "redis-checkpoints.json")
