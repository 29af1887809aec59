"""The CLI's client for the daemon's HTTP API: one place that knows the address,
the token header and the JSON (every command that asks the daemon uses it)."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from contextuate_trio import config as config_mod
from contextuate_trio.core.access import needed_scope

DEFAULT_TIMEOUT = 2.0


def api_url(cfg: config_mod.Config, path: str) -> str:
    return config_mod.api_base(cfg) + path


def api_get(cfg: config_mod.Config, path: str, timeout: float = DEFAULT_TIMEOUT) -> Any:
    """GET ``path`` from the daemon as JSON. Raises ``urllib.error.HTTPError`` for an
    error status, ``OSError`` when the daemon cannot be reached, ``ValueError`` for
    an answer that is not JSON."""
    req = urllib.request.Request(api_url(cfg, path))
    token = cfg.server.client_token(needed_scope("GET", path.split("?", 1)[0]))
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())
