"""A pipx-style install: the wheel into a fresh virtualenv, no clone anywhere at run
time; the installed ``contextuate-trio`` runs the daemon, wires Claude Code to the hook
inside the installed package, and that hook delivers an event through ``sh -c``."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
from conftest import ROOT, clean_env, free_port

from contextuate_trio.cli import hooks as cs


def sh(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=kw.pop("timeout", 120), **kw)


def test_wheel_in_a_fresh_venv_runs_daemon_and_hook():
    tmp = tempfile.mkdtemp(prefix="ct-inst-")
    try:
        # A copy of what a clone holds (building in the repo would leave build/ behind).
        src = os.path.join(tmp, "src")
        os.makedirs(src)
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(ROOT / name, src)
        shutil.copytree(
            ROOT / "contextuate_trio",
            os.path.join(src, "contextuate_trio"),
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
        r = sh(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", os.path.join(tmp, "wheels"), src)
        assert r.returncode == 0, r.stderr[-3000:]
        wheel = glob.glob(os.path.join(tmp, "wheels", "*.whl"))[0]
        shutil.rmtree(src)  # no clone from here on

        venv = os.path.join(tmp, "venv")
        assert sh(cs.real_python(), "-m", "venv", venv).returncode == 0
        r = sh(os.path.join(venv, "bin", "pip"), "install", "-q", wheel, timeout=300)
        if r.returncode != 0 and ("No matching distribution" in r.stderr or "connection" in r.stderr.lower()):
            pytest.skip(f"the dependencies could not be downloaded: {r.stderr[-500:]}")
        assert r.returncode == 0, r.stderr[-3000:]

        exe = os.path.join(venv, "bin", "contextuate-trio")
        home = os.path.join(tmp, "h")
        user = os.path.join(tmp, "user")
        run_dir = os.path.join(tmp, "elsewhere")
        os.makedirs(user)
        os.makedirs(run_dir)
        port = free_port()
        env = clean_env(home, HOME=user, PATH=f"{os.path.join(venv, 'bin')}:/usr/bin:/bin")
        env.pop("PYTHONPATH", None)
        assert sh(exe, "init", env=env, cwd=run_dir).returncode == 0
        with open(os.path.join(home, "monitor.config.json")) as f:
            cfg = json.load(f)
        cfg["server"].update(port=port, wsPort=free_port())
        with open(os.path.join(home, "monitor.config.json"), "w") as f:
            json.dump(cfg, f)

        r = sh(exe, "start", env=env, cwd=run_dir, timeout=60)
        assert r.returncode == 0, r.stderr + r.stdout
        try:
            r = sh(exe, "hooks", "install", env=env, cwd=run_dir)
            assert r.returncode == 0, r.stderr
            with open(os.path.join(user, ".claude", "settings.json")) as f:
                cmd = cs.describe(json.load(f))["ours"]["Stop"][0]["command"]
            _, words = cs.command_parts(cmd)
            assert words[-1].startswith(venv + "/lib/") and words[-1].endswith("contextuate_trio/hook_emit.py")
            assert str(ROOT) not in cmd

            payload = {"session_id": "installed-1", "hook_event_name": "Stop", "cwd": run_dir}
            p = subprocess.run(
                ["sh", "-c", cmd],
                input=json.dumps(payload).encode(),
                cwd=run_dir,
                env={"PATH": "/usr/bin:/bin", "HOME": user},
                capture_output=True,
                timeout=20,
            )
            assert p.returncode == 0 and p.stdout == b"", p
            deadline = time.monotonic() + 10
            while True:
                r = sh(exe, "status", "--json", env=env, cwd=run_dir)
                st = json.loads(r.stdout)
                if st["eventsStored"] >= 1 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert st["eventsStored"] == 1 and st["status"] == "ok"
            r = sh(exe, "doctor", env=env, cwd=run_dir)
            assert "✘" not in r.stdout, r.stdout
            r = sh(exe, "demo", "--fast", env=env, cwd=run_dir)  # its data ships in the wheel
            assert r.returncode == 0, r.stderr
        finally:
            assert sh(exe, "stop", env=env, cwd=run_dir).returncode == 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
