"""``service install|uninstall``: the systemd user unit is written, valid, and removed."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from conftest import clean_env
from helpers import run_cli


def analyze(path) -> subprocess.CompletedProcess:
    """``systemd-analyze verify`` as the user manager would load it; in a container with no
    user manager, the system one checks the same syntax and directives."""
    p = subprocess.run(["systemd-analyze", "verify", "--user", str(path)], capture_output=True, text=True, timeout=60)
    if p.returncode != 0 and "Failed to initialize manager" in p.stderr:
        p = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
    return p


def test_unit_written_valid_and_removed(home, tmp_path):
    env = clean_env(str(tmp_path / "my home"), HOME=str(tmp_path), XDG_CONFIG_HOME="")
    env.pop("XDG_CONFIG_HOME")

    def run(*a):
        return run_cli("service", *a, env=env)

    r = run("install", "--no-start")
    assert r.returncode == 0, r.stderr
    unit = tmp_path / ".config" / "systemd" / "user" / "contextuate-trio.service"
    text = unit.read_text()
    assert f"ExecStart={sys.executable} -m contextuate_trio start --foreground" in text
    assert "Restart=on-failure" in text and "StandardOutput=journal" in text
    assert f'Environment="CONTEXTUATE_HOME={tmp_path}/my home"' in text
    assert "WantedBy=default.target" in text
    assert "already up to date" in run("install", "--no-start").stdout

    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here")
    p = analyze(unit)
    assert p.returncode == 0, p.stderr
    broken = tmp_path / "broken.service"
    broken.write_text(text.replace("ExecStart=", "ExecStart=relative/python "))
    assert analyze(broken).returncode != 0  # the check is not a no-op

    r = run("uninstall")
    assert r.returncode == 0 and not unit.exists()
    assert "nothing to remove" in run("uninstall").stdout
