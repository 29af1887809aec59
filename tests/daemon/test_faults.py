"""Bad input and broken surroundings, against the real daemon and real hooks:
keep working, lose nothing else."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
from conftest import clean_env, run_hook, wait_for

CORPUS = sorted((Path(__file__).parent.parent / "fuzz_corpus").glob("*.bin"))


def good(i: int, sid: str = "good") -> bytes:
    return (
        json.dumps(
            {
                "id": f"{sid}-{i}",
                "timestamp": 1_700_000_000_000 + i,
                "sessionId": sid,
                "machineId": "m",
                "eventType": "tool_call",
            }
        ).encode()
        + b"\n"
    )


def test_corpus_on_the_socket_between_good_events(daemon, home):
    d = daemon()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(d.socket_path)
        for i, path in enumerate(CORPUS):
            s.sendall(good(i))
            s.sendall(path.read_bytes().replace(b"\n", b" ") + b"\n")
        s.sendall(good(len(CORPUS)))
    n = len(CORPUS) + 1
    wait_for(lambda: d.sessions().get("good", {}).get("eventCount") == n, what="every good event")
    assert d.get("/api/health")["status"] == "ok"
    # Whatever the corpus made of itself is servable as JSON (no NaN, no lone surrogate)
    # and survives the sessions' metadata being written (deferred by up to 0.25 s).
    time.sleep(0.6)
    for sid in d.sessions():
        d.events(sid)
    assert d.get("/api/health")["status"] == "ok"


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_corpus_through_the_hook_is_kept_or_ignored(daemon, home, path):
    d = daemon()
    data = path.read_bytes()
    r = run_hook(home, data)
    assert r.returncode == 0 and r.stdout == b""
    spool = os.path.join(home, "spool")
    assert not os.path.isdir(spool) or not os.listdir(spool), "acknowledged, not spooled"
    stored = [e for sid in d.sessions() for e in d.events(sid)]
    if not data.strip(b" \t\r\n"):
        assert stored == []
    else:
        assert len(stored) == 1
        json.dumps(stored[0], allow_nan=False)
    time.sleep(0.6)  # the metadata write comes a little later: it must survive it too
    assert d.get("/api/health")["status"] == "ok" and d.sessions() is not None


async def test_a_thousand_connections_and_a_silent_one(daemon, home):
    d = daemon()
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(d.socket_path)  # connects and never sends
    try:

        async def one(i: int) -> None:
            stream = await trio.open_unix_socket(d.socket_path)
            async with stream:
                await stream.send_all(good(i, "many"))

        async with trio.open_nursery() as n:
            for i in range(1000):
                n.start_soon(one, i)
        await trio.to_thread.run_sync(
            lambda: wait_for(
                lambda: d.sessions().get("many", {}).get("eventCount") == 1000, timeout=60, what="1000 events"
            )
        )
        assert len({e["id"] for e in d.events("many")}) == 1000
    finally:
        silent.close()


def test_spool_full_of_corrupt_files(daemon, home):
    spool = Path(home) / "spool"
    spool.mkdir(mode=0o700)
    for i in range(20):
        (spool / f"{i:013d}-bad{i}.json").write_bytes(os.urandom(64))
    r = run_hook(home, {"session_id": "after", "hook_event_name": "Stop"})  # no daemon yet
    assert r.returncode == 0
    d = daemon()
    wait_for(lambda: "after" in d.sessions(), what="the good spooled event")
    wait_for(lambda: not list(spool.glob("*.json")), what="spool emptied")
    assert len(list((spool / "corrupt").iterdir())) == 20
    assert d.get("/api/health")["status"] == "ok"


def test_store_unwritable_degrades_keeps_events_and_recovers(daemon, home):
    d = daemon({"hook": {"timeoutMs": 300}})
    run_hook(home, {"session_id": "w", "hook_event_name": "SessionStart"})
    sessions = Path(home) / "data" / "sessions"
    moved = Path(home) / "data" / "moved-away"
    sessions.rename(moved)
    sessions.write_text("a file where the directory was: every write fails")
    try:
        r = run_hook(home, {"session_id": "w2", "hook_event_name": "SessionStart"})
        assert r.returncode == 0  # not acknowledged in time: spooled
        wait_for(lambda: d.get("/api/health")["status"] == "degraded", what="degraded health")
        assert "cannot write" in " ".join(d.get("/api/health")["reasons"])
    finally:
        sessions.unlink()
        moved.rename(sessions)
    wait_for(lambda: d.get("/api/health")["status"] == "ok", timeout=20, what="recovered")
    wait_for(
        lambda: "w2" in d.sessions() and d.sessions()["w2"]["eventCount"] == 1, what="event kept in memory, stored once"
    )
    wait_for(lambda: not list((Path(home) / "spool").glob("*.json")), what="spool drained")
    d.stop()
    d.start()
    assert d.sessions()["w2"]["eventCount"] == 1 and len(d.events("w2")) == 1


def test_corrupt_files_on_start_recover_what_can_be(daemon, home):
    d = daemon()
    for i in range(5):
        run_hook(home, {"session_id": "c1", "hook_event_name": "UserPromptSubmit", "prompt": f"p{i}"})
    run_hook(home, {"session_id": "c2", "hook_event_name": "Stop"})
    d.stop()
    base = Path(home) / "data" / "sessions"
    ev_file = base / "c1" / "events.jsonl"
    lines = ev_file.read_bytes().splitlines(keepends=True)
    lines[2] = b"{garbage in the middle\n"
    ev_file.write_bytes(b"".join(lines) + b'{"torn": ')
    (base / "c1" / "meta.json").write_text("{not json")
    (base / "c2" / "meta.json").write_bytes(os.urandom(100))
    d.start()
    s = d.sessions()
    assert s["c1"]["eventCount"] == 4 and s["c2"]["eventCount"] == 1
    assert [e["data"]["prompt"] for e in d.events("c1")] == ["p0", "p1", "p3", "p4"]
    run_hook(home, {"session_id": "c1", "hook_event_name": "Stop"})
    assert d.sessions()["c1"]["eventCount"] == 5


def test_non_loopback_bind_without_token_warns(home):
    with open(os.path.join(home, "monitor.config.json"), "w") as f:
        json.dump({"server": {"host": "0.0.0.0", "port": 1, "wsPort": 2}}, f)
    p = subprocess.run(
        [sys.executable, "-c", "from contextuate_trio import config; config.load_or_report()"],
        env=clean_env(home),
        capture_output=True,
        text=True,
    )
    assert "warning" in p.stderr and "0.0.0.0" in p.stderr and "token" in p.stderr


def test_nothing_written_outside_the_home(daemon, home, tmp_path):
    before = set(os.listdir("/tmp"))
    d = daemon()
    run_hook(home, {"session_id": "t", "hook_event_name": "Stop"})
    d.stop()
    after = set(os.listdir("/tmp"))
    created = {n for n in after - before if not n.startswith(("ct-", "pytest", "tmp"))}
    assert created == set()


def test_other_web_pages_cannot_call_the_api(daemon, home):
    import urllib.error

    d = daemon()
    run_hook(home, {"session_id": "x", "hook_event_name": "Stop"})
    for headers in (
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "http://evil.example"},
        {"Origin": f"http://127.0.0.1:{d.port + 1}"},
    ):
        with pytest.raises(urllib.error.HTTPError) as err:
            d.get("/api/search?q=x", headers=headers)
        assert err.value.code == 403, headers
    # The dashboard itself (same origin) and scripts (no browser headers) are fine.
    assert d.get("/api/sessions", headers={"Sec-Fetch-Site": "same-origin", "Origin": f"http://127.0.0.1:{d.port}"})[
        "sessions"
    ]
    assert d.get("/api/sessions")["sessions"]


def test_a_catastrophic_regex_cannot_freeze_the_daemon(daemon, home):
    import urllib.error
    from urllib.parse import quote

    d = daemon()
    for _i in range(3):
        run_hook(home, {"session_id": "re", "hook_event_name": "UserPromptSubmit", "prompt": "a" * 5000 + "b"})
    t0 = time.monotonic()
    with pytest.raises(urllib.error.HTTPError) as err:
        d.get("/api/search?regex=1&q=" + quote("(a|aa)+#"), timeout=10)
    assert err.value.code == 400 and time.monotonic() - t0 < 5
    assert d.get("/api/health")["status"] == "ok"


def test_an_event_nested_very_deep_cannot_break_the_api(daemon, home):
    d = daemon()
    deep = (
        b'{"id":"deep","timestamp":1800000000000,"sessionId":"deep","machineId":"m",'
        b'"eventType":"x","data":{"v":' + b"[" * 960 + b"]" * 960 + b"}}"
    )
    ok = {"id": "ok", "timestamp": 1_800_000_000_001, "sessionId": "deep", "machineId": "m", "eventType": "x"}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(d.socket_path)
        s.sendall(deep + b"\n" + json.dumps(ok).encode() + b"\n")
    wait_for(lambda: d.sessions().get("deep", {}).get("eventCount") == 2, what="both events")
    import urllib.request

    url = f"http://127.0.0.1:{d.port}/api/sessions/deep/events"
    with urllib.request.urlopen(url, timeout=10) as resp:  # 200, not 500
        body = resp.read()
    assert b'"id":"ok"' in body and b'"id":"deep"' in body
    assert d.get("/api/health")["status"] == "ok"
