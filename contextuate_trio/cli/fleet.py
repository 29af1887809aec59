"""``contextuate-trio fleet``: the machines that send to this monitor through Redis.

``fleet add-machine NAME [--apply]`` makes the ACL user ``ct-NAME`` that may only add
to its own stream (``<redis.stream>:{NAME}``), add NAME to the registry and publish on
the channel (so it cannot pass as another machine, read anyone's events or delete
anything), and prints the config that machine needs; ``--apply`` creates the user on
the configured Redis (the monitor's credentials must be allowed ``ACL SETUSER``).

``fleet list`` shows every machine: when it was last seen, the events held, the lag
(entries this monitor has not read yet), the events missed (trimmed before it read
them) and the ACL user for its stream, when ``ACL LIST`` is allowed.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
import time
import urllib.error
from typing import Any

from contextuate_trio import config as config_mod
from contextuate_trio.cli.client import api_get
from contextuate_trio.hook.resp import machine_stream, parse_redis_url, registry_key

NAME_RE = config_mod.MACHINE_NAME_RE  # the monitor reads the registry by the same rule
USER_PREFIX = "ct-"
# What the hook sends (hook/resp.py): AUTH, SELECT (db != 0), XADD, PUBLISH, SADD;
# PING and HELLO for tools that check a connection first.
COMMANDS = ("+xadd", "+sadd", "+publish", "+ping", "+auth", "+hello", "+select")
# And in a Redis Cluster: the slot map, ASKING to follow a slot being migrated, and
# COMMAND (redis-py's cluster client, in relay mode, learns where keys are from it).
CLUSTER_COMMANDS = ("+cluster|slots", "+asking", "+command")


def glob_escape(text: str) -> str:
    """A literal key or channel name as an ACL pattern (Redis's glob: * ? [ ] \\)."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def acl_rules(cfg: config_mod.RedisConfig, name: str, password: str) -> list[str]:
    return [
        "reset",  # exactly what follows, whatever the user had
        "on",
        f">{password}",
        f"~{glob_escape(machine_stream(cfg.stream, name))}",
        f"~{glob_escape(registry_key(cfg.stream))}",
        f"&{glob_escape(cfg.channel)}",
        "-@all",
        *COMMANDS,
        # Its own answers from the dashboard (hook/resp.py answer_key: BLPOP waits there).
        f"~{glob_escape(machine_stream(cfg.stream, name) + ':answer:')}*",
        "+blpop",
        *(CLUSTER_COMMANDS if cfg.is_cluster else ()),
    ]


def machine_config(cfg: config_mod.RedisConfig, name: str, password: str) -> dict:
    """The ``mode`` and ``redis`` sections for the machine NAME (without the monitor's
    own credentials)."""
    where: dict = {"host": cfg.host, "port": cfg.port, "db": cfg.db, "tls": cfg.tls}
    if cfg.url:
        parsed = parse_redis_url(cfg.url)
        where = {k: parsed[k] for k in ("host", "port", "db", "tls") if k in parsed}
        where.setdefault("port", 6379)
        where.setdefault("db", 0)
    redis = dict(where)
    if cfg.nodes:
        redis = {"nodes": list(cfg.nodes), "tls": cfg.tls or (cfg.url or "").startswith("rediss://")}
    elif cfg.cluster:
        redis["cluster"] = True
    if cfg.tls_ca_file:
        redis["tlsCaFile"] = cfg.tls_ca_file
    redis.update(
        username=USER_PREFIX + name,
        password=password,
        machineId=name,
        channel=cfg.channel,
        stream=cfg.stream,
        streamMaxLen=cfg.stream_max_len,
    )
    return {"mode": "redis", "redis": redis}


def cmd_add_machine(args) -> int:
    if not NAME_RE.match(args.name):
        print(
            f"contextuate-trio: {args.name!r} is not a machine name: letters, digits, '.', '_' and '-', "
            "at most 64, starting with a letter or digit",
            file=sys.stderr,
        )
        return 2
    cfg = config_mod.load_or_report()
    if cfg is None:
        return 2
    password = secrets.token_hex(24)
    user = USER_PREFIX + args.name
    rules = acl_rules(cfg.redis, args.name, password)
    where = "every node of the cluster (replicas too)" if cfg.redis.is_cluster else "the Redis server"
    print(
        f"# On {where}, as an admin (then ACL SAVE with an aclfile, or CONFIG REWRITE):\n"
        f"ACL SETUSER {user} {' '.join(rules)}"
    )
    print(f"\n# In {args.name}'s ~/.contextuate/monitor.config.json (the hook reads mode, hook and redis):")
    print(json.dumps(machine_config(cfg.redis, args.name, password), indent=2))
    if not args.apply:
        return 0
    import redis

    from contextuate_trio.sources.redis import describe, make_client

    errors = (redis.RedisError, redis.exceptions.RedisClusterException, OSError)
    client = make_client(cfg.redis)
    targets: list[tuple[str, Any, str]] = []
    try:
        # A cluster's ACLs are each node's own (replicas too: one may be promoted).
        targets = every_node(cfg.redis, client) if cfg.redis.is_cluster else [(describe(cfg.redis), client, "")]
    except errors as exc:
        print(f"\ncontextuate-trio: cannot list the nodes of {describe(cfg.redis)}: {exc}", file=sys.stderr)
        client.close()
        return 1
    failed: list[tuple[str, str]] = []
    unsaved: list[str] = []
    done: list[str] = []
    try:
        for where, node, why in targets:
            if node is None:
                failed.append((where, why))
                continue
            try:
                node.execute_command("ACL", "SETUSER", user, *rules)
            except errors as exc:
                failed.append((where, f"ACL SETUSER failed: {exc}"))
                continue
            done.append(where)
            try:
                node.execute_command("ACL", "SAVE")
            except errors:
                unsaved.append(where)
    finally:
        for node in {id(t): t for t in [client, *(n for _, n, _ in targets if n is not None)]}.values():
            node.close()
    if unsaved:
        on = f" on {', '.join(unsaved)}" if cfg.redis.is_cluster else ""
        saved = f" (not persisted{on}: no ACL file; run CONFIG REWRITE or add it to the server's config)"
    else:
        saved = " and saved to the server's ACL file"
    if not failed:
        print(f"\n# applied: user {user} created on {describe(cfg.redis)}{saved}", file=sys.stderr)
        return 0
    print(file=sys.stderr)
    if not cfg.redis.is_cluster:
        [(where, why)] = failed
        print(f"contextuate-trio: user {user} NOT created on {where}: {why}", file=sys.stderr)
        return 1
    for where, why in failed:
        print(f"contextuate-trio: user {user} NOT created on {where}: {why}", file=sys.stderr)
    if done:
        print(f"# created on {len(done)} of {len(targets)} nodes: {', '.join(done)}{saved}", file=sys.stderr)
    print(
        f"contextuate-trio: {len(failed)} of {len(targets)} nodes failed; a machine whose stream (or a replica of it)"
        f" is there cannot write once that node serves its slot. Once they answer, run again:\n"
        f"  contextuate-trio fleet add-machine {args.name} --apply\n"
        "(a new password for every node: give the machine the config that run prints), or run the ACL SETUSER"
        " line above, as an admin, on each node that failed (a node gone for good: CLUSTER FORGET it).",
        file=sys.stderr,
    )
    return 1


def every_node(cfg: config_mod.RedisConfig, client) -> list[tuple[str, Any, str]]:
    """Each node of the cluster, replicas included (redis-py's cluster client knows
    only the masters), as ``(host:port, a plain client with the same credentials and
    TLS, "")``; a node the cluster marks failed, or without an address, as
    ``(where, None, why)``: reported, never skipped silently."""
    import redis

    from contextuate_trio.sources.redis import node_kwargs

    kw = node_kwargs(cfg)
    asked = client.get_random_node()
    out: list[tuple[str, Any, str]] = []
    for line in _text(client.execute_command("CLUSTER", "NODES", target_nodes=asked)).splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        flags = fields[2].split(",")
        host, _, port = fields[1].split("@", 1)[0].rpartition(":")
        host = host or ("" if "myself" not in flags else str(asked.host))
        where = f"{host}:{port}" if host and port.isdigit() and port != "0" else f"node {fields[0]}"
        if "noaddr" in flags or where.startswith("node "):
            out.append((where, None, "the cluster knows no address for it"))
        elif "fail" in flags:
            out.append((where, None, "the cluster marks it failed (down or unreachable)"))
        elif "handshake" in flags:
            out.append((where, None, "it is still joining the cluster (handshake)"))
        else:
            out.append((where, redis.Redis(host=host, port=int(port), **kw), ""))
    return out


# --- fleet list -------------------------------------------------------------------------
def _acl_users(client) -> dict[str, str] | None:
    """Stream key pattern -> 'user (on|off)', from ACL LIST; None when refused."""
    import redis

    try:
        lines = client.execute_command("ACL", "LIST")
    except redis.RedisError:
        return None
    out: dict[str, str] = {}
    for raw in lines:
        words = (raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)).split()
        if len(words) < 3 or words[0] != "user":
            continue
        state = "on" if "on" in words[2:] else "off"
        for w in words[2:]:
            if w.startswith("~") or w.startswith("%"):
                out.setdefault(w.split("~", 1)[1], f"{words[1]} ({state})")
    return out


def _checkpoints(cfg: config_mod.Config) -> dict:
    from contextuate_trio.sources.redis import checkpoint_file

    try:
        with open(checkpoint_file(cfg.persistence.dir or cfg.home)) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def survey(cfg: config_mod.Config) -> list[dict]:
    """One row per machine: from Redis (registry, XINFO, ACL LIST), the daemon's
    /api/machines when it runs, else this monitor's checkpoints on disk."""
    from contextuate_trio.sources.redis import checkpoint_scope, make_client, parse_id

    r = cfg.redis
    client = make_client(r)
    try:
        names = sorted(_text(m) for m in client.smembers(registry_key(r.stream)))
        keys = [machine_stream(r.stream, m) for m in names] + [r.stream]
        pipe = client.pipeline(transaction=False)
        for k in keys:
            pipe.xinfo_stream(k)
        infos = pipe.execute(raise_on_error=False)
        users = _acl_users(client)
    finally:
        client.close()
    try:
        live = {m["stream"]: m for m in api_get(cfg, "/api/machines").get("machines", []) if m.get("stream")}
    except (OSError, ValueError, urllib.error.HTTPError):
        live = None
    saved = _checkpoints(cfg)
    rows = []
    for name, key, info in zip([*names, None], keys, infos, strict=True):
        info = info if isinstance(info, dict) else {}
        last = info.get("last-entry")
        row = {
            "machineId": name,
            "stream": key,
            "length": info.get("length"),
            "lastSeen": parse_id(_text(last[0]))[0] if last else None,
            "events": None,
            "lag": None,
            "missed": None,
            "credential": None if users is None else users.get(glob_escape(key), "-"),
        }
        if live is not None and key in live:
            m = live[key]
            row.update(events=m.get("events"), lag=m.get("lag"), missed=m.get("missed"))
            row["lastSeen"] = max(row["lastSeen"] or 0, m.get("lastSeen") or 0) or None
        else:
            ck = saved.get(f"{checkpoint_scope(r)}#{key}")
            added = info.get("entries-added")
            if isinstance(ck, dict) and isinstance(ck.get("pos"), int) and isinstance(added, int):
                row["lag"] = max(added - ck["pos"], 0)
            elif ck is None and isinstance(added, int):
                row["lag"] = info.get("length")  # never read by this monitor
        if name is None and not info:
            continue  # no legacy stream at all
        rows.append(row)
    return rows


def _text(v) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _ago(ms: int | None) -> str:
    if not ms:
        return "never"
    s = max(time.time() - ms / 1000, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.0f}{unit} ago"
    return f"{s:.0f}s ago"


def _cell(v) -> str:
    return "?" if v is None else str(v)


def cmd_list(args) -> int:
    cfg = config_mod.load_or_report()
    if cfg is None:
        return 2
    import redis

    try:
        rows = survey(cfg)
    except (redis.RedisError, OSError) as exc:
        from contextuate_trio.sources.redis import describe

        print(f"contextuate-trio: cannot read {describe(cfg.redis)}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"machines": rows}, indent=2))
        return 0
    heads = ["machine", "stream", "last seen", "events", "lag", "missed", "credential"]
    table = [
        [
            r["machineId"] or "(legacy stream)",
            r["stream"],
            _ago(r["lastSeen"]),
            _cell(r["events"]),
            _cell(r["lag"]),
            _cell(r["missed"]),
            _cell(r["credential"]),
        ]
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(heads, *table, strict=False)]
    for line in [heads, *table]:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    if not rows:
        print(f"(no machine has written to {machine_stream(cfg.redis.stream, '*')} yet)")
    if os.environ.get("CONTEXTUATE_DEBUG"):
        print(f"registry: {registry_key(cfg.redis.stream)}", file=sys.stderr)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("fleet", help="the machines sending through Redis: add one (an ACL user), list them")
    fleet = p.add_subparsers(dest="fleet_command", required=True)
    a = fleet.add_parser("add-machine", help="print (or --apply) an ACL user that may write only NAME's stream")
    a.add_argument("name", metavar="NAME")
    a.add_argument("--apply", action="store_true", help="create the user on the configured Redis (needs admin rights)")
    a.set_defaults(func=cmd_add_machine)
    ls = fleet.add_parser("list", help="every machine: last seen, events, lag, missed, credential")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)
