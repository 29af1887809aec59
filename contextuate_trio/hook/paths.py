"""Where things live, and the file and JSON helpers the hook runs on.

The hook imports only built-in C modules (see ``process``): ``posix`` instead of
``os``, json's C scanner instead of ``json``. The daemon imports these same functions
for the home, config and spool paths, so both sides always agree (``socketPath``:
both read a leading ``~/`` as ``$HOME``; the daemon also expands ``~user``).
"""

import _json
import posix

CONFIG_NAME = "monitor.config.json"
SOCKET_NAME = "monitor.sock"
SPOOL_NAME = "spool"
# Spooled files hold exactly one wire line; the daemon reads only names ending so.
SPOOL_SUFFIX = ".json"


class _ScanContext:
    # The attributes json's C scanner reads from its context (json.JSONDecoder's).
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float


# typeshed wants a make_scanner instance; the C scanner only reads the attributes above.
_scan = _json.make_scanner(_ScanContext())  # type: ignore[arg-type]
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
        k.decode("utf-8", "surrogateescape"): v.decode("utf-8", "surrogateescape") for k, v in posix.environ.items()
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
    return env.get("CONTEXTUATE_MACHINE_ID") or env.get("HOSTNAME") or posix.uname().nodename or "unknown"


def new_id() -> str:
    """A random (version 4) UUID, without ``import uuid`` (which loads ``os``)."""
    return uuid4_text(bytearray(posix.urandom(16)))


def uuid4_text(b: bytearray) -> str:
    """16 random bytes as a version 4 UUID's text (the daemon's ids use it too)."""
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def read_fd(fd: int, limit: int) -> bytes:
    """Up to ``limit`` bytes from ``fd``'s position, in chunks of at most 1 MiB."""
    out = []
    n = 0
    while n < limit:
        chunk = posix.read(fd, min(1 << 20, limit - n))
        if not chunk:
            break
        out.append(chunk)
        n += len(chunk)
    return b"".join(out)


def read_file(path: str, limit: int = 1 << 20) -> bytes:
    fd = posix.open(path, posix.O_RDONLY)
    try:
        return read_fd(fd, limit)
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


def write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[posix.write(fd, view) :]


def write_file(path: str, data: bytes, flags: int = posix.O_TRUNC) -> None:
    """Create ``path`` (0600) holding ``data``, without ``os``/``io``."""
    fd = posix.open(path, posix.O_WRONLY | posix.O_CREAT | flags, 0o600)
    try:
        write_all(fd, data)
    finally:
        posix.close(fd)


def write_atomic(path: str, data: bytes, mode: int = 0o600, durable: bool = False, shared: bool = True) -> None:
    """Replace ``path`` with ``data`` in one rename: a reader sees the old or the new
    file, never a part. Created owner-only, then given ``mode``. ``durable``: on the
    disk itself before the rename, and the rename too (for what a person wrote:
    settings, configs, the service unit); without it the file survives a crash of the
    process but maybe not of the machine. ``shared``: other processes may write the
    same file at once (two hook runs), so each write has a temp name of its own; a
    file with one writer (the store's metadata) reuses ``<path>.tmp``, so a write cut
    short by a crash leaves nothing that piles up. The one atomic write of the project
    (the hook, the daemon and the CLI share it)."""
    tmp = path + (".%s.tmp" % new_id()[:8] if shared else ".tmp")
    try:
        fd = posix.open(tmp, posix.O_WRONLY | posix.O_CREAT | (posix.O_EXCL if shared else posix.O_TRUNC), 0o600)
        try:
            write_all(fd, data)
            if mode != 0o600:
                posix.fchmod(fd, mode)
            if durable:
                posix.fsync(fd)
        finally:
            posix.close(fd)
        posix.rename(tmp, path)
    except BaseException:
        try:
            posix.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        _fsync_dir(path.rpartition("/")[0] or "/" if "/" in path else ".")


def _fsync_dir(directory: str) -> None:
    try:
        fd = posix.open(directory, posix.O_RDONLY)
    except OSError:
        return
    try:
        posix.fsync(fd)
    except OSError:
        pass
    finally:
        posix.close(fd)


def dumps(v) -> str:
    """JSON for the plain values we write (dict, list, str, int, float, bool, None)."""
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json_string(v)
    if isinstance(v, dict):
        return "{" + ",".join(json_string(str(k)) + ":" + dumps(x) for k, x in v.items()) + "}"
    return "[" + ",".join(dumps(x) for x in v) + "]"


def socket_path(cfg: dict, env, home: str) -> str:
    """The daemon's socket: ``socketPath`` (``~/`` read as the daemon reads it) or the home's."""
    path = cfg.get("socketPath") if isinstance(cfg.get("socketPath"), str) else None
    if path and path.startswith("~/") and env.get("HOME"):
        path = env["HOME"].rstrip("/") + path[1:]
    return path or home + "/" + SOCKET_NAME
