"""``hooks install --otel``: Claude Code's own OpenTelemetry, pointed at the daemon.

Claude Code reads environment variables from its settings' ``env`` object. With
``--otel`` we add the block that turns its telemetry on and exports logs, metrics and
traces over OTLP/HTTP to the daemon (``server.port``: ``/v1/logs`` …), names this
machine in ``OTEL_RESOURCE_ATTRIBUTES`` (``host.name``, the machine id the hooks
use), and sends the token when one is set. ``CONTEXTUATE_OTEL_KEYS`` lists the keys
we wrote: ``hooks uninstall`` removes exactly those, and a key the person had set
to something else is never overwritten (it is reported instead).

Plain functions on dicts (``otel_env``, ``install_env``, ``uninstall_env``,
``check``), tested directly; ``hooks.py`` calls them.
"""

from __future__ import annotations

import copy
from typing import Any

MARKER = "CONTEXTUATE_OTEL_KEYS"
# How often Claude Code exports: its defaults are 60 s (metrics) and 5 s (logs); a
# monitor wants them sooner. Milliseconds.
METRIC_INTERVAL_MS = 10_000
LOGS_INTERVAL_MS = 2_000
TRACES_INTERVAL_MS = 2_000


def otel_env(endpoint: str, machine: str, token: str | None, traces: bool = True) -> dict[str, str]:
    """The env block: telemetry on, OTLP/HTTP (protobuf) to ``endpoint``."""
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
    if token:
        env["OTEL_EXPORTER_OTLP_HEADERS"] = f"Authorization=Bearer {token}"
    return env


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


def check(settings: Any, endpoint: str, token: str | None) -> list[tuple[str, str]]:
    """What ``doctor`` says of the wiring: (level, text) with level ok / warn / info."""
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
    header = env.get("OTEL_EXPORTER_OTLP_HEADERS", "")
    if token and f"Bearer {token}" not in header:
        out.append(("warn", "the daemon wants a token and OTEL_EXPORTER_OTLP_HEADERS does not send it (401)"))
    if not out:
        out.append(("ok", f"Claude Code sends its OpenTelemetry to {got} ({len(mine)} env settings)"))
    return out
