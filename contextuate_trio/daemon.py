"""The daemon: one nursery supervising the sources, the broker and the sinks.

Shutdown (SIGTERM/SIGINT, or ``Daemon.stop()``) is ordered: the sources stop first,
the broker then stores everything already handed to it, and only then do the web
servers go. Every task lives in the one nursery tree, so nothing outlives ``run``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import time
from typing import Optional

import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve as hypercorn_serve

from contextuate_trio import __version__, hook, usage
from contextuate_trio.broker import Broker
from contextuate_trio.config import Config
from contextuate_trio.redact import Redactor
from contextuate_trio.sources import spool as spool_source
from contextuate_trio.sources import transcripts
from contextuate_trio.sources import unix_socket
from contextuate_trio.store import FileStore
from contextuate_trio.web import http
from contextuate_trio.web.ws import WsServer

log = logging.getLogger("contextuate.daemon")

RETENTION_EVERY_S = 3600


class AlreadyRunning(Exception):
    pass


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.home = config.home
        self.started = time.time()
        store = FileStore(config.persistence.dir) if config.persistence.enabled else None
        self.broker = Broker(store, started_ms=int(self.started * 1000),
                             redactor=Redactor(config.redaction.patterns, config.redaction.enabled))
        self.redis = None
        if config.mode == "redis":
            from contextuate_trio.sources.redis import RedisSource, checkpoint_file

            where = config.persistence.dir if config.persistence.enabled else config.home
            self.redis = RedisSource(self.broker, config.redis, checkpoint_file(where))
        usage.configure(config.pricing.models)
        # Local mode: the daemon shares the machine with the transcripts and reads them.
        # Redis mode: each machine's hook reads its own and sends the usage along.
        self.transcripts = None
        if config.mode == "local":
            where = config.persistence.dir if config.persistence.enabled else config.home
            self.transcripts = transcripts.TranscriptReader(self.broker, where)
        self._sources_scope: Optional[trio.CancelScope] = None
        self._stop_requested = False
        self.accepting = trio.Event()  # the socket is bound: /api/health may say ok
        self._lock_fd: Optional[int] = None
        self.http_urls: list[str] = []
        self.ws = WsServer(self)
        self.ws_url: Optional[str] = None

    # --- paths --------------------------------------------------------------------
    @property
    def spool_dir(self) -> str:
        return os.path.join(self.home, hook.SPOOL_NAME)

    @property
    def pid_path(self) -> str:
        return os.path.join(self.home, "daemon.pid")

    # --- life cycle -----------------------------------------------------------------
    def _acquire(self) -> None:
        os.makedirs(self.home, mode=0o700, exist_ok=True)
        os.chmod(self.home, 0o700)
        fd = os.open(os.path.join(self.home, "daemon.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = read_pid(self.pid_path)
            raise AlreadyRunning(
                f"another contextuate-trio daemon is running for {self.home}"
                + (f" (pid {pid})" if pid else "")
                + "; stop it with `contextuate-trio stop`"
            ) from None
        self._lock_fd = fd
        tmp = self.pid_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(tmp, self.pid_path)

    def _release(self) -> None:
        try:
            if read_pid(self.pid_path) == os.getpid():
                os.unlink(self.pid_path)
        except OSError:
            pass
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def stop(self) -> None:
        """Begin a graceful shutdown (safe to call from within the Trio run, at any
        point of start-up: a stop asked for before the sources run stops them at once)."""
        self._stop_requested = True
        if self._sources_scope is not None:
            self._sources_scope.cancel()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        os.umask(0o077)
        self._acquire()
        try:
            loaded = self.broker.load()
            log.info("contextuate-trio %s: %d sessions loaded from %s", __version__, loaded,
                     self.config.persistence.dir if self.broker.store else "(persistence off)")
            self.broker.prune(self.config.persistence.retention_days)
            async with trio.open_nursery() as outer:
                # Signals first: a SIGTERM that arrives while starting is not lost.
                await outer.start(self._signals)
                await outer.start(self.broker.run)
                self.ws_url = await outer.start(self.ws.serve)  # before HTTP: healthy means both
                self.http_urls = await outer.start(self._serve_http)
                with trio.CancelScope() as sources:
                    self._sources_scope = sources
                    if self._stop_requested:
                        sources.cancel()
                    async with trio.open_nursery() as inner:
                        await inner.start(unix_socket.serve, self.broker, self.config.socket_path,
                                          self.config.max_line_bytes)
                        self.accepting.set()  # healthy from here: hooks can deliver
                        inner.start_soon(spool_source.run, self.broker, self.spool_dir)
                        if self.transcripts is not None:
                            await inner.start(self.transcripts.run)
                        if self.redis is not None:
                            inner.start_soon(self.redis.run)
                        inner.start_soon(self._retention)
                        log.info("ready: socket %s, dashboard %s", self.config.socket_path,
                                 ", ".join(self.http_urls))
                        task_status.started(self)
                log.info("stopping: storing what is already in the broker")
                self.broker.send_channel.close()  # run() ends once the queue is drained
                with trio.move_on_after(10) as waited:
                    await self.broker.finished.wait()
                if waited.cancelled_caught:
                    log.error("the broker did not drain within 10 s (is the store failing?)")
                outer.cancel_scope.cancel()
        finally:
            if self.broker.store is not None:
                self.broker.store.close()
            self._release()
            log.info("stopped")

    async def _signals(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                log.info("received %s", signal.Signals(signum).name)
                self.stop()
                return

    async def _retention(self) -> None:
        while True:
            await trio.sleep(RETENTION_EVERY_S)
            self.broker.prune(self.config.persistence.retention_days)

    async def _serve_http(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        hc = HyperConfig()
        host = self.config.server.host
        hc.bind = [f"[{host}]:{self.config.server.port}" if ":" in host else f"{host}:{self.config.server.port}"]
        hc.accesslog = None
        hc.errorlog = logging.getLogger("contextuate.http")
        hc.graceful_timeout = 1.0
        await hypercorn_serve(http.create_app(self), hc, task_status=task_status)

    # --- what the API reports ------------------------------------------------------------
    def problems(self) -> list[str]:
        out = []
        if self.broker.last_error:
            out.append(f"store: {self.broker.last_error}")
        if self.redis is not None and not self.redis.connected():
            out.append(f"redis: {self.redis.error or 'connecting'}")
        return out

    def status(self) -> dict:
        sessions = self.broker.manager.sessions.values()
        by_status: dict[str, int] = {}
        for s in sessions:
            by_status[s.status] = by_status.get(s.status, 0) + 1
        store = self.broker.store
        return {
            "status": "degraded" if self.problems() else "ok",
            "reasons": self.problems(),
            "version": __version__,
            "pid": os.getpid(),
            "mode": self.config.mode,
            "home": self.home,
            "socketPath": self.config.socket_path,
            "dashboard": self.http_urls,
            "uptimeMs": int((time.time() - self.started) * 1000),
            "sessions": len(self.broker.manager.sessions),
            "sessionsByStatus": by_status,
            "eventsStored": self.broker.counters["events"],
            "eventsBySource": dict(self.broker.by_source),
            "duplicates": self.broker.counters["duplicates"],
            "badLines": self.broker.counters["bad_lines"],
            "queueDepth": self.broker.queue_depth(),
            "subscribers": self.broker.subscriber_count(),
            "spoolBacklog": http.spool_backlog(self.home),
            "store": None if store is None else {"dir": store.dir, "bytes": store.size_bytes()},
            "redis": None if self.redis is None else self.redis.info(),
        }

    def metrics_text(self) -> str:
        b = self.broker
        lines = [
            "# HELP contextuate_events_in_total Events received, by source.",
            "# TYPE contextuate_events_in_total counter",
        ]
        for src, n in sorted(b.by_source.items()):
            lines.append(f'contextuate_events_in_total{{source="{src}"}} {n}')
        for name, key, help_ in (
            ("contextuate_events_stored_total", "events", "Events stored (after dedupe)."),
            ("contextuate_duplicates_total", "duplicates", "Events dropped as already stored."),
            ("contextuate_bad_lines_total", "bad_lines", "Socket lines rejected."),
            ("contextuate_dropped_clients_total", "dropped_subscribers", "Subscribers dropped for being slow."),
            ("contextuate_store_errors_total", "store_errors", "Failed store writes (retried)."),
            ("contextuate_rejected_events_total", "rejected", "Events the pipeline failed on (logged, refused)."),
            ("contextuate_bad_redis_messages_total", "bad_redis_messages", "Redis messages that were not events."),
        ):
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} counter", f"{name} {b.counters[key]}"]
        gauges = (
            ("contextuate_queue_depth", "Events waiting in the broker.", b.queue_depth()),
            ("contextuate_subscribers", "Live subscribers.", b.subscriber_count()),
            ("contextuate_sessions", "Sessions known.", len(b.manager.sessions)),
            ("contextuate_store_bytes", "Bytes of events on disk.", b.store.size_bytes() if b.store else 0),
            ("contextuate_spool_backlog", "Spooled events not yet ingested.", http.spool_backlog(self.home)),
            ("contextuate_up", "1 when healthy, 0 when degraded.", 0 if self.problems() else 1),
            ("contextuate_redis_connected", "1 when both Redis readers are connected.",
             int(bool(self.redis and self.redis.connected()))),
        )
        for name, help_, value in gauges:
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} gauge", f"{name} {value}"]
        lines += usage.metrics_lines((s.machine_id, s.usage) for s in b.manager.sessions.values())
        return "\n".join(lines) + "\n"


def read_pid(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None
