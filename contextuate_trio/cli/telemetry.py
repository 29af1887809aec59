"""``hooks install --otel``: Claude Code's own OpenTelemetry, pointed at the daemon.

Claude Code reads environment variables from its settings' ``env`` object. With
``--otel`` we add the block that turns its telemetry on and exports logs, metrics and
traces over OTLP/HTTP to the daemon (``server.port``: ``/v1/logs`` …), names this
machine in ``OTEL_RESOURCE_ATTRIBUTES`` (``host.name``, the machine id the hooks
use), and, when the daemon wants a token, sends the config's ``otel`` token, of scope
``ingest`` (event intake only: it reads nothing), made when missing: never
``server.token`` nor any token that can read or act (the settings are a file other
programs read, and may be shared). ``CONTEXTUATE_OTEL_KEYS`` lists the keys
we wrote: ``hooks uninstall`` removes exactly those, and a key the person had set
to something else is never overwritten (it is reported instead).

Plain functions on dicts (``otel_env``, ``install_env``, ``uninstall_env``,
``check``), tested directly; ``hooks.py`` calls them. ``otel_env`` alone touches the
config (``cli.tokens.ingest_token``), and only when a token is wanted.
"""

from __future__ import annotations

import copy
import hmac
import sys
import urllib.parse
from collections.abc import Iterable
from typing import Any

from contextuate_trio import config as config_mod
from contextuate_trio.cli import tokens as tokens_mod
from contextuate_trio.core.access import ApiToken, Scope

MARKER = "CONTEXTUATE_OTEL_KEYS"
# How often Claude Code exports: its defaults are 60 s (metrics) and 5 s (logs); a
# monitor wants them sooner. Milliseconds.
METRIC_INTERVAL_MS = 10_000
LOGS_INTERVAL_MS = 2_000
TRACES_INTERVAL_MS = 2_000


def otel_env(endpoint: str, machine: str, token: str | None, traces: bool = True) -> dict[str, str]:
    """The env block: telemetry on, OTLP/HTTP (protobuf) to ``endpoint``. ``token``:
    set when the daemon wants one; the header then carries the ``otel`` ingest token
    (``ingest_header_token``), never ``token`` itself (it may be ``server.token``)."""
    env = {
        "CLAUDE_CODE_ENABLE_TELEMETRY": "1",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_LOGS_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint.rstrip("/"),
        "OTEL_METRIC_EXPORT_INTERVAL": str(METRIC_INTERVAL_MS),
        "OTEL_LOGS_EXPORT_INTERVAL": str(LOGS_INTERVAL_MS),
        "OTEL_RESOURCE_ATTRIBUTES": f"host.name={_attr(machine)}",
    }
    if traces:  # spans: a turn's timeline (Claude Code's beta)
        env.update(
            CLAUDE_CODE_ENHANCED_TELEMETRY_BETA="1",
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_TRACES_EXPORT_INTERVAL=str(TRACES_INTERVAL_MS),
        )
    secret = ingest_header_token() if token else None
    if secret:
        env["OTEL_EXPORTER_OTLP_HEADERS"] = f"Authorization=Bearer {secret}"
    return env


def ingest_header_token() -> str | None:
    """The config's ``otel`` token (scope ``ingest``), added to the config when missing;
    None (said on stderr: Claude Code's exports are then refused, 401) when it cannot be."""
    try:
        secret = tokens_mod.ingest_token()
    except (config_mod.ConfigError, OSError, ValueError) as exc:
        print(
            f"  warning: no ingest token for Claude Code's OpenTelemetry ({exc}); "
            "OTEL_EXPORTER_OTLP_HEADERS is not written",
            file=sys.stderr,
        )
        return None
    if secret:
        print(
            f"  otel:    token {tokens_mod.OTEL_TOKEN_NAME!r} (scope ingest: sends events, reads nothing) "
            "in OTEL_EXPORTER_OTLP_HEADERS",
            file=sys.stderr,
        )
    return secret


def header_token(header: str) -> str | None:
    """The bearer token an ``OTEL_EXPORTER_OTLP_HEADERS`` value carries
    (``k=v,k2=v2``, values percent-encoded as the OTel SDKs read them)."""
    for part in header.split(","):
        key, sep, value = part.partition("=")
        if sep and urllib.parse.unquote(key).strip().lower() == "authorization":
            value = urllib.parse.unquote(value).strip()
            if value.startswith("Bearer "):
                return value[len("Bearer ") :].strip()
    return None


def _attr(value: str) -> str:
    """A value of OTEL_RESOURCE_ATTRIBUTES (W3C Baggage: ``,`` ``=`` and spaces escaped)."""
    return "".join(c if c.isalnum() or c in "-._~:@" else f"%{ord(c):02X}" for c in value)


def ours(settings: Any) -> dict[str, str]:
    """The env keys we wrote (and their values now)."""
    env = settings.get("env") if isinstance(settings, dict) else None
    if not isinstance(env, dict) or not isinstance(env.get(MARKER), str):
        return {}
    return {k: env[k] for k in env[MARKER].split(",") if k and k in env}


def install_env(settings: dict, wanted: dict[str, str]) -> tuple[dict, list[str]]:
    """The settings with ``wanted`` in their ``env`` (ours replaced), and the keys left
    alone because the person set them to something else."""
    new = copy.deepcopy(settings)
    env = new.get("env")
    if env is None:
        env = new["env"] = {}
    if not isinstance(env, dict):
        raise ValueError('"env" in the settings is not an object')
    mine = set(ours(settings))
    for k in mine - set(wanted):  # ours from an earlier install, not wanted now
        env.pop(k, None)
    conflicts = []
    written = []
    for k, v in wanted.items():
        if k in env and k not in mine and env[k] != v:
            conflicts.append(k)
            continue
        if k not in env or k in mine:
            written.append(k)
        env[k] = v
    if written:
        env[MARKER] = ",".join(sorted(written))
    else:
        env.pop(MARKER, None)
    return new, conflicts


def uninstall_env(settings: dict) -> tuple[dict, int]:
    """The settings without the env keys we wrote; (settings, how many removed)."""
    mine = ours(settings)
    env = settings.get("env") if isinstance(settings, dict) else None
    if not isinstance(env, dict) or MARKER not in env:
        return settings, 0
    new = copy.deepcopy(settings)
    for k in [*mine, MARKER]:
        new["env"].pop(k, None)
    if not new["env"]:
        del new["env"]
    return new, len(mine)


def check(settings: Any, endpoint: str, tokens: Iterable[ApiToken] = ()) -> list[tuple[str, str]]:
    """What ``doctor`` says of the wiring: (level, text) with level ok / warn / info.
    ``tokens``: the daemon's (``server.token`` with every scope among them); none: the
    daemon wants none."""
    mine = ours(settings)
    if not mine:
        return [("info", "Claude Code's OpenTelemetry is not sent here (`hooks install --otel` wires it)")]
    out = []
    env = settings["env"]
    got = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").rstrip("/")
    if env.get("CLAUDE_CODE_ENABLE_TELEMETRY") != "1":
        out.append(("warn", "CLAUDE_CODE_ENABLE_TELEMETRY is not 1: Claude Code exports nothing"))
    if got != endpoint.rstrip("/"):
        out.append(("warn", f"OTEL_EXPORTER_OTLP_ENDPOINT is {got or '(unset)'}, the daemon is {endpoint}"))
    if not (env.get("OTEL_LOGS_EXPORTER") or "").startswith("otlp"):
        out.append(("warn", "OTEL_LOGS_EXPORTER is not otlp: no api_request records (cost falls back to metrics)"))
    header = env.get("OTEL_EXPORTER_OTLP_HEADERS")
    sent = header_token(header) if isinstance(header, str) else None
    known = list(tokens)
    held = next((t for t in known if sent and hmac.compare_digest(sent.encode(), t.secret.encode())), None)
    if held is not None and held.scopes - {Scope.INGEST}:
        scopes = ", ".join(sorted(s.value for s in held.scopes))
        out.append(
            (
                "warn",
                f"OTEL_EXPORTER_OTLP_HEADERS holds the token {held.name!r} ({scopes}): more than Claude Code's "
                "telemetry needs, in a file other programs read; `hooks install --otel` writes an ingest-only one",
            )
        )
    elif known and held is None:
        out.append(("warn", "the daemon wants a token and OTEL_EXPORTER_OTLP_HEADERS does not send one it knows (401)"))
    if not out:
        out.append(("ok", f"Claude Code sends its OpenTelemetry to {got} ({len(mine)} env settings)"))
    return out
