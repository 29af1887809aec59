"""``hooks install --otel``: the env block Claude Code reads from its settings, and
``hooks uninstall`` removing exactly what it wrote (cli/telemetry.py, cli/hooks.py)."""

from __future__ import annotations

import json

from contextuate_trio.cli import hooks as cs
from contextuate_trio.cli import telemetry as tm

URL = "http://127.0.0.1:3847"


def test_the_env_block():
    env = tm.otel_env(URL + "/", "dev box,1", "tok")
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == URL
    assert env["CLAUDE_CODE_ENABLE_TELEMETRY"] == "1" and env["CLAUDE_CODE_ENHANCED_TELEMETRY_BETA"] == "1"
    assert env["OTEL_LOGS_EXPORTER"] == env["OTEL_METRICS_EXPORTER"] == env["OTEL_TRACES_EXPORTER"] == "otlp"
    assert env["OTEL_RESOURCE_ATTRIBUTES"] == "host.name=dev%20box%2C1"  # W3C baggage escaping
    assert env["OTEL_EXPORTER_OTLP_HEADERS"] == "Authorization=Bearer tok"
    assert "OTEL_EXPORTER_OTLP_HEADERS" not in tm.otel_env(URL, "m", None)


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
    r = cs.install_file(str(p), wanted, tm.otel_env(URL, "m", "tok"))
    assert r["changed"] and r["conflicts"] == []
    written = json.loads(p.read_text())
    assert tm.check(written, URL, "tok") == [("ok", f"Claude Code sends its OpenTelemetry to {URL} (12 env settings)")]
    levels = [lvl for lvl, _ in tm.check(written, "http://127.0.0.1:9999", "other")]
    assert levels == ["warn", "warn"]  # another endpoint, another token
    assert tm.check({}, URL, None)[0][0] == "info"
    r = cs.uninstall_file(str(p))
    assert r["changed"] and r["restored"] and p.read_bytes() == original
