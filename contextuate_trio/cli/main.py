"""``contextuate-trio``: start, stop, status, init, and the everyday commands
(hooks, doctor, tail, demo, export/import, service) from their own modules."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from contextuate_trio import __version__
from contextuate_trio import config as config_mod
from contextuate_trio.cli.client import api_get
from contextuate_trio.hook import paths as hook_paths
from contextuate_trio.hook import spool as hook_spool


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("hypercorn.error", "hypercorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def cmd_run(args) -> int:
    import trio

    from contextuate_trio.daemon.daemon import AlreadyRunning, Daemon
    from contextuate_trio.sources.unix_socket import SocketInUse

    cfg = config_mod.load_or_report()
    if cfg is None:
        return 2
    setup_logging("debug" if args.debug else cfg.log_level)
    problems: list[str] = []
    try:
        trio.run(Daemon(cfg).run)
    except* (AlreadyRunning, SocketInUse) as group:
        problems += [str(exc) for exc in group.exceptions]
    except* OSError as group:  # e.g. a port in use: said plainly, not as a traceback
        problems += [f"cannot start: {exc}" for exc in _leaves(group)]
    for problem in problems:
        print(f"contextuate-trio: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    """The errors themselves, out of the nested groups Trio's nurseries wrap them in."""
    out: list[BaseException] = []
    for exc in group.exceptions:
        out += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return out


def cmd_start(args) -> int:
    if args.foreground:
        return cmd_run(args)
    cfg = config_mod.load_or_report()
    if cfg is None:
        return 2
    from contextuate_trio.daemon.daemon import read_pid

    pid = read_pid(os.path.join(cfg.home, "daemon.pid"))
    if pid and _alive(pid):
        print(f"contextuate-trio is already running (pid {pid})")
        return 0
    os.makedirs(cfg.home, mode=0o700, exist_ok=True)
    log_path = os.path.join(cfg.home, "daemon.log")
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    cmd = [sys.executable, "-m", "contextuate_trio", "start", "--foreground"]
    if args.debug:
        cmd.append("--debug")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, start_new_session=True, close_fds=True)
    os.close(fd)
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            print(f"contextuate-trio: the daemon exited with code {code}; see {log_path}:", file=sys.stderr)
            print(_tail(log_path), file=sys.stderr)
            return 1
        try:
            if api_get(cfg, "/api/health", timeout=0.5).get("status") in ("ok", "degraded"):
                print(
                    f"contextuate-trio started (pid {proc.pid}); dashboard "
                    f"{config_mod.dashboard_url(cfg)} ; log {log_path}"
                )
                return 0
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    print(f"contextuate-trio: not healthy after {args.wait:.0f} s; see {log_path}", file=sys.stderr)
    return 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tail(path: str, n: int = 20) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def cmd_stop(args) -> int:
    cfg = config_mod.load_or_report()
    if cfg is None:
        return 2
    from contextuate_trio.daemon.daemon import read_pid

    pid = read_pid(os.path.join(cfg.home, "daemon.pid"))
    if not pid or not _alive(pid):
        print("contextuate-trio is not running")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        if not _alive(pid):
            print(f"contextuate-trio stopped (pid {pid})")
            return 0
        time.sleep(0.05)
    print(f"contextuate-trio: pid {pid} did not stop within {args.wait:.0f} s", file=sys.stderr)
    return 1


def cmd_status(args) -> int:
    cfg = config_mod.load_or_report()
    if cfg is None:
        return 2
    try:
        st = api_get(cfg, "/api/status")
    except urllib.error.HTTPError as exc:
        print(f"contextuate-trio: the daemon answered {exc.code} ({exc.reason})", file=sys.stderr)
        return 1
    except (OSError, ValueError):
        from contextuate_trio.daemon.daemon import read_pid

        pid = read_pid(os.path.join(cfg.home, "daemon.pid"))
        backlog = hook_spool.backlog(cfg.home)
        state = f"pid {pid} exists but does not answer" if pid and _alive(pid) else "not running"
        print(f"contextuate-trio: {state} (home {cfg.home}); {backlog} events waiting in the spool")
        return 3
    if args.json:
        print(json.dumps(st, indent=2))
        return 0 if st.get("status") == "ok" else 1
    print(f"contextuate-trio {st['version']}: {st['status']} (pid {st['pid']}, mode {st['mode']})")
    for reason in st.get("reasons", []):
        print(f"  problem: {reason}")
    print(f"  socket:    {st['socketPath']}")
    print(f"  dashboard: {', '.join(st.get('dashboard') or [])}")
    by = ", ".join(f"{k} {v}" for k, v in sorted(st["sessionsByStatus"].items())) or "none"
    print(f"  sessions:  {st['sessions']} ({by})")
    print(
        f"  events:    {st['eventsStored']} stored this run, {st['duplicates']} duplicates, "
        f"{st['badLines']} bad lines; spool backlog {st['spoolBacklog']}"
    )
    if st.get("store"):
        print(f"  data:      {st['store']['dir']} ({st['store']['bytes']} bytes)")
    if st.get("redis"):
        r = st["redis"]
        states = ", ".join(f"{k} {v}" for k, v in r["state"].items())
        print(f"  redis:     {r['url']} stream {r['stream']} channel {r['channel']}: {states}")
        if r.get("lastError"):
            print(f"             last error: {r['lastError']} (attempts {r['attempts']})")
    if st.get("relay"):
        r = st["relay"]
        print(f"  relay:     {r['url']} {r['state']}: {r['forwarded']} forwarded this run, backlog {r['backlog']}")
        if r.get("lastError"):
            print(f"             last error: {r['lastError']} (attempts {r['attempts']})")
    return 0 if st.get("status") == "ok" else 1


def cmd_init(args) -> int:
    env = dict(os.environ)
    home = os.path.abspath(os.path.expanduser(hook_paths.home_dir(env)))
    path = hook_paths.config_path(env, home)
    if os.path.exists(path) and not args.force:
        print(f"contextuate-trio: {path} exists; use --force to overwrite it", file=sys.stderr)
        return 1
    os.makedirs(home, mode=0o700, exist_ok=True)
    os.chmod(home, 0o700)
    from contextuate_trio.cli import tokens

    data = config_mod.defaults_dict()
    if args.mode:
        data["mode"] = args.mode
    if not args.no_token:  # tokens by default (as Jupyter): `open` logs the dashboard in with it
        data["server"]["tokens"] = [tokens.init_entry()]
    hook_paths.write_atomic(path, (json.dumps(data, indent=2) + "\n").encode(), durable=True)
    print(f"wrote {path} (mode 0600)" + ("" if args.no_token else f", with a token {tokens.INIT_TOKEN_NAME!r}"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="contextuate-trio", description="Live monitor for Claude Code agents.")
    p.add_argument("--version", action="version", version=f"contextuate-trio {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("start", help="start the daemon (in the background unless --foreground)")
    s.add_argument("--foreground", action="store_true", help="run in this terminal until Ctrl-C")
    s.add_argument("--debug", action="store_true", help="log every event")
    s.add_argument("--wait", type=float, default=15.0, help="seconds to wait for health (default 15)")
    s.set_defaults(func=cmd_start)
    s = sub.add_parser("stop", help="stop the daemon gracefully (stores what it holds first)")
    s.add_argument("--wait", type=float, default=15.0)
    s.set_defaults(func=cmd_stop)
    s = sub.add_parser("status", help="is the daemon healthy; what does it hold")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)
    s = sub.add_parser("init", help="write a default config (0600) to the home")
    s.add_argument("--force", action="store_true", help="overwrite an existing config")
    s.add_argument("--mode", choices=("local", "redis", "relay"))
    s.add_argument("--no-token", action="store_true", help="no token: the API stays open on loopback")
    s.set_defaults(func=cmd_init)
    _add_integration_commands(sub)
    return p


def _add_integration_commands(sub) -> None:
    """Claude Code integration and everyday use (each in its own module)."""
    from contextuate_trio.cli import demo, doctor, export, fleet, hooks, service, tail, tokens, usage

    hooks.add_parser(sub)
    doctor.add_parser(sub)
    tail.add_parser(sub)
    demo.add_parser(sub)
    export.add_parser(sub)
    service.add_parser(sub)
    usage.add_parser(sub)
    fleet.add_parser(sub)
    tokens.add_parser(sub)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
