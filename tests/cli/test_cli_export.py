"""``export`` / ``import``: a session tree moved to another daemon comes out the same."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile

from conftest import DaemonProc, clean_env, run_hook, wait_for
from helpers import run_cli

from contextuate_trio.cli.export import order, select

KEYS = (
    "sessionId",
    "machineId",
    "parentSessionId",
    "childSessionIds",
    "agentType",
    "description",
    "eventCount",
    "toolCount",
    "errorCount",
    "status",
    "startTime",
    "workingDirectory",
)


def cli(home, *args):
    return run_cli(*args, env=clean_env(home), timeout=120)


def view(d):
    return {
        sid: {k: (sorted(v) if isinstance(v, list) else v) for k, v in s.items() if k in KEYS}
        for sid, s in d.sessions().items()
    }


def test_export_import_round_trip_into_another_daemon(daemon, home, tmp_path):
    a = daemon()
    assert cli(home, "demo", "--fast", "--story", "classic").returncode == 0
    run_hook(home, {"session_id": "unrelated", "hook_event_name": "Stop"})
    wait_for(lambda: len(a.sessions()) == 5)
    parent = next(s for s in a.sessions().values() if s["machineId"] == "laptop-ana" and not s["parentSessionId"])

    out = tmp_path / "tree.jsonl"
    r = cli(home, "export", "--session", parent["sessionId"][:8], "-o", str(out))
    assert r.returncode == 0 and "41 events of 4 sessions" in r.stderr, r.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 41 and all(x["sessionId"] != "unrelated" for x in lines)
    assert [x["timestamp"] for x in lines] == sorted(x["timestamp"] for x in lines)
    assert oct(os.stat(out).st_mode & 0o777) == "0o600"
    everything = cli(home, "export").stdout.splitlines()
    assert len(everything) == 42

    other = tempfile.mkdtemp(prefix="ct-b-")
    b = DaemonProc(other).start()
    try:
        r = cli(other, "import", str(out))
        assert r.returncode == 0 and "41 new, 0 already there" in r.stdout, (r.stdout, r.stderr)
        want = {k: v for k, v in view(a).items() if k != "unrelated"}
        assert view(b) == want
        r = cli(other, "import", str(out))
        assert r.returncode == 0 and "0 new, 41 already there" in r.stdout, r.stdout
        assert view(b) == want
    finally:
        b.stop()
        subprocess.run(["rm", "-rf", other])

    a.stop()  # the daemon is down: export reads the data directory
    r = cli(home, "export", "--session", parent["sessionId"])
    assert r.returncode == 0 and "read from" in r.stderr and "data" in r.stderr
    assert [json.loads(x)["id"] for x in r.stdout.splitlines()] == [e["id"] for e in lines]


def test_import_of_complete_events_from_another_producer(daemon, home, tmp_path):
    d = daemon()
    f = tmp_path / "x.jsonl"
    f.write_text(
        json.dumps(
            {
                "id": "c1",
                "timestamp": 1000,
                "sessionId": "ext",
                "machineId": "m",
                "eventType": "custom",
                "data": {"k": 1},
            }
        )
        + "\n\nnot json\n"
    )
    r = cli(home, "import", str(f))
    assert r.returncode == 0
    assert "imported 1 events" in r.stdout and "1 lines skipped" in r.stdout
    assert "line 3 is not a JSON object; skipped" in r.stderr
    wait_for(lambda: "ext" in d.sessions())
    assert d.events("ext")[0]["data"] == {"k": 1}


def test_select_and_order():
    sessions = {
        "aaa1": {"childSessionIds": ["agent-1"]},
        "agent-1": {"childSessionIds": []},
        "aab2": {"childSessionIds": []},
    }
    assert select(sessions, ["aaa"]) == ["aaa1", "agent-1"]
    nested = {"p1": {"childSessionIds": ["p1:agent-x"]}, "p1:agent-x": {"parentSessionId": "p1"}}
    assert select(nested, ["p1"]) == ["p1", "p1:agent-x"] and select(nested, ["p"]) == ["p1", "p1:agent-x"]
    try:
        select(sessions, ["aa"])
        raise AssertionError("ambiguous prefix accepted")
    except LookupError as exc:
        assert "matches 2" in str(exc)
    evs = [
        {"id": "b", "timestamp": 2},
        {"id": "a", "timestamp": 1},
        {"id": "c", "timestamp": 2},
        {"id": "a", "timestamp": 1},
    ]
    assert [e["id"] for e in order(evs)] == ["a", "b", "c"]
