"""Deployment files: the systemd unit passes `systemd-analyze verify` and has the settings an
operator relies on; the install script parses; the three-node sample configs are accepted by
the broker and agree with each other."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from sluice_broker import REPO, sluice_binary

DEPLOY = REPO / "scripts" / "deploy"
UNIT = DEPLOY / "sluice.service"


def unit_settings(text: str) -> dict[str, list[str]]:
    """[Service]/[Unit]/[Install] assignments as key -> values (keys may repeat)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        k, _, v = line.partition("=")
        out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze missing in CI (.ci/run installs systemd)")
        pytest.skip("systemd-analyze not installed")
    # The unit names the installed path; point it at the binary under test so verify can
    # check that every Exec* command exists and is executable.
    text = UNIT.read_text().replace("/usr/local/bin/sluice", str(sluice_binary()))
    unit = tmp_path / "sluice.service"
    unit.write_text(text)
    r = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    # Unknown keys and bad values are only warnings for verify: any output is a defect.
    own = [l for l in (r.stdout + r.stderr).splitlines() if "sluice.service" in l]
    assert own == [], own


def test_unit_settings():
    s = unit_settings(UNIT.read_text())
    assert s["Restart"] == ["on-failure"]
    assert s["User"] == ["sluice"]
    assert s["LimitMEMLOCK"] == ["infinity"]
    assert int(s["LimitNOFILE"][0]) >= 100_000
    # The broker drains for up to 30 s, then flushes and closes every partition.
    assert int(s["TimeoutStopSec"][0]) >= 60
    assert s["KillSignal"] == ["SIGTERM"]
    # Sluice does not reload on SIGHUP, so the unit must not pretend it does.
    assert "ExecReload" not in s
    assert any(v.endswith("--config /etc/sluice/sluice.toml") for v in s["ExecStart"])


def test_install_script_parses():
    r = subprocess.run(["bash", "-n", str(DEPLOY / "install.sh")], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["bash", str(DEPLOY / "install.sh"), "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "--no-build" in r.stdout


def test_three_node_sample_configs_agree():
    nodes = {}
    for n in (1, 2, 3):
        nodes[n] = tomllib.loads((DEPLOY / "three-node" / f"node{n}.toml").read_text())
    def get(n, key):
        # TOML dotted keys nest: node.id = 1 is {"node": {"id": 1}}.
        cur = nodes[n]
        for part in key.split("."):
            cur = cur[part]
        return cur

    voters = {get(n, "controller.quorum.voters") for n in nodes}
    assert len(voters) == 1, "every node must list the same controller quorum"
    parsed = dict(v.split("@") for v in voters.pop().split(","))
    assert set(parsed) == {"1", "2", "3"}
    for n in nodes:
        assert get(n, "node.id") == n
        host = re.match(r"PLAINTEXT://([^:]+):\d+$", get(n, "listeners")).group(1)
        assert get(n, "advertised.listeners").startswith(f"PLAINTEXT://{host}:")
        assert parsed[str(n)].startswith(f"{host}:"), "a node's voter entry is its own host"
        assert get(n, "admin.listener").startswith(f"{host}:")
        assert get(n, "log.dirs") == "/var/lib/sluice/data"


@pytest.mark.parametrize("n", [1, 2, 3])
def test_broker_accepts_three_node_config(tmp_path, n):
    """The broker resolves the sample config (bad keys or values would exit before the check
    runs); `check` then reports on the host as JSON."""
    r = subprocess.run(
        [str(sluice_binary()), "--config", str(DEPLOY / "three-node" / f"node{n}.toml"),
         "--data-dir", str(tmp_path / "data"), "check", "--output", "json"],
        capture_output=True, text=True, timeout=30,
    )
    assert r.returncode in (0, 1), r.stderr
    doc = json.loads(r.stdout)
    assert any(c["name"] == "data_dir" for c in doc["checks"])
