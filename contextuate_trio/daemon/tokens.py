"""The tokens in force follow the config file: ``contextuate-trio token add|revoke``
edit it, and the running daemon takes the new set within a second (a revoked token
stops working without a restart). Only the tokens change this way; a config that no
longer loads keeps the tokens in force, with a warning."""

from __future__ import annotations

import logging
import os

import trio

from contextuate_trio import config as config_mod
from contextuate_trio.core.access import Guard

log = logging.getLogger("contextuate.tokens")

CHECK_EVERY_S = 1.0


class TokenWatcher:
    def __init__(self, guard: Guard, home: str, path: str) -> None:
        self.guard = guard
        self.path = path
        # This config file, whatever the environment says now.
        self.env = {**os.environ, "CONTEXTUATE_HOME": home, "CONTEXTUATE_CONFIG": path}
        self.seen = self._stamp()

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def check(self) -> bool:
        """Reload the tokens if the file changed (blocking: run in a thread). True
        when the guard got a new set."""
        stamp = self._stamp()
        if stamp == self.seen:
            return False
        self.seen = stamp
        try:
            cfg, _ = config_mod.load(self.env)
        except config_mod.ConfigError as exc:
            log.warning("the config changed but cannot be used; the tokens stay as they were: %s", exc)
            return False
        before = {t.name for t in self.guard.tokens}
        self.guard.set_tokens(cfg.server.token, cfg.server.api_tokens())
        after = {t.name for t in self.guard.tokens}
        log.info(
            "tokens reloaded from %s: %s", self.path, ", ".join(sorted(after)) or "none (the API is open on loopback)"
        )
        if before - after:
            log.info("tokens no longer accepted: %s", ", ".join(sorted(before - after)))
        return True

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(CHECK_EVERY_S)
            await trio.to_thread.run_sync(self.check)
