"""The Claude Code hook: one event from stdin to the daemon, or to the spool.

Claude Code runs this on every step of every session (``python3 -I -S hook_emit.py``),
so it must cost little more than the interpreter's start-up, never fail, never hang
and never lose an event. It therefore imports only built-in C modules. Measured here
with ``python3 -I -S -X importtime`` (CPython 3.11): ``os`` 1.2 ms, ``json`` 8.8 ms,
``socket`` 9.1 ms, against ``posix``/``time``/``_signal`` (already loaded), ``_json``
0.3 ms and ``_socket`` 0.3 ms. Hence the C-level APIs below instead of the usual ones.

The same functions resolve the home and config paths for the daemon, so both sides
always agree on where things live.
"""

import posix
import time

import _json
import _signal

DEFAULT_TIMEOUT_MS = 1000
CONFIG_NAME = "monitor.config.json"
SOCKET_NAME = "monitor.sock"
SPOOL_NAME = "spool"
# Spooled files hold exactly one wire line; the daemon reads only names ending so.
SPOOL_SUFFIX = ".json"


class _Deadline(Exception):
    """Raised by SIGALRM when the hook's time budget is spent."""


class _ScanContext:
    # The attributes json's C scanner reads from its context (json.JSONDecoder's).
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float


_scan = _json.make_scanner(_ScanContext())
json_string = _json.encode_basestring_ascii


def parse_json(text: str):
    """Parse a complete JSON document with json's C scanner (no ``import json``)."""
    text = text.strip(" \t\r\n")
    value, end = _scan(text, 0)
    if end != len(text):
        raise ValueError("extra data after JSON value")
    return value


def environ() -> dict:
    """``os.environ`` without importing ``os``."""
    return {
        k.decode("utf-8", "surrogateescape"): v.decode("utf-8", "surrogateescape")
        for k, v in posix.environ.items()
    }


def home_dir(env) -> str:
    home = env.get("CONTEXTUATE_HOME")
    if home:
        return home
    user_home = env.get("HOME")
    if not user_home:
        import pwd  # built-in C module; only reached when HOME is unset

        user_home = pwd.getpwuid(posix.getuid()).pw_dir
    return user_home.rstrip("/") + "/.contextuate"


def config_path(env, home: str) -> str:
    return env.get("CONTEXTUATE_CONFIG") or home + "/" + CONFIG_NAME


def machine_id(env) -> str:
    return (
        env.get("CONTEXTUATE_MACHINE_ID")
        or env.get("HOSTNAME")
        or posix.uname().nodename
        or "unknown"
    )


def new_id() -> str:
    """A random (version 4) UUID, without ``import uuid`` (which loads ``os``)."""
    b = bytearray(posix.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def read_file(path: str, limit: int = 1 << 20) -> bytes:
    fd = posix.open(path, posix.O_RDONLY)
    try:
        return posix.read(fd, limit)
    finally:
        posix.close(fd)


def load_raw_config(path: str) -> dict:
    """The config file as a dict; {} when missing. Raises on a broken file."""
    try:
        data = read_file(path)
    except FileNotFoundError:
        return {}
    value = parse_json(data.decode("utf-8"))
    if not isinstance(value, dict):
        raise ValueError("the config is not a JSON object")
    return value


def make_dirs(path: str) -> None:
    """``os.makedirs(path, 0o700, exist_ok=True)`` for a path of absolute parts."""
    parts = path.rstrip("/").split("/")
    for i in range(2, len(parts) + 1):
        p = "/".join(parts[:i])
        if not p:
            continue
        try:
            posix.mkdir(p, 0o700)
        except FileExistsError:
            pass


def envelope(raw: bytes, event_id: str, ts: int, machine: str, parent, ack: bool,
             redactor=None) -> bytes:
    """The wire line for one hook run (see ``wire.py`` for the daemon's side).

    A JSON object is embedded verbatim (newlines between tokens folded, which cannot
    change a valid document); anything else travels as a string, so it is kept too.
    """
    text = raw.decode("utf-8", "replace").lstrip("\ufeff")
    if redactor is not None:
        text = redactor.text(text)
    try:
        is_object = isinstance(parse_json(text), dict)
    except Exception:
        is_object = False
    if is_object:
        payload = text.strip().replace("\r", " ").replace("\n", " ")
    else:
        payload = json_string(text)
    head = '{"kind":"hook","id":"%s","timestamp":%d,"machineId":%s' % (
        event_id,
        ts,
        json_string(machine),
    )
    if parent:
        head += ',"parentSessionId":' + json_string(parent)
    if ack:
        head += ',"ack":true'
    return (head + ',"payload":' + payload + "}\n").encode("utf-8")


def deliver_socket(path: str, line: bytes, event_id: str, deadline: float) -> str:
    """Send one line and wait for its acknowledgement; '' on success, else why not."""
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        sock.connect(path)
        sock.sendall(line)
        want = ('{"ack":"%s"' % event_id).encode()
        reply = b""
        while b"\n" not in reply:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            chunk = sock.recv(4096)
            if not chunk:
                return "the daemon closed the connection without acknowledging"
            reply += chunk
        if reply.startswith(want):
            return ""
        return "the daemon refused the event: " + reply.decode("utf-8", "replace").strip()
    except OSError as exc:  # includes timeouts
        return f"{type(exc).__name__}: {exc}"
    finally:
        sock.close()


def spool(home: str, line: bytes, event_id: str, ts: int) -> str:
    """Write the line to the spool atomically: a private temp name, then rename."""
    directory = home + "/" + SPOOL_NAME
    make_dirs(directory)
    tmp = f"{directory}/.{event_id}.tmp"
    final = f"{directory}/{ts:013d}-{event_id}{SPOOL_SUFFIX}"
    write_file(tmp, line, posix.O_EXCL)
    posix.rename(tmp, final)
    return final


def write_file(path: str, data: bytes, flags: int = posix.O_TRUNC) -> None:
    """Create ``path`` (0600) holding ``data``, without ``os``/``io``."""
    fd = posix.open(path, posix.O_WRONLY | posix.O_CREAT | flags, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[posix.write(fd, view):]
    finally:
        posix.close(fd)


# --- Redis mode ----------------------------------------------------------------------
# The Redis protocol spoken directly: redis-py costs ~117 ms to import here, the hook's
# whole budget ten times over; what we need (AUTH, SELECT, XADD, PUBLISH, pipelined
# in one round trip) is a few dozen lines. TLS needs ``ssl`` (+23 ms, TLS users only).
SPOOL_PIGGYBACK = 20  # spooled events a hook that reaches Redis takes along, at most
SPOOL_PIGGYBACK_BYTES = 1 << 20
STALE_CLAIM_SECONDS = 60  # a claimed spool file this old belongs to a hook that died


class RedisError(Exception):
    pass


def redis_settings(cfg: dict) -> dict:
    """The ``redis`` section with defaults; ``url`` overrides host/port/auth/db/tls."""
    r = cfg.get("redis") if isinstance(cfg.get("redis"), dict) else {}
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
    }
    url = r.get("url")
    if isinstance(url, str) and url:
        out.update(parse_redis_url(url))
    return out


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
            value, self.buf = self.buf[:n], self.buf[n + 2:]
            return value
        if kind == b"*":
            return [self.reply() for _ in range(max(int(rest), 0))]
        raise RedisError(f"unexpected reply {line[:40]!r}")


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
        import ssl

        plain = socket_mod.socket(family, kind, proto, fileno=sock.detach())
        ctx = ssl.create_default_context(cafile=rs.get("ca") or None)
        if rs.get("cert"):
            ctx.load_cert_chain(rs["cert"], rs.get("key") or None)
        plain.settimeout(max(deadline - time.monotonic(), 0.001))
        return ctx.wrap_socket(plain, server_hostname=rs["host"])
    raise last or OSError(f"cannot resolve {rs['host']}")


def deliver_redis(rs: dict, lines: list, deadline: float) -> str:
    """XADD + PUBLISH every line, pipelined in one round trip; '' when all stored."""
    cmds = []
    if rs["password"]:
        cmds.append(resp("AUTH", rs["username"], rs["password"]) if rs["username"]
                    else resp("AUTH", rs["password"]))
    if rs["db"]:
        cmds.append(resp("SELECT", rs["db"]))
    for line in lines:
        cmds.append(resp("XADD", rs["stream"], "MAXLEN", "~", rs["maxlen"], "*", "data", line))
        cmds.append(resp("PUBLISH", rs["channel"], line))
    try:
        sock = _redis_connect(rs, deadline)
    except OSError as exc:
        return f"cannot connect to Redis at {rs['host']}:{rs['port']}: {exc}"
    try:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        sock.sendall(b"".join(cmds))
        reader = _Reader(sock, deadline)
        errors = [r for r in (reader.reply() for _ in cmds) if isinstance(r, RedisError)]
        return f"Redis refused: {errors[0]}" if errors else ""
    except (OSError, RedisError, ValueError) as exc:
        return f"Redis at {rs['host']}:{rs['port']} did not answer in time: {exc!r}"
    finally:
        sock.close()


def claim_spooled(home: str, limit: int = SPOOL_PIGGYBACK, max_bytes: int = SPOOL_PIGGYBACK_BYTES):
    """Take the oldest spooled events for this run (rename = claim; a racing hook that
    loses gets ENOENT). Returns [(claimed_path, original_path, line)]."""
    directory = home + "/" + SPOOL_NAME
    try:
        listing = posix.listdir(directory)
    except OSError:
        return []
    now = time.time()
    for n in listing:  # a claim whose hook died (killed) goes back to the spool
        if n.startswith(".claim-") and n.endswith(SPOOL_SUFFIX):
            try:
                # ctime: the claim's rename updates it (mtime keeps the spooling time).
                if now - posix.stat(directory + "/" + n).st_ctime > STALE_CLAIM_SECONDS:
                    posix.rename(directory + "/" + n, directory + "/" + n[len(".claim-"):])
            except OSError:
                pass
    names = sorted(n for n in posix.listdir(directory)
                   if n.endswith(SPOOL_SUFFIX) and not n.startswith("."))
    out = []
    total = 0
    for name in names[:limit]:
        path = directory + "/" + name
        claimed = directory + "/.claim-" + name
        try:
            posix.rename(path, claimed)
            data = read_file(claimed, max_bytes)
        except OSError:
            continue
        out.append((claimed, path, data.rstrip(b"\n")))
        total += len(data)
        if total >= max_bytes:
            break
    return out


def release_spooled(claimed: list, delivered: bool) -> None:
    for tmp, original, _ in claimed:
        try:
            if delivered:
                posix.unlink(tmp)
            else:
                posix.rename(tmp, original)
        except OSError:
            pass


def _usage_for(raw: bytes, home: str, machine: str, parent, ts: int, say):
    """Redis mode, Stop/SubagentStop: the transcript's new usage as a second event line
    (see usage_hook.py), and the function that saves the offset once it is sent or
    spooled. Any other event pays one substring test."""
    if b'Stop"' not in raw:
        return None, None
    try:
        from contextuate_trio import usage_hook

        payload = parse_json(raw.decode("utf-8", "replace").lstrip("\ufeff"))
        return usage_hook.prepare(payload, home, machine, parent, ts)
    except FileNotFoundError:
        return None, None
    except Exception as exc:  # never let usage cost the event
        say(f"transcript usage not read: {exc!r}")
        return None, None


def _commit_usage(commit, say) -> None:
    try:
        commit()
    except Exception as exc:
        say(f"transcript offset not saved: {exc!r}")


def _on_alarm(signum, frame):
    raise _Deadline()


def _read_stdin(deadline: float) -> bytes:
    chunks = []
    _signal.setitimer(_signal.ITIMER_REAL, max(deadline - time.monotonic(), 0.001))
    try:
        while True:
            chunk = posix.read(0, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    except _Deadline:
        pass  # stdin never closed: keep what arrived
    except OSError:
        pass  # no stdin at all
    finally:
        _signal.setitimer(_signal.ITIMER_REAL, 0)
    return b"".join(chunks)


def run(env) -> int:
    """One hook run. Returns what happened, for tests: 0 sent, 1 spooled, 2 nothing."""
    debug = env.get("CONTEXTUATE_DEBUG", "") not in ("", "0")

    def say(msg: str) -> None:
        if debug:
            try:
                posix.write(2, f"[contextuate hook] {msg}\n".encode("utf-8", "replace"))
            except OSError:
                pass

    started = time.monotonic()
    ts = time.time_ns() // 1_000_000
    home = home_dir(env)
    cfg_path = config_path(env, home)
    try:
        cfg = load_raw_config(cfg_path)
    except Exception as exc:
        say(f"config {cfg_path} unusable ({exc}); using defaults")
        cfg = {}
    hook_cfg = cfg.get("hook") if isinstance(cfg.get("hook"), dict) else {}
    timeout_ms = hook_cfg.get("timeoutMs", DEFAULT_TIMEOUT_MS)
    if not isinstance(timeout_ms, (int, float)) or isinstance(timeout_ms, bool) or timeout_ms <= 0:
        timeout_ms = DEFAULT_TIMEOUT_MS
    deadline = started + timeout_ms / 1000.0
    _signal.signal(_signal.SIGALRM, _on_alarm)
    # Claude Code may interrupt a hook it is done waiting for; the event is still
    # delivered or spooled (every step below is bounded by the deadline).
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    _signal.signal(_signal.SIGTERM, _signal.SIG_IGN)

    raw = _read_stdin(deadline)
    if not raw.strip():
        say("empty stdin: nothing to send")
        return 2
    event_id = new_id()
    machine = machine_id(env)
    parent = env.get("CONTEXTUATE_PARENT_SESSION") or None
    line = b""  # what goes to the spool if delivery fails: set by the mode below

    mode = cfg.get("mode", "local")
    sock_path = cfg.get("socketPath") if isinstance(cfg.get("socketPath"), str) else None
    if sock_path and sock_path.startswith("~/") and env.get("HOME"):
        sock_path = env["HOME"].rstrip("/") + sock_path[1:]  # as the daemon reads it
    sock_path = sock_path or home + "/" + SOCKET_NAME
    if mode == "redis":
        # Secrets are masked before the event leaves the machine, and in the spool too:
        # a later hook run takes spooled lines along as they are.
        red = cfg.get("redaction") if isinstance(cfg.get("redaction"), dict) else {}
        redactor = None
        if red.get("enabled", True) is not False:
            from contextuate_trio.redact import Redactor

            extra = red.get("patterns") if isinstance(red.get("patterns"), list) else ()
            redactor = Redactor([p for p in extra if isinstance(p, str)])
        try:
            line = envelope(raw, event_id, ts, machine, parent, ack=False, redactor=redactor)
        except Exception as exc:  # a broken custom pattern: keep the built-in ones
            say(f"custom redaction patterns failed ({exc!r}); using the built-in ones")
            line = envelope(raw, event_id, ts, machine, parent, ack=False, redactor=Redactor())
        try:
            rs = redis_settings(cfg)
        except ValueError as exc:
            rs = None
            say(f"redis settings unusable: {exc}")
        if rs is not None:
            claimed = claim_spooled(home)
            usage_line, usage_commit = _usage_for(raw, home, machine, parent, ts, say)
            lines = [c[2] for c in claimed] + [line.rstrip(b"\n")] + ([usage_line] if usage_line else [])
            # The alarm bounds what socket timeouts cannot: a slow name lookup.
            _signal.setitimer(_signal.ITIMER_REAL, max(deadline - time.monotonic(), 0.001) + 0.05)
            try:
                why = deliver_redis(rs, lines, deadline)
            except _Deadline:
                why = f"Redis at {rs['host']}:{rs['port']} not reached within the deadline"
            finally:
                _signal.setitimer(_signal.ITIMER_REAL, 0)
            release_spooled(claimed, delivered=not why)
            if usage_line and why:
                try:  # the usage travels later, with the spool
                    spool(home, usage_line + b"\n", new_id(), ts)
                except OSError:
                    usage_commit = None  # not sent, not kept: read it again next time
            if usage_commit is not None:
                _commit_usage(usage_commit, say)
            if not why:
                say(f"event {event_id} added to {rs['stream']} and published on {rs['channel']}"
                    + (f", with {len(claimed)} spooled events" if claimed else ""))
                return 0
            say(why)
    else:
        line = envelope(raw, event_id, ts, machine, parent, ack=True)
        why = deliver_socket(sock_path, line, event_id, deadline)
        if not why:
            say(f"event {event_id} stored by the daemon at {sock_path}")
            return 0
        say(f"daemon at {sock_path} did not acknowledge: {why}")

    # The spool is local disk: give it a fixed, generous bound of its own.
    _signal.setitimer(_signal.ITIMER_REAL, 2.0)
    try:
        path = spool(home, line, event_id, ts)
        say(f"event {event_id} spooled to {path}")
        return 1
    except (_Deadline, OSError) as exc:
        say(f"could not spool event {event_id} under {home}: {exc!r}")
        return 2
    finally:
        _signal.setitimer(_signal.ITIMER_REAL, 0)


def main() -> None:
    """Entry point: whatever happens, exit 0 with nothing on stdout."""
    code = 0
    try:
        run(environ())
    except BaseException as exc:  # noqa: BLE001 - the agent must never see a failure
        try:
            posix.write(2, f"[contextuate hook] internal error: {exc!r}\n".encode())
        except BaseException:
            pass
    posix._exit(code)
