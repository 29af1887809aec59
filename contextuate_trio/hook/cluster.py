"""Redis Cluster for the hook: the slot of a key, the slot map cached in the hook's
home, MOVED and ASK followed, all within the hook's deadline (standard library only,
as ``hook.resp``; imported only in cluster mode).

The map lives in ``<home>/redis-slots``: a header naming the seeds it came from (a
map from another cluster is not used), when this machine last added itself to the
registry, and one line per slot range (master first). The machine's XADDs and
PUBLISHes go to the master of its stream's slot in one round trip; the registry, in
another slot, is written there only every ``REGISTER_EVERY_S`` or after the map
changed (a second connection on every run, for an idempotent SADD whose set is lost
only with the cluster's data, when the map changes too).
"""

import time

from contextuate_trio.hook.paths import make_dirs, read_file, write_atomic
from contextuate_trio.hook.resp import (
    RedisError,
    _auth,
    _exchange,
    _redis_connect,
    _refusals,
    _xadd,
    machine_stream,
    parse_host_port,
    registry_key,
    resp,
)

SLOTS_NAME = "redis-slots"  # the cluster's slot map as the hook last saw it, in its home
REGISTER_EVERY_S = 300.0  # a registry on another node than the stream: SADD this often
# Registering on another node comes after the events are stored, and may take only this
# share of the time left (a hung registry node costs that, not the event's budget);
# with less than REGISTER_MIN_S for it, it waits for a run with the time.
REGISTER_SHARE = 0.2
REGISTER_MIN_S = 0.02
REGISTER_ROUNDS = 4  # nodes asked (a failed one, a MOVED) while registering
CLUSTER_ROUNDS = 6  # round trips a cluster delivery may take (redirects, failed nodes)
_SLOTS_HEADER = "contextuate-slots 1"


def key_slot(key) -> int:
    """A key's Redis Cluster slot: CRC16/XMODEM of the key (or of its hash tag, what is
    between the first ``{`` and the next ``}`` when that is not empty) mod 16384."""
    data = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = (crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1
        crc &= 0xFFFF  # bits above 16 never reach the low 16: mask once a byte
    return crc & 0x3FFF


def slots_path(home: str) -> str:
    return home.rstrip("/") + "/" + SLOTS_NAME


def _addr_text(addr: tuple) -> str:
    return f"{addr[0]}:{addr[1]}"


class SlotMap:
    """A cluster's slot map as this machine's hook last saw it, and when the machine
    last registered, cached between runs in ``<home>/redis-slots`` as lines of text
    (no ``json`` in the hook): a header naming the seeds it was read through (a map
    from other seeds, another cluster, is not used), ``registered <unix time> <whom>``,
    then ``<first slot> <last slot> <master host:port> [<replica host:port> …]``.
    Stale is fine (MOVED and failed nodes correct it); unreadable is no map."""

    __slots__ = ("ident", "ranges", "registered", "changed")

    def __init__(self, ident: str) -> None:
        self.ident = ident
        self.ranges: list = []  # [first, last, [(host, port): the master, then replicas]]
        self.registered = ("", 0.0)  # (whom, unix time): the last SADD the registry answered
        self.changed = False

    @classmethod
    def load(cls, path: str, ident: str) -> "SlotMap":
        smap = cls(ident)
        if not path:
            return smap
        try:
            lines = read_file(path).decode("utf-8").split("\n")
            if lines[0] != f"{_SLOTS_HEADER} {ident}":
                return smap  # another cluster's (the seeds changed), or another format
            ranges = []
            for line in lines[1:]:
                f = line.split(" ")
                if f[0] == "registered" and len(f) == 3:
                    smap.registered = (f[2], float(f[1]))
                elif line:
                    first, last = int(f[0]), int(f[1])
                    if not 0 <= first <= last < 16384 or len(f) < 3:
                        raise ValueError(line)
                    ranges.append([first, last, [parse_host_port(a) for a in f[2:]]])
            smap.ranges = ranges
        except (OSError, ValueError, IndexError):  # corrupt: as if there were none
            smap.registered = ("", 0.0)
        return smap

    def save(self, path: str) -> None:
        out = [f"{_SLOTS_HEADER} {self.ident}", f"registered {self.registered[1]!r} {self.registered[0]}"]
        out += [f"{a} {b} " + " ".join(_addr_text(n) for n in nodes) for a, b, nodes in self.ranges]
        data = ("\n".join(out) + "\n").encode("utf-8")
        try:
            write_atomic(path, data)
        except FileNotFoundError:  # no home yet
            make_dirs(path.rpartition("/")[0])
            write_atomic(path, data)

    def owner(self, slot: int):
        for first, last, nodes in self.ranges:
            if first <= slot <= last:
                return nodes[0]
        return None

    def nodes(self) -> list:
        out: list = []
        for _, _, nodes in self.ranges:
            out += [n for n in nodes if n not in out]
        return out

    def learn(self, slot: int, addr: tuple) -> None:
        """A MOVED reply: ``slot`` is ``addr``'s now (the range it was in is split)."""
        out = []
        for first, last, nodes in self.ranges:
            if first <= slot <= last:
                out += [r for r in ([first, slot - 1, nodes], [slot + 1, last, nodes]) if r[0] <= r[1]]
            else:
                out.append([first, last, nodes])
        self.ranges = [*out, [slot, slot, [addr]]]
        self.changed = True

    def replace(self, reply, asked: tuple) -> bool:
        """Take a ``CLUSTER SLOTS`` reply as the map; False when it is not one. A node
        without a usable endpoint (``?``, empty, NULL) is the node that was asked."""
        if not isinstance(reply, list) or not reply:
            return False
        ranges = []
        try:
            for item in reply:
                nodes = []
                for node in item[2:]:
                    host = node[0].decode("utf-8") if isinstance(node[0], bytes) else ""
                    nodes.append((asked[0] if host in ("", "?") else host, int(node[1])))
                if nodes and 0 <= int(item[0]) <= int(item[1]) < 16384:
                    ranges.append([int(item[0]), int(item[1]), nodes])
        except (TypeError, ValueError, IndexError):
            return False
        if ranges:
            self.ranges = ranges
            self.changed = True
        return bool(ranges)

    def due(self, whom: str, now: float) -> bool:
        return self.registered[0] != whom or not 0 <= now - self.registered[1] < REGISTER_EVERY_S


def _cluster_ident(rs: dict) -> str:
    return ("tls:" if rs["tls"] else "") + ",".join(_addr_text(a) for a in rs["nodes"])


def _redirect(reply, here: tuple):
    """``-MOVED <slot> <host>:<port>`` / ``-ASK …`` -> (kind, (host, port)), else None.
    An empty host is the node that answered."""
    if not isinstance(reply, RedisError):
        return None
    kind, _, rest = str(reply).partition(" ")
    host, sep, port = rest.partition(" ")[2].rpartition(":")
    if kind not in ("MOVED", "ASK") or not sep or not port.isdigit():
        return None
    return kind, (host or here[0], int(port))


def _node_exchange(rs: dict, addr: tuple, cmds: list, by: float) -> list:
    """One round trip to one node, with the section's credentials and TLS rules,
    connection and replies both by ``by`` (a node that accepts and never answers
    costs that, not more)."""
    node = dict(rs, host=addr[0], port=addr[1])
    try:
        sock = _redis_connect(node, by)
    except OSError as exc:
        raise OSError(f"cannot connect: {exc}") from None
    try:
        return _exchange(sock, cmds, by)
    except (OSError, RedisError, ValueError) as exc:
        raise OSError(f"did not answer in time: {exc!r}") from None
    finally:
        sock.close()


class _Attempt:
    """One cluster delivery: the lines still to store, the node to try next and how
    (``ASKING``, the map wanted in the same pipeline), and what went wrong."""

    __slots__ = (
        "rs", "smap", "key", "slot", "reg", "reg_slot", "machine", "auth", "warnings",
        "pending", "target", "asking", "want_map", "failed", "problems", "sadd", "publish",
    )  # fmt: skip

    def __init__(self, rs: dict, smap: SlotMap, lines: list, machine: str, warnings: list | None) -> None:
        self.rs, self.smap, self.machine, self.warnings = rs, smap, machine, warnings
        self.key = machine_stream(rs["stream"], machine)
        self.reg = registry_key(rs["stream"])
        self.slot, self.reg_slot = key_slot(self.key), key_slot(self.reg)
        self.auth = _auth(rs)
        self.pending = [(line, False) for line in lines]  # (line, PUBLISHed already)
        self.target = smap.owner(self.slot) or rs["nodes"][0]
        self.asking = False
        self.want_map = not smap.ranges  # piggybacked on the next round trip
        self.failed: list = []  # nodes that could not be reached this run
        self.problems: list = []
        self.sadd = None  # the registry's reply, once a node gave one
        self.publish: list = []  # the PUBLISH replies

    def warn(self, text: str) -> None:
        if self.warnings is not None:
            self.warnings.append(text)

    def candidates(self) -> list:
        return [a for a in self.rs["nodes"] + self.smap.nodes() if a not in self.failed]

    def next_node(self) -> bool:
        """After a failed node: the seeds, then the map's other nodes; a new map with it."""
        left = self.candidates()
        if left:
            self.target, self.asking, self.want_map = left[0], False, True
        return bool(left)

    def round(self, deadline: float) -> str:
        """One round trip to ``target``; an error text when the events cannot be stored."""
        now = time.monotonic()
        with_sadd = self.sadd is None and not self.asking and self.smap.owner(self.reg_slot) == self.target
        cmds = self.auth + ([resp("CLUSTER", "SLOTS")] if self.want_map else [])
        for line, published in self.pending:
            cmds += [resp("ASKING")] if self.asking else []
            cmds += [_xadd(self.rs, self.key, line)]
            cmds += [] if published else [resp("PUBLISH", self.rs["channel"], line)]
        cmds += [resp("SADD", self.reg, self.machine)] if with_sadd else []
        # Half of what is left (connection and replies) while another node could be
        # tried: a node that hangs leaves the other half to the next.
        others = [a for a in self.candidates() if a != self.target]
        try:
            replies = _node_exchange(self.rs, self.target, cmds, now + (deadline - now) / (2 if others else 1))
        except OSError as exc:
            self.problems.append(f"Redis at {_addr_text(self.target)} {exc}")
            self.failed.append(self.target)
            return "" if self.next_node() else "no node left to try"
        if self.auth and isinstance(replies[0], RedisError):
            return f"Redis refused: {replies[0]}"
        i = len(self.auth)
        fresh = self.want_map  # this node's map came with these replies
        if self.want_map:
            self.want_map = False
            if not self.smap.replace(replies[i], self.target):
                self.warn(f"no slot map from CLUSTER SLOTS ({replies[i]}): following MOVED only (grant +cluster|slots)")
            i += 1
        redirect, still = None, []
        for line, published in self.pending:
            if self.asking:
                if isinstance(replies[i], RedisError):
                    return f"Redis refused: ASKING: {replies[i]}"
                i += 1
            xadd, publish = replies[i], None if published else replies[i + 1]
            i += 1 if published else 2
            moved = _redirect(xadd, self.target)
            if moved is not None:  # resent there; a PUBLISH is heard wherever it was said
                redirect = redirect or moved
                still.append((line, published or not isinstance(publish, RedisError)))
            elif isinstance(xadd, RedisError):
                return f"Redis refused: {xadd}"
            elif publish is not None:
                self.publish.append(publish)
        if with_sadd and _redirect(replies[i], self.target) is None:
            self.sadd = replies[i]
        if len(still) < len(self.pending) and not self.asking and self.smap.owner(self.slot) != self.target:
            self.smap.learn(self.slot, self.target)  # it took them: the owner (no map, or a stale one)
        self.pending = still
        return self.follow(redirect, fresh) if redirect else ""

    def follow(self, redirect: tuple, fresh: bool) -> str:
        """To the node a MOVED or ASK names; after a MOVED, with a new map (unless one
        just came with the MOVED)."""
        kind, addr = redirect
        if kind == "MOVED":
            self.smap.learn(self.slot, addr)
            self.want_map = not fresh
        self.asking = kind == "ASK"
        self.target = addr
        if addr in self.failed and not self.next_node():
            return "no node left to try"
        return ""


def deliver_cluster(rs: dict, lines: list, deadline: float, machine: str, warnings: list | None, home: str) -> str:
    """``deliver_redis`` for a Redis Cluster: the XADDs and PUBLISHes go to the node that
    owns the machine stream's slot (a PUBLISH is heard cluster-wide from any node), in
    one round trip when the cached slot map is right. ``-MOVED``: that node owns it now;
    resent there with ``CLUSTER SLOTS`` in the same pipeline (a new map, saved).
    ``-ASK`` (a slot mid-migration): resent there, each XADD after ``ASKING``, the map
    kept. Only the lines a node redirected are resent (their PUBLISH only if it was
    refused). A node that cannot be reached: the seeds, then the map's other nodes, asked
    for the map and sent the events, while ``deadline`` and ``CLUSTER_ROUNDS`` allow;
    otherwise the error text, and the caller spools. A cluster has db 0 only:
    ``redis.db`` is ignored (said in ``warnings``). No map and ``CLUSTER SLOTS``
    refused (an ACL without ``+cluster|slots``): the MOVED replies alone are learned
    and cached.

    The registry ``<stream>:machines`` is in a slot of its own, most often on another
    node. On the stream's node it is SADDed in the same pipeline at every run, as
    without a cluster. On another node it costs a second connection and round trip
    (a TLS handshake, on a network), so it is SADDed only when the cache says this
    machine has not been registered for ``REGISTER_EVERY_S`` seconds, or after the map
    changed: SADD is idempotent and the set is only lost with the cluster's data (a
    failover losing a write not yet replicated, a flush, a new cluster); a map change
    is when that happens, the 300 s bound any other loss, and monitors also learn
    machines from the channel meanwhile. A refused SADD stays a warning."""
    path = slots_path(home) if home else ""
    smap = SlotMap.load(path, _cluster_ident(rs))
    at = _Attempt(rs, smap, lines, machine, warnings)
    if rs["db"]:
        at.warn(f"redis.db {rs['db']} ignored: a Redis Cluster has only db 0 (no SELECT sent)")
    whom = machine.encode("utf-8").hex() + "." + at.reg.encode("utf-8").hex()
    due = registered = False
    try:
        for _ in range(CLUSTER_ROUNDS):
            if not at.pending or time.monotonic() >= deadline:
                break
            why = at.round(deadline)
            if why.startswith("Redis refused"):
                return why
            if why:
                break
        if at.pending:
            why = "; ".join(at.problems) or f"not taken within {CLUSTER_ROUNDS} round trips or the deadline"
            return f"Redis Cluster: {len(at.pending)} events not stored: {why}"
        _refusals(warnings, "PUBLISH", at.publish)
        now = time.time()
        due = smap.changed or smap.due(whom, now)
        if at.sadd is None and due:
            at.sadd = _register(at, deadline)
        if at.sadd is not None:
            _refusals(warnings, "SADD", [at.sadd])
            if due:
                smap.registered = (whom, now)
                smap.changed = registered = True
        return ""
    finally:
        # Due (or the map changed) and not registered this run (no time, no node, the
        # events not stored): the next run registers, whenever it was done last.
        if (due or smap.changed) and not registered and smap.registered != (whom, 0.0):
            smap.registered = (whom, 0.0)
            smap.changed = True
        if smap.changed and path:
            try:
                smap.save(path)
            except OSError as exc:
                at.warn(f"slot map not saved to {path}: {exc!r}")


def _register(at: _Attempt, deadline: float):
    """SADD this machine to the registry on the node that owns its slot (redirects
    followed; a node that cannot be reached: another, whose MOVED names the owner);
    its reply, or None when none answered (tried again next run). The events are
    stored already: this takes at most ``REGISTER_SHARE`` of the time left, and
    nothing when that is under ``REGISTER_MIN_S``."""
    now = time.monotonic()
    share = (deadline - now) * REGISTER_SHARE
    if share < REGISTER_MIN_S:
        at.warn(f"events stored; registering waits for a run with more time ({share * 1000:.0f} ms for it)")
        return None
    by = now + share
    target = at.smap.owner(at.reg_slot) or at.target
    asking: list = []
    tried: list = []
    for _ in range(REGISTER_ROUNDS):
        if time.monotonic() >= by:
            break
        try:
            cmds = at.auth + asking + [resp("SADD", at.reg, at.machine)]
            r = _node_exchange(at.rs, target, cmds, by)[-1]
        except OSError as exc:
            at.warn(f"events stored, but the registry's node {_addr_text(target)} {exc}")
            tried.append(target)
            left = [a for a in at.candidates() if a not in tried]
            if not left:
                return None
            target, asking = left[0], []
            continue
        redirect = _redirect(r, target)
        if redirect is None:
            if not asking and at.smap.owner(at.reg_slot) != target:  # no map, or a stale one
                at.smap.learn(at.reg_slot, target)
            return r
        kind, target = redirect
        if kind == "MOVED":
            at.smap.learn(at.reg_slot, target)
        asking = [resp("ASKING")] if kind == "ASK" else []
    at.warn("events stored, but the registry was not reached in time (tried again next run)")
    return None
