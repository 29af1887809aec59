"""Who may talk to the daemon over the network: Host names, Origins, the tokens.

Shared by the HTTP app and the WebSocket server so both answer the same way. A token
has a name and scopes (``read``, ``ingest``, ``decide``, ``admin``); a request needs one
scope (``needed_scope``): ``read`` to look (and to report events), ``admin`` to change
things, ``decide`` to answer Claude Code. Event intake (``POST /api/hooks``, ``/v1/*``)
also takes ``ingest``, a scope for nothing else (``allowed_scopes``): the token written
into Claude Code's settings (``hooks install --otel``) can report events and read
nothing. With no token at all, everything is open (loopback only, by default: the old
behaviour, with a warning at start).
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Callable, Iterable, Mapping

import attrs

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
PUBLIC_PATHS = ("/api/health",)  # no token needed
# The API, and OTLP/HTTP (``/v1/logs`` …, Claude Code's own telemetry): a token when one is set.
GUARDED_PREFIXES = ("/api/", "/v1/")
# Paths through which events arrive (Claude Code's http hooks, its OTLP): a ``read``
# token is enough, as for the socket, though the method is POST; so is an ``ingest`` one.
INGEST_PATHS = ("/api/hooks",)
INGEST_PREFIXES = ("/v1/",)
DECIDE_PATHS = ("/api/decisions",)
ADMIN_PATHS = ("/api/config",)  # reads that show the daemon's settings
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


class Scope(enum.StrEnum):
    READ = "read"  # the dashboard, the API's GETs, the WebSocket, event intake
    DECIDE = "decide"  # answer Claude Code's permission prompts (POST /api/decisions)
    ADMIN = "admin"  # change things (session actions) and see the config
    INGEST = "ingest"  # event intake only (POST /api/hooks, /v1/*): no reading at all


ALL_SCOPES: frozenset[Scope] = frozenset(Scope)
LEGACY_TOKEN_NAME = "server.token"  # the name ``server.token`` goes by (it has every scope)


@attrs.frozen
class ApiToken:
    name: str
    secret: str = attrs.field(repr=False)
    scopes: frozenset[Scope]


def parse_scopes(values: Iterable[str]) -> frozenset[Scope]:
    """``["read", "decide"]`` -> the scopes; ValueError names a scope we do not know."""
    out = set()
    for v in values:
        try:
            out.add(Scope(v))
        except ValueError:
            raise ValueError(f"unknown scope {v!r} (one of {', '.join(s.value for s in Scope)})") from None
    return frozenset(out)


def needed_scope(method: str, path: str) -> Scope | None:
    """The scope a request needs; None: no token needed (``/api/health``, the
    dashboard's files)."""
    if path in PUBLIC_PATHS or not (path.startswith(GUARDED_PREFIXES) or path == "/metrics"):
        return None
    if path in DECIDE_PATHS:
        return Scope.DECIDE
    if path in ADMIN_PATHS:
        return Scope.ADMIN
    if path in INGEST_PATHS or path.startswith(INGEST_PREFIXES) or method.upper() in SAFE_METHODS:
        return Scope.READ
    return Scope.ADMIN


def is_intake(method: str, path: str) -> bool:
    """A request that brings events in (``POST /api/hooks``, ``POST /v1/…``)."""
    return method.upper() == "POST" and (path in INGEST_PATHS or path.startswith(INGEST_PREFIXES))


def allowed_scopes(method: str, path: str) -> frozenset[Scope] | None:
    """The scopes any one of which lets a request through; None: no token needed.
    ``needed_scope``'s, and for event intake ``ingest`` besides ``read``."""
    scope = needed_scope(method, path)
    if scope is None:
        return None
    if scope is Scope.READ and is_intake(method, path):
        return frozenset({Scope.READ, Scope.INGEST})
    return frozenset({scope})


def host_name(host_header: str) -> str:
    """``example.com:3847`` -> ``example.com``; ``[::1]:3847`` -> ``::1``."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


class Guard:
    def __init__(
        self,
        allowed_hosts: Iterable[str] = (),
        token: str | None = None,
        bind_host: str = "127.0.0.1",
        tokens: Iterable[ApiToken] = (),
    ) -> None:
        names = {h.lower() for h in LOOPBACK_NAMES}
        names.update(h.lower() for h in allowed_hosts)
        if bind_host not in ("0.0.0.0", "::", ""):
            names.add(bind_host.lower())
        self.hosts = names
        self.tokens: tuple[ApiToken, ...] = ()
        self.set_tokens(token, tokens)

    def set_tokens(self, token: str | None, tokens: Iterable[ApiToken] = ()) -> None:
        """The tokens in force (``server.token`` and ``server.tokens``); the daemon
        calls it again when the config's tokens change (``token add|revoke``)."""
        legacy = (ApiToken(LEGACY_TOKEN_NAME, token, ALL_SCOPES),) if token else ()
        self.tokens = legacy + tuple(t for t in tokens if t.secret)

    @property
    def needs_token(self) -> bool:
        """A token is configured: anonymous requests are refused."""
        return bool(self.tokens)

    def host_ok(self, host_header: str | None) -> bool:
        # HTTP/1.1 requires Host; a request without one is not from a browser page.
        return host_header is None or host_name(host_header) in self.hosts

    def origin_ok(self, origin: str | None, dashboard_ports: Iterable[int]) -> bool:
        """No Origin (a non-browser client) or the dashboard's own origin."""
        if origin is None:
            return True
        origin = origin.strip().lower()
        for scheme in ("http://", "https://"):
            if origin.startswith(scheme):
                rest = origin[len(scheme) :]
                name = host_name(rest)
                port_part = rest.rsplit(":", 1)[-1] if rest.rsplit(":", 1)[-1].isdigit() else None
                port = int(port_part) if port_part else (80 if scheme == "http://" else 443)
                return name in self.hosts and port in set(dashboard_ports)
        return False

    def who(self, authorization: str | None) -> ApiToken | None:
        """The token an ``Authorization: Bearer …`` header carries, or None (missing,
        malformed or unknown). Every token is compared, each in constant time."""
        if not authorization or not authorization.startswith("Bearer "):
            return None
        given = authorization[len("Bearer ") :].strip().encode()
        found = None
        for t in self.tokens:
            if hmac.compare_digest(given, t.secret.encode()):
                found = t
        return found

    def token_ok(self, authorization: str | None, scope: Scope | frozenset[Scope] = Scope.READ) -> bool:
        """No token configured, or this header's token holds ``scope`` (one of them)."""
        return self.token_refusal(authorization, scope) is None

    def token_refusal(
        self, authorization: str | None, scope: Scope | frozenset[Scope] | None
    ) -> tuple[int, str] | None:
        """(401, why) for a missing or unknown token, (403, why) for one without
        ``scope`` (or, given several, without any of them); None when the request may
        go on."""
        if scope is None or not self.tokens:
            return None
        t = self.who(authorization)
        if t is None:
            return 401, "missing or wrong token"
        wanted = frozenset({scope}) if isinstance(scope, Scope) else scope
        if not wanted & t.scopes:
            names = " or ".join(repr(s.value) for s in sorted(wanted))
            return 403, f"this token lacks the {names} scope"
        return None

    def refusal(
        self,
        path: str,
        headers: Mapping[str, str],
        dashboard_ports: Callable[[], Iterable[int]],
        method: str = "GET",
    ) -> tuple[int, str] | None:
        """(status, why) when an HTTP request must be refused, else None: a foreign
        Host (DNS rebinding); an API call made by another web page (a cross-site
        ``<img src=…/api/search?…>`` carries no Origin, but browsers mark it with
        ``Sec-Fetch-Site``); with tokens, an anonymous call (401) or one whose token
        lacks the scope the request needs (403, ``allowed_scopes``). ``headers``: by
        lower-case name. One copy for the web app and the daemon's lean hook path;
        OTLP (``/v1/``) is guarded as the API is."""
        if not self.host_ok(headers.get("host")):
            return 421, "host not allowed"
        if not (path.startswith(GUARDED_PREFIXES) or path == "/metrics"):
            return None
        origin = headers.get("origin")  # without one, the dashboard's ports are not needed
        if headers.get("sec-fetch-site") in ("cross-site", "same-site") or (
            origin is not None and not self.origin_ok(origin, dashboard_ports())
        ):
            return 403, "not from another web page"
        return self.token_refusal(headers.get("authorization"), allowed_scopes(method, path))
