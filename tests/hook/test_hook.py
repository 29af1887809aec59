"""The hook as Claude Code runs it: a real `python3 -I -S hook_emit.py` process."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import threading
import time

import pytest
from conftest import HOOK, HOOK_PYTHON, clean_env, run_hook

PAYLOAD = {
    "session_id": "s1",
    "hook_event_name": "PreToolUse",
    "tool_name": "Read",
    "tool_input": {"file_path": "/x"},
    "cwd": "/w",
}


def spooled(home):
    d = os.path.join(home, "spool")
    return (
        [json.loads(open(os.path.join(d, n), "rb").read()) for n in sorted(os.listdir(d)) if n.endswith(".json")]
        if os.path.isdir(d)
        else []
    )


def test_no_daemon_spools_privately_and_exits_0(home):
    r = run_hook(home, PAYLOAD)
    assert r.returncode == 0 and r.stdout == b"" and r.stderr == b""
    [line] = spooled(home)
    assert line["kind"] == "hook" and line["payload"] == PAYLOAD
    assert len(line["id"]) == 36 and abs(line["timestamp"] / 1000 - time.time()) < 60
    d = os.path.join(home, "spool")
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    for n in os.listdir(d):
        assert stat.S_IMODE(os.stat(os.path.join(d, n)).st_mode) == 0o600


def test_empty_stdin_sends_nothing(home):
    for data in (b"", b"   \n"):
        r = run_hook(home, data)
        assert r.returncode == 0 and r.stdout == b""
    assert spooled(home) == []


@pytest.mark.parametrize(
    "data", [b"not json", b'{"truncated": ', b"\xff\xfe\x00garbage", b"[1, 2]", b'{"a": 1} trailing']
)
def test_broken_stdin_is_kept_as_invalid(home, data):
    r = run_hook(home, data)
    assert r.returncode == 0 and r.stdout == b""
    [line] = spooled(home)
    assert isinstance(line["payload"], str)
    assert line["payload"] == data.decode("utf-8", "replace")


def test_pretty_printed_json_is_one_line(home):
    r = run_hook(home, json.dumps(PAYLOAD, indent=2).encode())
    assert r.returncode == 0
    [line] = spooled(home)
    assert line["payload"] == PAYLOAD


def test_huge_stdin(home):
    big = dict(PAYLOAD, tool_response={"content": "x" * 5_000_000})
    r = run_hook(home, big)
    assert r.returncode == 0
    [line] = spooled(home)
    assert len(line["payload"]["tool_response"]["content"]) == 5_000_000


def test_machine_id_precedence(home):
    run_hook(home, PAYLOAD, {"CONTEXTUATE_MACHINE_ID": "mid", "HOSTNAME": "hn"})
    run_hook(home, PAYLOAD, {"HOSTNAME": "hn"})
    env = clean_env(home)
    env.pop("HOSTNAME", None)
    subprocess.run([HOOK_PYTHON, "-I", "-S", HOOK], input=json.dumps(PAYLOAD).encode(), env=env)
    ids = [x["machineId"] for x in spooled(home)]
    assert sorted(ids) == sorted(["mid", "hn", os.uname().nodename])


def test_parent_session_and_debug_explains_on_stderr(home):
    r = run_hook(home, PAYLOAD, {"CONTEXTUATE_PARENT_SESSION": "p-1", "CONTEXTUATE_DEBUG": "1"})
    assert r.returncode == 0 and r.stdout == b""
    err = r.stderr.decode()
    assert "did not acknowledge" in err and "spooled" in err
    assert spooled(home)[0]["parentSessionId"] == "p-1"


def test_broken_config_uses_defaults(home):
    with open(os.path.join(home, "monitor.config.json"), "w") as f:
        f.write("{this is not json")
    r = run_hook(home, PAYLOAD, {"CONTEXTUATE_DEBUG": "1"})
    assert r.returncode == 0 and b"using defaults" in r.stderr
    assert len(spooled(home)) == 1


def test_unwritable_home_still_exits_0(tmp_path):
    home = tmp_path / "ro"
    home.mkdir()
    (home / "spool").write_text("a file where the spool dir should be")
    r = run_hook(str(home), PAYLOAD, {"CONTEXTUATE_DEBUG": "1"})
    assert r.returncode == 0 and r.stdout == b""
    assert b"could not spool" in r.stderr


def test_stdin_never_closed_is_bounded(home):
    with open(os.path.join(home, "monitor.config.json"), "w") as f:
        json.dump({"hook": {"timeoutMs": 300}}, f)
    t0 = time.monotonic()
    p = subprocess.Popen(
        [HOOK_PYTHON, "-I", "-S", HOOK], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=clean_env(home)
    )
    p.stdin.write(json.dumps(PAYLOAD).encode())
    p.stdin.flush()
    try:
        assert p.wait(timeout=5) == 0
    finally:
        p.stdin.close()
    assert time.monotonic() - t0 < 4
    assert p.stdout.read() == b""
    [line] = spooled(home)
    assert line["payload"] == PAYLOAD  # what arrived before the deadline is kept


def test_fake_daemon_ack_protocol(home):
    """Acknowledged -> nothing spooled; a refusal or a silent close -> spooled."""
    path = os.path.join(home, "monitor.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(5)
    replies = [
        lambda eid: b'{"ack":"%s"}\n' % eid.encode(),
        lambda eid: b'{"nack":"x","error":"no"}\n',
        lambda eid: b"",
    ]
    got = []

    def serve():
        for make in replies:
            c, _ = srv.accept()
            data = b""
            while not data.endswith(b"\n"):
                data += c.recv(65536)
            msg = json.loads(data)
            got.append(msg)
            c.sendall(make(msg["id"]))
            c.close()

    t = threading.Thread(target=serve)
    t.start()
    try:
        for _ in replies:
            assert run_hook(home, PAYLOAD).returncode == 0
    finally:
        t.join(10)
        srv.close()
    assert [m["ack"] for m in got] == [True, True, True]
    assert len(spooled(home)) == 2


def test_concurrent_hooks_spool_without_clobbering(home):
    procs = [
        subprocess.Popen([HOOK_PYTHON, "-I", "-S", HOOK], stdin=subprocess.PIPE, env=clean_env(home)) for _ in range(30)
    ]
    for i, p in enumerate(procs):
        p.communicate(json.dumps(dict(PAYLOAD, n=i)).encode())
    assert all(p.returncode == 0 for p in procs)
    assert sorted(x["payload"]["n"] for x in spooled(home)) == list(range(30))


def test_hook_imports_only_builtin_modules(home):
    r = subprocess.run(
        [HOOK_PYTHON, "-I", "-S", "-X", "importtime", HOOK], input=b"", capture_output=True, env=clean_env(home)
    )
    imported = {
        line.split("|")[-1].strip()
        for line in r.stderr.decode().splitlines()
        if line.startswith("import time:") and "|" in line
    }
    for heavy in ("json", "socket", "os", "uuid", "re", "subprocess"):
        assert heavy not in imported, f"the hook imports {heavy}"


FAKETIME = __import__("shutil").which("faketime")


@pytest.mark.skipif(
    FAKETIME is None and not os.environ.get("CI"), reason="faketime is not installed (make test installs it)"
)
@pytest.mark.parametrize("spec", ["-3y", "+20y", "@2001-01-01 00:00:00", "+0 x100"])
def test_clock_jumps_keep_the_hook_bounded_and_delivering(daemon, home, spec):
    """Wall and monotonic clocks jumped or racing (libfaketime): exit 0, bounded time,
    the event delivered to the real daemon with the hook's (fake) timestamp."""
    d = daemon()
    env = clean_env(home)
    t0 = time.monotonic()
    r = subprocess.run(
        [FAKETIME, "-f", spec, HOOK_PYTHON, "-I", "-S", HOOK],
        input=json.dumps(PAYLOAD).encode(),
        env=env,
        capture_output=True,
        timeout=20,
    )
    assert r.returncode == 0 and r.stdout == b""
    assert time.monotonic() - t0 < 5
    [ev] = d.events("s1")
    assert ev["data"] == PAYLOAD
    real_now = time.time() * 1000
    if spec == "-3y":
        assert ev["timestamp"] < real_now - 2 * 365 * 86400 * 1000
    elif spec == "+20y":
        assert ev["timestamp"] > real_now + 19 * 365 * 86400 * 1000
    # A later event with a sane clock is still stored and counted.
    run_hook(home, dict(PAYLOAD, hook_event_name="Stop"))
    assert d.sessions()["s1"]["eventCount"] == 2


def test_redis_mode_hook_imports_stay_light(home):
    """No IDNA codec (it pulls in re and unicodedata), no json/socket/os, no re for
    an event with nothing to mask."""
    from conftest import free_port

    with open(os.path.join(home, "monitor.config.json"), "w") as f:
        json.dump({"mode": "redis", "redis": {"host": "localhost", "port": free_port()}}, f)
    r = subprocess.run(
        [HOOK_PYTHON, "-I", "-S", "-X", "importtime", HOOK],
        input=json.dumps(PAYLOAD).encode(),
        capture_output=True,
        env=clean_env(home),
    )
    imported = {
        line.split("|")[-1].strip()
        for line in r.stderr.decode().splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "contextuate_trio.core.redact" in imported  # it ran...
    for heavy in ("encodings.idna", "re", "json", "socket", "os", "unicodedata"):
        assert heavy not in imported, f"the hook imports {heavy}"


def _acking_server(path: str, count: int = 1):
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(5)

    def serve():
        for _ in range(count):
            c, _ = srv.accept()
            data = b""
            while not data.endswith(b"\n"):
                data += c.recv(65536)
            c.sendall(b'{"ack":"%s"}\n' % json.loads(data)["id"].encode())
            c.close()

    t = threading.Thread(target=serve)
    t.start()
    return srv, t


def test_socket_path_with_tilde_is_the_daemons(home):
    with open(os.path.join(home, "monitor.config.json"), "w") as f:
        json.dump({"socketPath": "~/other.sock"}, f)
    srv, t = _acking_server(os.path.join(home, "other.sock"))
    try:
        r = run_hook(home, PAYLOAD, {"HOME": home})
    finally:
        t.join(10)
        srv.close()
    assert r.returncode == 0 and spooled(home) == []


def test_sigterm_or_sigint_do_not_lose_the_event(home):
    """Claude Code may stop waiting for a hook and signal it: the event still lands."""
    import signal as sig

    with open(os.path.join(home, "monitor.config.json"), "w") as f:
        json.dump({"hook": {"timeoutMs": 800}}, f)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(os.path.join(home, "monitor.sock"))
    srv.listen(5)  # accepts, never answers
    try:
        for signum in (sig.SIGTERM, sig.SIGINT):
            p = subprocess.Popen(
                [HOOK_PYTHON, "-I", "-S", HOOK], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=clean_env(home)
            )
            p.stdin.write(json.dumps(dict(PAYLOAD, n=int(signum))).encode())
            p.stdin.close()
            time.sleep(0.3)
            p.send_signal(signum)
            assert p.wait(timeout=5) == 0 and p.stdout.read() == b""
    finally:
        srv.close()
    assert sorted(x["payload"]["n"] for x in spooled(home)) == sorted([int(sig.SIGTERM), int(sig.SIGINT)])


def test_as_machine_rewrites_only_the_top_level_machine_id():
    import json as _json

    from contextuate_trio.hook.wire import as_machine, envelope

    line = envelope(b'{"machineId": "inner", "x": [1, {"machineId": "y"}]}', "e1", 5, "old", "p", ack=True)
    out = _json.loads(as_machine(line.rstrip(b"\n"), 'new "one"'))
    assert out["machineId"] == 'new "one"' and out["payload"]["machineId"] == "inner" and out["id"] == "e1"
    usage = _json.dumps({"id": "u", "timestamp": 1, "sessionId": "s", "machineId": "old", "data": {}}).encode()
    assert _json.loads(as_machine(usage, "new"))["machineId"] == "new"
    for same in (b"not json", b'{"no": "machine"}', b"[1]", b'{"machineId": "new"}', b'{"a": '):
        assert as_machine(same, "new") == same
