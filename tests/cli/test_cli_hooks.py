"""``hooks install|uninstall|status``: the merge (pure functions) and the real files,
then the installed command run through ``sh -c`` into a real daemon."""

from __future__ import annotations

import copy
import json
import os
import stat
import subprocess

import pytest
from conftest import clean_env, wait_for
from helpers import run_cli

from contextuate_trio.cli import hooks as cs

CMD = "/usr/bin/python3 -I -S /opt/x/contextuate_trio/hook_emit.py"
OTHERS = {
    "model": "opus",
    "permissions": {"allow": ["Bash(git *)"]},
    "hooks": {
        "PreToolUse": [
            {"matcher": "Bash", "hooks": [{"type": "command", "command": "~/bin/guard.sh"}]},
        ],
        "Stop": [{"hooks": [{"type": "command", "command": "notify-send done", "timeout": 5}]}],
        "Setup": [{"hooks": [{"type": "command", "command": "npm ci"}]}],
    },
    "env": {"FOO": "1"},
}


def wanted(transport="command"):
    events, _ = cs.events_for(None)
    return cs.plan(events, CMD, transport=transport, url="http://127.0.0.1:3847/api/hooks", machine="m1", token=None)


# --- pure merge -------------------------------------------------------------------------
@pytest.mark.parametrize("before", [{}, {"hooks": {}}, OTHERS, {"hooks": {"Stop": []}, "x": [1]}])
@pytest.mark.parametrize("transport", ["command", "http"])
def test_install_keeps_everything_else_and_uninstall_gives_it_back(before, transport):
    original = copy.deepcopy(before)
    after = cs.install(before, wanted(transport))
    assert before == original  # not mutated
    for key in before:
        if key != "hooks":
            assert after[key] == before[key]
    for ev, groups in before.get("hooks", {}).items():
        for g in groups:
            assert g in after["hooks"][ev]  # other hooks kept, in place
    assert set(cs.describe(after)["ours"]) == set(cs.EVENTS) - set(cs.NOISY)
    back = cs.uninstall(after)
    assert cs.same_modulo_empty(back, before)
    if before.get("hooks") and any(before["hooks"].values()):
        assert back == before


def test_install_twice_changes_nothing_and_switching_transport_replaces():
    once = cs.install(OTHERS, wanted())
    assert cs.install(once, wanted()) == once
    http = cs.install(once, wanted("http"))
    info = cs.describe(http)["ours"]
    assert all(len(v) == 1 for v in info.values())
    assert info["SessionStart"][0]["type"] == "command"  # Claude Code allows no http there
    assert info["Stop"][0]["type"] == "http"
    assert info["Stop"][0]["headers"][cs.MACHINE_HEADER] == "m1"
    assert info["PreToolUse"][0]["type"] == "http"
    assert cs.uninstall(http) == OTHERS


def test_our_handler_sharing_a_group_with_someone_elses():
    mixed = {
        "hooks": {
            "Stop": [
                {
                    "hooks": [
                        {"type": "command", "command": "say hi"},
                        {"type": "command", "command": "python3 /old/hook_emit.py"},
                    ]
                }
            ]
        }
    }
    out = cs.install(mixed, wanted())
    assert out["hooks"]["Stop"][0] == {"hooks": [{"type": "command", "command": "say hi"}]}
    assert cs.uninstall(out) == {"hooks": {"Stop": [{"hooks": [{"type": "command", "command": "say hi"}]}]}}


def test_tool_events_match_every_tool_and_shapes_are_checked():
    w = wanted()
    assert w["PreToolUse"]["matcher"] == "*" and "matcher" not in w["Stop"]
    with pytest.raises(cs.SettingsError):
        cs.install({"hooks": []}, w)
    with pytest.raises(cs.SettingsError):
        cs.install({"hooks": {"Stop": {}}}, w)


def test_command_is_quoted_and_carries_a_non_default_home(tmp_path):
    env = {"HOME": str(tmp_path), "CONTEXTUATE_HOME": str(tmp_path / "my home")}
    cmd = cs.build_command("/opt/py 3/bin/python3", "/a b/hook_emit.py", env)
    assert cmd == f"CONTEXTUATE_HOME='{tmp_path}/my home' '/opt/py 3/bin/python3' -I -S '/a b/hook_emit.py'"
    assert cs.command_parts(cmd) == (
        {"CONTEXTUATE_HOME": f"{tmp_path}/my home"},
        ["/opt/py 3/bin/python3", "-I", "-S", "/a b/hook_emit.py"],
    )
    env["CONTEXTUATE_HOME"] = str(tmp_path / ".contextuate")  # the default: no prefix
    assert not cs.build_command("/p", "/h", env).startswith("CONTEXTUATE_HOME")


def test_real_python_is_not_a_venv_or_shim():
    py = cs.real_python()
    assert os.path.isabs(py) and os.path.realpath(py) == py
    assert ".venv" not in py and "/shims/" not in py


def test_events_left_out_for_an_older_claude_code():
    keep, skip = cs.events_for((2, 1, 50))
    assert "StopFailure" in skip and "PostToolBatch" in skip and "TaskCompleted" in keep
    assert {"SessionStart", "PreToolUse", "PermissionRequest", "SubagentStop"} <= set(keep)
    assert cs.parse_version("2.1.114 (Claude Code)") == (2, 1, 114)


def test_every_hook_of_claude_code_2_1_332_is_wired_but_worktree_create():
    """The 34 hook events the 2.1.332 binary knows: all wired but WorktreeCreate (its
    hook replaces git's worktree creation), the two file events only when asked."""
    known = {
        "PreToolUse", "PostToolUse", "PostToolUseFailure", "PostToolBatch", "Notification", "UserPromptSubmit",
        "UserPromptExpansion", "SessionStart", "SessionEnd", "Stop", "StopFailure", "SubagentStart", "SubagentStop",
        "PreCompact", "PostCompact", "PreModelSwitch", "PostModelSwitch", "PermissionRequest", "PermissionDenied",
        "Setup", "TeammateIdle", "TaskCreated", "TaskCompleted", "Elicitation", "ElicitationResult", "ConfigChange",
        "WorktreeCreate", "WorktreeRemove", "InstructionsLoaded", "CwdChanged", "FileChanged", "DirectoryAdded",
        "MessageDisplay", "PreSkillShellCommand",
    }  # fmt: skip
    assert len(known) == 34
    default, _ = cs.events_for((2, 1, 332))
    everything, _ = cs.events_for((2, 1, 332), noisy=True)
    assert set(everything) == known - {"WorktreeCreate"}
    assert set(default) == known - {"WorktreeCreate", "FileChanged", "DirectoryAdded"}
    assert "WorktreeCreate" not in cs.plan(everything, CMD)
    older, skipped = cs.events_for((2, 1, 100))
    assert "MessageDisplay" in skipped and "PermissionDenied" in older


# --- files ------------------------------------------------------------------------------
def test_broken_file_is_refused_and_left_untouched(tmp_path):
    p = tmp_path / "settings.json"
    p.write_bytes(b'{"model": "opus",}')
    os.utime(p, (1_000_000, 1_000_000))
    with pytest.raises(cs.SettingsError, match="not valid JSON"):
        cs.install_file(str(p), wanted())
    assert p.read_bytes() == b'{"model": "opus",}' and p.stat().st_mtime == 1_000_000
    assert sorted(os.listdir(tmp_path)) == ["settings.json"]


def test_files_created_backed_up_restored_byte_for_byte(tmp_path):
    p = tmp_path / "sub" / "settings.json"
    r = cs.install_file(str(p), wanted())
    assert r["created"] and json.loads(p.read_text())["hooks"]
    assert cs.uninstall_file(str(p))["deleted"] and not p.exists()

    original = b'{\n    "model": "opus",\n    "hooks": {"Stop": [{"hooks": [{"type": "command", "command": "x"}]}]}\n}'
    p.write_bytes(original)
    os.chmod(p, 0o640)
    assert cs.install_file(str(p), wanted())["changed"]
    first = p.read_bytes()
    assert cs.install_file(str(p), wanted()) == {"changed": False, "backup": None, "created": False}
    assert p.read_bytes() == first
    assert cs.install_file(str(p), wanted("http"))["changed"]
    assert (tmp_path / "sub" / "settings.json.contextuate.bak").read_bytes() == original
    assert stat.S_IMODE(p.stat().st_mode) == 0o640
    r = cs.uninstall_file(str(p))
    assert r["restored"] and p.read_bytes() == original


def test_symlinked_settings_stay_a_symlink(tmp_path):
    real = tmp_path / "dotfiles" / "claude.json"
    real.parent.mkdir()
    real.write_text('{"model": "x"}')
    link = tmp_path / "settings.json"
    link.symlink_to(real)
    cs.install_file(str(link), wanted())
    assert link.is_symlink() and cs.describe(json.loads(real.read_text()))["ours"]
    cs.uninstall_file(str(link))
    assert link.is_symlink() and real.read_text() == '{"model": "x"}'


# --- the CLI, and the installed command delivering an event -----------------------------------
def cli(args, env, cwd=None):
    return run_cli(*args, env=env, cwd=cwd)


def test_cli_install_then_sh_c_delivers_to_a_real_daemon(daemon, home, tmp_path):
    d = daemon()
    user_home = tmp_path / "user"
    (user_home / ".claude").mkdir(parents=True)
    settings = user_home / ".claude" / "settings.json"
    settings.write_text(json.dumps(OTHERS, indent=4))
    env = clean_env(home, HOME=str(user_home))  # CONTEXTUATE_HOME=home: not the default
    r = cli(["hooks", "install"], env)
    assert r.returncode == 0, r.stderr
    assert "wired for" in r.stdout and "backup" not in r.stderr
    data = json.loads(settings.read_text())
    assert data["model"] == "opus" and data["hooks"]["Setup"][0] == OTHERS["hooks"]["Setup"][0]
    cmd = cs.describe(data)["ours"]["Stop"][0]["command"]
    assert cmd.startswith("CONTEXTUATE_HOME=") and "hook_emit.py" in cmd

    # Claude Code runs it with sh -c, from the project's directory, in its own environment
    # (no CONTEXTUATE_HOME there, no virtualenv on PATH).
    run_env = {"PATH": "/usr/bin:/bin", "HOME": str(user_home), "HOSTNAME": "box-1"}
    payload = {"session_id": "sh-c-1", "hook_event_name": "Stop", "cwd": str(tmp_path)}
    p = subprocess.run(
        ["sh", "-c", cmd],
        input=json.dumps(payload).encode(),
        env=run_env,
        cwd=str(tmp_path),
        capture_output=True,
        timeout=20,
    )
    assert p.returncode == 0 and p.stdout == b"", p
    s = wait_for(lambda: d.sessions().get("sh-c-1"), what="the event via sh -c")
    assert s["machineId"] == "box-1" and s["status"] == "idle"

    r2 = cli(["hooks", "install"], env)
    assert "nothing changed" in r2.stdout
    st = cli(["hooks", "status"], env)
    assert st.returncode == 0 and f"{len(cs.EVENTS) - len(cs.NOISY)} events, command transport" in st.stdout, st.stdout
    r3 = cli(["hooks", "uninstall"], env)
    assert r3.returncode == 0 and "byte for byte" in r3.stdout
    assert settings.read_text() == json.dumps(OTHERS, indent=4)
    st = cli(["hooks", "status"], env)
    assert st.returncode == 1 and "hooks install" in st.stdout


def test_cli_refuses_a_broken_file_and_warns_of_two_scopes(home, tmp_path):
    user_home = tmp_path / "u"
    (user_home / ".claude").mkdir(parents=True)
    (user_home / ".claude" / "settings.json").write_text("{broken")
    env = clean_env(home, HOME=str(user_home))
    r = cli(["hooks", "install"], env)
    assert r.returncode == 1 and "not valid JSON" in r.stderr and "untouched" in r.stderr
    assert (user_home / ".claude" / "settings.json").read_text() == "{broken"
    (user_home / ".claude" / "settings.json").write_text("{}")
    proj = tmp_path / "proj"
    proj.mkdir()
    assert cli(["hooks", "install"], env, cwd=str(proj)).returncode == 0
    r = cli(["hooks", "install", "--local"], env, cwd=str(proj))
    assert r.returncode == 0 and "recorded twice" in r.stderr
    assert (proj / ".claude" / "settings.local.json").exists()
    st = cli(["hooks", "status"], env, cwd=str(proj))
    assert "more than one file" in st.stdout
    assert cli(["hooks", "uninstall", "--all"], env, cwd=str(proj)).returncode == 0
    assert json.loads((user_home / ".claude" / "settings.json").read_text()) == {}


def test_cli_leaves_out_events_an_old_claude_code_lacks(home, tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "claude"
    fake.write_text("#!/bin/sh\necho '2.1.50 (Claude Code)'\n")
    fake.chmod(0o755)
    env = clean_env(home, HOME=str(tmp_path), PATH=f"{bindir}:{os.environ['PATH']}")
    r = cli(["hooks", "install"], env)
    assert r.returncode == 0 and "left out (Claude Code 2.1.50 predates them)" in r.stdout
    data = json.loads((tmp_path / ".claude" / "settings.json").read_text())
    assert "StopFailure" not in data["hooks"] and "SubagentStart" in data["hooks"]


def test_with_decisions_the_answerable_hooks_wait_long_enough_and_never_async():
    """Claude Code kills a hook at its timeout: the PermissionRequest hook that waits
    decisions.waitMs for an answer must be given longer, as a command (http and async
    hooks cannot wait on the socket)."""
    events = ["PreToolUse", "PermissionRequest", "Elicitation"]
    plain = cs.plan(events, CMD, async_=True)
    assert all(g["hooks"][0]["timeout"] == cs.HOOK_TIMEOUT_S for g in plain.values())
    waiting = cs.plan(events, CMD, transport="http", url="http://127.0.0.1:1/api/hooks", answer_wait_ms=45_500)
    for name in ("PermissionRequest", "Elicitation"):
        h = waiting[name]["hooks"][0]
        assert h["type"] == "command" and "async" not in h
        assert h["timeout"] == 46 + cs.HOOK_TIMEOUT_S
    assert waiting["PreToolUse"]["hooks"][0]["type"] == "http"
