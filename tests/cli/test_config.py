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
