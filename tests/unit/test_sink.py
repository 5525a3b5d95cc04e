"""The sink against the real embedded engine, without a server: durability order and splitting refused segments."""
from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from ingestd import clickhouse, sink
from ingestd.metrics import Metrics


def row(i: int, session: str) -> bytes:
    return orjson.dumps(["e", 1795700000000, "1.2.3.4", "ua",
                         f"eventType=3&partnerId=1&entryId=0_a&sessionId={session}&eventIndex={i}",
                         {}, [], {}, "", "", ""]) + b"\n"


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """One embedded ClickHouse for the module (one data directory per process), migrated."""
    data = tmp_path_factory.mktemp("ch")
    client = clickhouse.connect(f"chdb://{data}")
    clickhouse.migrate(client)
    yield data, client
    client.close()


def stored(client, session: str) -> int:
    return client.query(f"SELECT count() FROM analytics.events WHERE session_id = '{session}'").result_rows[0][0]


def test_fsync_interval_flushes_the_engine_before_deleting_a_shipped_segment(engine, tmp_path, monkeypatch):
    """With sync_inserts the engine's filesystem is synced once per segment, while the segment still exists."""
    data, client = engine
    spool = tmp_path / "spool"
    spool.mkdir()
    segment = spool / "0000000000000000001-1-000001.seg"
    segment.write_bytes(b"".join(row(i, "sync") for i in range(50)))
    calls = []
    real = sink.sync_filesystem

    def recording(directory):
        calls.append((Path(directory), segment.exists(), stored(client, "sync")))
        real(directory)

    monkeypatch.setattr(sink, "sync_filesystem", recording)
    thread = sink.Sink(f"chdb://{data}", [spool], Metrics(), sync_inserts=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while segment.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        thread.stop()
        thread.join(30)
    assert not segment.exists()
    assert calls == [(data.resolve(), True, 50)]  # after the insert, before the delete, once


def test_only_the_embedded_engine_is_synced():
    """A server DSN keeps ClickHouse's own durability; --fsync never syncs nothing."""
    assert not sink.Sink("http://127.0.0.1:1/", [], Metrics(), sync_inserts=True).sync_inserts
    assert not sink.Sink("chdb:///nonexistent", [], Metrics(), sync_inserts=False).sync_inserts
    assert sink.Sink("chdb:///nonexistent", [], Metrics(), sync_inserts=True).sync_inserts


def test_sync_filesystem_flushes_a_real_directory(tmp_path):
    sink.sync_filesystem(tmp_path)
    with pytest.raises(OSError):
        sink.sync_filesystem(tmp_path / "missing")


def test_a_refused_segment_with_bad_rows_spread_out_keeps_every_good_row(engine, tmp_path):
    """Breadth-first halving isolates 8 bad rows among 2048; a second shipping of it inserts nothing twice."""
    _, client = engine
    bad = b'["e","not-a-number"]\n'
    rows = [row(i, "split") for i in range(2048)]
    for k in range(8):
        rows[k * 256 + 7] = bad
    name = "0000000000000000002-1-000001.seg"
    for attempt in range(2):  # the same segment again (a crash before the delete): deduplicated
        spool = tmp_path / f"spool{attempt}"
        spool.mkdir()
        segment = spool / name
        segment.write_bytes(b"".join(rows))
        metrics = Metrics()
        assert sink.ship_or_quarantine(client, segment, metrics) == 2040
        assert not segment.exists()
        assert (spool / "failed" / name).read_bytes() == bad * 8
        assert metrics.segments_quarantined == 1
        assert stored(client, "split") == 2040
