"""The CLI's client for the daemon's HTTP API: one place that knows the address,
the token header and the JSON (every command that asks the daemon uses it)."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from contextuate_trio import config as config_mod

DEFAULT_TIMEOUT = 2.0


def api_url(cfg: config_mod.Config, path: str) -> str:
    return config_mod.api_base(cfg) + path


def api_get(cfg: config_mod.Config, path: str, timeout: float = DEFAULT_TIMEOUT) -> Any:
    """GET ``path`` from the daemon as JSON. Raises ``urllib.error.HTTPError`` for an
    error status, ``OSError`` when the daemon cannot be reached, ``ValueError`` for
    an answer that is not JSON."""
    req = urllib.request.Request(api_url(cfg, path))
    if cfg.server.token:
        req.add_header("Authorization", f"Bearer {cfg.server.token}")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())
