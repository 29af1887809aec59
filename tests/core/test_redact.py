"""Secrets are masked before disk, Redis and browsers; JSON stays JSON."""

from __future__ import annotations

import json
import os

import pytest
from conftest import run_hook
from hypothesis import given, settings
from hypothesis import strategies as st

from contextuate_trio.core.redact import Redactor

SECRETS = {
    "anthropic-key": "sk-ant-api03-" + "A1b2C3d4E5" * 4,
    "openai-key": "sk-proj-" + "Z9y8X7w6V5" * 3,
    "github-token": "ghp_" + "a" * 36,
    "aws-access-key": "AKIAIOSFODNN7EXAMPLE",
    "slack-token": "xoxb-123456789012-abcdefghij",
    "google-api-key": "AIza" + "B" * 35,
    "gitlab-token": "glpat-" + "c" * 20,
}


@pytest.mark.parametrize("kind,secret", sorted(SECRETS.items()))
def test_provider_keys_masked_inside_json(kind, secret):
    doc = {"tool_input": {"command": f"export KEY={secret} && run"}, "note": f"key is {secret}."}
    out = Redactor().text(json.dumps(doc))
    assert secret not in out
    assert json.loads(out)["note"].startswith("key is [REDACTED:")


def test_assignments_headers_urls_private_keys():
    r = Redactor()
    doc = {
        "a": "password=hunter22 and more",
        "b": 'curl -H "Authorization: Bearer abcdefghijklmnopqrstuvwx" https://x',
        "c": "postgres://app:s3cr3tpw@db.internal:5432/app",
        "d": "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7\nabc\n-----END RSA PRIVATE KEY-----",
        "e": {"api_key": "0123456789abcdef"},
        "f": "Authorization: Basic dXNlcjpwYXNzd29yZA==",
    }
    out = json.loads(r.text(json.dumps(doc)))
    assert out["a"] == "password=[REDACTED:assignment] and more"
    assert "abcdefghijklmnopqrstuvwx" not in out["b"] and "Bearer [REDACTED:bearer]" in out["b"]
    assert out["c"] == "postgres://app:[REDACTED:url-password]@db.internal:5432/app"
    assert out["d"] == "[REDACTED:private-key]"
    assert out["e"]["api_key"] == "[REDACTED:assignment]"
    assert "dXNlcjpwYXNzd29yZA" not in out["f"]


def test_ordinary_text_untouched_and_cheap_path():
    r = Redactor()
    text = json.dumps(
        {
            "tool_name": "Read",
            "file_path": "/src/app.py",
            "totalTokens": 24680,
            "content": "def total():\n    return 42\n",
        }
    )
    assert r.text(text) == text
    assert not r.may_hold_secret('{"tool_name":"Read","file_path":"/src/app.py"}')


def test_custom_patterns_and_disabled():
    text = json.dumps({"m": "employee id EMP-123456 here"})
    assert "EMP-123456" not in Redactor([r"EMP-\d{6}"]).text(text)
    secret = json.dumps({"k": SECRETS["github-token"]})
    assert Redactor(enabled=False).text(secret) == secret


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.text() | st.sampled_from(list(SECRETS.values()) + ['password: x"y', 'token=\\"q']),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
        max_leaves=12,
    )
)
def test_masking_always_leaves_valid_json(value):
    out = Redactor().text(json.dumps(value, ensure_ascii=False))
    json.loads(out)


def test_daemon_stores_masked_events(daemon, home):
    d = daemon({"redaction": {"patterns": ["EMP-\\d{6}"]}})
    secret = SECRETS["anthropic-key"]
    run_hook(
        home,
        {
            "session_id": "r1",
            "hook_event_name": "PreToolUse",
            "tool_name": "Bash",
            "tool_input": {"command": f"ANTHROPIC_API_KEY={secret} claude -p hi EMP-654321"},
        },
    )
    [ev] = d.events("r1")
    assert secret not in json.dumps(ev) and "EMP-654321" not in json.dumps(ev)
    assert "[REDACTED:" in ev["data"]["tool_input"]["command"] and "[REDACTED:" in ev["summary"]
    for root, _, files in os.walk(os.path.join(home, "data")):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                assert secret.encode() not in fh.read()


def test_redis_mode_hook_masks_before_sending(redis_server):
    import tempfile

    from redis_server import RedisServer  # noqa: F401

    r = redis_server()
    home = tempfile.mkdtemp(prefix="ct-m-")
    with open(os.path.join(home, "monitor.config.json"), "w") as f:
        json.dump({"mode": "redis", "redis": {"host": "127.0.0.1", "port": r.port}}, f)
    secret = SECRETS["github-token"]
    res = run_hook(
        home,
        {
            "session_id": "r2",
            "hook_event_name": "PreToolUse",
            "tool_name": "Bash",
            "tool_input": {"command": f"git clone https://x:{secret}@github.com/o/r"},
        },
        {"CONTEXTUATE_MACHINE_ID": "m1"},
    )
    assert res.returncode == 0
    [(_, fields)] = r.client().xrange("contextuate:events:stream:{m1}")  # the machine's own stream
    assert secret.encode() not in fields[b"data"] and b"[REDACTED:" in fields[b"data"]
    json.loads(fields[b"data"])


from redis_server import redis_server  # noqa: E402,F401 (fixture)


def test_redis_mode_spools_masked_when_redis_is_unreachable(home):
    from conftest import free_port

    with open(os.path.join(home, "monitor.config.json"), "w") as f:
        json.dump({"mode": "redis", "redis": {"host": "127.0.0.1", "port": free_port()}}, f)
    secret = SECRETS["aws-access-key"]
    assert run_hook(home, {"session_id": "r3", "hook_event_name": "Stop", "m": f"key {secret}"}).returncode == 0
    spool = os.path.join(home, "spool")
    [name] = os.listdir(spool)
    data = open(os.path.join(spool, name), "rb").read()
    assert secret.encode() not in data and b"[REDACTED:aws-access-key]" in data


def test_summary_is_made_from_the_masked_payload(daemon, home):
    """A summary is cut at 160 characters: cut from the unmasked payload, a key would
    lose its END line (or its length) and escape the patterns."""
    d = daemon()
    key = "-----BEGIN PRIVATE KEY-----\n" + "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC" * 8 + "\n-----END PRIVATE KEY-----"
    run_hook(
        home,
        {
            "session_id": "pk",
            "hook_event_name": "PreToolUse",
            "tool_name": "Bash",
            "tool_input": {"command": f"cat > key.pem <<'EOF'\n{key}\nEOF"},
        },
    )
    [ev] = d.events("pk")
    assert "MIIE" not in json.dumps(ev) and "MIIE" not in json.dumps(d.sessions()["pk"])
    assert "[REDACTED:private-key]" in ev["summary"]
