"""``hooks install --otel``: the env block Claude Code reads from its settings, and
``hooks uninstall`` removing exactly what it wrote (cli/telemetry.py, cli/hooks.py)."""

from __future__ import annotations

import json
import typing

import pytest

from contextuate_trio import config as config_mod
from contextuate_trio.cli import hooks as cs
from contextuate_trio.cli import telemetry as tm
from contextuate_trio.cli import tokens as tokens_mod
from contextuate_trio.core.access import ApiToken, Scope

URL = "http://127.0.0.1:3847"
SERVER_TOKEN = "server-token-with-every-scope"
# A config that accepts tokens of scope ingest (config.py's TokenScope lists it).
needs_ingest_in_config = pytest.mark.skipif(
    "ingest" not in typing.get_args(config_mod.TokenScope),
    reason="config.py's TokenScope does not list 'ingest' yet: a config holding such a token would not load",
)


@pytest.fixture
def config_file(tmp_path, monkeypatch):
    """A config with ``server.token`` set, the one the CLI reads (CONTEXTUATE_CONFIG)."""
    path = tmp_path / "home" / "monitor.config.json"
    path.parent.mkdir(mode=0o700)
    path.write_text(json.dumps({"server": {"token": SERVER_TOKEN}}))
    monkeypatch.setenv("CONTEXTUATE_HOME", str(path.parent))
    monkeypatch.setenv("CONTEXTUATE_CONFIG", str(path))
    return path


@needs_ingest_in_config
def test_the_env_block(config_file):
    env = tm.otel_env(URL + "/", "dev box,1", SERVER_TOKEN)
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == URL
    assert env["CLAUDE_CODE_ENABLE_TELEMETRY"] == "1" and env["CLAUDE_CODE_ENHANCED_TELEMETRY_BETA"] == "1"
    assert env["OTEL_LOGS_EXPORTER"] == env["OTEL_METRICS_EXPORTER"] == env["OTEL_TRACES_EXPORTER"] == "otlp"
    assert env["OTEL_RESOURCE_ATTRIBUTES"] == "host.name=dev%20box%2C1"  # W3C baggage escaping
    # The header carries the config's ingest-only "otel" token, made for it; never server.token.
    (otel,) = json.loads(config_file.read_text())["server"]["tokens"]
    assert otel["name"] == "otel" and otel["scopes"] == ["ingest"] and otel["token"] != SERVER_TOKEN
    assert env["OTEL_EXPORTER_OTLP_HEADERS"] == f"Authorization=Bearer {otel['token']}"
    assert tm.otel_env(URL, "m", SERVER_TOKEN) == {**env, "OTEL_RESOURCE_ATTRIBUTES": "host.name=m"}  # reused
    assert len(json.loads(config_file.read_text())["server"]["tokens"]) == 1
    cfg, _ = config_mod.load()  # the daemon starts with it, and the token brings events in only
    (t,) = cfg.server.api_tokens()
    assert t.scopes == {Scope.INGEST}
    assert "OTEL_EXPORTER_OTLP_HEADERS" not in tm.otel_env(URL, "m", None)


def test_the_env_never_holds_a_token_that_reads(config_file, capsys):
    """Whatever the daemon's config accepts, the settings never get server.token (nor
    another token that reads or acts); a config that would not load is left as it was."""
    before = config_file.read_bytes()
    env = tm.otel_env(URL, "m", SERVER_TOKEN)
    assert SERVER_TOKEN not in json.dumps(env)
    header = env.get("OTEL_EXPORTER_OTLP_HEADERS")
    if header is None:  # the config could not take the ingest token: said, nothing changed
        assert config_file.read_bytes() == before
        assert "no ingest token" in capsys.readouterr().err
    else:
        (otel,) = json.loads(config_file.read_text())["server"]["tokens"]
        assert otel["scopes"] == ["ingest"] and header == f"Authorization=Bearer {otel['token']}"


def test_an_otel_token_with_more_than_ingest_is_not_used(config_file, capsys):
    config_file.write_text(
        json.dumps({"server": {"tokens": [{"name": "otel", "token": "reads-too", "scopes": ["read", "admin"]}]}})
    )
    env = tm.otel_env(URL, "m", "reads-too")
    assert "OTEL_EXPORTER_OTLP_HEADERS" not in env
    assert "not only 'ingest'" in capsys.readouterr().err


def test_no_token_in_the_config_no_token_made(config_file):
    config_file.write_text("{}")
    assert tokens_mod.ingest_token() is None
    assert config_file.read_text() == "{}"


def test_header_token_parsing():
    assert tm.header_token("Authorization=Bearer abc") == "abc"
    assert tm.header_token("x-team=blue,authorization=Bearer%20abc") == "abc"
    assert tm.header_token("x-team=blue") is None and tm.header_token("") is None


def test_doctor_warns_of_a_token_with_more_than_ingest():
    wired, _ = tm.install_env({}, tm.otel_env(URL, "m", None))
    ingest = ApiToken("otel", "i-secret", frozenset({Scope.INGEST}))
    legacy = ApiToken("server.token", "s-secret", frozenset(Scope))
    reader = ApiToken("viewer", "r-secret", frozenset({Scope.READ}))
    tokens = [legacy, reader, ingest]

    def with_header(secret: str) -> dict:
        return {"env": {**wired["env"], "OTEL_EXPORTER_OTLP_HEADERS": f"Authorization=Bearer {secret}"}}

    assert [lvl for lvl, _ in tm.check(with_header("i-secret"), URL, tokens)] == ["ok"]
    for secret, name in (("s-secret", "server.token"), ("r-secret", "viewer")):
        ((level, text),) = tm.check(with_header(secret), URL, tokens)
        assert level == "warn" and repr(name) in text and "more than" in text
    ((level, text),) = tm.check(with_header("unknown"), URL, tokens)
    assert level == "warn" and "401" in text
    ((level, text),) = tm.check(wired, URL, tokens)  # no header at all
    assert level == "warn" and "401" in text
    assert [lvl for lvl, _ in tm.check(wired, URL, [])] == ["ok"]  # no token wanted


def test_install_keeps_the_persons_keys_and_uninstall_removes_exactly_ours():
    mine = {"env": {"OTEL_LOGS_EXPORTER": "console", "FOO": "bar"}, "model": "opus"}
    new, conflicts = tm.install_env(mine, tm.otel_env(URL, "m", None))
    assert conflicts == ["OTEL_LOGS_EXPORTER"] and new["env"]["OTEL_LOGS_EXPORTER"] == "console"
    assert "OTEL_LOGS_EXPORTER" not in new["env"][tm.MARKER].split(",")
    assert tm.install_env(new, tm.otel_env(URL, "m", None))[0] == new  # twice: the same
    moved, _ = tm.install_env(new, tm.otel_env("http://10.0.0.1:9", "m", "t"))  # ours replaced, theirs kept
    assert moved["env"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://10.0.0.1:9" and moved["env"]["FOO"] == "bar"
    back, removed = tm.uninstall_env(moved)
    assert back == mine and removed == len(tm.ours(moved))
    bare, _ = tm.uninstall_env(tm.install_env({}, tm.otel_env(URL, "m", None))[0])
    assert bare == {}  # the env object we created goes too


def test_files_round_trip_and_doctor(tmp_path):
    p = tmp_path / "settings.json"
    original = b'{\n    "env": {"FOO": "bar"},\n    "theme": "dark"\n}\n'
    p.write_bytes(original)
    wanted = {"Stop": {"hooks": [cs.command_handler("python3 -I -S /x/hook_emit.py")]}}
    env = {**tm.otel_env(URL, "m", None), "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer tok"}
    r = cs.install_file(str(p), wanted, env)
    assert r["changed"] and r["conflicts"] == []
    written = json.loads(p.read_text())
    ingest = [ApiToken("otel", "tok", frozenset({Scope.INGEST}))]
    assert tm.check(written, URL, ingest) == [("ok", f"Claude Code sends its OpenTelemetry to {URL} (12 env settings)")]
    other = [ApiToken("otel", "other", frozenset({Scope.INGEST}))]
    levels = [lvl for lvl, _ in tm.check(written, "http://127.0.0.1:9999", other)]
    assert levels == ["warn", "warn"]  # another endpoint, another token
    assert tm.check({}, URL)[0][0] == "info"
    r = cs.uninstall_file(str(p))
    assert r["changed"] and r["restored"] and p.read_bytes() == original


def test_hooks_install_otel_writes_only_an_ingest_token(tmp_path):
    """The real CLI: a config with ``server.token`` (every scope) and a read token;
    the settings' env gets the ``otel`` ingest token (or, when the config cannot hold
    one, no token), never one that reads. Doctor agrees."""
    from conftest import clean_env
    from helpers import run_cli

    home = tmp_path / "h"
    home.mkdir(mode=0o700)
    user = tmp_path / "user"
    user.mkdir()
    config = home / "monitor.config.json"
    config.write_text(
        json.dumps(
            {"server": {"token": SERVER_TOKEN, "tokens": [{"name": "viewer", "token": "r" * 40, "scopes": ["read"]}]}}
        )
    )
    env = clean_env(str(home), HOME=str(user))
    p = run_cli("hooks", "install", "--otel", env=env)
    assert p.returncode == 0, p.stderr
    settings = (user / ".claude" / "settings.json").read_text()
    assert SERVER_TOKEN not in settings and "r" * 40 not in settings
    header = json.loads(settings)["env"].get("OTEL_EXPORTER_OTLP_HEADERS")
    tokens = {t["name"]: t for t in json.loads(config.read_text())["server"]["tokens"]}
    if "ingest" in typing.get_args(config_mod.TokenScope):
        assert tokens["otel"]["scopes"] == ["ingest"]
        assert header == f"Authorization=Bearer {tokens['otel']['token']}"
        checks = json.loads(run_cli("doctor", "--json", env=env).stdout)
        otel = [c for c in checks if c["name"] == "otel"]
        assert otel and all(c["status"] == "ok" for c in otel), otel
    else:
        assert header is None and "otel" not in tokens
