"""Who may talk to the daemon over the network: Host names, Origins, the token.

Shared by the HTTP app and the WebSocket server so both answer the same way.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable, Mapping

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
PUBLIC_PATHS = ("/api/health",)  # no token needed
# The API, and OTLP/HTTP (``/v1/logs`` …, Claude Code's own telemetry): a token when one is set.
GUARDED_PREFIXES = ("/api/", "/v1/")


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
        self, allowed_hosts: Iterable[str] = (), token: str | None = None, bind_host: str = "127.0.0.1"
    ) -> None:
        names = {h.lower() for h in LOOPBACK_NAMES}
        names.update(h.lower() for h in allowed_hosts)
        if bind_host not in ("0.0.0.0", "::", ""):
            names.add(bind_host.lower())
        self.hosts = names
        self.token = token or None

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

    def token_ok(self, authorization: str | None) -> bool:
        if self.token is None:
            return True
        if not authorization or not authorization.startswith("Bearer "):
            return False
        given = authorization[len("Bearer ") :].strip().encode()
        return hmac.compare_digest(given, self.token.encode())

    def refusal(
        self, path: str, headers: Mapping[str, str], dashboard_ports: Callable[[], Iterable[int]]
    ) -> tuple[int, str] | None:
        """(status, why) when an HTTP request must be refused, else None: a foreign
        Host (DNS rebinding); an API call made by another web page (a cross-site
        ``<img src=…/api/search?…>`` carries no Origin, but browsers mark it with
        ``Sec-Fetch-Site``); with a token, an anonymous call. ``headers``: by
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
        if path not in PUBLIC_PATHS and not self.token_ok(headers.get("authorization")):
            return 401, "missing or wrong token"
        return None
