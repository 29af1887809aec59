"""``contextuate-trio doctor``: is everything between Claude Code and the dashboard
working, and when not, which command fixes it.

Each check returns ``Check(name, status, detail, fix)``; ``status`` is ``ok``,
``warn`` (works, but worth knowing), ``fail`` (events are not getting through, or will
not) or ``skip`` (does not apply, e.g. Redis in local mode). Every check is bounded
by a short timeout, so the doctor answers in seconds even when things hang.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import attrs

from contextuate_trio import config as config_mod
from contextuate_trio.cli import hooks as cs
from contextuate_trio.cli import telemetry
from contextuate_trio.cli.client import api_get
from contextuate_trio.core.access import Guard, Scope
from contextuate_trio.hook import paths as hook_paths
from contextuate_trio.hook import spool as hook_spool

SKEW_TOLERANCE_MS = 5_000
NET_TIMEOUT = 2.0

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"


@attrs.define
class Check:
    name: str
    status: str
    detail: str
    fix: str | None = None


def _redis_client(cfg: config_mod.Config) -> Any:
    """The daemon's connection settings, but one attempt with a short timeout."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from contextuate_trio.sources.redis import make_client

    return make_client(
        cfg.redis,
        retry=Retry(NoBackoff(), 0),
        socket_timeout=NET_TIMEOUT,
        socket_connect_timeout=NET_TIMEOUT,
        health_check_interval=0,
    )


def ping_redis(cfg: config_mod.Config, where: str) -> tuple[str, str | None] | None:
    """None when Redis answers PING; else (what is wrong, how to fix it)."""
    client = None
    try:
        client = _redis_client(cfg)
        client.ping()
        return None
    except Exception as exc:
        return redis_failure(exc, where, cfg)
    finally:
        if client is not None:
            try:
                client.close()
            except Exception:
                pass


def redis_failure(exc: Exception, where: str, cfg: config_mod.Config) -> tuple[str, str | None]:
    """A failed PING, said the way a person can act on it."""
    import ssl

    import redis as redis_py

    if isinstance(exc, redis_py.AuthenticationError):
        return (
            f"{where}: authentication failed ({exc})",
            f"set redis.username/redis.password (or the URL's user:password) in {cfg.path}",
        )
    if isinstance(exc, redis_py.ResponseError):
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            return f"{where}: {exc}", f"set redis.password (and redis.username for an ACL user) in {cfg.path}"
        return f"{where}: {exc}", None
    if isinstance(exc, (ssl.SSLError, redis_py.ConnectionError)):
        text = str(exc)
        if isinstance(exc, ssl.SSLError) or "SSL" in text or "certificate" in text:
            return (
                f"{where}: TLS failed ({text})",
                f"check redis.tls / redis.tlsCaFile (the CA that signed the server's certificate) in {cfg.path}",
            )
        if "Connection reset" in text or "Connection closed" in text and not cfg.redis.tls:
            return (
                f"{where}: the server closed the connection ({text}); does it expect TLS?",
                f"set redis.tls true (or a rediss:// URL) in {cfg.path}",
            )
        return (
            f"{where}: unreachable ({text})",
            f"start Redis, or correct redis.host/redis.port/redis.url in {cfg.path}; "
            f"check with: redis-cli -u '{where}' ping",
        )
    if isinstance(exc, redis_py.RedisError):
        return f"{where}: {type(exc).__name__}: {exc}", None
    # A bad TLS file path, say.
    return f"{where}: {type(exc).__name__}: {exc}", f"check the redis section of {cfg.path}"


class Doctor:
    def __init__(self, env: dict | None = None, cwd: str | None = None) -> None:
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd or os.getcwd()
        self.cfg: config_mod.Config | None = None
        self.daemon_status: dict | None = None
        self.daemon_config: dict | None = None
        self.checks: list[Check] = []

    def add(self, *args, **kw) -> Check:
        c = Check(*args, **kw)
        self.checks.append(c)
        return c

    def run(self) -> list[Check]:
        self.check_config()
        if self.cfg is not None:
            self.check_daemon()
            self.check_socket()
            self.check_spool()
            self.check_redis()
        self.check_hook()
        if self.cfg is not None:
            self.check_otel()
            self.check_decisions()
            self.check_clock_skew()
        return self.checks

    def check_decisions(self) -> None:
        """``decisions.enabled``: someone can answer, and the hooks can wait for it."""
        d = self.loaded.decisions
        if not d.enabled:
            self.add(
                "decisions", SKIP, "off (config decisions.enabled): permission prompts are answered in the terminal"
            )
            return
        tokens = self.loaded.server.api_tokens()
        if not any(Scope.DECIDE in t.scopes for t in tokens):
            self.add(
                "decisions",
                WARN,
                "on, but no token has the decide scope: nobody can answer",
                "contextuate-trio token add phone --scopes read,decide",
            )
        problems = []
        for scope in cs.SCOPES:
            path = cs.settings_path(scope, self.env, self.cwd)
            try:
                settings, raw = cs.read_settings(path)
            except cs.SettingsError:
                continue
            if raw is not None:
                problems += [f"{path}: {p}" for p in cs.answer_hook_problems(settings, d.wait_ms)]
        if problems:
            self.add("decisions", WARN, "; ".join(problems), "contextuate-trio hooks install")
        elif any(Scope.DECIDE in t.scopes for t in tokens):
            self.add("decisions", OK, f"on: hooks wait up to {d.wait_ms} ms for an answer")

    @property
    def loaded(self) -> config_mod.Config:
        """The config, for the checks that run only once it has loaded."""
        assert self.cfg is not None
        return self.cfg

    # --- config -------------------------------------------------------------------------
    def check_config(self) -> None:
        home = os.path.abspath(os.path.expanduser(hook_paths.home_dir(self.env)))
        path = hook_paths.config_path(self.env, home)
        try:
            self.cfg, warnings = config_mod.load(self.env)
        except config_mod.ConfigError as exc:
            self.add(
                "config",
                FAIL,
                str(exc),
                f"edit {path} (the message names the key), or start over with `contextuate-trio init --force`",
            )
            return
        where = path if os.path.exists(path) else f"{path} (absent: defaults)"
        detail = f"{where}, mode {self.cfg.mode}"
        if warnings:
            self.add("config", WARN, detail + "; " + "; ".join(warnings), f"remove or correct those keys in {path}")
        else:
            self.add("config", OK, detail)
        self.check_tokens()
        try:
            st = os.stat(home)
            if stat.S_IMODE(st.st_mode) & 0o077:
                self.add(
                    "home",
                    WARN,
                    f"{home} is readable by others (mode {stat.S_IMODE(st.st_mode):o})",
                    f"chmod 700 {home}",
                )
        except FileNotFoundError:
            pass

    def check_tokens(self) -> None:
        """A config with no token keeps the API open on loopback (a config written by
        hand, or by the original Node monitor): say so."""
        assert self.cfg is not None
        warning = config_mod.no_token_warning(self.cfg)
        if warning is not None:
            self.add("token", WARN, warning, "contextuate-trio token add dashboard --scopes read,admin")
            return
        names = [("server.token", ["read", "decide", "admin"])] if self.cfg.server.token else []
        names += [(t.name, list(t.scopes)) for t in self.cfg.server.tokens]
        self.add("token", OK, ", ".join(f"{n} ({' '.join(s)})" for n, s in names))

    # --- daemon -------------------------------------------------------------------------
    def check_daemon(self) -> None:
        """Health, then status and config, each answer deciding what to say next. Kept
        whole (~70 lines): it reads as the one conversation with the daemon it is."""
        cfg = self.loaded
        base = config_mod.api_base(cfg)
        try:
            health = api_get(cfg, "/api/health")
        except urllib.error.HTTPError as exc:
            self.add("daemon", FAIL, f"{base} answered {exc.code}", "contextuate-trio stop && contextuate-trio start")
            return
        except (OSError, ValueError):
            from contextuate_trio.daemon.daemon import read_pid

            pid = read_pid(os.path.join(cfg.home, "daemon.pid"))
            alive = False
            if pid:
                try:
                    os.kill(pid, 0)
                    alive = True
                except ProcessLookupError:
                    pass
                except PermissionError:
                    alive = True
            if alive:
                self.add(
                    "daemon",
                    FAIL,
                    f"pid {pid} is running but {base} does not answer; see {os.path.join(cfg.home, 'daemon.log')}",
                    "contextuate-trio stop && contextuate-trio start",
                )
            else:
                self.add("daemon", FAIL, f"not running (nothing answers on {base})", "contextuate-trio start")
            return
        try:
            self.daemon_status = api_get(cfg, "/api/status")
            if not cfg.server.has_token or cfg.server.client_token(Scope.ADMIN) is not None:
                self.daemon_config = api_get(cfg, "/api/config")  # an admin read (tokens' scopes)
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                self.add(
                    "daemon",
                    FAIL,
                    f"{base} is up but refuses this config's token (not one of the daemon's tokens)",
                    f"use a token of the daemon's in {cfg.path} (`contextuate-trio token list`), or restart "
                    "the daemon with this config: contextuate-trio stop && contextuate-trio start",
                )
                return
            self.add("daemon", WARN, f"{base}: /api/status answered {exc.code}")
            return
        except (OSError, ValueError) as exc:
            self.add("daemon", WARN, f"{base}: /api/status failed: {exc}")
            return
        st = self.daemon_status
        if health.get("status") == "ok":
            self.add(
                "daemon",
                OK,
                f"healthy at {base} (pid {st.get('pid')}, version {st.get('version')}, {st.get('sessions')} sessions)",
            )
        else:
            reasons = "; ".join(health.get("reasons") or []) or health.get("status", "?")
            self.add(
                "daemon",
                FAIL,
                f"{health.get('status')} at {base}: {reasons}",
                f"see {os.path.join(cfg.home, 'daemon.log')}",
            )
        dc = self.daemon_config or {}
        if dc.get("path") and os.path.realpath(dc["path"]) != os.path.realpath(cfg.path):
            self.add(
                "daemon config",
                WARN,
                f"the daemon runs with {dc['path']}, this shell reads {cfg.path}",
                "run commands with the daemon's CONTEXTUATE_HOME/CONTEXTUATE_CONFIG",
            )

    # --- socket -------------------------------------------------------------------------
    def check_socket(self) -> None:
        cfg = self.loaded
        if cfg.mode != "local":
            self.add("socket", SKIP, f"mode {cfg.mode}: the hook does not use the socket")
            return
        path = cfg.socket_path
        assert path is not None  # config.load always sets it
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self.add(
                "socket",
                FAIL,
                f"{path} does not exist (hooks spool their events until it does)",
                "contextuate-trio start",
            )
            return
        if not stat.S_ISSOCK(st.st_mode):
            self.add("socket", FAIL, f"{path} is not a socket", f"mv {path} {path}.old && contextuate-trio start")
            return
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(NET_TIMEOUT)
        try:
            s.connect(path)
        except OSError as exc:
            self.add(
                "socket",
                FAIL,
                f"{path}: {exc.strerror or exc} (left by a daemon that did not stop cleanly?)",
                "contextuate-trio stop; contextuate-trio start",
            )
            return
        finally:
            s.close()
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            self.add(
                "socket", WARN, f"{path} accepts connections, but its mode is {mode:o}, not 600", f"chmod 600 {path}"
            )
        else:
            self.add("socket", OK, f"{path} accepts connections")

    # --- spool --------------------------------------------------------------------------
    def check_spool(self) -> None:
        cfg = self.loaded
        spool_dir = hook_spool.spool_dir(cfg.home)
        files = hook_spool.pending(spool_dir)
        if not files:
            self.add("spool", OK, "empty (every event was delivered)")
            return
        oldest = ""
        try:
            ts = int(os.path.basename(sorted(files)[0]).split("-", 1)[0])
            oldest = f", the oldest from {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ts / 1000))}"
        except (ValueError, IndexError, TypeError):
            pass
        if self.daemon_status is None:
            self.add(
                "spool",
                FAIL,
                f"{len(files)} events wait in {spool_dir}{oldest}; the daemon ingests them once it runs",
                "contextuate-trio start",
            )
        else:
            self.add(
                "spool",
                WARN,
                f"{len(files)} events wait in {spool_dir}{oldest}; the running daemon "
                "is ingesting them (if the number does not fall, see the daemon's log)",
                f"contextuate-trio status; tail {os.path.join(cfg.home, 'daemon.log')}",
            )

    # --- redis --------------------------------------------------------------------------
    def check_redis(self) -> None:
        cfg = self.loaded
        if cfg.mode != "redis":
            self.add("redis", SKIP, "mode local")
            return
        from contextuate_trio.sources.redis import describe

        where = describe(cfg.redis)
        failure = ping_redis(cfg, where)
        if failure is not None:
            self.add("redis", FAIL, *failure)
            return
        info = (self.daemon_status or {}).get("redis") or {}
        detail = f"{where} answers PING" + (" (TLS)" if cfg.redis.tls or where.startswith("rediss") else "")
        if self.daemon_status is not None and info and not info.get("connected", True):
            self.add(
                "redis",
                WARN,
                detail + f", but the daemon is not connected: {info.get('error')}",
                "contextuate-trio status",
            )
        else:
            self.add("redis", OK, detail)

    # --- the hook in Claude Code's settings ---------------------------------------------------
    def check_hook(self) -> None:
        items = cs.status(self.env, self.cwd)
        wired = [i for i in items if i["events"]]
        for i in items:
            if i["exists"] and i["problems"] and not i["events"]:  # a file we cannot read
                self.add("hook", FAIL, "; ".join(i["problems"]), f"fix {i['path']} by hand")
        if not wired:
            self.add(
                "hook",
                FAIL,
                "not wired into Claude Code (no settings file names hook_emit)",
                "contextuate-trio hooks install",
            )
            return
        if len(wired) > 1:
            self.add(
                "hook",
                FAIL,
                "wired in "
                + " and ".join(i["path"] for i in wired)
                + ": Claude Code runs both, so every event is recorded twice",
                f"contextuate-trio hooks uninstall --{wired[-1]['scope']}",
            )
        for i in wired:
            missing = [e for e in cs.EVENTS if e not in i["events"] and e not in cs.NOISY]
            base = f"{i['path']}: {len(i['events'])} events ({i['transport']})"
            problems = [p for p in i["problems"]]
            fix_flag = "" if i["scope"] == "global" else f" --{i['scope']}"
            if problems:
                self.add("hook", FAIL, base + "; " + "; ".join(problems), f"contextuate-trio hooks install{fix_flag}")
                for cmd in i["commands"]:
                    self._check_hook_config(cmd, i)
                continue
            core = [
                e for e in ("SessionStart", "PreToolUse", "PostToolUse", "Stop", "SessionEnd") if e not in i["events"]
            ]
            if core:
                self.add(
                    "hook", FAIL, base + f"; missing {', '.join(core)}", f"contextuate-trio hooks install{fix_flag}"
                )
                continue
            ran = self._run_hook_command(i["commands"][0]) if i["commands"] else None
            if ran:
                self.add(
                    "hook",
                    FAIL,
                    base + f"; the command does not run: {ran}",
                    f"contextuate-trio hooks install{fix_flag}",
                )
                continue
            detail = base + ("; the command runs" if i["commands"] else "")
            if missing:
                detail += f"; not wired: {', '.join(missing)} (fine for an older Claude Code)"
            self.add("hook", OK, detail)
            for cmd in i["commands"]:
                self._check_hook_config(cmd, i)
            if i["transport"] == "http":
                self._check_http_hook(i)

    def check_otel(self) -> None:
        """``hooks install --otel``: Claude Code's OpenTelemetry pointed at this daemon."""
        levels = {"ok": OK, "warn": WARN, "info": SKIP}
        fix = "contextuate-trio hooks install --otel"
        found = False
        for scope in cs.SCOPES:
            path = cs.settings_path(scope, self.env, self.cwd)
            try:
                settings, raw = cs.read_settings(path)
            except cs.SettingsError:
                continue
            if raw is None or not telemetry.ours(settings):
                continue
            found = True
            # Every token the daemon takes (server.token with every scope among them):
            # a header holding one that can read or act is worth a warning.
            tokens = Guard(token=self.loaded.server.token, tokens=self.loaded.server.api_tokens()).tokens
            for level, text in telemetry.check(settings, config_mod.api_base(self.loaded), tokens):
                self.add("otel", levels[level], f"{path}: {text}", fix if level == "warn" else None)
        if not found:
            (level, text), *_ = telemetry.check({}, "")
            self.add("otel", levels[level], text)
        elif not self.loaded.otel.enabled:
            self.add("otel", WARN, "config otel.enabled is false: the daemon refuses what Claude Code sends", None)

    def _run_hook_command(self, command: str) -> str | None:
        """Run the wired command as Claude Code would, with empty stdin (sends nothing)."""
        env = {k: v for k, v in self.env.items() if not k.startswith("CONTEXTUATE_")}
        env["CONTEXTUATE_DEBUG"] = "1"
        try:
            p = subprocess.run(["sh", "-c", command], input=b"", env=env, capture_output=True, timeout=10)
        except subprocess.TimeoutExpired:
            return "it did not finish within 10 s"
        except OSError as exc:
            return str(exc)
        err = p.stderr.decode("utf-8", "replace")
        if p.returncode != 0 or p.stdout or "nothing to send" not in err:
            return (err.strip().splitlines() or [f"exit code {p.returncode}"])[-1]
        return None

    def _check_hook_config(self, command: str, item: dict) -> None:
        """The hook's config (its home travels in the command) against the daemon's."""
        cenv, _ = cs.command_parts(command)
        henv = {k: v for k, v in self.env.items() if not k.startswith("CONTEXTUATE_")}
        henv.update(cenv)
        try:
            hcfg, _ = config_mod.load(henv)
        except config_mod.ConfigError as exc:
            self.add("hook config", FAIL, f"the hook falls back to defaults: {exc}", "fix that config file")
            return
        theirs = self.daemon_config
        label = "the daemon's"
        if theirs is None and self.cfg is not None:
            theirs = config_mod.public_dict(self.cfg)
            label = "this shell's"
        if theirs is None:
            return
        diffs = []

        def cmp(name, mine, other):
            if mine != other:
                diffs.append(f"{name}: hook {mine!r}, {label} {other!r}")

        cmp("mode", hcfg.mode, theirs.get("mode"))
        if hcfg.mode == "local":
            cmp("socketPath", hcfg.socket_path, theirs.get("socketPath"))
        r = theirs.get("redis") or {}
        if hcfg.mode == "redis" or theirs.get("mode") == "redis":
            cmp("redis.channel", hcfg.redis.channel, r.get("channel"))
            cmp("redis.stream", hcfg.redis.stream, r.get("stream"))
            cmp("redis.db", hcfg.redis.db, r.get("db"))
        if diffs:
            fix = (
                f"make {hcfg.path} and {theirs.get('path') or 'the daemon config'} agree, or re-run "
                "`contextuate-trio hooks install` from a shell with the daemon's CONTEXTUATE_HOME"
            )
            self.add("hook config", FAIL, f"the hook ({hcfg.path}) and the daemon disagree: " + "; ".join(diffs), fix)
        else:
            names = (
                f"channel {hcfg.redis.channel}, stream {hcfg.redis.stream}"
                if hcfg.mode == "redis"
                else f"socket {hcfg.socket_path}"
            )
            self.add("hook config", OK, f"the hook and {label[:-2]} config agree (mode {hcfg.mode}, {names})")

    def _check_http_hook(self, item: dict) -> None:
        data, _ = cs.read_settings(item["path"])
        handlers = [h for hs in cs.describe(data)["ours"].values() for h in hs if h.get("type") == "http"]
        if not handlers or self.cfg is None:
            return
        url = handlers[0].get("url", "")
        want = cs._daemon_url(self.cfg)
        if url != want:
            self.add(
                "http hook",
                FAIL,
                f"posts to {url}, the daemon listens on {want}",
                "contextuate-trio hooks install --transport http",
            )
        auth = (handlers[0].get("headers") or {}).get("Authorization", "")
        accepted = {f"Bearer {t.secret}" for t in self.cfg.server.api_tokens()} | (
            {f"Bearer {self.cfg.server.token}"} if self.cfg.server.token else set()
        )
        if self.cfg.server.has_token and auth not in accepted and "$CONTEXTUATE_TOKEN" not in auth:
            self.add(
                "http hook",
                FAIL,
                "sends no token or an old one; the daemon will answer 401",
                "contextuate-trio hooks install --transport http",
            )

    # --- clocks -------------------------------------------------------------------------
    def check_clock_skew(self) -> None:
        if self.daemon_status is None:
            self.add("clocks", SKIP, "the daemon is not running")
            return
        try:
            sessions = api_get(self.loaded, "/api/sessions")["sessions"]
        except (OSError, ValueError, KeyError) as exc:
            self.add("clocks", SKIP, f"sessions unavailable: {exc}")
            return
        findings = skew_findings(sessions, int(time.time() * 1000))
        machines = sorted({s.get("machineId") for s in sessions if s.get("machineId") not in (None, "unknown")})
        if findings:
            self.add(
                "clocks",
                WARN,
                "; ".join(findings),
                "enable time sync on those machines (e.g. `timedatectl set-ntp true`)",
            )
        else:
            self.add(
                "clocks",
                OK,
                f"no skew seen in events from {len(machines)} machine(s)"
                + (f" ({', '.join(machines[:5])})" if machines else ""),
            )


def skew_findings(sessions: list[dict], now_ms: int, tolerance: int = SKEW_TOLERANCE_MS) -> list[str]:
    """Clock skew as events show it (hook timestamps are the machines' own clocks):

    - an event stamped in the future (later than the daemon's now): that machine is ahead;
    - a session linked under a parent on another machine that starts before its parent
      does (a child cannot start before the session that spawned it): the child's
      machine is behind the parent's by at least that much.
    """
    out: list[str] = []
    by_id = {s.get("sessionId"): s for s in sessions}
    ahead: dict[str, int] = {}
    for s in sessions:
        m, last = s.get("machineId"), s.get("lastEventTime")
        if m and m != "unknown" and isinstance(last, (int, float)) and last - now_ms > tolerance:
            ahead[m] = max(ahead.get(m, 0), int(last - now_ms))
    for m, d in sorted(ahead.items()):
        out.append(f"{m} stamps events {d / 1000:.1f} s in the future (its clock is ahead)")
    behind: dict[tuple, int] = {}
    for s in sessions:
        p = by_id.get(s.get("parentSessionId"))
        if not p:
            continue
        cm, pm = s.get("machineId"), p.get("machineId")
        if not cm or not pm or cm == pm or "unknown" in (cm, pm):
            continue
        cs_, ps = s.get("startTime"), p.get("startTime")
        if isinstance(cs_, (int, float)) and isinstance(ps, (int, float)) and ps - cs_ > tolerance:
            behind[(cm, pm)] = max(behind.get((cm, pm), 0), int(ps - cs_))
    for (cm, pm), d in sorted(behind.items()):
        out.append(
            f"{cm} is at least {d / 1000:.1f} s behind {pm} (a session on {cm} starts before its parent on {pm})"
        )
    return out


SYMBOL = {OK: "✔", WARN: "!", FAIL: "✘", SKIP: "-"}
COLOR = {OK: "32", WARN: "33", FAIL: "31", SKIP: "90"}


def render(checks: list[Check], color: bool) -> str:
    lines = []
    for c in checks:
        sym = SYMBOL[c.status]
        if color:
            sym = f"\x1b[{COLOR[c.status]}m{sym}\x1b[0m"
        lines.append(f" {sym} {c.name:<13} {c.detail}")
        if c.fix and c.status in (WARN, FAIL):
            lines.append(f"   {'':<13} fix: {c.fix}")
    fails = sum(c.status == FAIL for c in checks)
    warns = sum(c.status == WARN for c in checks)
    if fails:
        lines.append(f"{fails} problem(s), {warns} warning(s).")
    else:
        lines.append("All good." if not warns else f"No problems; {warns} warning(s).")
    return "\n".join(lines)


def cmd_doctor(args) -> int:
    doc = Doctor()
    checks = doc.run()
    if args.json:
        print(json.dumps([attrs.asdict(c) for c in checks], indent=2))
    else:
        color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        print(render(checks, color))
    return 1 if any(c.status == FAIL for c in checks) else 0


def add_parser(sub) -> None:
    p = sub.add_parser("doctor", help="check everything between Claude Code and the dashboard")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)
