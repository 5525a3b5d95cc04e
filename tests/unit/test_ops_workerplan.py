"""--workers planning without processes: who ships which spool directory, and leftovers from other runs."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from ingestd.config import Settings
from ingestd.spool import acquire_lock
from ingestd.workers import leftover_spools, plan_shipping


def test_embedded_engine_owner_ships_every_spool_and_leftovers(tmp_path):
    root = tmp_path / "spool"
    (root / "w5").mkdir(parents=True)  # from an earlier run with more workers
    (root / "w5" / "1-2-000001.open").write_bytes(b'["e"]\n["half')  # a torn open segment
    (root / "failed").mkdir()  # quarantine, not a worker's spool
    settings = dataclasses.replace(Settings(), spool=str(root), workers=3, clickhouse=f"chdb://{tmp_path}/ch")
    plan = plan_shipping(settings)
    assert plan == [[root / "w0", root / "w1", root / "w2", root, root / "w5"], [], []]
    assert sorted(p.name for p in (root / "w5").glob("*.*")) == [".lock", "1-2-000001.seg"]  # sealed, locked
    assert (root / "w5" / "1-2-000001.seg").read_bytes() == b'["e"]\n'  # the torn tail set aside


def test_server_dsn_each_worker_ships_its_own(tmp_path):
    root = tmp_path / "spool"
    settings = dataclasses.replace(Settings(), spool=str(root), workers=2, clickhouse="https://ch.example:8443/")
    assert plan_shipping(settings) == [[root / "w0", root], [root / "w1"]]


def test_single_process_ships_what_workers_left(tmp_path):
    root = tmp_path / "spool"
    for name in ("w0", "w1", "w12", "wx"):
        (root / name).mkdir(parents=True)
    assert leftover_spools(root, keep=0) == [root / "w0", root / "w1", root / "w12"]
    assert leftover_spools(Path(tmp_path / "absent"), keep=0) == []


def test_a_spool_another_process_holds_is_not_taken(tmp_path):
    root = tmp_path / "spool"
    (root / "w3").mkdir(parents=True)
    (root / "w4").mkdir()
    held = acquire_lock(root / "w3")  # what a live worker of another ingestd holds
    try:
        assert leftover_spools(root, keep=0) == [root / "w4"]
    finally:
        os.close(held)
