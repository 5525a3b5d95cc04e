"""The ClickHouse writer: a thread that ships sealed spool segments, oldest first, exactly once.

Owns its own clickhouse-connect client (the chDB backend serialises calls per client). Each
segment is one insert of its own bytes (JSONCompactEachRow) with insert_deduplication_token =
segment name, so a replay after a crash is the same insert and ClickHouse drops the duplicate.
A segment is deleted only after ClickHouse confirmed it; on a transient error it is retried with
capped exponential backoff; rows ClickHouse can never accept are set aside in failed/, not deleted.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import threading
import time
from pathlib import Path

from . import clickhouse
from .spool import QUARANTINE_DIR, lock_directory, quarantine, recover, sealed_segments
from .workers import WORKER_DIR

log = logging.getLogger("ingestd.sink")

INCOMING_TABLE = "analytics.events_incoming"
FORMAT = "JSONCompactEachRow"
BACKOFF_FIRST = 0.2  # seconds
BACKOFF_MAX = 30.0  # a ClickHouse restart takes seconds; retry at least twice a minute
# Inserts spent finding the bad rows of a refused segment; what is still untried is set aside. Isolating
# k bad rows among n takes about 2k·log2(n/k) inserts, so the budget grows with the rows; it is capped
# because each insert makes a part (a server refuses inserts past `parts_to_throw_insert`).
SPLIT_INSERTS_MIN = 64
SPLIT_ROWS_PER_INSERT = 16  # 4096 rows with 16 bad ones spread out need ~290 inserts: 64 + 256
SPLIT_INSERTS_MAX = 1024
IDLE_POLL_SECONDS = 0.5  # look at the directory this often even without a wake-up (e.g. segments copied in)

# ClickHouse error codes that will fail the same way on every retry: bad data or schema.
PERMANENT_ERROR_CODES = {
    6, 26, 27, 32, 33, 38, 41, 53, 62, 69, 70, 72, 117, 130, 131, 169, 190, 349,
}


def sync_filesystem(directory: Path) -> None:
    """Flush every dirty page of the filesystem holding `directory` to disk: syncfs(2), or sync(2).

    The embedded engine writes its parts without fsync: until this returns, a confirmed insert
    is in the page cache only, and its segment must stay on disk for a power loss to lose nothing.
    """
    syncfs = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
    if syncfs is None:
        os.sync()
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs {directory}: {os.strerror(err)}")
    finally:
        os.close(fd)


def error_code(exc: BaseException) -> int | None:
    """The ClickHouse error code in an exception's text ('Code: 117. DB::Exception…'), if any."""
    text = str(exc)
    marker = text.find("Code: ")
    if marker < 0:
        return None
    digits = ""
    for ch in text[marker + 6:]:
        if not ch.isdigit():
            break
        digits += ch
    return int(digits) if digits else None


def is_permanent(exc: BaseException) -> bool:
    return error_code(exc) in PERMANENT_ERROR_CODES


def insert(client, data: bytes, token: str) -> None:
    """One insert of spool rows as they are on disk; `token` makes a repeat of it a no-op."""
    if data:
        settings = dict(clickhouse.INSERT_SETTINGS, insert_deduplication_token=token)
        client.raw_insert(INCOMING_TABLE, None, data, settings=settings, fmt=FORMAT)


def ship_segment(client, path: Path) -> int:
    """Insert one segment; return its row count. Raises what ClickHouse raised."""
    data = path.read_bytes()
    insert(client, data, path.stem)
    return data.count(b"\n")


def split_budget(rows: int) -> int:
    """How many inserts may be spent splitting a refused segment of `rows` rows."""
    return min(SPLIT_INSERTS_MIN + rows // SPLIT_ROWS_PER_INSERT, SPLIT_INSERTS_MAX)


def ship_refused(client, rows: list[bytes], token: str, budget: int) -> tuple[int, list[bytes]]:
    """Insert what ClickHouse accepts of `rows` it refused as a whole, halving the refused parts
    breadth first (every half of one size is tried before any smaller one) for up to `budget` inserts.

    Returns (rows inserted, rows refused, in their order). The halves' tokens derive from `token` and
    the split is the same every time, so shipping the segment again after a crash inserts nothing
    twice. Transient errors propagate (the segment stays and is retried).
    """
    shipped, refused = 0, []  # refused: (start, end) ranges of rows
    level = [(0, len(rows), token)]  # parts refused as a whole, to be halved
    while level:
        below = []
        for start, end, part_token in level:
            if end - start < 2 or budget <= 0:
                refused.append((start, end))
                continue
            middle = (start + end) // 2
            for i, (lo, hi) in enumerate(((start, middle), (middle, end))):
                budget -= 1
                try:
                    insert(client, b"".join(rows[lo:hi]), f"{part_token}.{i}")
                    shipped += hi - lo
                except Exception as exc:
                    if not is_permanent(exc):
                        raise
                    below.append((lo, hi, f"{part_token}.{i}"))
        level = below
    return shipped, [row for start, end in sorted(refused) for row in rows[start:end]]


class Sink(threading.Thread):
    """Ships every sealed segment under `directories` until stopped; connects and migrates first."""

    def __init__(self, dsn: str, directories: list[Path], metrics, *, release=None, migrate: bool = True,
                 hold: threading.Event | None = None, sync_inserts: bool = False):
        """sync_inserts (--fsync interval): with the embedded engine, flush its data directory's
        filesystem after each insert and before deleting the segment (a server keeps its own durability)."""
        super().__init__(name="ingestd-sink", daemon=True)
        self.dsn = dsn
        data_dir = clickhouse.chdb_path(dsn)
        self.sync_inserts = sync_inserts and data_dir is not None
        self.data_dir = data_dir
        self.directories = [Path(d) for d in directories]
        self.metrics = metrics
        self.release = release or (lambda size: None)
        self.migrate = migrate
        self.hold = hold  # while set, nothing is shipped (the benchmark's collector-only window)
        self.wake = threading.Event()  # a segment was sealed
        self.retry_now = threading.Event()  # cut a backoff short (shutdown drain)
        self.stopping = threading.Event()
        self.connected = threading.Event()  # a client is open and migrated
        self.healthy = False  # ... and the last attempt to use it succeeded
        self.client = None
        self.last_error: str | None = None
        self.backlog_segments = 0
        self.last_shipped_at = 0.0
        # The startup replay: segments a previous process left, shipped before any new one.
        leftovers = self.pending()
        self.replay_last = leftovers[-1].name if leftovers else ""
        self.replay_left = len(leftovers)

    # -- lifecycle ----------------------------------------------------------------------------------
    def notify(self, path=None) -> None:
        """Called by the spool when a segment is sealed."""
        self.wake.set()

    def stop(self) -> None:
        """Called on shutdown after `drain`: finish the current insert, then end the thread."""
        self.stopping.set()
        self.wake.set()
        self.retry_now.set()

    def drain(self, timeout: float) -> bool:
        """Ship every sealed segment within `timeout`; True when nothing is left.

        Gives up early when an attempt made during the drain fails (ClickHouse down): the
        segments stay in the spool for the next start, and the shutdown is not held up.
        """
        deadline = time.monotonic() + timeout
        failures = self.metrics.ship_failures
        self.wake.set()
        self.retry_now.set()
        while time.monotonic() < deadline:
            if not self.pending():
                return True
            if self.metrics.ship_failures > failures:
                return False
            time.sleep(0.02)
        return not self.pending()

    def pending(self) -> list[Path]:
        """Sealed segments waiting, oldest first."""
        return sorted((p for d in self.directories for p in sealed_segments(d)), key=lambda p: p.name)

    @property
    def replaying(self) -> bool:
        """True while leftovers of a previous process are being shipped (ClickHouse is reachable)."""
        return self.replay_left > 0 and self.connected.is_set()

    # -- the thread ---------------------------------------------------------------------------------
    def run(self) -> None:
        backoff = BACKOFF_FIRST
        while not self.stopping.is_set():
            try:
                if self.client is None:
                    self._connect()
                if self.hold is not None and self.hold.is_set():
                    # not wake.wait: every seal sets wake, and a set wake would make this loop spin
                    self.stopping.wait(0.1)
                    continue
                self.wake.clear()  # before listing: a segment sealed from now on wakes the next pass
                shipped = self.ship_pending()
                self.healthy = True
                backoff = BACKOFF_FIRST
                if not shipped:
                    self.wake.wait(IDLE_POLL_SECONDS)
            except Exception as exc:  # noqa: BLE001 - every failure is retried or quarantined below
                self.metrics.ship_failures += 1
                self.healthy = False
                self.last_error = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
                log.warning("ClickHouse not reachable or insert failed (retry in %.1fs): %s",
                            backoff, self.last_error)
                if self.client is not None and not self.connected.is_set():
                    self._close_client()
                self.retry_now.wait(backoff)
                self.retry_now.clear()
                backoff = min(backoff * 2, BACKOFF_MAX)
        self._close_client()

    def _connect(self) -> None:
        client = clickhouse.connect(self.dsn)
        try:
            if self.migrate:
                clickhouse.migrate(client)
        except Exception:
            client.close()
            raise
        if clickhouse.chdb_path(self.dsn) is not None:  # the engine is started: drop its start-up pages
            log.debug("released %d MiB of start-up library pages", clickhouse.release_startup_pages() >> 20)
        self.client = client
        self.connected.set()
        self.healthy = True
        self.last_error = None
        log.info("connected to ClickHouse %s", clickhouse.redact(self.dsn))

    def _close_client(self) -> None:
        if self.client is not None:
            try:
                self.client.close()
            except Exception:  # noqa: BLE001
                pass
            self.client = None
            self.connected.clear()

    def ship_pending(self) -> int:
        """Ship what is sealed now, oldest first; return how many segments were shipped."""
        segments = self.pending()
        self.backlog_segments = len(segments)
        self.replay_left = sum(1 for p in segments if p.name <= self.replay_last)
        shipped = 0
        for path in segments:
            if self.stopping.is_set():
                break
            if self.hold is not None and self.hold.is_set():
                break
            self._ship_one(path)
            shipped += 1
            self.backlog_segments -= 1
            if path.name <= self.replay_last:
                self.replay_left -= 1
        return shipped

    def _ship_one(self, path: Path) -> None:
        size = path.stat().st_size
        started = time.monotonic()
        flush = (lambda: sync_filesystem(self.data_dir)) if self.sync_inserts else None
        rows = ship_or_quarantine(self.client, path, self.metrics, before_delete=flush)
        self.release(size)
        if rows is None:
            return
        elapsed = time.monotonic() - started
        m = self.metrics
        m.batches_shipped += 1
        m.rows_shipped += rows
        m.bytes_shipped += size
        m.batch_rows_last = rows
        m.insert_seconds_sum += elapsed
        m.insert_seconds_count += 1
        self.last_shipped_at = time.time()
        log.debug("shipped %s: %d rows, %d bytes in %.3fs", path.name, rows, size, elapsed)


def ship_or_quarantine(client, path: Path, metrics, before_delete=None) -> int | None:
    """Ship one segment and delete it; return the rows inserted (None: all refused).

    `before_delete`, when given, is called once after the inserts and before the segment is deleted
    (making the inserts durable first); if it raises, the segment stays and is shipped again.

    Rows ClickHouse refuses for good (bad data) are found by splitting the segment and moved to
    failed/NAME.seg, never deleted; the rest is inserted. Transient errors propagate and the segment
    stays: shipping it again later is the same insert with the same token, so ClickHouse keeps one
    copy whatever part of it had landed.
    """
    try:
        inserted = ship_segment(client, path)
    except Exception as exc:
        if not is_permanent(exc):
            raise
        reason = str(exc).splitlines()[0][:300]
        rows = path.read_bytes().splitlines(keepends=True)
        shipped, refused = ship_refused(client, rows, path.stem, split_budget(len(rows)))
        if shipped:
            target = path.parent / QUARANTINE_DIR / path.name
            target.parent.mkdir(exist_ok=True)
            target.write_bytes(b"".join(refused))
            if before_delete is not None:
                before_delete()
            path.unlink()
        else:
            target = quarantine(path)
        metrics.segments_quarantined += 1
        log.error("ClickHouse refused segment %s for good: %d row(s) moved to %s, %d inserted: %s",
                  path.name, len(refused), target, shipped, reason)
        return shipped or None
    if before_delete is not None:
        before_delete()
    path.unlink()
    return inserted


def replay(dsn: str, directory: Path, metrics, migrate: bool = True) -> tuple[int, int]:
    """Ship a spool directory without serving (`ingestd replay`); return (segments, rows).

    Ships DIR and, left by a --workers run, every DIR/w<i>, oldest segment first. Refuses a
    directory a running server holds. Stops at the first transient error, leaving the rest in
    place: running it again ships the rest, and re-ships nothing already confirmed. Into the
    embedded engine every insert is flushed to disk before its segment is deleted.
    """
    data_dir = clickhouse.chdb_path(dsn)
    flush = (lambda: sync_filesystem(data_dir)) if data_dir is not None else None
    directory = Path(directory)
    with contextlib.ExitStack() as locks:
        locks.enter_context(lock_directory(directory))  # first: a running --workers owner holds it too
        workers = (p for p in directory.iterdir() if p.is_dir() and WORKER_DIR.match(p.name))
        directories = [directory, *sorted(workers, key=lambda p: int(p.name[1:]))]
        for spool_dir in directories:
            if spool_dir != directory:
                locks.enter_context(lock_directory(spool_dir))
            recover(spool_dir)
        client = clickhouse.connect(dsn)
        try:
            if migrate:
                clickhouse.migrate(client)
            segments = rows = 0
            for path in sorted((p for d in directories for p in sealed_segments(d)), key=lambda p: p.name):
                shipped = ship_or_quarantine(client, path, metrics, before_delete=flush)
                if shipped is not None:
                    segments += 1
                    rows += shipped
            return segments, rows
        finally:
            client.close()
