"""The Claude Code hook: one event from stdin to the daemon, or to the spool.

Claude Code runs this on every step of every session (``python3 -I -S hook_emit.py``),
so it must cost little more than the interpreter's start-up, never fail, never hang
and never lose an event. It therefore imports only built-in C modules. Measured here
with ``python3 -I -S -X importtime`` (CPython 3.11): ``os`` 1.2 ms, ``json`` 8.8 ms,
``socket`` 9.1 ms, against ``posix``/``time``/``_signal`` (already loaded), ``_json``
0.3 ms and ``_socket`` 0.3 ms. Hence the C-level APIs in this package instead of the
usual ones. Redis mode and the spool are imported only when they are used.
"""

import _signal
import posix
import time

from contextuate_trio.hook import spool  # eager: the last resort must not need an import
from contextuate_trio.hook.paths import (
    config_path,
    dumps,
    environ,
    home_dir,
    load_raw_config,
    machine_id,
    new_id,
    parse_json,
    socket_path,
    write_all,
)
from contextuate_trio.hook.wire import as_machine, deliver_socket, envelope

DEFAULT_TIMEOUT_MS = 1000
DEFAULT_DECISION_WAIT_MS = 30_000  # config.DecisionsConfig's default too
# The hook events a person can answer from the dashboard (``core.decisions``).
ANSWERABLE = ("PermissionRequest", "Elicitation")
_ANSWERABLE_BYTES = tuple(b'"%s"' % name.encode() for name in ANSWERABLE)  # a cheap first test
SPOOL_BOUND_S = 2.0  # the spool is local disk: a fixed, generous bound of its own


class _Deadline(Exception):
    """Raised by SIGALRM when the hook's time budget is spent."""


class Run:
    """What one hook run knows: its config, clock, budget and the event's identity."""

    __slots__ = ("env", "debug", "cfg", "home", "deadline", "ts", "raw", "event_id", "machine", "parent", "output")

    def __init__(self, env: dict) -> None:
        self.env = env
        self.debug = env.get("CONTEXTUATE_DEBUG", "") not in ("", "0")
        started = time.monotonic()
        self.ts = time.time_ns() // 1_000_000
        self.home = home_dir(env)
        cfg_path = config_path(env, self.home)
        try:
            self.cfg = load_raw_config(cfg_path)
        except Exception as exc:
            self.say(f"config {cfg_path} unusable ({exc}); using defaults")
            self.cfg = {}
        self.deadline = started + _timeout_ms(self.cfg) / 1000.0
        self.raw = b""
        self.event_id = new_id()
        self.machine = machine_id(env)
        self.parent = env.get("CONTEXTUATE_PARENT_SESSION") or None
        self.output = None  # Claude Code's answer from the dashboard, to print

    def decide_ms(self) -> int:
        """How long this run waits for an answer from the dashboard: 0 unless
        ``decisions.enabled`` and the event is one a person can answer."""
        d = self.cfg.get("decisions")
        if not isinstance(d, dict) or d.get("enabled") is not True:
            return 0
        if not self._answerable():
            return 0
        wait = d.get("waitMs", DEFAULT_DECISION_WAIT_MS)
        if not isinstance(wait, (int, float)) or isinstance(wait, bool) or wait <= 0:
            return DEFAULT_DECISION_WAIT_MS
        return int(wait)

    def _answerable(self) -> bool:
        """The event is a PermissionRequest or an Elicitation: its name, not a mention
        of it (a Grep for "PermissionRequest" would wait for an answer that never
        comes). Parsed only when the name is in the bytes at all (rarely)."""
        if not any(name in self.raw for name in _ANSWERABLE_BYTES):
            return False
        try:
            payload = parse_json(self.raw.decode("utf-8", "replace").lstrip("\ufeff"))
        except Exception:
            return False
        return isinstance(payload, dict) and payload.get("hook_event_name") in ANSWERABLE

    def say(self, msg: str) -> None:
        """Explain on stderr, with ``CONTEXTUATE_DEBUG=1`` only."""
        if self.debug:
            try:
                posix.write(2, f"[contextuate hook] {msg}\n".encode("utf-8", "replace"))
            except OSError:
                pass


def _timeout_ms(cfg: dict) -> float:
    hook_cfg = cfg.get("hook")
    if not isinstance(hook_cfg, dict):
        hook_cfg = {}
    timeout_ms = hook_cfg.get("timeoutMs", DEFAULT_TIMEOUT_MS)
    if not isinstance(timeout_ms, (int, float)) or isinstance(timeout_ms, bool) or timeout_ms <= 0:
        return DEFAULT_TIMEOUT_MS
    return timeout_ms


def _usage_for(raw: bytes, home: str, machine: str, parent, ts: int, say):
    """Redis mode, Stop/SubagentStop: the transcript's new usage as a second event line
    (see ``hook.usage``), and the function that saves the offset once it is sent or
    spooled. Any other event pays one substring test."""
    if b'Stop"' not in raw:
        return None, None
    try:
        from contextuate_trio.hook import usage

        payload = parse_json(raw.decode("utf-8", "replace").lstrip("\ufeff"))
        return usage.prepare(payload, home, machine, parent, ts)
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
    _alarm_in(deadline - time.monotonic())
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
        _alarm_off()
    return b"".join(chunks)


def _alarm_in(seconds: float) -> None:
    _signal.setitimer(_signal.ITIMER_REAL, max(seconds, 0.001))


def _alarm_off() -> None:
    _signal.setitimer(_signal.ITIMER_REAL, 0)


def _send_local(r: Run) -> tuple:
    """-> (the line to spool if not delivered, delivered)."""
    decide = r.decide_ms()
    line = envelope(r.raw, r.event_id, r.ts, r.machine, r.parent, ack=True, decide=decide)
    path = socket_path(r.cfg, r.env, r.home)
    why, r.output = deliver_socket(path, line, r.event_id, r.deadline, decide, _interruptible)
    if not why:
        r.say(f"event {r.event_id} stored by the daemon at {path}")
        if decide:
            r.say("answered from the dashboard" if r.output is not None else "no answer from the dashboard")
        return line, True
    r.say(f"daemon at {path} did not acknowledge: {why}")
    return line, False


def _masked_line(r: Run) -> bytes:
    """Redis mode's line: secrets masked before the event leaves the machine, and in
    the spool too (a later hook run takes spooled lines along as they are)."""
    from contextuate_trio.core.redact import Redactor

    red = r.cfg.get("redaction")
    if not isinstance(red, dict):
        red = {}
    redactor = None
    if red.get("enabled", True) is not False:
        extra = red.get("patterns")
        if not isinstance(extra, list):
            extra = []
        redactor = Redactor([p for p in extra if isinstance(p, str)])
    try:
        return envelope(r.raw, r.event_id, r.ts, r.machine, r.parent, ack=False, redactor=redactor)
    except Exception as exc:  # a broken custom pattern: keep the built-in ones
        r.say(f"custom redaction patterns failed ({exc!r}); using the built-in ones")
        return envelope(r.raw, r.event_id, r.ts, r.machine, r.parent, ack=False, redactor=Redactor())


def _send_redis(r: Run) -> tuple:
    """-> (the line to spool if not delivered, delivered). Spooled events travel along,
    and on Stop/SubagentStop the transcript's new usage as a second event. A hook that
    may wait for an answer from the dashboard (``decide``) then waits on the same
    connection (``_wait_redis``)."""
    try:
        from contextuate_trio.hook import resp

        rs = resp.redis_settings(r.cfg)
    except (ValueError, ImportError) as exc:  # ImportError: an install changing under us
        r.say(f"redis settings unusable: {exc}")
        return _masked_line(r), False
    if rs["machine"]:  # the id this machine's ACL user may write as (its stream's name)
        r.machine = rs["machine"]
    line = _masked_line(r)
    claimed, behind = spool.claim_spooled(r.home)
    usage_line, usage_commit = _usage_for(r.raw, r.home, r.machine, r.parent, r.ts, r.say)
    # The spool is this machine's own: lines spooled under another id (local mode, or
    # the host name before redis.machineId was set) travel as this stream's machine.
    spooled = [as_machine(c[2], r.machine) for c in claimed]
    # With older events still spooled (a long outage), this one is spooled behind them:
    # sent now, it would reach Redis before them, out of order.
    decide = 0 if behind else r.decide_ms()
    own = [] if behind else [_with_decide(line, decide).rstrip(b"\n")] + ([usage_line] if usage_line else [])
    lines = spooled + own
    warnings: list = []
    keep: list | None = [] if decide else None  # the connection, kept to wait on
    try:
        # The alarm bounds what socket timeouts cannot: a slow name lookup.
        _alarm_in(r.deadline - time.monotonic() + 0.05)
        try:
            why = resp.deliver_redis(rs, lines, r.deadline, r.machine, warnings, home=r.home, keep=keep)
        except _Deadline:
            where = "the Redis Cluster" if rs["cluster"] else f"Redis at {rs['host']}:{rs['port']}"
            why = f"{where} not reached within the deadline"
        finally:
            _alarm_off()
        spool.release_spooled(claimed, delivered=not why)
        if behind and not why:
            why = f"{len(claimed)} spooled events sent; older ones are still spooled, so this one waits behind them"
        if usage_line and why:
            try:  # the usage travels later, with the spool
                spool.spool(r.home, usage_line + b"\n", new_id(), r.ts)
            except OSError:
                usage_commit = None  # not sent, not kept: read it again next time
        if usage_commit is not None:
            _commit_usage(usage_commit, r.say)
        if why:
            r.say(why)
            return line, False
        for w in warnings:
            r.say(w)
        r.say(
            f"event {r.event_id} added to {resp.machine_stream(rs['stream'], r.machine)} and published on "
            f"{rs['channel']}" + (f", with {len(claimed)} spooled events" if claimed else "")
        )
        if decide:
            r.output = _wait_redis(r, resp, rs, keep, decide)
            r.say("answered from the dashboard" if r.output is not None else "no answer from the dashboard")
        return line, True
    finally:
        for sock in keep or ():
            sock.close()


def _with_decide(line: bytes, decide: int) -> bytes:
    """The line as sent when the hook waits for an answer: ``decide`` in its head. Only
    the sent copy says so; the copy that may be spooled does not (sent later by another
    run, nobody would wait for its answer). The head's values are an id, a number and
    JSON strings (a quote in them is escaped), so its first ``,"payload":`` is its own."""
    if not decide:
        return line
    return line.replace(b',"payload":', b',"decide":%d,"payload":' % decide, 1)


def _wait_redis(r: Run, resp, rs: dict, keep: list | None, decide: int):
    """After the XADD: ``BLPOP`` the answer key (``<stream>:{<machine>}:answer:<id>``)
    for ``decide`` ms, on the delivery's connection (a cluster's: a new one to the node
    that took the XADD). Bounded by the socket's timeout and by SIGALRM; no answer,
    an error, anything odd: None (the hook prints nothing)."""
    _interruptible()
    until = time.monotonic() + decide / 1000.0
    key = resp.answer_key(rs["stream"], r.machine, r.event_id)
    _alarm_in(until - time.monotonic() + resp.ANSWER_GRACE_S + 0.05)
    try:
        if not rs["cluster"]:
            sock = keep[0] if keep else None
        else:  # hook.cluster delivered, and closed its connections
            sock = resp.cluster_answer_socket(rs, key, r.home, until)
            if sock is not None and keep is not None:
                keep.append(sock)  # closed by the caller
        if sock is None:
            r.say("no connection to the node of the answer key: not waiting")
            return None
        return resp.wait_answer(sock, key, r.event_id, until)
    except (_Deadline, OSError, ValueError, IndexError, resp.RedisError) as exc:
        r.say(f"waiting for an answer failed: {exc!r}")
        return None
    finally:
        _alarm_off()


def _interruptible() -> None:
    """The event is stored and the hook only waits for an answer: Claude Code may now
    stop it (Esc at its prompt, its timeout) and nothing is lost."""
    _signal.signal(_signal.SIGINT, _signal.SIG_DFL)
    _signal.signal(_signal.SIGTERM, _signal.SIG_DFL)


def _spool(r: Run, line: bytes) -> int:
    _alarm_in(SPOOL_BOUND_S)
    try:
        path = spool.spool(r.home, line, r.event_id, r.ts)
        r.say(f"event {r.event_id} spooled to {path}")
        return 1
    except (_Deadline, OSError) as exc:
        r.say(f"could not spool event {r.event_id} under {r.home}: {exc!r}")
        return 2
    finally:
        _alarm_off()


def run(env: dict) -> int:
    """One hook run. Returns what happened, for tests: 0 sent, 1 spooled, 2 nothing."""
    r = Run(env)
    _signal.signal(_signal.SIGALRM, _on_alarm)
    # Claude Code may interrupt a hook it is done waiting for; the event is still
    # delivered or spooled (every step below is bounded by the deadline).
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    _signal.signal(_signal.SIGTERM, _signal.SIG_IGN)
    r.raw = _read_stdin(r.deadline)
    if not r.raw.strip():
        r.say("empty stdin: nothing to send")
        return 2
    line, delivered = (_send_redis if r.cfg.get("mode", "local") == "redis" else _send_local)(r)
    if r.output is not None:
        _print_answer(r)
    return 0 if delivered else _spool(r, line)


def _print_answer(r: Run) -> None:
    """Claude Code reads a hook's decision from its stdout (one JSON object)."""
    try:
        write_all(1, (dumps(r.output) + "\n").encode("utf-8"))
    except OSError as exc:
        r.say(f"answer not printed: {exc!r}")


def main() -> None:
    """Entry point: whatever happens, exit 0; stdout holds nothing but an answer
    from the dashboard to a permission prompt (``decisions.enabled``)."""
    try:
        run(environ())
    except BaseException as exc:  # noqa: BLE001 - the agent must never see a failure
        try:
            posix.write(2, f"[contextuate hook] internal error: {exc!r}\n".encode())
        except BaseException:
            pass
    posix._exit(0)
