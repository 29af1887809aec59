"""Answers from the dashboard in Redis mode, against a real redis-server: the hook on
one machine (its own home) XADDs its PermissionRequest and waits with BLPOP on its
answer key; a monitor (another home) offers the request, ``POST /api/decisions``
answers it, and the answer travels back through Redis to the hook, which prints it.
Two monitors: the first answer wins, the second gets 409, the hook one answer. No
answer: the hook prints nothing once its wait is over. A machine's ACL user may BLPOP
its own answer keys only."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from types import SimpleNamespace
from typing import cast

import pytest
import redis
import trio
from conftest import DaemonProc, wait_for
from decision_client import HookRun, post_decision
from redis_cluster import needs_cluster, redis_cluster  # noqa: F401 (fixture)
from redis_server import needs_redis, redis_server  # noqa: F401 (fixture)

from contextuate_trio.cli.fleet import acl_rules
from contextuate_trio.config import RedisConfig
from contextuate_trio.core.decisions import Refused
from contextuate_trio.sources.redis import AnswerWaiter, RedisSource

pytestmark = needs_redis

STREAM = "contextuate:events:stream"
DECIDER, READER = "tok-decide-" + "b" * 20, "tok-read-" + "c" * 20
TOKENS = [
    {"name": "phone", "token": DECIDER, "scopes": ["read", "decide"]},
    {"name": "wall", "token": READER, "scopes": ["read"]},
]
# The monitor's user as docs/redis-setup.md gives it (with what answering needs).
# A Redis 7 selector: it may write answer keys, and no stream.
MONITOR_ACL = [
    *(
        "on >mon-pw ~contextuate:events:stream* &contextuate:events -@all +xread +xinfo|stream +smembers "
        "+subscribe +ping +auth +hello +select"
    ).split(),
    "(~contextuate:events:stream:{*}:answer:* +set +get +del +eval +lpush +pexpire)",
]


def answer_key(machine: str, event_id: str) -> str:
    return f"{STREAM}:{{{machine}}}:answer:{event_id}"


def permission(sid: str) -> dict:
    return {
        "session_id": sid,
        "hook_event_name": "PermissionRequest",
        "cwd": "/w",
        "tool_name": "Bash",
        "tool_input": {"command": "touch /tmp/x", "description": "make x"},
        "permission_mode": "default",
        "permission_suggestions": [],
    }


def post(d: DaemonProc, body: dict) -> tuple[int, dict]:
    return post_decision(d.port, body, DECIDER)


def attention(d: DaemonProc, sid: str) -> dict | None:
    items = d.get("/api/attention", headers={"Authorization": f"Bearer {READER}"})["items"]
    return next((i for i in items if i["sessionId"] == sid), None)


def offer(d: DaemonProc, sid: str) -> dict:
    def find():
        item = attention(d, sid)
        return item if item is not None and item.get("decision") else None

    return wait_for(find, what="an answerable request in the queue")


@pytest.fixture
def homes():
    made: list[str] = []

    def make(prefix: str = "ct-") -> str:
        d = tempfile.mkdtemp(prefix=prefix)
        os.chmod(d, 0o700)
        made.append(d)
        return d

    yield make
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def monitors():
    procs: list[DaemonProc] = []

    def make(home: str, redis_cfg: dict, wait_ms: int = 20_000) -> DaemonProc:
        cfg = {
            "mode": "redis",
            "redis": redis_cfg,
            "decisions": {"enabled": True, "waitMs": wait_ms},
            "server": {"tokens": TOKENS},
        }
        d = DaemonProc(home, cfg)
        procs.append(d)
        d.start()
        wait_for(lambda: d.get("/api/health")["status"] == "ok", what="the monitor connected to Redis")
        return d

    yield make
    for d in procs:
        d.kill9()


def machine(home: str, redis_cfg: dict, name: str, wait_ms: int = 20_000) -> str:
    """A machine's home: Redis mode, decisions on, its own machine id."""
    with open(os.path.join(home, "monitor.config.json"), "w") as f:
        json.dump(
            {
                "mode": "redis",
                "redis": {**redis_cfg, "machineId": name},
                "hook": {"timeoutMs": 2000},
                "decisions": {"enabled": True, "waitMs": wait_ms},
            },
            f,
        )
    return home


def add_machine_user(r, name: str) -> dict:
    """The ACL user ``fleet add-machine`` makes for ``name``; its credentials."""
    password = "pw-" + name
    r.client().execute_command("ACL", "SETUSER", f"ct-{name}", *acl_rules(RedisConfig(), name, password))
    return {"username": f"ct-{name}", "password": password}


def test_the_answer_travels_back_to_the_hook_on_its_machine(redis_server, homes, monitors):
    r = redis_server("--user", "mon", *MONITOR_ACL)
    where = {"host": "127.0.0.1", "port": r.port}
    d = monitors(homes(), {**where, "username": "mon", "password": "mon-pw"})
    m = machine(homes("ct-m-"), {**where, **add_machine_user(r, "box-a")}, "box-a")
    hook = HookRun(m, permission("s-redis-allow"))
    item = offer(d, "s-redis-allow")
    assert item["machineId"] == "box-a" and item["decision"]["decisions"] == ["allow", "deny"]
    rid = item["requestId"]
    status, body = post(d, {"requestId": rid, "decision": "deny", "message": "not from CI"})
    assert status == 200, body
    assert hook.result() == {
        "hookSpecificOutput": {
            "hookEventName": "PermissionRequest",
            "decision": {"behavior": "deny", "message": "not from CI"},
        }
    }, hook.err
    assert hook.took < 10
    assert b"answered from the dashboard" in hook.err
    c = r.client()
    assert c.llen(answer_key("box-a", rid)) == 0  # popped by the hook
    assert c.get(answer_key("box-a", rid) + ":taken").decode().endswith(" " + rid)
    assert 0 < c.pttl(answer_key("box-a", rid) + ":taken") <= 20_000
    import redis

    mon = r.client(username="mon", password="mon-pw")
    with pytest.raises(redis.exceptions.NoPermissionError):  # the monitor cannot overwrite a stream
        mon.set(f"{STREAM}:{{box-a}}", "x")
    audit = wait_for(
        lambda: [e for e in d.events("s-redis-allow") if e["eventType"] == "decision"], what="the audit event"
    )
    assert audit[0]["data"]["decision"] == "deny" and audit[0]["machineId"] == "box-a"
    assert post(d, {"requestId": rid, "decision": "allow"})[0] == 409


def claim_waiters(client, *monitors: str) -> list[AnswerWaiter]:
    """Waiters of several monitors for one request (only what a waiter uses of its
    source: the connection, the monitor's name)."""
    key = answer_key("box", "ev-1")
    return [
        AnswerWaiter(cast(RedisSource, SimpleNamespace(answer_client=client, monitor_id=m)), key, "ev-1", 20_000)
        for m in monitors
    ]


def test_a_claim_given_back_lets_another_monitor_answer(redis_server):
    """A monitor that claimed an answer but could not record it (its store failing)
    gives the claim back, with the monitor's user of docs/redis-setup.md; it never
    deletes another monitor's claim, nor a later claim of its own."""
    r = redis_server("--user", "mon", *MONITOR_ACL)
    client = r.client(username="mon", password="mon-pw")
    a, b, a_later = claim_waiters(client, "A", "B", "A")

    async def claims() -> None:
        assert await a.claim()
        assert not await b.claim()  # taken: B's answer would be a 409
        await b.release()  # not B's to give back
        assert not await b.claim()
        await a.release()
        assert await b.claim()
        await a.release()  # given back already: B's claim stays
        assert not await a_later.claim()

    trio.run(claims)
    value = client.get(answer_key("box", "ev-1") + ":taken").decode()
    assert value.startswith("B#") and value.endswith(" ev-1")


@needs_cluster
def test_a_claim_is_given_back_through_a_cluster(redis_cluster):
    """The give-back script names its one key: a cluster's client runs it on the
    key's master (the answer keys of a machine share its stream's slot)."""
    a, b = claim_waiters(redis_cluster().client(), "A", "B")

    async def claims() -> None:
        assert await a.claim()
        assert not await b.claim()
        await a.release()
        assert await b.claim()

    trio.run(claims)


def test_a_claim_that_cannot_be_given_back_stays_this_monitors(redis_server, caplog):
    """A monitor's user without +eval (an older docs/redis-setup.md): the claim stays
    until it expires, said in the log; this monitor may still answer, no other."""
    acl = [*MONITOR_ACL[:-1], "(~contextuate:events:stream:{*}:answer:* +set +get +lpush +pexpire)"]
    r = redis_server("--user", "mon", *acl)
    client = r.client(username="mon", password="mon-pw")
    a, b = claim_waiters(client, "A", "B")

    async def claims() -> None:
        assert await a.claim()
        await a.release()
        assert not await b.claim()
        assert await a.claim()  # its own claim, still there

    trio.run(claims)
    assert "its claim stays in Redis until the hook's wait ends" in caplog.text


def test_an_earlier_claim_that_may_still_be_given_back_is_a_503(redis_server):
    """A give-back that timed out may still run: this monitor's next answer must not
    take over a claim it could delete, nor read it as another monitor's (409 would
    close the request): 503, the request stays open."""
    a, b = claim_waiters(redis_server().client(), "A", "B")

    async def claims() -> None:
        assert await a.claim()
        a._claim_value = None  # what a release that timed out leaves (its script may still run)
        with pytest.raises(Refused) as err:
            await a.claim()
        assert err.value.status == 503
        assert not await b.claim()  # another monitor's: still 409

    trio.run(claims)


def test_two_monitors_the_first_answer_wins(redis_server, homes, monitors):
    r = redis_server()
    where = {"host": "127.0.0.1", "port": r.port}
    one, two = monitors(homes(), where), monitors(homes(), where)
    m = machine(homes("ct-m-"), where, "box-b")
    hook = HookRun(m, permission("s-two"))
    rid = offer(one, "s-two")["requestId"]
    assert offer(two, "s-two")["requestId"] == rid  # both offer it
    status, body = post(one, {"requestId": rid, "decision": "allow"})
    assert status == 200, body
    status, body = post(two, {"requestId": rid, "decision": "deny", "message": "too late"})
    assert status == 409, body
    assert "another monitor" in body["error"]
    assert hook.result() == {
        "hookSpecificOutput": {"hookEventName": "PermissionRequest", "decision": {"behavior": "allow"}}
    }
    assert r.client().llen(answer_key("box-b", rid)) == 0  # nothing more was pushed
    # The answer that went is recorded; the second, refused before anything, is not.
    audit = wait_for(lambda: [e for e in one.events("s-two") if e["eventType"] == "decision"], what="audit")
    assert [a["data"]["decision"] for a in audit] == ["allow"]
    assert not [e for e in two.events("s-two") if e["eventType"] == "decision"]


def test_no_answer_the_hook_prints_nothing_after_its_wait(redis_server, homes, monitors):
    r = redis_server()
    where = {"host": "127.0.0.1", "port": r.port}
    d = monitors(homes(), where, wait_ms=1500)
    m = machine(homes("ct-m-"), where, "box-c", wait_ms=1500)
    hook = HookRun(m, permission("s-quiet"))
    rid = offer(d, "s-quiet")["requestId"]
    assert hook.result() is None, hook.err
    assert hook.took < 1.5 + 1.2, hook.took
    assert b"no answer from the dashboard" in hook.err
    wait_for(lambda: not (attention(d, "s-quiet") or {}).get("decision"), what="the offer withdrawn")
    assert post(d, {"requestId": rid, "decision": "allow"})[0] == 404
    assert r.client().exists(answer_key("box-c", rid)) == 0


def test_a_request_from_before_an_outage_is_not_offered(redis_server, homes, monitors):
    r = redis_server()
    c = r.client()
    old = int(time.time() * 1000) - 60_000  # the hook waited 20 s, a minute ago
    line = json.dumps(
        {
            "kind": "hook",
            "id": str(uuid.uuid4()),
            "timestamp": old,
            "machineId": "box-d",
            "decide": 20_000,
            "payload": permission("s-stale"),
        }
    )
    c.xadd(f"{STREAM}:{{box-d}}", {"data": line}, id=f"{old}-0")
    c.sadd(f"{STREAM}:machines", "box-d")
    d = monitors(homes(), {"host": "127.0.0.1", "port": r.port})
    wait_for(lambda: "s-stale" in d.sessions(), what="the old event read")
    item = wait_for(lambda: attention(d, "s-stale"), what="its attention item")
    assert "decision" not in item  # a request nobody waits for any more


def test_a_machine_may_blpop_its_own_answer_keys_only(redis_server):
    r = redis_server()
    mine = add_machine_user(r, "box-e")
    add_machine_user(r, "box-f")
    c = redis.Redis(host="127.0.0.1", port=r.port, **mine)
    assert c.blpop([answer_key("box-e", "x")], timeout=0.05) is None  # allowed, nothing there
    with pytest.raises(redis.exceptions.NoPermissionError):
        c.blpop([answer_key("box-f", "x")], timeout=0.05)
    with pytest.raises(redis.exceptions.NoPermissionError):
        c.lpush(answer_key("box-e", "x"), "{}")  # nor answer itself
    with pytest.raises(redis.exceptions.NoPermissionError):
        c.blpop([answer_key("box-e2", "x")], timeout=0.05)  # nor a machine whose name starts as its own
    c.close()


@needs_cluster
def test_a_cluster_the_hook_waits_on_the_master_of_its_stream(redis_cluster, homes, monitors):
    """Redis Cluster: the answer key shares the stream's hash tag, so it is on the node
    that took the XADD; the hook finds it in the slot map it saved while delivering."""
    from contextuate_trio.hook.cluster import key_slot

    c = redis_cluster()
    first = c.nodes[0].port
    name = next(f"box-{i}" for i in range(200) if c.master_of_slot(key_slot(f"{STREAM}:{{box-{i}}}")).port != first)
    d = monitors(homes(), {"nodes": c.seeds})
    m = machine(homes("ct-m-"), {"nodes": c.seeds}, name)
    hook = HookRun(m, permission("s-cluster"))
    rid = offer(d, "s-cluster")["requestId"]
    status, body = post(d, {"requestId": rid, "decision": "allow"})
    assert status == 200, body
    assert hook.result() == {
        "hookSpecificOutput": {"hookEventName": "PermissionRequest", "decision": {"behavior": "allow"}}
    }, hook.err
