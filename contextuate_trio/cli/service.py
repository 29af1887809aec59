"""``contextuate-trio service install|uninstall``: run the daemon at login (systemd user unit).

The unit runs ``<this interpreter> -m contextuate_trio start --foreground`` (the
interpreter that has the package: a pipx/uv tool venv or the project's), restarts it
on failure, and leaves logging to the journal (``journalctl --user -u
contextuate-trio``). A non-default CONTEXTUATE_HOME / CONTEXTUATE_CONFIG at install
time is written into the unit. On macOS, the README shows the launchd equivalent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from contextuate_trio.hook.paths import write_atomic

UNIT = "contextuate-trio.service"


def unit_dir(env: dict | None = None) -> str:
    env = dict(os.environ if env is None else env)
    base = env.get("XDG_CONFIG_HOME") or os.path.join(env.get("HOME") or os.path.expanduser("~"), ".config")
    return os.path.join(base, "systemd", "user")


def _q(arg: str) -> str:
    """Quote one argument for a systemd command line."""
    if arg and all(c.isalnum() or c in "/._-+=:,@" for c in arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unit_text(python: str, env: dict | None = None) -> str:
    env = dict(os.environ if env is None else env)
    lines = [
        "# Written by `contextuate-trio service install`; remove with `contextuate-trio service uninstall`.",
        "[Unit]",
        "Description=contextuate-trio: live monitor for Claude Code agents",
        "StartLimitIntervalSec=60",
        "StartLimitBurst=5",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={_q(python)} -m contextuate_trio start --foreground",
    ]
    for key in ("CONTEXTUATE_HOME", "CONTEXTUATE_CONFIG"):
        if env.get(key):
            value = os.path.abspath(os.path.expanduser(env[key]))
            lines.append(f"Environment={_q(f'{key}={value}')}")
    lines += [
        "Restart=on-failure",
        "RestartSec=2",
        # SIGTERM: the daemon stops its sources, stores what it holds, then exits.
        "KillSignal=SIGTERM",
        "TimeoutStopSec=30",
        "StandardOutput=journal",
        "StandardError=journal",
        "SyslogIdentifier=contextuate-trio",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ]
    return "\n".join(lines)


def _systemctl(*args: str) -> tuple[bool, str]:
    if shutil.which("systemctl") is None:
        return False, "systemctl not found"
    try:
        p = subprocess.run(["systemctl", "--user", *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, str(exc)
    return p.returncode == 0, (p.stderr or p.stdout).strip()


def cmd_install(args) -> int:
    if sys.platform == "darwin":
        print(
            "contextuate-trio service: systemd is Linux only; on macOS use the launchd agent shown "
            'in the README (section "Run at login")',
            file=sys.stderr,
        )
        return 1
    directory = unit_dir()
    path = os.path.join(directory, UNIT)
    text = unit_text(sys.executable)
    os.makedirs(directory, exist_ok=True)
    old = None
    try:
        with open(path, encoding="utf-8") as f:
            old = f.read()
    except FileNotFoundError:
        pass
    if old == text:
        print(f"{path}: already up to date")
    else:
        write_atomic(path, text.encode("utf-8"), 0o644, durable=True)
        print(f"{'updated' if old else 'wrote'} {path}")
    if args.no_start:
        print("enable it with: systemctl --user daemon-reload && systemctl --user enable --now contextuate-trio")
        return 0
    ok, why = _systemctl("daemon-reload")
    if ok:
        ok, why = _systemctl("enable", "--now", UNIT)
    if not ok:
        print(
            f"contextuate-trio service: the unit is written, but systemd did not take it ({why}). "
            "Without a user systemd (containers, WSL without systemd) start the daemon with "
            "`contextuate-trio start`",
            file=sys.stderr,
        )
        return 1
    print(
        "enabled and started: it runs at login and restarts on failure. Logs: journalctl --user -u contextuate-trio -f"
    )
    print("to keep it running when you are logged out (servers): loginctl enable-linger $USER")
    return 0


def cmd_uninstall(args) -> int:
    path = os.path.join(unit_dir(), UNIT)
    if not os.path.exists(path):
        print(f"{path} does not exist; nothing to remove")
        return 0
    ok, why = _systemctl("disable", "--now", UNIT)
    if not ok and "not found" not in why:
        print(f"  (systemctl: {why})", file=sys.stderr)
    os.unlink(path)
    _systemctl("daemon-reload")
    print(f"removed {path}" + ("; the service is stopped and disabled" if ok else ""))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("service", help="run the daemon at login (systemd user unit)")
    ss = p.add_subparsers(dest="service_command", required=True)
    q = ss.add_parser("install", help=f"write ~/.config/systemd/user/{UNIT}, enable and start it")
    q.add_argument("--no-start", action="store_true", help="only write the unit")
    q.set_defaults(func=cmd_install)
    q = ss.add_parser("uninstall", help="stop, disable and remove the unit")
    q.set_defaults(func=cmd_uninstall)
