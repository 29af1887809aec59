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

import trio
from hypercorn.config import Config as HyperConfig
from starlette.routing import Route

from contextuate_trio import __version__
from contextuate_trio.config import Config, api_base, dashboard_url, no_token_warning
from contextuate_trio.core.redact import Redactor
from contextuate_trio.core.usage import PriceTable
from contextuate_trio.daemon import report
from contextuate_trio.daemon.http_front import HttpFront
from contextuate_trio.daemon.tokens import TokenWatcher
from contextuate_trio.hook import spool as hook_spool
from contextuate_trio.hook.paths import write_atomic
from contextuate_trio.runtime import gc_tuning
from contextuate_trio.runtime.alerts import Alerts
from contextuate_trio.runtime.broker import Broker
from contextuate_trio.runtime.clock import SYSTEM_MINT
from contextuate_trio.runtime.decisions import Decisions
from contextuate_trio.runtime.needs_you import NeedsYou
from contextuate_trio.runtime.otel_forward import Forwarder
from contextuate_trio.runtime.store import FileStore
from contextuate_trio.sources import http_hook, transcripts, unix_socket
from contextuate_trio.sources import spool as spool_source
from contextuate_trio.web.app import create_app
from contextuate_trio.web.state import WebState
from contextuate_trio.web.ws_server import WsServer

log = logging.getLogger("contextuate.daemon")

RETENTION_EVERY_S = 3600
KEEP_ALIVE_MAX_REQUESTS = 1 << 30


class AlreadyRunning(Exception):
    pass


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.home = config.home
        self.started = time.time()
        # Where the daemon keeps its files: the data dir, or the home without persistence.
        where = config.home
        store = None
        if config.persistence.enabled:
            assert config.persistence.dir is not None, "config.load resolves persistence.dir"
            where = config.persistence.dir
            store = FileStore(where)
        self.broker = Broker(
            store,
            started_ms=int(self.started * 1000),
            redactor=Redactor(config.redaction.patterns, config.redaction.enabled),
        )
        self.decisions = Decisions(self.broker, config.decisions.enabled, config.decisions.wait_ms)
        self.redis = None
        if config.mode == "redis":
            from contextuate_trio.sources.redis import RedisSource, checkpoint_file

            self.redis = RedisSource(self.broker, config.redis, checkpoint_file(where), self.decisions)
        self.relay = None
        if config.mode == "relay":  # local socket in, every stored event out to Redis
            from contextuate_trio.runtime import relay
            from contextuate_trio.sources.redis import backoff, describe, make_client

            assert store is not None, "config.load refuses relay mode without persistence"
            self.relay = relay.Relay(
                store,
                config.redis,
                config.relay,
                relay.checkpoint_file(where),
                connect=lambda: make_client(config.redis),
                backoff=backoff,
                server=describe(config.redis),
            )
            self.broker.on_stored.append(self.relay.wake)
        self.prices = PriceTable.from_config(config.pricing.models)
        # Local mode: the daemon shares the machine with the transcripts and reads them.
        # Redis mode: each machine's hook reads its own and sends the usage along.
        self.transcripts = None
        if config.mode in ("local", "relay"):
            self.transcripts = transcripts.TranscriptReader(self.broker, where)
        self.alerts = Alerts(
            config.alerts.webhooks,
            redactor=self.broker.redactor,
            dashboard_url=api_base(config) + "/",
            rate_per_minute=config.alerts.rate_limit_per_minute,
            retries=config.alerts.retries,
        )
        self.needs_you = NeedsYou(
            self.broker,
            int(config.alerts.stuck_after_seconds * 1000),
            self.alerts.notify if self.alerts.hooks else None,
        )
        self.alerts.still_waiting = self.needs_you.still_waiting
        # otel.forwardTo: what OTLP brings in, sent on to the person's own collector.
        self.otel_forward = None
        if config.otel.enabled and config.otel.forward_to:
            self.otel_forward = Forwarder(config.otel.forward_to, config.otel.forward_headers)
        self._sources_scope: trio.CancelScope | None = None
        self._stop_requested = False
        self.accepting = trio.Event()  # the socket is bound: /api/health may say ok
        self._lock_fd: int | None = None
        self.web = WebState(
            broker=self.broker,
            config=config,
            prices=self.prices,
            started=self.started,
            accepting=self.accepting,
            problems=self.problems,
            status=self.status,
            metrics=self.metrics_text,
            ws_port=self._ws_port,
            attention=lambda: self.decisions.decorate(self.needs_you.queue()),
            stuck_after_ms=lambda: self.needs_you.stuck_after_ms,
            machines=lambda: report.machines(self),
            otel_forward=self.otel_forward.offer if self.otel_forward is not None else None,
            decisions=self.decisions,
        )
        self.ws = WsServer(self.web)
        self.tokens = TokenWatcher(self.web.guard, config.home, config.path)
        self.ws_url: str | None = None

    # --- paths --------------------------------------------------------------------
    @property
    def spool_dir(self) -> str:
        return hook_spool.spool_dir(self.home)

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
        write_atomic(self.pid_path, f"{os.getpid()}\n".encode())

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
            loaded = self.broker.load(SYSTEM_MINT)
            log.info(
                "contextuate-trio %s: %d sessions loaded from %s",
                __version__,
                loaded,
                self.config.persistence.dir if self.broker.store else "(persistence off)",
            )
            self.broker.prune(self.config.persistence.retention_days)
            warning = no_token_warning(self.config)
            if warning is not None:
                log.warning("%s", warning)
            gc_tuning.settle_after_start()
            async with trio.open_nursery() as outer:
                # Signals first: a SIGTERM that arrives while starting is not lost.
                await outer.start(self._signals)
                await outer.start(self.broker.run)
                await outer.start(self.needs_you.run)
                await outer.start(self.decisions.run)
                await outer.start(self.tokens.run)
                if self.alerts.hooks:
                    await outer.start(self.alerts.run)
                if self.relay is not None:
                    await outer.start(self.relay.run)
                if self.otel_forward is not None:
                    await outer.start(self.otel_forward.run)
                self.ws_url = await outer.start(self.ws.serve)  # before HTTP: healthy means both
                self.web.http_urls[:] = await outer.start(self._serve_http)
                with trio.CancelScope() as sources:
                    self._sources_scope = sources
                    if self._stop_requested:
                        sources.cancel()
                    async with trio.open_nursery() as inner:
                        await inner.start(
                            unix_socket.serve,
                            self.broker,
                            self.config.socket_path,
                            self.config.max_line_bytes,
                            self.decisions,
                        )
                        self.accepting.set()  # healthy from here: hooks can deliver
                        inner.start_soon(spool_source.run, self.broker, self.spool_dir)
                        if self.transcripts is not None:
                            await inner.start(self.transcripts.run)
                        if self.redis is not None:
                            inner.start_soon(self.redis.run)
                        inner.start_soon(self._retention)
                        log.info(
                            "ready: socket %s, dashboard %s", self.config.socket_path, ", ".join(self.web.http_urls)
                        )
                        if self.web.guard.needs_token:  # the Jupyter way: a URL that logs in (0600 log)
                            log.info("open the dashboard with its token: %s", dashboard_url(self.config))
                        task_status.started(self)
                log.info("stopping: storing what is already in the broker")
                self.broker.stop_taking()  # run() ends once the queue is drained
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
        # hypercorn closes a kept-alive connection after 1,000 requests by default: a
        # hook sender (Claude Code's http hooks, a relay) would reconnect for nothing.
        hc.keep_alive_max_requests = KEEP_ALIVE_MAX_REQUESTS
        intake = http_hook.HookIntake(
            self.broker, self.web.guard, self.config.max_line_bytes, self.web.dashboard_ports
        )  # Claude Code http hooks: served by the front itself (see http_front)
        # ... and by the app, for hooks on a connection already handed to hypercorn.
        hooks = Route(http_hook.PATH, http_hook.endpoint(intake), methods=["POST"])
        front = HttpFront(create_app(self.web, [hooks]), hc, intake)
        await front.serve(task_status=task_status)

    def _ws_port(self) -> int:
        return self.ws.bound_port or self.config.server.ws_port

    # --- what the API reports (see ``report``) ----------------------------------------
    def problems(self) -> list[str]:
        return report.problems(self)

    def status(self) -> dict:
        return report.status(self)

    def metrics_text(self) -> str:
        return report.metrics_text(self)


def read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None
