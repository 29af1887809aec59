"""Config: defaults, deep merge, validation messages, the Node monitor's config."""

from __future__ import annotations

import json
import os

import pytest

from contextuate_trio import config


def load(home, data=None, raw=None):
    if data is not None or raw is not None:
        with open(os.path.join(home, "monitor.config.json"), "w") as f:
            f.write(raw if raw is not None else json.dumps(data))
    return config.load({"CONTEXTUATE_HOME": home})


def test_defaults(home):
    cfg, warnings = load(home)
    assert warnings == []
    assert cfg.mode == "local" and cfg.server.port == 3847 and cfg.server.ws_port == 3848
    assert cfg.socket_path == os.path.join(home, "monitor.sock")
    assert cfg.persistence.dir == os.path.join(home, "data")
    assert cfg.redis.channel == "contextuate:events" and cfg.hook.timeout_ms == 1000


def test_deep_merge_keeps_other_defaults(home):
    cfg, _ = load(home, {"redis": {"port": 6380}, "server": {"token": "t"}})
    assert cfg.redis.port == 6380 and cfg.redis.host == "localhost"
    assert cfg.server.token == "t" and cfg.server.port == 3847


@pytest.mark.parametrize(
    "data,key",
    [
        ({"server": {"port": "3847"}}, "server.port"),
        ({"server": {"port": 70000}}, "server.port"),
        ({"mode": "cluster"}, "mode"),
        ({"hook": {"timeoutMs": 0}}, "hook.timeoutMs"),
        ({"redis": {"tls": "yes"}}, "redis.tls"),
        ({"redis": "localhost"}, "redis"),
        ({"persistence": {"type": "sqlite"}}, "persistence.type"),
        ({"server": {"allowedHosts": ["a", 1]}}, "server.allowedHosts"),
    ],
)
def test_wrong_values_name_the_file_and_key(home, data, key):
    with pytest.raises(config.ConfigError) as err:
        load(home, data)
    msg = str(err.value)
    assert "monitor.config.json" in msg and repr(key) in msg and "\n" not in msg


def test_broken_json_and_non_object(home):
    with pytest.raises(config.ConfigError, match="not valid JSON"):
        load(home, raw="{broken")
    with pytest.raises(config.ConfigError, match="JSON object"):
        load(home, raw="[1]")


def test_node_monitor_config_loads(home):
    node = {
        "mode": "redis",
        "server": {"host": "0.0.0.0", "port": 3847, "wsPort": 3848},
        "redis": {"host": "redis.internal", "port": 6379, "password": None, "channel": "contextuate:events"},
        "persistence": {"enabled": True, "type": "file", "retentionDays": 7},
        "ui": {"theme": "dark"},
    }
    cfg, warnings = load(home, node)
    assert cfg.mode == "redis" and cfg.server.host == "0.0.0.0"
    assert cfg.persistence.retention_days == 7
    assert any("'ui'" in w for w in warnings)
    assert any("0.0.0.0" in w and "token" in w for w in warnings)


def test_config_env_and_public_view_hide_secrets(home, tmp_path):
    other = tmp_path / "c.json"
    other.write_text(
        json.dumps({"server": {"token": "tok"}, "redis": {"password": "pw", "url": "redis://user:pw@h:1/0"}})
    )
    cfg, _ = config.load({"CONTEXTUATE_HOME": home, "CONTEXTUATE_CONFIG": str(other)})
    pub = config.public_dict(cfg)
    text = json.dumps(pub)
    # The secrets as values (a substring test would trip on a temp dir named ct-tok…).
    assert '"tok"' not in text and '"pw"' not in text and ":pw@" not in text
    assert pub["server"]["token"] == "***"


def test_alerts_defaults_and_webhooks(home):
    cfg, warnings = load(home)
    assert cfg.alerts.webhooks == [] and cfg.alerts.stuck_after_seconds == 600
    assert cfg.alerts.rate_limit_per_minute == 10 and cfg.alerts.retries == 5
    data = {
        "alerts": {
            "webhooks": [
                {"url": "https://hooks.slack.com/services/T0/B0/sekrit", "format": "slack", "reasons": ["permission"]},
                {"url": "http://ntfy.internal:8080/topic", "format": "ntfy", "headers": {"Authorization": "Bearer tk"}},
                {"url": "https://example.com/hook", "colour": "red"},
            ],
            "stuckAfterSeconds": 120,
            "rateLimitPerMinute": 3,
            "retries": 0,
        }
    }
    cfg, warnings = load(home, data)
    a = cfg.alerts
    assert [(w.format, w.reasons) for w in a.webhooks] == [("slack", ["permission"]), ("ntfy", None), ("json", None)]
    assert a.webhooks[1].headers == {"Authorization": "Bearer tk"} and a.webhooks[2].headers == {}
    assert (a.stuck_after_seconds, a.rate_limit_per_minute, a.retries) == (120, 3, 0)
    assert warnings == [f"{os.path.join(home, 'monitor.config.json')}: unknown key 'alerts.webhooks[2].colour' ignored"]
    # The API's view: a webhook's path and its headers are its credentials.
    pub = config.public_dict(cfg)["alerts"]["webhooks"]
    assert [w["url"] for w in pub] == [
        "https://hooks.slack.com/***",
        "http://ntfy.internal:8080/***",
        "https://example.com/***",
    ]
    assert pub[1]["headers"] == {"Authorization": "***"} and "sekrit" not in json.dumps(pub)


@pytest.mark.parametrize(
    "alerts,key",
    [
        ({"webhooks": {"url": "https://x/services/x"}}, "alerts.webhooks"),
        ({"webhooks": ["https://x/services/x"]}, "alerts.webhooks[0]"),
        ({"webhooks": [{"format": "json"}]}, "alerts.webhooks[0].url"),
        ({"webhooks": [{"url": "ftp://x.example/f"}]}, "alerts.webhooks[0].url"),
        ({"webhooks": [{"url": "https://"}]}, "alerts.webhooks[0].url"),
        ({"webhooks": [{"url": "hooks.slack.com/services/x"}]}, "alerts.webhooks[0].url"),
        ({"webhooks": [{"url": "http://h:notaport/x"}]}, "alerts.webhooks[0].url"),
        ({"webhooks": [{"url": 3}]}, "alerts.webhooks[0].url"),
        ({"webhooks": [{"url": "https://ok"}, {"url": "https://x", "format": "discord"}]}, "alerts.webhooks[1].format"),
        ({"webhooks": [{"url": "https://x", "headers": {"X-N": 1, "A": "services/x"}}]}, "alerts.webhooks[0].headers"),
        ({"webhooks": [{"url": "https://x", "reasons": ["permission", "bored"]}]}, "alerts.webhooks[0].reasons"),
        ({"webhooks": [{"url": "https://x", "reasons": "idle"}]}, "alerts.webhooks[0].reasons"),
        ({"stuckAfterSeconds": 0}, "alerts.stuckAfterSeconds"),
        ({"stuckAfterSeconds": "600"}, "alerts.stuckAfterSeconds"),
        ({"rateLimitPerMinute": 0}, "alerts.rateLimitPerMinute"),
        ({"rateLimitPerMinute": 2.5}, "alerts.rateLimitPerMinute"),
        ({"retries": -1}, "alerts.retries"),
        ({"retries": True}, "alerts.retries"),
    ],
)
def test_wrong_alert_values_name_the_key(home, alerts, key):
    with pytest.raises(config.ConfigError) as err:
        load(home, {"alerts": alerts})
    msg = str(err.value)
    assert "monitor.config.json" in msg and repr(key) in msg and "\n" not in msg
    # A webhook URL may hold its token: the message does not repeat a bad one.
    assert "services/x" not in msg and "x.example/f" not in msg


def test_webhook_origin_keeps_scheme_host_port_only():
    assert config.webhook_origin("https://user:pw@hooks.example.com/T/B/tok?x=1") == "https://hooks.example.com"
    assert config.webhook_origin("http://[::1]:8080/topic") == "http://[::1]:8080"
