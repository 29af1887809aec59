"""``doctor``: healthy when all is well; each seeded fault found, with its fix."""

from __future__ import annotations

import json
import os
import socket
import time

from conftest import clean_env, run_hook, wait_for
from helpers import run_cli
from redis_server import make_tls_files, needs_redis, redis_server  # noqa: F401 (fixture)

from contextuate_trio.cli import hooks as cs
from contextuate_trio.cli.doctor import skew_findings


def doctor(env, cwd=None) -> tuple[int, dict]:
    p = run_cli("doctor", "--json", env=env, cwd=cwd)
    assert p.stdout, p.stderr
    by: dict = {}
    for c in json.loads(p.stdout):
        by.setdefault(c["name"], []).append(c)
    return p.returncode, by


def status(by, name):
    return [c["status"] for c in by.get(name, [])]


def install(env, *extra):
    p = run_cli("hooks", "install", *extra, env=env)
    assert p.returncode == 0, p.stderr


def test_all_good_then_the_daemon_stops(daemon, home, tmp_path):
    d = daemon()
    env = clean_env(home, HOME=str(tmp_path))
    install(env)
    run_hook(home, {"session_id": "s1", "hook_event_name": "SessionStart", "cwd": "/x"})
    code, by = doctor(env)
    assert code == 0, by
    for name in ("config", "daemon", "socket", "spool", "hook", "hook config", "clocks"):
        assert status(by, name) == ["ok"], (name, by[name])
    assert "the command runs" in by["hook"][0]["detail"]
    d.stop()
    run_hook(home, {"session_id": "s1", "hook_event_name": "Stop"})  # spooled
    code, by = doctor(env)
    assert code == 1
    assert by["daemon"][0]["status"] == "fail" and by["daemon"][0]["fix"] == "contextuate-trio start"
    assert status(by, "spool") == ["fail"] and "1 events wait" in by["spool"][0]["detail"]
    assert status(by, "socket") == ["fail"]


def test_broken_config(home, tmp_path):
    with open(os.path.join(home, "monitor.config.json"), "w") as f:
        f.write('{"server": {"port": "3847"}}')
    code, by = doctor(clean_env(home, HOME=str(tmp_path)))
    assert code == 1 and by["config"][0]["status"] == "fail"
    assert "server.port" in by["config"][0]["detail"] and "init --force" in by["config"][0]["fix"]


def test_hook_not_wired_missing_interpreter_and_wired_twice(daemon, home, tmp_path):
    daemon()
    env = clean_env(home, HOME=str(tmp_path))
    code, by = doctor(env)
    assert by["hook"][0]["status"] == "fail" and by["hook"][0]["fix"] == "contextuate-trio hooks install"

    settings = tmp_path / ".claude" / "settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    gone = {
        "hooks": {
            ev: [
                {
                    "hooks": [
                        {
                            "type": "command",
                            "command": f"CONTEXTUATE_HOME={home} /opt/gone/python3 -I -S {cs.hook_script()}",
                        }
                    ]
                }
            ]
            for ev in cs.EVENTS
        }
    }
    settings.write_text(json.dumps(gone))
    code, by = doctor(env)
    assert code == 1 and "/opt/gone/python3 is missing" in by["hook"][0]["detail"]
    assert by["hook"][0]["fix"] == "contextuate-trio hooks install"

    install(env)
    proj = tmp_path / "proj"
    proj.mkdir()
    run_cli("hooks", "install", "--local", env=env, cwd=str(proj), check=True)
    code, by = doctor(env, cwd=str(proj))
    twice = [c for c in by["hook"] if "recorded twice" in c["detail"]]
    assert twice and twice[0]["status"] == "fail" and "hooks uninstall --local" in twice[0]["fix"]


def test_hook_and_daemon_disagree_on_the_socket(daemon, home, tmp_path):
    daemon()
    other = tmp_path / "other-home"
    other.mkdir()
    (other / "monitor.config.json").write_text(json.dumps({"socketPath": str(other / "elsewhere.sock")}))
    install(clean_env(str(other), HOME=str(tmp_path)))  # the hook wired with another home
    code, by = doctor(clean_env(home, HOME=str(tmp_path)))
    assert code == 1
    bad = [c for c in by["hook config"] if c["status"] == "fail"]
    assert bad and "socketPath" in bad[0]["detail"] and "elsewhere.sock" in bad[0]["detail"]
    assert any("this shell's home" in c["detail"] for c in by["hook"])


def test_stale_socket(home, tmp_path):
    path = os.path.join(home, "monitor.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()  # the file stays, nobody listens
    code, by = doctor(clean_env(home, HOME=str(tmp_path)))
    assert by["socket"][0]["status"] == "fail" and "did not stop cleanly" in by["socket"][0]["detail"]


def test_clock_skew_seen_in_events(daemon, home, tmp_path):
    d = daemon()
    now = int(time.time() * 1000)
    lines = [
        {
            "id": "e1",
            "timestamp": now - 60_000,
            "sessionId": "parent",
            "machineId": "box-a",
            "eventType": "session_start",
            "data": {},
        },
        {
            "id": "e2",
            "timestamp": now - 120_000,
            "sessionId": "child",
            "parentSessionId": "parent",
            "machineId": "box-b",
            "eventType": "session_start",
            "data": {},
        },
        {
            "id": "e3",
            "timestamp": now + 3_600_000,
            "sessionId": "fut",
            "machineId": "box-c",
            "eventType": "session_start",
            "data": {},
        },
    ]
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(d.socket_path)
        s.sendall(b"".join(json.dumps(x).encode() + b"\n" for x in lines))
    wait_for(lambda: len(d.sessions()) == 3)
    code, by = doctor(clean_env(home, HOME=str(tmp_path)))
    c = by["clocks"][0]
    assert c["status"] == "warn", c
    assert "box-c stamps events" in c["detail"] and "box-b is at least 60.0 s behind box-a" in c["detail"]
    assert "timedatectl" in c["fix"]


def test_skew_findings_pure():
    now = 1_000_000_000
    sessions = [
        {"sessionId": "p", "machineId": "a", "startTime": now - 10_000, "lastEventTime": now},
        {
            "sessionId": "c",
            "machineId": "b",
            "parentSessionId": "p",
            "startTime": now - 9_000,
            "lastEventTime": now - 1,
        },
    ]
    assert skew_findings(sessions, now) == []


@needs_redis
def test_redis_unreachable_auth_and_tls(home, tmp_path, redis_server):  # noqa: F811
    env = clean_env(home, HOME=str(tmp_path))
    cfg_path = os.path.join(home, "monitor.config.json")

    def with_redis(redis):
        with open(cfg_path, "w") as f:
            json.dump({"mode": "redis", "server": {"port": 1}, "redis": redis}, f)
        return doctor(env)[1]["redis"][0]

    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()
    c = with_redis({"host": "127.0.0.1", "port": port})
    assert c["status"] == "fail" and "unreachable" in c["detail"] and "redis-cli" in c["fix"]

    r = redis_server("--requirepass", "pw")
    c = with_redis({"host": "127.0.0.1", "port": r.port, "password": "wrong"})
    assert c["status"] == "fail" and "password" in c["fix"], c
    c = with_redis({"host": "127.0.0.1", "port": r.port})
    assert c["status"] == "fail" and "password" in c["fix"], c
    assert with_redis({"host": "127.0.0.1", "port": r.port, "password": "pw"})["status"] == "ok"

    tls = make_tls_files(str(tmp_path))
    t = redis_server(tls=tls)
    c = with_redis({"host": "127.0.0.1", "port": t.port, "tls": True})  # no CA: not trusted
    assert c["status"] == "fail" and "TLS" in c["detail"] and "tlsCaFile" in c["fix"], c
    c = with_redis({"host": "127.0.0.1", "port": t.port, "tls": True, "tlsCaFile": tls["ca"]})
    assert c["status"] == "ok" and "(TLS)" in c["detail"], c


def test_decisions_on_with_hooks_that_cannot_wait(daemon, home, tmp_path):
    """Decisions on: doctor says when nobody can answer, and when the installed hooks
    would be killed (or cannot wait) before an answer comes."""
    tokens = [{"name": "laptop", "token": "t-" + "a" * 30, "scopes": ["read", "admin"]}]
    daemon({"decisions": {"enabled": True, "waitMs": 30_000}, "server": {"tokens": tokens}})
    env = clean_env(home, HOME=str(tmp_path))
    install(env)  # with decisions on: PermissionRequest's timeout covers the wait
    _, by = doctor(env)
    (check,) = by["decisions"]
    assert check["status"] == "warn" and "no token has the decide scope" in check["detail"]
    path = cs.settings_path("global", env)
    settings, _ = cs.read_settings(path)
    assert cs.answer_hook_problems(settings, 30_000) == []
    settings["hooks"]["PermissionRequest"][0]["hooks"][0]["timeout"] = 10
    with open(path, "w") as f:
        json.dump(settings, f)
    problems = cs.answer_hook_problems(settings, 30_000)
    assert problems == ["PermissionRequest's timeout 10 s is shorter than decisions.waitMs (30000 ms)"]
    _, by = doctor(env)
    assert any(
        "shorter than decisions.waitMs" in c["detail"] and c["fix"] == "contextuate-trio hooks install"
        for c in by["decisions"]
    )


def test_decisions_off_is_said_plainly(daemon, home, tmp_path):
    daemon()
    _, by = doctor(clean_env(home, HOME=str(tmp_path)))
    assert status(by, "decisions") == ["skip"]
