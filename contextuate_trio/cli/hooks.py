"""Wiring the hook into Claude Code's settings files (``hooks install|uninstall|status``).

The merge is plain functions on dicts (``install``, ``uninstall``, ``describe``), tested
directly; the file side (``read_settings``, ``write_settings``) refuses a file that does
not parse, writes atomically (temp file + rename, through a symlink to its target),
keeps the file's mode and writes a backup of what was there before each change.

Our entries are recognised by a marker, never by position: a command hook whose
command names ``hook_emit``, or an http hook that sends the ``X-Contextuate-Machine`` header. Everything else in the
file (other keys, other hooks, other handlers in the same matcher group) is kept as
it was, in its order.

Why not ``"async": true``: the hook already returns within ``hook.timeoutMs`` (1 s by
default; a few tens of ms when the daemon answers), whatever state the daemon is in.
Async hooks run concurrently, so events would reach the daemon out of order (linking
sub-agents of older Claude Code relies on arrival order), and in ``-p`` (headless)
mode Claude Code kills async hooks still running at exit, which would lose the last
events of a session (Stop, SessionEnd) before they reach the spool. ``--async`` is
there for whoever prefers the trade.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import subprocess
import sys
from typing import Any

from contextuate_trio.cli import telemetry
from contextuate_trio.core.access import Scope
from contextuate_trio.hook.paths import write_atomic

MACHINE_HEADER = "X-Contextuate-Machine"
PARENT_HEADER = "X-Contextuate-Parent"
HTTP_PATH = "/api/hooks"
BACKUP_SUFFIX = ".contextuate.bak"  # before contextuate-trio was first wired in
PREV_SUFFIX = ".contextuate.prev"  # just before the last change

# Every Claude Code hook we wire (README, "Events"), with the Claude Code version that
# introduced it (its CHANGELOG; None: older than any version we support). Where the
# CHANGELOG does not say, the oldest version it was seen in: a hook an older Claude
# Code does not know would make it reject the whole settings file.
EVENTS: dict[str, tuple | None] = {
    "SessionStart": None,
    "SessionEnd": None,
    "UserPromptSubmit": None,
    "PreToolUse": None,
    "PermissionRequest": None,
    "PostToolUse": None,
    "PostToolUseFailure": None,
    "Notification": None,
    "Stop": None,
    "SubagentStart": None,
    "SubagentStop": None,
    "PreCompact": None,
    "Setup": (2, 1, 10),
    "TaskCompleted": (2, 1, 33),
    "TeammateIdle": (2, 1, 33),
    "ConfigChange": (2, 1, 49),
    "WorktreeRemove": (2, 1, 50),
    "InstructionsLoaded": (2, 1, 69),
    "PostCompact": (2, 1, 76),
    "Elicitation": (2, 1, 76),
    "ElicitationResult": (2, 1, 76),
    "StopFailure": (2, 1, 78),
    "CwdChanged": (2, 1, 83),
    "TaskCreated": (2, 1, 84),
    "PermissionDenied": (2, 1, 89),
    "PostToolBatch": (2, 1, 115),  # not in the changelog up to 2.1.114
    "MessageDisplay": (2, 1, 152),
    "PreModelSwitch": (2, 1, 263),  # not in the changelog; seen firing in 2.1.263
    "PostModelSwitch": (2, 1, 263),
    "UserPromptExpansion": (2, 1, 332),  # not in the changelog; tested in 2.1.332
    "PreSkillShellCommand": (2, 1, 332),
    # Opt-in (``--file-events``): one event per file touched in the project.
    "FileChanged": (2, 1, 83),
    "DirectoryAdded": (2, 1, 219),
}
NOISY = ("FileChanged", "DirectoryAdded")
# Never wired: a WorktreeCreate hook *replaces* git's own worktree creation (Claude Code
# then expects the hook to make the worktree and print its path), so wiring it would
# break ``--worktree`` and agent worktrees. Its removal counterpart is harmless.
NEVER = ("WorktreeCreate",)
# Hooks with a matcher on the tool name: ours matches every tool.
TOOL_EVENTS = ("PreToolUse", "PostToolUse", "PostToolUseFailure", "PermissionRequest", "PermissionDenied")
# Claude Code allows only command hooks here (no http).
COMMAND_ONLY = ("SessionStart", "Setup")
# Claude Code gives all SessionEnd hooks 1.5 s unless a hook asks for more; ours takes
# at most hook.timeoutMs plus start-up, then spools. Seconds.
HOOK_TIMEOUT_S = 10
# Hooks that may wait for an answer from the dashboard (config decisions): Claude Code
# kills a hook at its timeout, so theirs covers decisions.waitMs, and they are never
# async (an async hook's answer is not read).
ANSWERABLE = ("PermissionRequest", "Elicitation")

SCOPES = ("global", "project", "local")


class SettingsError(Exception):
    """The settings file cannot be used; the message says why and what to do."""


# --- the command --------------------------------------------------------------------
def real_python() -> str:
    """The interpreter to name in the hook: the real binary, not a venv or a shim.

    A virtualenv's (or pipx's) ``python`` and a pyenv shim both resolve to a base
    interpreter; the hook needs nothing but the standard library, so that is enough,
    and it keeps working when the venv is rebuilt.
    """
    base = getattr(sys, "_base_executable", None) or sys.executable
    return os.path.realpath(base)


def hook_script() -> str:
    """The hook inside the installed package (works from a clone, pipx, uv tool)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "hook_emit.py")


def default_home(env: dict) -> str:
    user = env.get("HOME") or os.path.expanduser("~")
    return os.path.join(user, ".contextuate")


def build_command(python: str, script: str, env: dict) -> str:
    """``[CONTEXTUATE_HOME=… ]<python> -I -S <script>``, quoted for ``sh -c``.

    A CONTEXTUATE_HOME (or CONTEXTUATE_CONFIG) other than the default travels with the
    command: Claude Code does not run hooks in the shell the user installed from.
    """
    prefix = []
    home = env.get("CONTEXTUATE_HOME")
    if home:
        home = os.path.abspath(os.path.expanduser(home))
        if home != os.path.abspath(default_home(env)):
            prefix.append("CONTEXTUATE_HOME=" + shlex.quote(home))
    cfg = env.get("CONTEXTUATE_CONFIG")
    if cfg:
        prefix.append("CONTEXTUATE_CONFIG=" + shlex.quote(os.path.abspath(os.path.expanduser(cfg))))
    return " ".join(prefix + [shlex.quote(python), "-I", "-S", shlex.quote(script)])


def command_handler(command: str, async_: bool = False, timeout_s: int = HOOK_TIMEOUT_S) -> dict:
    h: dict[str, Any] = {"type": "command", "command": command, "timeout": timeout_s}
    if async_:
        h["async"] = True
    return h


def http_handler(url: str, machine: str, token: str | None, token_inline: bool) -> dict:
    headers = {MACHINE_HEADER: machine, PARENT_HEADER: "$CONTEXTUATE_PARENT_SESSION"}
    allowed = ["CONTEXTUATE_PARENT_SESSION"]
    if token:
        if token_inline:
            headers["Authorization"] = f"Bearer {token}"
        else:
            headers["Authorization"] = "Bearer $CONTEXTUATE_TOKEN"
            allowed.append("CONTEXTUATE_TOKEN")
    return {"type": "http", "url": url, "headers": headers, "allowedEnvVars": allowed, "timeout": HOOK_TIMEOUT_S}


def plan(
    events: list[str],
    command: str,
    *,
    transport: str = "command",
    url: str | None = None,
    machine: str = "",
    token: str | None = None,
    token_inline: bool = True,
    async_: bool = False,
    answer_wait_ms: int | None = None,
) -> dict[str, dict]:
    """Event -> the matcher group we want in the settings for it. With
    ``answer_wait_ms`` (decisions on), the answerable events are command hooks whose
    timeout covers that wait."""
    out = {}
    for ev in events:
        if answer_wait_ms and ev in ANSWERABLE:
            wait_s = -(-answer_wait_ms // 1000) + HOOK_TIMEOUT_S
            handler = command_handler(command, False, max(HOOK_TIMEOUT_S, wait_s))
        elif transport == "http" and ev not in COMMAND_ONLY:
            handler = http_handler(url or "", machine, token, token_inline)
        else:
            handler = command_handler(command, async_)
        group: dict[str, Any] = {}
        if ev in TOOL_EVENTS:
            group["matcher"] = "*"
        group["hooks"] = [handler]
        out[ev] = group
    return out


def parse_version(text: str) -> tuple | None:
    m = re.search(r"(\d+)\.(\d+)\.(\d+)", text or "")
    return tuple(int(x) for x in m.groups()) if m else None


def claude_version(timeout: float = 5.0) -> tuple | None:
    """The installed Claude Code's version (``claude --version``), or None."""
    try:
        out = subprocess.run(["claude", "--version"], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_version(out.stdout) if out.returncode == 0 else None


def events_for(version: tuple | None, noisy: bool = False) -> tuple[list[str], list[str]]:
    """(events to register, events left out because that Claude Code predates them).
    Unknown version: all of them (a current Claude Code knows every one). The noisy
    file events only when asked for."""
    keep: list[str] = []
    skip: list[str] = []
    for ev, since in EVENTS.items():
        if ev in NOISY and not noisy:
            continue
        (skip if version is not None and since is not None and version < since else keep).append(ev)
    return keep, skip


# --- recognising our entries -----------------------------------------------------------
def is_ours(handler: Any) -> bool:
    if not isinstance(handler, dict):
        return False
    if handler.get("type", "command") == "command":
        cmd = handler.get("command")
        return isinstance(cmd, str) and "hook_emit" in cmd
    if handler.get("type") == "http":
        headers = handler.get("headers")
        return isinstance(headers, dict) and MACHINE_HEADER in headers
    return False


def answer_hook_problems(settings: Any, wait_ms: int) -> list[str]:
    """With decisions on: what in these settings keeps an answer from the dashboard
    from reaching Claude Code (an answerable hook of ours that is http or async, or
    whose timeout Claude Code would kill it at before ``wait_ms``)."""
    hooks = settings.get("hooks") if isinstance(settings, dict) else None
    if not isinstance(hooks, dict):
        return []
    need_s = -(-wait_ms // 1000) + 1
    out = []
    for name in ANSWERABLE:
        groups = hooks.get(name)
        ours: list[dict] = []
        for g in groups if isinstance(groups, list) else []:
            handlers = g.get("hooks") if isinstance(g, dict) else None
            ours += [h for h in (handlers if isinstance(handlers, list) else []) if is_ours(h)]
        for h in ours:
            if h.get("type", "command") != "command" or h.get("async"):
                out.append(f"{name} is {'async' if h.get('async') else 'an http hook'}: it cannot wait for an answer")
            elif not isinstance(h.get("timeout"), (int, float)) or h["timeout"] < need_s:
                out.append(f"{name}'s timeout {h.get('timeout')} s is shorter than decisions.waitMs ({wait_ms} ms)")
    return out


def _check_shape(settings: Any) -> dict:
    if not isinstance(settings, dict):
        raise SettingsError("the settings are not a JSON object")
    hooks = settings.get("hooks", {})
    if not isinstance(hooks, dict):
        raise SettingsError("'hooks' is not a JSON object; fix it by hand first")
    for ev, groups in hooks.items():
        if not isinstance(groups, list):
            raise SettingsError(f"'hooks.{ev}' is not a list; fix it by hand first")
    return hooks


def _strip(groups: list) -> tuple[list, bool]:
    """Groups without our handlers; a group left empty by that is dropped."""
    out, removed = [], False
    for g in groups:
        if isinstance(g, dict) and isinstance(g.get("hooks"), list) and any(map(is_ours, g["hooks"])):
            removed = True
            rest = [h for h in g["hooks"] if not is_ours(h)]
            if rest:
                out.append({**g, "hooks": rest})
            continue
        out.append(g)
    return out, removed


def install(settings: dict, wanted: dict[str, dict]) -> dict:
    """The settings with exactly our ``wanted`` groups (and nothing else of ours).

    An event already wired exactly as wanted is left where it is, so installing twice
    changes nothing. Ours on events no longer wanted (another transport, fewer events)
    are removed.
    """
    hooks = _check_shape(settings)
    new = copy.deepcopy(settings)
    new_hooks = new.setdefault("hooks", {})
    for ev in list(hooks):
        groups = hooks[ev]
        ours = [
            g
            for g in groups
            if isinstance(g, dict) and isinstance(g.get("hooks"), list) and any(map(is_ours, g["hooks"]))
        ]
        if ev in wanted and ours == [wanted[ev]]:
            continue  # already exactly right
        stripped, removed = _strip(groups)
        if removed:
            new_hooks[ev] = stripped
    for ev, group in wanted.items():
        groups = new_hooks.setdefault(ev, [])
        if group not in groups:
            groups.append(copy.deepcopy(group))
    for ev in list(new_hooks):
        if new_hooks[ev] == [] and ev not in hooks:
            del new_hooks[ev]
    return new


def uninstall(settings: dict) -> dict:
    """The settings without any of our handlers (nor the OTel env ``--otel`` wrote);
    containers we emptied are removed."""
    hooks = _check_shape(settings)
    new, _ = telemetry.uninstall_env(copy.deepcopy(settings))
    if "hooks" not in new:
        return new
    touched = False
    for ev in list(hooks):
        stripped, removed = _strip(hooks[ev])
        if removed:
            touched = True
            if stripped:
                new["hooks"][ev] = stripped
            else:
                del new["hooks"][ev]
    if touched and not new["hooks"]:
        del new["hooks"]
    return new


def _prune_empty(settings: Any) -> Any:
    """The settings without an empty ``hooks`` object or empty event lists in it."""
    if not isinstance(settings, dict) or not isinstance(settings.get("hooks"), dict):
        return settings
    out = dict(settings)
    hooks = {k: v for k, v in settings["hooks"].items() if v != []}
    if hooks:
        out["hooks"] = hooks
    else:
        del out["hooks"]
    return out


def same_modulo_empty(a: Any, b: Any) -> bool:
    """Equal once empty ``hooks`` objects and empty event lists are disregarded."""
    return _prune_empty(a) == _prune_empty(b)


def describe(settings: dict) -> dict:
    """What of ours is wired: {event: [handler, ...]} plus other handlers' count."""
    hooks = settings.get("hooks") if isinstance(settings, dict) else None
    ours: dict[str, list] = {}
    others = 0
    if isinstance(hooks, dict):
        for ev, groups in hooks.items():
            for g in groups if isinstance(groups, list) else []:
                handlers = g.get("hooks") if isinstance(g, dict) else None
                for h in handlers if isinstance(handlers, list) else []:
                    if is_ours(h):
                        ours.setdefault(ev, []).append(h)
                    else:
                        others += 1
    return {"ours": ours, "others": others}


def command_parts(command: str) -> tuple[dict, list[str]]:
    """``A=b python -I -S x`` -> ({"A": "b"}, ["python", "-I", "-S", "x"])."""
    try:
        words = shlex.split(command)
    except ValueError:
        return {}, []
    env = {}
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        k, _, v = words.pop(0).partition("=")
        env[k] = v
    return env, words


# --- files ------------------------------------------------------------------------------
def settings_path(scope: str, env: dict | None = None, cwd: str | None = None) -> str:
    env = dict(os.environ if env is None else env)
    cwd = cwd or os.getcwd()
    if scope == "global":
        base = env.get("CLAUDE_CONFIG_DIR") or os.path.join(env.get("HOME") or os.path.expanduser("~"), ".claude")
        return os.path.join(os.path.expanduser(base), "settings.json")
    if scope == "project":
        return os.path.join(cwd, ".claude", "settings.json")
    if scope == "local":
        return os.path.join(cwd, ".claude", "settings.local.json")
    raise ValueError(scope)


def read_settings(path: str) -> tuple[dict, bytes | None]:
    """(settings, the file's bytes or None when it does not exist). Refuses a broken file."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return {}, None
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read it: {exc.strerror}") from None
    if not raw.strip():
        return {}, raw
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SettingsError(
            f"{path} is not valid JSON ({exc}); it was left untouched. "
            "Fix it (Claude Code cannot read it either) and run this again"
        ) from None
    if not isinstance(data, dict):
        raise SettingsError(f"{path} is not a JSON object; it was left untouched")
    return data, raw


def render(settings: dict) -> bytes:
    return (json.dumps(settings, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _atomic_write(path: str, data: bytes, mode: int) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_atomic(path, data, mode, durable=True)


def write_settings(path: str, data: bytes, previous: bytes | None) -> str | None:
    """Write ``data`` atomically (a symlink keeps pointing at its target) and keep what
    was there: ``<file>.contextuate.prev`` is always the file just before this change;
    ``<file>.contextuate.bak`` is the file before contextuate-trio was first wired into
    it (rewritten only from a state holding none of our entries). ``previous`` b""
    means there was no file. Returns the ``.prev`` path, if one was written."""
    target = os.path.realpath(path)
    try:
        mode = os.stat(target).st_mode & 0o777
    except FileNotFoundError:
        mode = 0o600
    prev = None
    if previous is not None:
        prev = target + PREV_SUFFIX
        _atomic_write(prev, previous, mode)
        try:
            pristine = not describe(json.loads(previous) if previous.strip() else {})["ours"]
        except (ValueError, UnicodeDecodeError):
            pristine = False
        if pristine:
            _atomic_write(target + BACKUP_SUFFIX, previous, mode)
    _atomic_write(target, data, mode)
    return prev


def read_backup(path: str) -> tuple[dict | None, bytes | None]:
    target = os.path.realpath(path) + BACKUP_SUFFIX
    try:
        with open(target, "rb") as f:
            raw = f.read()
        return (json.loads(raw) if raw.strip() else {}), raw
    except (OSError, ValueError, UnicodeDecodeError):
        return None, None


# --- whole operations on a file (what the CLI calls) ---------------------------------------
def install_file(path: str, wanted: dict[str, dict], otel_env: dict[str, str] | None = None) -> dict:
    """Merge ``wanted`` (and the ``--otel`` env block) into the file. Returns
    {"changed", "backup", "created", "conflicts"} (env keys set otherwise, left alone)."""
    current, raw = read_settings(path)
    new = install(current, wanted)
    conflicts: list[str] = []
    if otel_env is not None:
        try:
            new, conflicts = telemetry.install_env(new, otel_env)
        except ValueError as exc:
            raise SettingsError(f"{path}: {exc}") from None
    more = {"conflicts": conflicts} if otel_env is not None else {}
    if raw is not None and new == current:
        return {"changed": False, "backup": None, "created": False, **more}
    # A file we create gets an empty backup: "there was nothing", for uninstall.
    prev = write_settings(path, render(new), raw if raw is not None else b"")
    return {"changed": True, "backup": prev, "created": raw is None, **more}


def uninstall_file(path: str) -> dict:
    """Remove ours from the file. When what is left equals the backup taken before our
    last change, the backup's bytes are put back (its formatting too)."""
    current, raw = read_settings(path)
    if raw is None:
        return {"changed": False, "restored": False, "removed": 0}
    removed = sum(len(v) for v in describe(current)["ours"].values())
    if not removed and not telemetry.ours(current):
        return {"changed": False, "restored": False, "removed": 0}
    new = uninstall(current)
    data = render(new)
    restored = False
    old, old_raw = read_backup(path)
    if old is not None and old_raw is not None and not describe(old)["ours"] and same_modulo_empty(old, new):
        data, restored = old_raw, True
    if restored and not data.strip() and not os.path.islink(path):
        # We created the file: give back "no file" (``.prev`` keeps what it held).
        _atomic_write(os.path.realpath(path) + PREV_SUFFIX, raw, 0o600)
        os.unlink(path)
        return {"changed": True, "restored": True, "removed": removed, "deleted": True}
    write_settings(path, data, raw)
    return {"changed": True, "restored": restored, "removed": removed, "deleted": False}


# --- the CLI ------------------------------------------------------------------------------
def _scope(args) -> str:
    return getattr(args, "scope", None) or "global"


def _daemon_url(cfg) -> str:
    from contextuate_trio.config import api_base

    return api_base(cfg) + HTTP_PATH


def wired_elsewhere(scope: str, env: dict | None = None, cwd: str | None = None) -> list[str]:
    """Other settings files that also wire our hook (each event would be sent twice)."""
    out = []
    here = os.path.realpath(settings_path(scope, env, cwd))
    for other in SCOPES:
        path = settings_path(other, env, cwd)
        if os.path.realpath(path) == here:
            continue
        try:
            data, _ = read_settings(path)
        except SettingsError:
            continue
        if describe(data)["ours"]:
            out.append(path)
    return out


def cmd_install(args) -> int:
    """``hooks install``. Kept whole (~85 lines): it is the command's script top to
    bottom (plan, refuse, write, then what to tell the person); its parts are the
    functions it calls."""
    from contextuate_trio import config as config_mod
    from contextuate_trio.hook import paths as hook_paths

    env = dict(os.environ)
    scope = _scope(args)
    path = settings_path(scope, env)
    try:
        cfg, _ = config_mod.load(env)
    except config_mod.ConfigError as exc:
        if args.transport == "http":
            print(f"contextuate-trio: {exc}", file=sys.stderr)
            return 2
        cfg = None
    script = hook_script()
    if not os.path.exists(script):
        print(f"contextuate-trio: the hook {script} is missing; reinstall contextuate-trio", file=sys.stderr)
        return 1
    python = real_python()
    command = build_command(python, script, env)
    version = claude_version()
    events, skipped = events_for(version, noisy=args.file_events)
    token = cfg.server.client_token(Scope.READ) if cfg is not None else None
    otel_env = _otel_env(args, cfg, env, token, scope) if args.otel else None
    if args.otel and otel_env is None:
        return 2
    wanted = plan(
        events,
        command,
        transport=args.transport,
        url=_daemon_url(cfg) if cfg is not None else None,
        machine=hook_paths.machine_id(env),
        token=token,
        token_inline=scope != "project",
        async_=args.async_,
        answer_wait_ms=cfg.decisions.wait_ms if cfg is not None and cfg.decisions.enabled else None,
    )
    try:
        result = install_file(path, wanted, otel_env)
    except SettingsError as exc:
        print(f"contextuate-trio: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"contextuate-trio: cannot write {path}: {exc}", file=sys.stderr)
        return 1
    if not result["changed"]:
        print(f"{path}: already wired for {len(events)} events; nothing changed")
    else:
        verb = "created" if result["created"] else "updated"
        print(
            f"{verb} {path}: the hook is wired for {len(events)} events"
            + (f" ({args.transport} transport; SessionStart stays a command hook)" if args.transport == "http" else "")
        )
        if result["backup"] and not result["created"]:
            print(f"  the file before this change: {result['backup']}")
    print(f"  events:  {', '.join(events)}")
    print(f"  command: {command}")
    _say_otel(otel_env, result, path)
    if args.transport == "http":
        print(f"  url:     {wanted['Stop']['hooks'][0]['url']}")
        print(
            "  note: http hooks need the daemon running; an event sent while it is down is lost "
            "(the command hook spools it)"
        )
        if token and scope == "project":
            print(
                "  note: the token is not written into a file meant to be committed; Claude Code "
                "sends $CONTEXTUATE_TOKEN: export it in the environment Claude Code runs in"
            )
    if skipped and version is not None:
        print(
            f"  left out (Claude Code {'.'.join(map(str, version))} predates them): {', '.join(skipped)}; "
            "run this again after upgrading"
        )
    if scope == "project":
        print(
            "  note: this file is usually committed; its command holds this machine's paths. "
            "Teammates can use `contextuate-trio hooks install --local` instead"
        )
    for other in wired_elsewhere(scope, env):
        print(
            f"  warning: {other} also wires contextuate-trio: Claude Code would run both and every "
            f"event would be recorded twice. Remove one: contextuate-trio hooks uninstall "
            f"--{_scope_of(other, env)}",
            file=sys.stderr,
        )
    if cfg is not None and not _daemon_up(cfg):
        print(
            "  the daemon is not running: start it with `contextuate-trio start` (until then events wait in the spool)"
        )
    return 0


def _say_otel(otel_env: dict[str, str] | None, result: dict, path: str) -> None:
    if otel_env is None:
        return
    print(f"  otel:    Claude Code's OpenTelemetry to {otel_env['OTEL_EXPORTER_OTLP_ENDPOINT']} (settings env)")
    for key in result.get("conflicts", ()):
        print(f"  warning: env {key} is set to something else in {path}; left as it is", file=sys.stderr)


def _otel_env(args, cfg, env: dict, token: str | None, scope: str) -> dict[str, str] | None:
    """The ``--otel`` env block (None after saying why it cannot be made)."""
    from contextuate_trio.config import api_base
    from contextuate_trio.hook import paths as hook_paths

    endpoint = args.otel_endpoint or (api_base(cfg) if cfg is not None else None)
    if not endpoint:
        print("contextuate-trio: --otel needs the daemon's config (or --otel-endpoint URL)", file=sys.stderr)
        return None
    machine = (cfg.redis.machine_id if cfg is not None else None) or hook_paths.machine_id(env)
    if token and scope == "project":
        print(
            "  note: the token is not written into a file meant to be committed; set "
            "OTEL_EXPORTER_OTLP_HEADERS=Authorization=Bearer… where Claude Code runs",
            file=sys.stderr,
        )
        token = None
    return telemetry.otel_env(endpoint, machine, token)


def _scope_of(path: str, env: dict) -> str:
    for s in SCOPES:
        if os.path.realpath(settings_path(s, env)) == os.path.realpath(path):
            return s
    return "global"


def _daemon_up(cfg) -> bool:
    from contextuate_trio.cli.client import api_get

    try:
        api_get(cfg, "/api/health", timeout=1.0)
        return True
    except (OSError, ValueError):
        return False


def cmd_uninstall(args) -> int:
    env = dict(os.environ)
    scopes = SCOPES if args.all else (_scope(args),)
    code = 0
    for scope in scopes:
        path = settings_path(scope, env)
        try:
            result = uninstall_file(path)
        except SettingsError as exc:
            print(f"contextuate-trio: {exc}", file=sys.stderr)
            code = 1
            continue
        except OSError as exc:
            print(f"contextuate-trio: cannot write {path}: {exc}", file=sys.stderr)
            code = 1
            continue
        if not result["changed"]:
            if not args.all or os.path.exists(path):
                print(f"{path}: contextuate-trio is not wired there; nothing changed")
            continue
        if result.get("deleted"):
            print(f"removed {path}: it did not exist before `hooks install` created it")
        elif result["restored"]:
            print(
                f"{path}: removed {result['removed']} hook entries; the file is back to what it "
                "was before `hooks install`, byte for byte"
            )
        else:
            print(
                f"{path}: removed {result['removed']} hook entries (and the --otel env, if any); everything else is kept"
            )
    return code


def status(env: dict | None = None, cwd: str | None = None) -> list[dict]:
    """Per settings file: what of ours is wired, and what is wrong with it."""
    from contextuate_trio.hook import paths as hook_paths

    env = dict(os.environ if env is None else env)
    out = []
    my_home = os.path.abspath(os.path.expanduser(hook_paths.home_dir(env)))
    for scope in SCOPES:
        path = settings_path(scope, env, cwd)
        item: dict[str, Any] = {
            "scope": scope,
            "path": path,
            "exists": os.path.exists(path),
            "events": [],
            "problems": [],
            "transport": None,
            "commands": [],
        }
        try:
            data, _ = read_settings(path)
        except SettingsError as exc:
            item["problems"].append(str(exc))
            out.append(item)
            continue
        info = describe(data)
        item["events"] = sorted(info["ours"])
        item["otherHandlers"] = info["others"]
        kinds = {h.get("type", "command") for hs in info["ours"].values() for h in hs}
        item["transport"] = "http" if "http" in kinds else ("command" if kinds else None)
        commands = sorted(
            {
                h["command"]
                for hs in info["ours"].values()
                for h in hs
                if h.get("type", "command") == "command" and isinstance(h.get("command"), str)
            }
        )
        item["commands"] = commands
        for cmd in commands:
            cenv, words = command_parts(cmd)
            if not words:
                item["problems"].append(f"cannot parse the command {cmd!r}")
                continue
            exe = words[0]
            if not (os.path.isabs(exe) and os.access(exe, os.X_OK)):
                item["problems"].append(f"the interpreter {exe} is missing or not executable")
            script = words[-1]
            if not os.path.isfile(script):
                item["problems"].append(f"the hook {script} is missing")
            home = os.path.abspath(cenv.get("CONTEXTUATE_HOME") or default_home(env))
            if home != my_home:
                item["problems"].append(f"the hook writes to {home}, but this shell's home is {my_home}")
        for ev, hs in info["ours"].items():
            if len(hs) > 1:
                item["problems"].append(f"{ev}: wired {len(hs)} times (every event recorded {len(hs)} times)")
        out.append(item)
    return out


def cmd_status(args) -> int:
    items = status()
    if args.json:
        print(json.dumps(items, indent=2))
    wired = [i for i in items if i["events"]]
    if not args.json:
        for i in items:
            state = (
                "missing"
                if not i["exists"]
                else (f"{len(i['events'])} events, {i['transport']} transport" if i["events"] else "not wired")
            )
            print(f"{i['scope']:8} {i['path']}: {state}")
            for cmd in i["commands"]:
                print(f"         command: {cmd}")
            if i["events"]:
                missing = [e for e in EVENTS if e not in i["events"] and e not in NOISY]
                if missing:
                    print(f"         not wired: {', '.join(missing)}")
            for p in i["problems"]:
                print(f"         problem: {p}")
        if not wired:
            print("contextuate-trio is not wired into Claude Code: run `contextuate-trio hooks install`")
        elif len(wired) > 1:
            print(
                "warning: wired in more than one file: Claude Code runs all of them and every event "
                "is recorded once per file; keep one (`contextuate-trio hooks uninstall --<scope>`)"
            )
    problems = any(i["problems"] for i in items)
    return 1 if (problems or not wired) else 0


def add_parser(sub) -> None:
    """``hooks install|uninstall|status`` on the CLI's subparsers."""
    p = sub.add_parser("hooks", help="wire the hook into Claude Code's settings")
    hs = p.add_subparsers(dest="hooks_command", required=True)

    def scope_flags(q, all_flag=False):
        g = q.add_mutually_exclusive_group()
        g.add_argument(
            "--global",
            dest="scope",
            action="store_const",
            const="global",
            help="~/.claude/settings.json (the default; $CLAUDE_CONFIG_DIR is honoured)",
        )
        g.add_argument(
            "--project",
            dest="scope",
            action="store_const",
            const="project",
            help=".claude/settings.json in this directory (usually committed)",
        )
        g.add_argument(
            "--local",
            dest="scope",
            action="store_const",
            const="local",
            help=".claude/settings.local.json in this directory (not committed)",
        )
        if all_flag:
            g.add_argument("--all", action="store_true", help="every one of the three files")

    q = hs.add_parser("install", help="register the hook for every event we map")
    scope_flags(q)
    q.add_argument(
        "--transport",
        choices=("command", "http"),
        default="command",
        help="command (default: spools when the daemon is down) or http (no process; "
        "SessionStart stays a command hook)",
    )
    q.add_argument(
        "--async",
        dest="async_",
        action="store_true",
        help="run command hooks in the background (see the README for the trade-off)",
    )
    q.add_argument(
        "--file-events",
        action="store_true",
        help="also FileChanged and DirectoryAdded (one event per file touched: noisy)",
    )
    q.add_argument(
        "--otel",
        action="store_true",
        help="also Claude Code's own OpenTelemetry (cost, API errors, tool decisions, spans) to the daemon",
    )
    q.add_argument(
        "--otel-endpoint",
        metavar="URL",
        help="where --otel sends it (default: this daemon, http://host:server.port)",
    )
    q.set_defaults(func=cmd_install)
    q = hs.add_parser("uninstall", help="remove our entries; everything else is kept")
    scope_flags(q, all_flag=True)
    q.set_defaults(func=cmd_uninstall, all=False)
    q = hs.add_parser("status", help="what is wired where")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_status)
