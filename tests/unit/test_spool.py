"""The spool's files without a server: group commit, sealing, accounting, repair of torn segments, the lock."""
from __future__ import annotations

import os

import orjson
import pytest

from ingestd.spool import Spool, SpoolBusy, lock_directory, recover, repair, sealed_segments


def row(i: int) -> bytes:
    return orjson.dumps(["e", i, "127.0.0.1", "ua", f"eventType=2&partnerId=1&eventIndex={i}", {}, [], {},
                         "", "", ""]) + b"\n"


def test_one_commit_is_one_append_and_the_bytes_are_counted(tmp_path):
    """Rows queued in one iteration land together; bytes_on_disk follows writes and the sink's releases."""
    spool = Spool(tmp_path)
    for i in range(10):
        spool.append(row(i))
    assert spool.commit() is True
    [open_segment] = tmp_path.glob("*.open")
    assert open_segment.read_bytes() == b"".join(row(i) for i in range(10))
    assert spool.commits == 1 and spool.bytes_on_disk == open_segment.stat().st_size
    spool.seal()
    [sealed] = sealed_segments(tmp_path)
    assert spool.bytes_on_disk == sealed.stat().st_size
    spool.release(sealed.stat().st_size)
    assert spool.bytes_on_disk == 0


def test_sealed_at_size_in_creation_order_and_reported(tmp_path):
    """A segment over segment_max_bytes is sealed on commit; names sort in the order written."""
    sealed = []
    spool = Spool(tmp_path, segment_max_bytes=len(row(0)) * 3, on_sealed=sealed.append)
    for i in range(9):
        spool.append(row(i))
        spool.commit()
    assert sealed == sealed_segments(tmp_path) and len(sealed) == 3
    assert b"".join(p.read_bytes() for p in sealed) == b"".join(row(i) for i in range(9))


def test_over_cap_and_soft_cap(tmp_path):
    spool = Spool(tmp_path, max_bytes=len(row(0)) * 4, segment_max_bytes=len(row(0)))
    assert not spool.over_soft_cap
    for i in range(2):
        spool.append(row(i))
        spool.commit()
    assert spool.over_soft_cap and not spool.over_cap
    for i in range(2):
        spool.append(row(i))
        spool.commit()
    assert spool.over_cap


def test_leftover_bytes_are_counted_on_start(tmp_path):
    first = Spool(tmp_path)
    first.append(row(1))
    first.commit()
    size = first.bytes_on_disk
    os.close(first._lock_fd)  # as if the process had died
    assert Spool(tmp_path).bytes_on_disk == size


@pytest.mark.parametrize("damage, kept_rows", [
    (b"", 3),  # a clean segment is left as it is
    (row(3)[:20], 3),  # half a row: a crash mid-write
    (b"\0" * 4096, 3),  # a zero-filled block: a power loss without fsync
    (b"\0" * 100 + b"\n" + row(3), 4),  # garbage line between whole rows
])
def test_repair_keeps_whole_rows_and_sets_the_rest_aside(tmp_path, damage, kept_rows):
    path = tmp_path / "0001-1-000001.open"
    path.write_bytes(b"".join(row(i) for i in range(3)) + damage)
    kept, set_aside = repair(path)
    assert path.read_bytes() == b"".join(row(i) for i in range(kept_rows))
    assert kept == path.stat().st_size
    torn = tmp_path / "failed" / "0001-1-000001.torn"
    assert set_aside == (torn.stat().st_size if damage else 0)


def test_recover_seals_open_segments_and_drops_empty_ones(tmp_path):
    (tmp_path / "0001-1-000001.open").write_bytes(row(1) + row(2)[:5])
    (tmp_path / "0002-1-000002.open").write_bytes(row(3)[:5])
    (tmp_path / "0003-1-000003.seg").write_bytes(row(4))
    assert [p.name for p in recover(tmp_path)] == ["0001-1-000001.seg", "0003-1-000003.seg"]
    assert (tmp_path / "0001-1-000001.seg").read_bytes() == row(1)


def test_one_process_per_spool_directory(tmp_path):
    spool = Spool(tmp_path)
    with pytest.raises(SpoolBusy):
        Spool(tmp_path)
    with pytest.raises(SpoolBusy):
        with lock_directory(tmp_path):
            pass
    os.close(spool._lock_fd)
    with lock_directory(tmp_path):
        pass


def test_fsync_interval_syncs_off_the_loop_and_leaks_no_descriptor(tmp_path):
    fds_before = len(os.listdir("/proc/self/fd"))
    spool = Spool(tmp_path, fsync_interval=0.01, segment_max_bytes=len(row(0)) * 2)
    for i in range(20):
        spool.append(row(i))
        spool.commit()
    spool.close()
    os.close(spool._lock_fd)
    assert len(sealed_segments(tmp_path)) == 10
    assert len(os.listdir("/proc/self/fd")) == fds_before


def test_new_segments_sort_after_leftovers_even_from_the_future(tmp_path):
    """A clock stepped back across a restart does not ship new segments before old ones."""
    leftover = tmp_path / "2999999999999999999-1-000001.seg"  # written "later" than now
    leftover.write_bytes(row(1))
    sealed = []
    spool = Spool(tmp_path, on_sealed=sealed.append)
    spool.append(row(2))
    spool.commit()
    spool.seal()
    assert sealed_segments(tmp_path) == [leftover, sealed[0]]
