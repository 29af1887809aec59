"""Redis mode: the Redis protocol spoken directly.

redis-py costs ~117 ms to import here, the hook's whole budget ten times over; what
we need (AUTH, SELECT, XADD, PUBLISH, pipelined in one round trip) is a few dozen
lines. TLS needs ``ssl`` (+23 ms, TLS users only).

Each machine appends to its own stream, ``<stream>:{<machineId>}`` (the braces are a
Redis Cluster hash tag: a stream and nothing else in its slot), and adds its id to the
registry set ``<stream>:machines``, where monitors find new machines; an ACL user can
then be allowed that one stream and nothing else (``contextuate-trio fleet``).

A Redis Cluster (``redis.cluster`` / ``redis.nodes``) is spoken by ``hook.cluster``,
imported only then (it doubled this module's import time for everyone else).
"""

import time

from contextuate_trio.hook.wire import answer_output

# Redis answers a BLPOP with nil at its timeout: the socket waits this much longer for it.
ANSWER_GRACE_S = 1.0


class RedisError(Exception):
    pass


def redis_settings(cfg: dict) -> dict:
    """The ``redis`` section with defaults; ``url`` overrides host/port/auth/db/tls."""
    r = cfg.get("redis")
    if not isinstance(r, dict):
        r = {}
    out = {
        "host": r.get("host") or "localhost",
        "port": r.get("port") if isinstance(r.get("port"), int) else 6379,
        "username": r.get("username") or None,
        "password": r.get("password") or None,
        "db": r.get("db") if isinstance(r.get("db"), int) else 0,
        "tls": r.get("tls") is True,
        "ca": r.get("tlsCaFile"),
        "cert": r.get("tlsCertFile"),
        "key": r.get("tlsKeyFile"),
        "channel": r.get("channel") or "contextuate:events",
        "stream": r.get("stream") or "contextuate:events:stream",
        "maxlen": r.get("streamMaxLen") if isinstance(r.get("streamMaxLen"), int) else 1000000,
        "machine": r.get("machineId") if isinstance(r.get("machineId"), str) and r.get("machineId") else None,
    }
    url = r.get("url")
    if isinstance(url, str) and url:
        out.update(parse_redis_url(url))
    # A cluster: ``nodes`` (seeds, "host:port" each; implies ``cluster``), or ``cluster``
    # true with the section's (or url's) host and port as the one seed.
    nodes = r.get("nodes")
    seeds = [parse_host_port(n) for n in nodes] if isinstance(nodes, list) else []
    out["cluster"] = r.get("cluster") is True or bool(seeds)
    out["nodes"] = seeds or ([(out["host"], out["port"])] if out["cluster"] else [])
    return out


def parse_host_port(text) -> tuple:
    """``"host:port"`` (``[v6]:port`` too) -> (host, port); ValueError otherwise."""
    host, sep, port = text.rpartition(":") if isinstance(text, str) else ("", "", "")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f'redis node {text!r} is not "host:port"')
    return host, int(port)


def _unquote(text: str) -> str:
    if "%" not in text:
        return text
    parts = text.split("%")
    out = bytearray(parts[0].encode())
    for part in parts[1:]:
        try:
            out.append(int(part[:2], 16))
            out += part[2:].encode()
        except ValueError:
            out += ("%" + part).encode()
    return out.decode("utf-8", "replace")


def parse_redis_url(url: str) -> dict:
    """``redis[s]://[[user]:password@]host[:port][/db]`` (no urllib: it costs ms)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("redis", "rediss"):
        raise ValueError(f"not a redis:// or rediss:// URL: {url!r}")
    out: dict = {"tls": scheme == "rediss"}
    rest = rest.split("?", 1)[0]
    netloc, _, path = rest.partition("/")
    if "@" in netloc:
        auth, _, netloc = netloc.rpartition("@")
        user, colon, password = auth.partition(":")
        if colon:
            out["username"] = _unquote(user) or None
            out["password"] = _unquote(password) or None
        else:
            out["password"] = _unquote(user) or None
            out["username"] = None
    if netloc.startswith("["):
        host, _, port = netloc[1:].partition("]")
        port = port.lstrip(":")
    else:
        host, _, port = netloc.partition(":")
    if host:
        out["host"] = host
    if port:
        out["port"] = int(port)
    if path.strip("/"):
        out["db"] = int(path.strip("/"))
    return out


def resp(*args) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if not isinstance(a, bytes):
            a = str(a).encode("utf-8")
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class _Reader:
    def __init__(self, sock, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buf = b""

    def _fill(self) -> None:
        self.sock.settimeout(max(self.deadline - time.monotonic(), 0.001))
        chunk = self.sock.recv(65536)
        if not chunk:
            raise RedisError("Redis closed the connection")
        self.buf += chunk

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def reply(self):
        line = self.line()
        kind, rest = line[:1], line[1:]
        if kind == b"-":
            return RedisError(rest.decode("utf-8", "replace"))
        if kind in (b"+", b":"):
            return rest
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self._fill()
            value, self.buf = self.buf[:n], self.buf[n + 2 :]
            return value
        if kind == b"*":
            return [self.reply() for _ in range(max(int(rest), 0))]
        raise RedisError(f"unexpected reply {line[:40]!r}")


_SSL_CONTEXTS: dict = {}  # one per (CA, certificate, key): a cluster run may connect to several nodes


def _ssl_context(rs: dict):
    import ssl

    ident = (rs.get("ca") or None, rs.get("cert") or None, rs.get("key") or None)
    ctx = _SSL_CONTEXTS.get(ident)
    if ctx is None:
        ctx = ssl.create_default_context(cafile=ident[0])
        if ident[1]:
            ctx.load_cert_chain(ident[1], ident[2])
        _SSL_CONTEXTS[ident] = ctx
    return ctx


def _redis_connect(rs: dict, deadline: float):
    import _socket

    timeout = max(deadline - time.monotonic(), 0.001)
    last = None
    host = rs["host"]
    if host.isascii():
        # As bytes: a str host is IDNA-encoded first, and importing that codec
        # (encodings.idna -> re, stringprep, unicodedata) costs ~12 ms here.
        host = host.encode("ascii")
    for family, kind, proto, _, addr in _socket.getaddrinfo(host, rs["port"], 0, _socket.SOCK_STREAM):
        sock = _socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(addr)
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        if not rs["tls"]:
            return sock
        import socket as socket_mod  # ssl needs a socket.socket; TLS users pay ~25 ms

        plain = socket_mod.socket(family, kind, proto, fileno=sock.detach())
        ctx = _ssl_context(rs)
        plain.settimeout(max(deadline - time.monotonic(), 0.001))
        return ctx.wrap_socket(plain, server_hostname=rs["host"])
    raise last or OSError(f"cannot resolve {rs['host']}")


def _exchange(sock, cmds: list, deadline: float) -> list:
    """Send ``cmds`` in one write and read one reply each (errors as RedisError values)."""
    sock.settimeout(max(deadline - time.monotonic(), 0.001))
    sock.sendall(b"".join(cmds))
    reader = _Reader(sock, deadline)
    return [reader.reply() for _ in cmds]


def machine_stream(stream: str, machine: str) -> str:
    """A machine's own stream (the monitor's ``sources.redis`` names it the same way)."""
    return f"{stream}:{{{machine}}}"


def answer_key(stream: str, machine: str, event_id: str) -> str:
    """Where a monitor puts the answer to the request of event ``event_id`` for the
    hook that waits on it (``sources.redis``): in the slot of the machine's stream (the
    same hash tag), so one node has both, and one ACL pattern per machine allows it."""
    return f"{machine_stream(stream, machine)}:answer:{event_id}"


def registry_key(stream: str) -> str:
    """The set of machine ids that have a stream of their own."""
    return stream + ":machines"


def _auth(rs: dict) -> list:
    if not rs["password"]:
        return []
    return [resp("AUTH", rs["username"], rs["password"]) if rs["username"] else resp("AUTH", rs["password"])]


def _xadd(rs: dict, key: str, line) -> bytes:
    return resp("XADD", key, "MAXLEN", "~", rs["maxlen"], "*", "data", line)


def _refusals(warnings: list | None, what: str, replies: list) -> None:
    errs = [x for x in replies if isinstance(x, RedisError)]
    if errs and warnings is not None:
        warnings.append(f"events stored, but Redis refused {what} ({len(errs)}x): {errs[0]}")


def deliver_redis(
    rs: dict,
    lines: list,
    deadline: float,
    machine: str,
    warnings: list | None = None,
    home: str = "",
    keep: list | None = None,
) -> str:
    """XADD every line to the machine's stream + PUBLISH it, and SADD the machine to
    the registry, pipelined in one round trip; '' when all stored. With ``keep`` (a
    list), the connection is appended to it instead of closed (the caller waits on it
    for an answer, ``wait_answer``, and closes it); not with a cluster.

    Only the XADD replies decide: once XADD stored the events, a refused PUBLISH or
    SADD (an older ACL user without +sadd, OOM) is not a failure (spooling would add
    them again at every run); it is appended to ``warnings``, for the debug output.
    A cluster (``rs["cluster"]``) goes through ``hook.cluster``, its slot map
    cached in ``home``."""
    if rs.get("cluster"):
        try:
            from contextuate_trio.hook.cluster import deliver_cluster

            return deliver_cluster(rs, lines, deadline, machine, warnings, home)
        except Exception as exc:  # a bug or a reply never seen: spooled, never lost
            return f"Redis Cluster: delivery failed: {exc!r}"
    key = machine_stream(rs["stream"], machine)
    cmds = _auth(rs)
    if rs["db"]:
        cmds.append(resp("SELECT", rs["db"]))
    setup = len(cmds)
    for line in lines:
        cmds.append(_xadd(rs, key, line))
        cmds.append(resp("PUBLISH", rs["channel"], line))
    cmds.append(resp("SADD", registry_key(rs["stream"]), machine))
    try:
        sock = _redis_connect(rs, deadline)
    except OSError as exc:
        return f"cannot connect to Redis at {rs['host']}:{rs['port']}: {exc}"
    if keep is not None:
        keep.append(sock)  # the caller closes it, whatever happens (SIGALRM included)
    try:
        replies = _exchange(sock, cmds, deadline)
    except (OSError, RedisError, ValueError) as exc:
        return f"Redis at {rs['host']}:{rs['port']} did not answer in time: {exc!r}"
    finally:
        if keep is None:
            sock.close()
    for r in replies[:setup]:  # AUTH, SELECT: nothing after them counts
        if isinstance(r, RedisError):
            return f"Redis refused: {r}"
    for i in range(setup, len(replies) - 1, 2):  # the XADDs
        if isinstance(replies[i], RedisError):
            return f"Redis refused: {replies[i]}"
    _refusals(warnings, "PUBLISH", replies[setup + 1 : -1 : 2])
    _refusals(warnings, "SADD", replies[-1:])
    return ""


# --- answers from the dashboard ---------------------------------------------------------
def wait_answer(sock, key: str, event_id: str, until: float):
    """``BLPOP key`` on ``sock`` (authenticated, its db selected) until ``until`` (a
    monotonic time): the answer's ``output``, what the hook prints, or None (no answer
    in time, a refusal such as NOPERM, anything odd). A fractional timeout: Redis 6+."""
    left = until - time.monotonic()
    if left < 0.01:  # BLPOP's timeout 0 would wait forever
        return None
    try:
        (reply,) = _exchange(sock, [resp("BLPOP", key, "%.3f" % left)], until + ANSWER_GRACE_S)
    except (OSError, RedisError, ValueError):
        return None
    if not isinstance(reply, list) or len(reply) != 2 or not isinstance(reply[1], bytes):
        return None  # nil (timed out), or an error value
    return answer_output(reply[1], event_id)


def cluster_answer_socket(rs: dict, key: str, home: str, deadline: float):
    """A Redis Cluster: a connection (authenticated) to the master of ``key``'s slot,
    the machine stream's, as the slot map ``hook.cluster`` saved after its delivery
    has it (the node that just took the XADD); None when there is no map or no node."""
    from contextuate_trio.hook.cluster import SlotMap, _cluster_ident, key_slot, slots_path

    addr = SlotMap.load(slots_path(home), _cluster_ident(rs)).owner(key_slot(key)) if home else None
    if addr is None:
        return None
    sock = _redis_connect(dict(rs, host=addr[0], port=addr[1]), deadline)
    try:
        auth = _auth(rs)
        if auth and isinstance(_exchange(sock, auth, deadline)[0], RedisError):
            sock.close()
            return None
    except BaseException:
        sock.close()
        raise
    return sock
