"""The systemd unit: `systemd-analyze verify` passes and `security --offline=yes` rates it OK (<= 4.0)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

UNIT = REPO / "systemd" / "ingestd.service"
INSTALLED_BINARY = "/opt/ingestd/.venv/bin/ingestd"
MAX_EXPOSURE = 4.0


@pytest.fixture(scope="module")
def analyze() -> str:
    """systemd-analyze, installed from Debian's systemd package when missing."""
    found = shutil.which("systemd-analyze")
    if found:
        return found
    if not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.skip("systemd-analyze is missing and apt-get cannot install it here (needs Debian and root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, timeout=300, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "systemd"], check=True, env=env,
                   timeout=600, capture_output=True)
    found = shutil.which("systemd-analyze")
    if not found:
        pytest.skip("installing Debian's systemd package did not provide systemd-analyze")
    return found


def unit_copy(tmp_path: Path, text: str | None = None) -> Path:
    """The unit with ExecStart pointing at this checkout's ingestd (verify needs the binary to exist)."""
    binary = Path(sys.executable).parent / "ingestd"
    if not binary.exists():
        pytest.skip(f"{binary} missing: run `make install` first")
    text = (text or UNIT.read_text()).replace(INSTALLED_BINARY, str(binary))
    path = tmp_path / "ingestd.service"
    path.write_text(text)
    return path


def test_unit_names_the_documented_install_path():
    assert f"ExecStart={INSTALLED_BINARY} serve" in UNIT.read_text()


def test_verify_passes(analyze, tmp_path):
    result = subprocess.run([analyze, "verify", str(unit_copy(tmp_path))], capture_output=True, text=True,
                            timeout=60)
    complaints = [line for line in result.stderr.splitlines() if "ingestd.service" in line]
    assert result.returncode == 0 and not complaints, result.stderr


def test_verify_catches_a_broken_unit(analyze, tmp_path):
    """The check above can fail: a misspelt type is refused."""
    broken = unit_copy(tmp_path, UNIT.read_text().replace("Type=notify", "Type=notifyy"))
    result = subprocess.run([analyze, "verify", str(broken)], capture_output=True, text=True, timeout=60)
    assert "notifyy" in result.stderr


def test_security_exposure_is_ok(analyze, tmp_path):
    result = subprocess.run([analyze, "security", "--offline=yes", "--no-pager", str(unit_copy(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for ingestd\.service: ([\d.]+) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    exposure = float(match.group(1))
    print(f"systemd-analyze security: exposure {exposure} {match.group(2)}")
    assert exposure <= MAX_EXPOSURE, result.stdout


def test_example_configuration_puts_state_in_the_state_directory():
    """/etc/ingestd/ingestd.toml as shipped loads, and keeps spool and database under StateDirectory=."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTD_")}
    env.update(PYTHONPATH=str(REPO), INGESTD_CONFIG=str(REPO / "systemd" / "ingestd.toml"))
    out = subprocess.run([sys.executable, "-m", "ingestd", "serve", "--print-config"], capture_output=True,
                         text=True, env=env, timeout=60, check=True).stdout
    assert '"spool": "/var/lib/ingestd/spool"' in out
    assert '"clickhouse": "chdb:///var/lib/ingestd/clickhouse"' in out
    assert "StateDirectory=ingestd" in UNIT.read_text()
