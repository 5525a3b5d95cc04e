"""ClickHouse outages, `ingestd replay`, replays of the same segments, and torn segment tails."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time

from conftest import REPO, Ingestd, free_port, query_direct
from durability_load import (
    PARTNER_ID, STORED_KEYS_SQL, check_exactly_once, ingestd_cli, run_load, spool_files, spooled_keys, stored_via_admin,
    wait_drained,
)

DRAIN_TIMEOUT = 2.0


def dead_clickhouse() -> str:
    """A DSN nothing listens on."""
    return f"http://127.0.0.1:{free_port()}"


def spool_while_clickhouse_down(tmp_path, beacons: int, session: str):
    """Serve with ClickHouse unreachable, send `beacons`, stop: (load result, spool dir, stop seconds).

    Runs with --fsync interval, so the background fdatasync path is exercised end to end too.
    """
    server = Ingestd(tmp_path, "--drain-timeout", str(DRAIN_TIMEOUT), "--segment-max-bytes", "256K",
                     "--fsync", "interval", "--fsync-interval-ms", "20", clickhouse=dead_clickhouse())
    server.start(wait_clickhouse=False)
    try:
        result = run_load(server.port, beacons, connections=16, session=session)
        assert len(result.acked) == beacons, (result.refused, result.connection_errors)
        metrics = server.metrics()
        assert metrics["ingestd_clickhouse_connected"] == 0
        assert metrics["ingestd_spool_bytes"] > 0
        # A 200 means on disk: every acknowledged beacon is in a segment file right now.
        assert result.acked <= spooled_keys(server.spool)
        started = time.monotonic()
        code = server.stop()
        stop_seconds = time.monotonic() - started
    finally:
        server.kill()
    assert code == 0, server.log_text()[-2000:]
    return result, server.spool, stop_seconds


def test_unreachable_clickhouse_then_replay_twice_stores_each_event_once(tmp_path):
    """Beacons get 200 while ClickHouse is down; `ingestd replay` of the spool and of a copy stores each once."""
    result, spool, stop_seconds = spool_while_clickhouse_down(tmp_path, 3000, "outage")
    assert stop_seconds < DRAIN_TIMEOUT  # the drain gave up on the unreachable ClickHouse at once
    segments = spool_files(spool)
    assert segments and all(p.suffix == ".seg" for p in segments)  # sealed on shutdown
    copy = tmp_path / "spool-copy"
    shutil.copytree(spool, copy)
    dsn = f"chdb://{tmp_path / 'replayed'}"

    down = ingestd_cli("replay", "--spool", str(spool), "--clickhouse", dead_clickhouse())
    assert down.returncode == 1 and "replay stopped" in down.stderr and "run it again" in down.stderr
    assert spool_files(spool) == segments  # nothing lost or moved by the failed attempt
    first = ingestd_cli("replay", "--spool", str(spool), "--clickhouse", dsn)
    assert first.returncode == 0, first.stderr
    assert f"replayed {len(segments)} segment(s), 3000 row(s)" in first.stdout
    assert spool_files(spool) == []
    second = ingestd_cli("replay", "--spool", str(copy), "--clickhouse", dsn)
    assert second.returncode == 0, second.stderr
    assert spool_files(copy) == []

    stored = query_direct(dsn, STORED_KEYS_SQL)
    assert check_exactly_once(stored, result) == 0
    assert query_direct(dsn, "SELECT count() FROM analytics.events")[0][0] == 3000


def test_replay_refuses_a_spool_a_running_server_owns(tmp_path):
    """`ingestd replay` on a live server's spool would ship its open segment twice: it refuses."""
    server = Ingestd(tmp_path, clickhouse=dead_clickhouse()).start(wait_clickhouse=False)
    try:
        assert server.get("/collect?eventType=2&partnerId=1&entryId=0_x")[0] == 200
        done = ingestd_cli("replay", "--spool", str(server.spool), "--clickhouse", f"chdb://{tmp_path / 'x'}")
        assert done.returncode == 1
        assert "in use by another ingestd process" in done.stderr
        assert len(spool_files(server.spool)) == 1  # the open segment was not touched
    finally:
        assert server.stop() == 0


def test_clickhouse_unavailable_at_start_then_migrated_and_shipped(tmp_path):
    """ingestd serves before its ClickHouse can be opened; once it can, migrations run and the spool ships."""
    data = tmp_path / "ch"
    holder = subprocess.Popen(  # another process holds the embedded database: ingestd cannot open it
        [sys.executable, "-c", "import sys, clickhouse_connect; c = clickhouse_connect.get_client("
         f"dsn='chdb://{data}'); print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        server = Ingestd(tmp_path, "--segment-max-age-ms", "200").start(wait_clickhouse=False)
        result = run_load(server.port, 500, connections=16, session="late")
        assert len(result.acked) == 500
        assert server.metrics()["ingestd_clickhouse_connected"] == 0
        assert server.wait_metric("ingestd_ship_failures_total", 1)
        assert server.get("/collect?eventType=2&partnerId=1&entryId=0_x")[0] == 200
    finally:
        holder.stdin.close()
        holder.wait(30)
    try:
        server.wait_metric("ingestd_clickhouse_connected", 1, timeout=30)
        wait_drained(server)
        assert server.query("SELECT version FROM analytics.schema_migrations WHERE version LIKE '001_%'")
        assert check_exactly_once(stored_via_admin(server), result) == 0
    finally:
        assert server.stop() == 0


def test_segments_shipped_but_not_deleted_before_a_kill_are_not_inserted_twice(tmp_path):
    """The crash window between ClickHouse's confirmation and the segment's deletion stores nothing twice."""
    result, spool, _ = spool_while_clickhouse_down(tmp_path, 2000, "window")
    backup = tmp_path / "shipped-segments"
    shutil.copytree(spool, backup)
    server = Ingestd(tmp_path).start()
    try:
        wait_drained(server)
        assert check_exactly_once(stored_via_admin(server), result) == 0
        # Every table a shipment lands in (through materialized views too) must drop a repeated token.
        tables = server.query("SELECT name, engine, engine_full FROM system.tables WHERE database = 'analytics' "
                              "AND engine LIKE '%MergeTree%' AND name != 'schema_migrations'")
        assert {t["name"] for t in tables} >= {"events", "rejected_events"}
        for table in tables:
            assert (table["engine"].startswith("Replicated")
                    or "non_replicated_deduplication_window" in table["engine_full"]), (
                f"analytics.{table['name']} lacks SETTINGS non_replicated_deduplication_window: "
                "a segment shipped again after a crash would be counted twice there")
        server.kill()  # kill -9 right after the inserts were confirmed
        for path in spool_files(backup):  # ... as if it had died before deleting the segments
            shutil.copy(path, spool / path.name)
        server.start()
        wait_drained(server)
        assert server.metrics()["ingestd_rows_shipped_total"] == 2000  # shipped again, kept once
        assert check_exactly_once(stored_via_admin(server), result) == 0
        # ... and counted once by the aggregates the reports read (fed by materialized views).
        plays = server.query(f"SELECT sum(plays) AS n FROM analytics.entry_hourly WHERE partner_id = {PARTNER_ID}")
        assert int(plays[0]["n"]) == 2000
    finally:
        assert server.stop() == 0


def test_torn_tail_is_cut_and_set_aside_never_shipped(tmp_path):
    """Half a row at the end of an open segment (a crash mid-write) is set aside; the whole rows ship.

    A sealed segment ClickHouse refuses for good is moved to failed/ (counted, logged), never deleted,
    and does not hold up the segments after it.
    """
    result, spool, _ = spool_while_clickhouse_down(tmp_path, 1000, "torn")
    refused = spool / "0000000000000000001-1-000001.seg"  # sorts first: shipped before the others
    good = (b'["e",%d,"127.0.0.1","ua","eventType=2&partnerId=%d&entryId=0_x&sessionId=mixed&eventIndex=%d",'
            b'{},[],{},"","",""]\n')
    bad = b'["e","not a number","127.0.0.1","ua","eventType=2",{},[],{},"","",""]\n'
    now_ms = int(time.time() * 1000)
    refused.write_bytes(good % (now_ms, PARTNER_ID, 0) + bad + good % (now_ms, PARTNER_ID, 1))
    result.acked |= {("mixed", 0), ("mixed", 1)}  # the good rows of a refused segment are inserted
    last = spool_files(spool)[-1]
    lines = last.read_bytes().splitlines(keepends=True)
    torn = last.with_suffix(".open")
    last.rename(torn)
    half = lines[-1][: len(lines[-1]) // 2]
    with open(torn, "ab") as f:
        f.write(half)
    server = Ingestd(tmp_path).start()
    try:
        wait_drained(server)
        metrics = server.metrics()
        assert metrics["ingestd_segments_quarantined_total"] == 1  # the refused one; none from the torn tail
        assert (spool / "failed" / refused.name).read_bytes() == bad  # only the bad row is set aside
        assert "refused segment 0000000000000000001-1-000001.seg for good: 1 row(s)" in server.log_text()
        assert check_exactly_once(stored_via_admin(server), result) == 0
        assert server.query("SELECT count() AS n FROM analytics.rejected_events")[0]["n"] in (0, "0")
        assert (spool / "failed" / (torn.name.split(".")[0] + ".torn")).read_bytes() == half
        assert "set aside" in server.log_text()
    finally:
        assert server.stop() == 0


def test_replay_ships_every_worker_spool_of_a_workers_layout(tmp_path):
    """`ingestd replay` of a --workers spool (SPOOL/w0, SPOOL/w1) ships all of it, each event once."""
    server = Ingestd(tmp_path, "--workers", "2", "--drain-timeout", str(DRAIN_TIMEOUT), "--segment-max-bytes", "64K",
                     clickhouse=dead_clickhouse())
    server.start(wait_clickhouse=False)
    try:
        result = run_load(server.port, 1000, connections=16, session="workers")  # connections spread over both
        assert len(result.acked) == 1000, (result.refused, result.connection_errors)
        assert server.stop() == 0
    finally:
        server.kill()
    spool = server.spool
    assert list(spool.glob("*.seg")) == []
    assert (spool / "w0").is_dir() and (spool / "w1").is_dir()
    segments = spool_files(spool / "w0") + spool_files(spool / "w1")
    assert spool_files(spool / "w0") and spool_files(spool / "w1")
    dsn = f"chdb://{tmp_path / 'replayed'}"
    done = ingestd_cli("replay", "--spool", str(spool), "--clickhouse", dsn)
    assert done.returncode == 0, done.stderr
    assert f"replayed {len(segments)} segment(s), 1000 row(s)" in done.stdout
    assert spool_files(spool / "w0") == spool_files(spool / "w1") == []
    assert check_exactly_once(query_direct(dsn, STORED_KEYS_SQL), result) == 0
