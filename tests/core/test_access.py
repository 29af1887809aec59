"""``core.access``: the scope each request needs and the guard's answers (401 for no
or an unknown token, 403 for one without the scope; open with no token at all)."""

from __future__ import annotations

import pytest

from contextuate_trio.core.access import ApiToken, Guard, Scope, allowed_scopes, needed_scope, parse_scopes

READ = ApiToken("viewer", "r-secret", frozenset({Scope.READ}))
DECIDE = ApiToken("phone", "d-secret", frozenset({Scope.READ, Scope.DECIDE}))
ADMIN = ApiToken("ops", "a-secret", frozenset({Scope.READ, Scope.ADMIN}))
INGEST = ApiToken("otel", "i-secret", frozenset({Scope.INGEST}))


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("GET", "/api/health", None),
        ("GET", "/", None),
        ("GET", "/static/app.js", None),
        ("GET", "/api/sessions", Scope.READ),
        ("HEAD", "/api/sessions", Scope.READ),
        ("GET", "/metrics", Scope.READ),
        ("GET", "/api/config", Scope.ADMIN),
        ("POST", "/api/sessions/s1/actions", Scope.ADMIN),
        ("DELETE", "/api/sessions/s1", Scope.ADMIN),
        ("POST", "/api/decisions", Scope.DECIDE),
        ("POST", "/api/hooks", Scope.READ),  # events in, as on the socket
        ("POST", "/v1/logs", Scope.READ),
    ],
)
def test_needed_scope(method, path, scope):
    assert needed_scope(method, path) is scope


def bearer(t: ApiToken) -> dict:
    return {"authorization": f"Bearer {t.secret}"}


def refusal(g: Guard, method: str, path: str, headers: dict):
    return g.refusal(path, headers, lambda: [3847], method)


def test_scopes_decide_401_then_403():
    g = Guard(tokens=[READ, DECIDE, ADMIN])
    assert g.needs_token
    assert refusal(g, "GET", "/api/health", {}) is None
    assert refusal(g, "GET", "/api/sessions", {})[0] == 401
    assert refusal(g, "GET", "/api/sessions", {"authorization": "Bearer nope"})[0] == 401
    assert refusal(g, "GET", "/api/sessions", {"authorization": "r-secret"})[0] == 401  # not "Bearer …"
    assert refusal(g, "GET", "/api/sessions", bearer(READ)) is None
    assert refusal(g, "POST", "/api/sessions/s/actions", bearer(READ)) == (403, "this token lacks the 'admin' scope")
    assert refusal(g, "POST", "/api/sessions/s/actions", bearer(ADMIN)) is None
    assert refusal(g, "POST", "/api/decisions", bearer(ADMIN))[0] == 403
    assert refusal(g, "POST", "/api/decisions", bearer(DECIDE)) is None
    assert refusal(g, "GET", "/api/config", bearer(DECIDE))[0] == 403
    assert g.who(bearer(DECIDE)["authorization"]) == DECIDE
    assert g.who("Bearer x") is None and g.who(None) is None


def test_server_token_has_every_scope_and_no_token_is_open():
    g = Guard(token="legacy", tokens=[READ])
    for method, path in (("GET", "/api/config"), ("POST", "/api/decisions"), ("POST", "/api/sessions/s/actions")):
        assert refusal(g, method, path, {"authorization": "Bearer legacy"}) is None
    assert g.who("Bearer legacy").name == "server.token"
    open_guard = Guard()
    assert not open_guard.needs_token
    assert refusal(open_guard, "POST", "/api/decisions", {}) is None
    # Host and cross-site checks come before the token, with or without one.
    assert refusal(open_guard, "GET", "/api/sessions", {"host": "evil.example"})[0] == 421
    assert refusal(g, "GET", "/api/sessions", {"sec-fetch-site": "cross-site", **bearer(READ)})[0] == 403


def test_set_tokens_replaces_the_set():
    g = Guard(tokens=[READ])
    g.set_tokens(None, [ADMIN])
    assert not g.token_ok(bearer(READ)["authorization"])
    assert g.token_ok(bearer(ADMIN)["authorization"], Scope.ADMIN)
    g.set_tokens(None, [])
    assert g.token_ok(None, Scope.DECIDE)  # no token left: open again


@pytest.mark.parametrize(
    ("method", "path", "scopes"),
    [
        ("POST", "/api/hooks", {Scope.READ, Scope.INGEST}),
        ("POST", "/v1/logs", {Scope.READ, Scope.INGEST}),
        ("POST", "/v1/traces", {Scope.READ, Scope.INGEST}),
        ("GET", "/v1/logs", {Scope.READ}),  # intake is POST: a GET is a read
        ("GET", "/api/hooks", {Scope.READ}),
        ("GET", "/api/sessions", {Scope.READ}),
        ("GET", "/metrics", {Scope.READ}),
        ("POST", "/api/decisions", {Scope.DECIDE}),
        ("GET", "/api/config", {Scope.ADMIN}),
        ("GET", "/api/health", None),
    ],
)
def test_allowed_scopes(method, path, scopes):
    assert allowed_scopes(method, path) == (None if scopes is None else frozenset(scopes))


def test_ingest_token_brings_events_in_and_reads_nothing():
    g = Guard(tokens=[READ, INGEST])
    for path in ("/api/hooks", "/v1/logs", "/v1/metrics", "/v1/traces"):
        assert refusal(g, "POST", path, bearer(INGEST)) is None, path
        assert refusal(g, "POST", path, bearer(READ)) is None, path  # read stays enough
    for method, path in (
        ("GET", "/api/sessions"),
        ("GET", "/api/sessions/s1/events"),
        ("GET", "/metrics"),
        ("GET", "/api/config"),
        ("GET", "/v1/logs"),
        ("POST", "/api/decisions"),
        ("POST", "/api/sessions/s1/actions"),
        ("DELETE", "/api/sessions/s1"),
    ):
        assert refusal(g, method, path, bearer(INGEST))[0] == 403, (method, path)
    assert not g.token_ok(bearer(INGEST)["authorization"])  # the WebSocket wants read
    assert refusal(g, "GET", "/api/health", {}) is None
    # server.token has every scope, ingest among them.
    assert Scope.INGEST in Guard(token="legacy").who("Bearer legacy").scopes


def test_parse_scopes():
    assert parse_scopes(["read", "decide"]) == {Scope.READ, Scope.DECIDE}
    assert parse_scopes(["ingest"]) == {Scope.INGEST}
    with pytest.raises(ValueError, match="unknown scope 'write'"):
        parse_scopes(["write"])
