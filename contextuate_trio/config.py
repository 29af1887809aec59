"""The daemon's configuration: JSON with camelCase keys, deep-merged over defaults.

A value of the wrong type or outside its set stops the daemon with one message that
names the file and the key. Keys we do not know are reported as warnings and
ignored, so a config written for the original Node contextuate monitor still loads.
"""

from __future__ import annotations

import json
import os
import re
import types
from typing import Any, Literal

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from contextuate_trio.core.access import ApiToken, Scope, parse_scopes
from contextuate_trio.core.names import camel
from contextuate_trio.hook import paths as hook_paths
from contextuate_trio.hook.process import DEFAULT_TIMEOUT_MS


class ConfigError(Exception):
    """The config cannot be used; the message names the file and the key."""


def _port(instance, attribute, value):
    if not 0 <= value <= 65535:
        raise ValueError(f"{value} is not a TCP port (0-65535)")


def _positive(instance, attribute, value):
    if value is not None and value <= 0:
        raise ValueError(f"{value} must be greater than 0")


def _non_negative(instance, attribute, value):
    if value < 0:
        raise ValueError(f"{value} must be 0 or more")


def _http_url(instance, attribute, value):
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        _ = parts.port  # raises on a port that is not a number
    except ValueError:
        raise ValueError("not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # Not the URL itself in the message: webhook URLs often hold their token.
        raise ValueError("must be an http:// or https:// URL with a host")


def _host_ports(value: list[str]) -> None:
    for node in value:
        host, sep, port = node.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
            raise ValueError(f'{node!r} is not "host:port"')


TokenScope = Literal["read", "ingest", "decide", "admin"]
# A token's name: what ``token add|revoke`` take and what a decision event records.
TOKEN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@attrs.define
class TokenConfig:
    # One named token of ``server.tokens`` (``contextuate-trio token add|list|revoke``).
    name: str
    token: str = attrs.field(metadata={"secret": True})
    scopes: list[TokenScope] = attrs.Factory(lambda: ["read"])


@attrs.define
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = attrs.field(default=3847, validator=_port)
    ws_port: int = attrs.field(default=3848, validator=_port)
    # One token with every scope (as before named tokens); ``tokens``: named, scoped.
    token: str | None = None
    tokens: list[TokenConfig] = attrs.Factory(list)
    allowed_hosts: list[str] = attrs.Factory(list)

    @property
    def has_token(self) -> bool:
        """Some token is set: the API and WebSocket refuse anonymous clients."""
        return bool(self.token) or any(t.token for t in self.tokens)

    def api_tokens(self) -> tuple[ApiToken, ...]:
        """``server.tokens`` as the guard holds them (``server.token`` is added by it)."""
        return tuple(ApiToken(t.name, t.token, parse_scopes(t.scopes)) for t in self.tokens if t.token)

    def client_token(self, scope: Scope | None = Scope.READ) -> str | None:
        """A token of this config that holds ``scope`` (for the CLI's own calls):
        ``server.token``, else the first named token with it; None without one."""
        if self.token:
            return self.token
        wanted = scope or Scope.READ
        for t in self.api_tokens():
            if wanted in t.scopes:
                return t.secret
        return None


@attrs.define
class HookConfig:
    timeout_ms: int = attrs.field(default=DEFAULT_TIMEOUT_MS, validator=_positive)


@attrs.define
class RedisConfig:
    host: str = "localhost"
    port: int = attrs.field(default=6379, validator=_port)
    password: str | None = None
    username: str | None = None
    db: int = 0
    channel: str = "contextuate:events"
    tls: bool = False
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    url: str | None = None
    stream: str = "contextuate:events:stream"
    stream_max_len: int = attrs.field(default=1_000_000, validator=_positive)
    # This machine's id in Redis mode (its stream is ``<stream>:{<machineId>}``); the
    # hook's default is $CONTEXTUATE_MACHINE_ID, then the host name. Set it with the
    # ACL user ``contextuate-trio fleet add-machine`` makes: that user may write no other.
    machine_id: str | None = None
    # A Redis Cluster: ``cluster`` true takes host/port (or url) as its seed node;
    # ``nodes`` ("host:port" each) lists seed nodes and implies ``cluster``. The
    # daemon reads through redis-py's cluster client; the hook follows MOVED/ASK itself.
    cluster: bool = False
    nodes: list[str] = attrs.field(factory=list, validator=lambda i, a, v: _host_ports(v))

    @property
    def is_cluster(self) -> bool:
        return self.cluster or bool(self.nodes)

    def seed_nodes(self) -> list[tuple[str, int]]:
        """The cluster's seed nodes: ``nodes``, or the section's host and port."""
        if self.nodes:
            return [(h.strip("[]"), int(p)) for h, _, p in (n.rpartition(":") for n in self.nodes)]
        return [(self.host, self.port)]


# A machine's name (its id in Redis mode, its stream's and its ACL user's): what
# ``fleet add-machine`` accepts and what a monitor reads from the registry.
MACHINE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@attrs.define
class RelayConfig:
    # Relay mode (runtime/relay.py): how it forwards what is stored to Redis.
    batch_max: int = attrs.field(default=500, validator=_positive)  # events per round trip
    retry_max_seconds: float = attrs.field(default=10, validator=_positive)  # the longest wait between attempts
    # /api/health is degraded when Redis has been unreachable this long, or when more
    # events than backlogMax are stored but not yet forwarded.
    degraded_after_seconds: float = attrs.field(default=30, validator=_positive)
    backlog_max: int = attrs.field(default=100_000, validator=_positive)


@attrs.define
class PersistenceConfig:
    enabled: bool = True
    type: Literal["file"] = "file"
    dir: str | None = None
    retention_days: float | None = attrs.field(default=30, validator=_positive)


@attrs.define
class RedactionConfig:
    enabled: bool = True
    patterns: list[str] = attrs.Factory(list)  # extra regexes whose matches are masked


def _prices(instance, attribute, value):
    from contextuate_trio.core.usage import price_problems

    problems = price_problems(value)
    if problems:
        raise ValueError("; ".join(problems))


@attrs.define
class PricingConfig:
    # Model id prefix -> USD per million tokens ({"input", "output", "cacheWrite5m",
    # "cacheWrite1h", "cacheRead"}, and "webSearch" per 1000), layered over the built-in
    # table in usage.py; null removes a built-in entry.
    models: dict = attrs.field(factory=dict, validator=_prices)


# What puts a session in the "needs you" queue (the queue's item ``reason``).
AlertReason = Literal["permission", "elicitation", "idle", "input", "failure", "stuck"]
ALERT_REASONS: tuple[str, ...] = ("permission", "elicitation", "idle", "input", "failure", "stuck")


@attrs.define
class WebhookConfig:
    # "secret": an error message does not repeat the value (a URL's path is often its token).
    url: str = attrs.field(validator=_http_url, metadata={"secret": True})
    format: Literal["json", "slack", "ntfy"] = "json"
    # Sent with every request (e.g. Authorization).
    headers: dict[str, str] = attrs.field(factory=dict, metadata={"secret": True})
    reasons: list[AlertReason] | None = None  # null: every reason


@attrs.define
class AlertsConfig:
    # Outgoing alerts for the "needs you" queue (runtime/alerts.py).
    webhooks: list[WebhookConfig] = attrs.Factory(list)
    # A session working without an event for this long is "stuck" (used by the queue).
    stuck_after_seconds: float = attrs.field(default=600, validator=_positive)
    rate_limit_per_minute: int = attrs.field(default=10, validator=_positive)  # per webhook
    retries: int = attrs.field(default=5, validator=_non_negative)


def _http_url_or_none(instance, attribute, value):
    if value is not None:
        _http_url(instance, attribute, value)


def _header_fields(value: dict[str, str]) -> None:
    """HTTP header names and values as HTTP allows them (visible ASCII, no CR/LF)."""
    for name, text in value.items():
        if not (name.isascii() and name.isprintable() and name and " " not in name and ":" not in name):
            raise ValueError(f"{name!r} is not an HTTP header name")
        if not (text.isascii() and text.isprintable()):
            raise ValueError(f"the value of {name!r} must be printable ASCII")


@attrs.define
class OtelConfig:
    # Claude Code's own OpenTelemetry, received on server.port (web/routes/otlp.py).
    enabled: bool = True
    # The largest OTLP request body, before and after gzip (413 beyond it).
    max_body_bytes: int = attrs.field(default=8 * 1024 * 1024, validator=_positive)
    # Also send what is received, as received, to this OTLP/HTTP collector (its base
    # URL: /v1/logs etc. are added), e.g. "http://otel-collector:4318".
    forward_to: str | None = attrs.field(default=None, validator=_http_url_or_none, metadata={"secret": True})
    forward_headers: dict[str, str] = attrs.field(
        factory=dict, validator=lambda i, a, v: _header_fields(v), metadata={"secret": True}
    )


@attrs.define
class DecisionsConfig:
    # Answer Claude Code's permission prompts (and MCP servers' questions) from the
    # dashboard: off unless set. With it on, a PermissionRequest hook waits up to
    # waitMs for an answer; none by then, and Claude Code asks as it would anyway.
    enabled: bool = False
    wait_ms: int = attrs.field(default=30_000, validator=_positive)


@attrs.define
class Config:
    # "relay": hooks in on the local socket (as "local"), every stored event out to Redis.
    mode: Literal["local", "redis", "relay"] = "local"
    socket_path: str | None = None
    server: ServerConfig = attrs.Factory(ServerConfig)
    hook: HookConfig = attrs.Factory(HookConfig)
    redis: RedisConfig = attrs.Factory(RedisConfig)
    relay: RelayConfig = attrs.Factory(RelayConfig)
    persistence: PersistenceConfig = attrs.Factory(PersistenceConfig)
    redaction: RedactionConfig = attrs.Factory(RedactionConfig)
    pricing: PricingConfig = attrs.Factory(PricingConfig)
    alerts: AlertsConfig = attrs.Factory(AlertsConfig)
    otel: OtelConfig = attrs.Factory(OtelConfig)
    decisions: DecisionsConfig = attrs.Factory(DecisionsConfig)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Longest line accepted on the socket; a longer one is rejected and logged.
    max_line_bytes: int = attrs.field(default=16 * 1024 * 1024, validator=_positive)
    # Resolved locations (not read from the file).
    home: str = attrs.field(default="", metadata={"internal": True})
    path: str = attrs.field(default="", metadata={"internal": True})


_SECTIONS = (
    TokenConfig,
    ServerConfig,
    HookConfig,
    RedisConfig,
    RelayConfig,
    PersistenceConfig,
    RedactionConfig,
    PricingConfig,
    WebhookConfig,
    AlertsConfig,
    OtelConfig,
    DecisionsConfig,
    Config,
)
# Objects whose keys are the user's own (model names), not ours to warn about.
_FREE_FORM = ("pricing.models",)
# Lists of objects: each item's keys are checked against this class's.
_ITEM_CLASSES = {"alerts.webhooks": WebhookConfig, "server.tokens": TokenConfig}


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=False)
    for cls in _SECTIONS:
        # Values are AttributeOverride; typed Any because mypy matches ``**names``
        # against the hook factories' ``_cattrs_*`` keyword parameters too.
        names: dict[str, Any] = {
            a.name: override(rename=camel(a.name), omit=bool(a.metadata.get("internal"))) for a in attrs.fields(cls)
        }
        conv.register_structure_hook(cls, make_dict_structure_fn(cls, conv, **names))
        conv.register_unstructure_hook(cls, make_dict_unstructure_fn(cls, conv, **names))
    return conv


converter = _make_converter()


def defaults_dict() -> dict:
    return converter.unstructure(Config())


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def unknown_keys(defaults: dict, given: dict, prefix: str = "") -> list[str]:
    found = []
    for key, value in given.items():
        if key not in defaults:
            found.append(prefix + key)
        elif prefix + key in _FREE_FORM:
            continue
        elif isinstance(value, dict) and isinstance(defaults[key], dict):
            found += unknown_keys(defaults[key], value, prefix + key + ".")
        elif isinstance(value, list) and prefix + key in _ITEM_CLASSES:
            known = {camel(a.name) for a in attrs.fields(_ITEM_CLASSES[prefix + key])}
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    found += [f"{prefix}{key}[{i}].{k}" for k in item if k not in known]
    return found


_PATH_RE = re.compile(r"@ \$((?:\.[A-Za-z0-9_]+|\[[^\]]*\])*)")


def _describe(exc: Exception, file: str) -> str:
    """One readable line per problem, e.g. ``f.json: server.port: expected int``."""
    lines = []
    for msg in cattrs.transform_error(exc, path="$"):
        text, _, where = msg.rpartition(" @ ")
        key = where.lstrip("$").lstrip(".") or "(top level)"
        lines.append(f"{file}: key {key!r}: {text}")
    return "\n".join(lines) if lines else f"{file}: {exc}"


def load(env: dict | None = None) -> tuple[Config, list[str]]:
    """The config for this environment, and warnings worth logging."""
    env = dict(os.environ if env is None else env)
    home = os.path.abspath(os.path.expanduser(hook_paths.home_dir(env)))
    path = hook_paths.config_path(env, home)
    warnings: list[str] = []
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raw = None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config: {exc.strerror}") from None
    given: Any = {}
    if raw is not None:
        try:
            given = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid JSON: {exc}") from None
        if not isinstance(given, dict):
            raise ConfigError(f"{path}: the config must be a JSON object")
    defaults = defaults_dict()
    warnings += [f"{path}: unknown key {k!r} ignored" for k in unknown_keys(defaults, given)]
    merged = deep_merge(defaults, given)
    try:
        cfg = _structure_strict(merged)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except Exception as exc:  # cattrs raises exception groups of the problems
        raise ConfigError(_describe(exc, path)) from None
    for i, pattern in enumerate(cfg.redaction.patterns):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"{path}: key 'redaction.patterns[{i}]': not a valid regex: {exc}") from None
    if cfg.mode == "relay" and not cfg.persistence.enabled:
        raise ConfigError(
            f"{path}: key 'mode': \"relay\" forwards what is stored on disk: it needs persistence.enabled"
        )
    cfg.home = home
    cfg.path = path
    cfg.socket_path = os.path.expanduser(cfg.socket_path or os.path.join(home, hook_paths.SOCKET_NAME))
    cfg.persistence.dir = os.path.expanduser(cfg.persistence.dir or os.path.join(home, "data"))
    _check_tokens(cfg.server.tokens, path)
    if cfg.server.host not in LOOPBACK_HOSTS and not cfg.server.has_token:
        warnings.append(
            f"{path}: server.host is {cfg.server.host!r}: the dashboard and API are reachable "
            "from other machines without a token; add one (`contextuate-trio token add`) or bind 127.0.0.1"
        )
    return cfg, warnings


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def no_token_warning(cfg: Config) -> str | None:
    """What the daemon logs and ``doctor`` says when the config holds no token (a
    config written by hand, or by the original Node monitor): open on loopback."""
    if cfg.server.has_token:
        return None
    return (
        f"{cfg.path}: no token (server.token, server.tokens): any local user can read events "
        "through the API and WebSocket; add one with `contextuate-trio token add NAME`"
    )


def _check_tokens(tokens: list[TokenConfig], path: str) -> None:
    """Names unique and well formed; the token itself not empty (not shown: a secret)."""
    seen: set[str] = set()
    for i, t in enumerate(tokens):
        if not TOKEN_NAME_RE.match(t.name):
            raise ConfigError(
                f"{path}: key 'server.tokens[{i}].name': {t.name!r} is not a token name (A-Z a-z 0-9 . _ -)"
            )
        if t.name in seen:
            raise ConfigError(f"{path}: key 'server.tokens[{i}].name': {t.name!r} is used twice")
        seen.add(t.name)
        if not t.token:
            raise ConfigError(f"{path}: key 'server.tokens[{i}].token': empty")


_strict = cattrs.Converter(forbid_extra_keys=False)


def _structure_strict(merged: dict) -> Config:
    """Structure with type checks: cattrs converts ``"3847"`` to 3847; we refuse it."""
    _check_types(Config, merged, "")
    return converter.structure(merged, Config)


def _check_types(cls, data: dict, prefix: str) -> None:
    import typing

    for a in attrs.fields(cls):
        if a.metadata.get("internal"):
            continue
        key = camel(a.name)
        if key not in data:
            continue
        value = data[key]
        where = prefix + key
        tp = a.type
        if isinstance(tp, str):
            tp = typing.get_type_hints(cls)[a.name]
        if attrs.has(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"key {where!r}: expected an object, got {value!r}")
            _check_types(tp, value, where + ".")
            continue
        item_tp = typing.get_args(tp)[0] if typing.get_origin(tp) is list else None
        if item_tp is not None and attrs.has(item_tp):
            # Not the value in these messages: it may hold a webhook's URL.
            if not isinstance(value, list):
                raise ConfigError(f"key {where!r}: expected a list of objects, got {_kind(value)}")
            for i, item in enumerate(value):
                if not isinstance(item, dict):
                    raise ConfigError(f"key '{where}[{i}]': expected an object, got {_kind(item)}")
                _check_required(item_tp, item, f"{where}[{i}].")
                _check_types(item_tp, item, f"{where}[{i}].")
            continue
        if not _matches(tp, value):
            shown = _kind(value) if a.metadata.get("secret") else repr(value)
            raise ConfigError(f"key {where!r}: expected {_type_name(tp)}, got {shown}")
        if a.validator is not None:
            try:
                a.validator(None, a, value)
            except ValueError as exc:
                raise ConfigError(f"key {where!r}: {exc}") from None


def _kind(value) -> str:
    """A value named by its JSON type only (for values that may be secrets)."""
    if value is None:
        return "null"
    return {
        bool: "true/false",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def _check_required(cls, data: dict, prefix: str) -> None:
    """Keys without a default (a webhook's ``url``) must be given."""
    for a in attrs.fields(cls):
        if a.default is attrs.NOTHING and camel(a.name) not in data:
            raise ConfigError(f"key {prefix + camel(a.name)!r}: required")


def _matches(tp, value) -> bool:
    import typing

    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(t, value) for t in typing.get_args(tp))
    if origin is Literal:
        return value in typing.get_args(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(_matches(item, v) for v in value)
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        return isinstance(value, dict) and all(_matches(key_tp, k) and _matches(value_tp, v) for k, v in value.items())
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, tp)


def _type_name(tp) -> str:
    import typing

    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(t) for t in typing.get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(v) for v in typing.get_args(tp))
    if origin is list:
        return "a list of items that are each " + _type_name(typing.get_args(tp)[0])
    if origin is dict:
        return "an object whose values are each " + _type_name(typing.get_args(tp)[1])
    return {
        type(None): "null",
        bool: "true/false",
        int: "an integer",
        float: "a number",
        str: "a string",
    }.get(tp, getattr(tp, "__name__", str(tp)))


def public_dict(cfg: Config) -> dict:
    """The config as the API shows it: secrets replaced by a marker."""
    data = converter.unstructure(cfg)
    if data["server"].get("token"):
        data["server"]["token"] = "***"
    for t in data["server"]["tokens"]:
        t["token"] = "***"
    if data["redis"].get("password"):
        data["redis"]["password"] = "***"
    if data["redis"].get("url"):
        data["redis"]["url"] = re.sub(r"//[^@/]*@", "//***@", data["redis"]["url"])
    for hook in data["alerts"]["webhooks"]:
        # A webhook's path (Slack's, an ntfy topic) and its headers are its credentials.
        hook["url"] = webhook_origin(hook["url"]) + "/***"
        hook["headers"] = {k: "***" for k in hook["headers"]}
    if data["otel"].get("forwardTo"):
        data["otel"]["forwardTo"] = webhook_origin(data["otel"]["forwardTo"])
    data["otel"]["forwardHeaders"] = {k: "***" for k in data["otel"]["forwardHeaders"]}
    data["home"] = cfg.home
    data["path"] = cfg.path
    return data


def load_or_report(warn: bool = True) -> Config | None:
    """For commands: the config, or None after saying on stderr why it cannot be used
    (the command then exits 2). Warnings (unknown keys…) are printed too."""
    import sys

    try:
        cfg, warnings = load()
    except ConfigError as exc:
        print(f"contextuate-trio: {exc}", file=sys.stderr)
        return None
    if warn:
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
    return cfg


def webhook_origin(url: str) -> str:
    """``scheme://host[:port]`` of a webhook URL: what logs, metrics and the API may
    show (the path and query often hold the token; so may a user:password@)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def dashboard_url(cfg: Config, token: str | None = None) -> str:
    """The dashboard's URL, with a token in its fragment (``#token=…``; by default a
    ``read`` one of this config): a browser never sends the fragment, so it reaches no
    access log, and the page moves it into the tab's storage and out of the address bar."""
    from urllib.parse import quote

    token = token or cfg.server.client_token(Scope.READ)
    return api_base(cfg) + "/" + (f"#token={quote(token, safe='')}" if token else "")


def api_base(cfg: Config) -> str:
    """``http://host:port`` where a local client reaches this config's daemon (a
    wildcard bind is reached on loopback)."""
    host = cfg.server.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{cfg.server.port}"
