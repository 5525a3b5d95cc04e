"""`make clean` must never delete ./data: it holds acknowledged events not yet shipped."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_clean_keeps_data_and_distclean_deletes_it(tmp_path):
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    for directory in (".venv/bin", "data/spool", "data/clickhouse", "ingestd/__pycache__", "x.egg-info"):
        (tmp_path / directory).mkdir(parents=True)
    (tmp_path / "data/spool/1-2-3.seg").write_text("an acknowledged event\n")
    subprocess.run(["make", "-s", "clean"], cwd=tmp_path, check=True, capture_output=True)
    assert (tmp_path / "data/spool/1-2-3.seg").exists() and (tmp_path / "data/clickhouse").is_dir()
    for gone in (".venv", "ingestd/__pycache__", "x.egg-info"):
        assert not (tmp_path / gone).exists(), gone
    subprocess.run(["make", "-s", "distclean"], cwd=tmp_path, check=True, capture_output=True)
    assert not (tmp_path / "data").exists()
