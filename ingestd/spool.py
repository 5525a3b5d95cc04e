"""The durable spool: owns the segment files under the spool directory, nothing else.

Rows are JSONCompactEachRow lines, exactly the bytes of one ClickHouse insert into
`analytics.events_incoming`. The event loop appends rows and calls `commit()` once per
iteration (group commit: one write(2) for every request parsed in it); only after it returns
True are those requests answered 200. A segment is sealed (renamed `*.open` -> `*.seg`) at a size
or age limit and then belongs to the sink, which ships it and deletes it.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

log = logging.getLogger("ingestd.spool")

OPEN_SUFFIX = ".open"
SEALED_SUFFIX = ".seg"
QUARANTINE_DIR = "failed"


def segment_name() -> str:
    """A name that sorts in creation order and is unique across processes and restarts."""
    segment_name.counter += 1  # type: ignore[attr-defined]
    return f"{time.time_ns():019d}-{os.getpid()}-{segment_name.counter:06d}"  # type: ignore[attr-defined]


segment_name.counter = 0  # type: ignore[attr-defined]


def repair_torn_tail(path: Path) -> int:
    """Cut a segment back to its last complete line (a crash may leave half a row); return its size."""
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        f.seek(max(0, size - 1))
        if f.read(1) == b"\n":
            return size
        # scan back in blocks for the last newline
        end = size
        while end > 0:
            start = max(0, end - 65536)
            f.seek(start)
            block = f.read(end - start)
            cut = block.rfind(b"\n")
            if cut >= 0:
                f.truncate(start + cut + 1)
                return start + cut + 1
            end = start
        f.truncate(0)
        return 0


def sealed_segments(directory: Path) -> list[Path]:
    """Sealed segments in the order they must be shipped."""
    return sorted(directory.glob("*" + SEALED_SUFFIX))


def recover(directory: Path) -> list[Path]:
    """Seal what a previous process left open (repairing torn tails); return all sealed segments."""
    directory.mkdir(parents=True, exist_ok=True)
    for path in sorted(directory.glob("*" + OPEN_SUFFIX)):
        if repair_torn_tail(path) == 0:
            path.unlink()
        else:
            path.rename(path.with_suffix(SEALED_SUFFIX))
    return sealed_segments(directory)


def quarantine(path: Path) -> Path:
    """Move a segment ClickHouse can never accept aside, kept for a human to inspect."""
    target_dir = path.parent / QUARANTINE_DIR
    target_dir.mkdir(exist_ok=True)
    target = target_dir / path.name
    path.rename(target)
    return target


class Spool:
    """Segments of one process's spool directory. All methods but `release` run on the event loop."""

    def __init__(
        self,
        directory: Path,
        *,
        segment_max_bytes: int = 8 << 20,
        segment_max_age: float = 1.0,
        max_bytes: int = 2 << 30,
        fsync_interval: float | None = None,
        on_sealed=None,
    ):
        self.directory = Path(directory)
        self.segment_max_bytes = segment_max_bytes
        self.segment_max_age = segment_max_age
        self.max_bytes = max_bytes
        self.soft_bytes = max_bytes // 2
        self.fsync_interval = fsync_interval
        self.on_sealed = on_sealed or (lambda path: None)
        self._pending: list[bytes] = []
        self._fd = -1
        self._path: Path | None = None
        self._size = 0
        self._opened_at = 0.0
        self._lock = threading.Lock()  # guards _fd against the fsync thread and bytes against the sink
        self._bytes = 0  # open + sealed bytes on disk, shared with the sink thread
        self.write_errors = 0
        self.commits = 0
        for path in recover(self.directory):
            self._bytes += path.stat().st_size
        self._fsync_stop = threading.Event()
        if fsync_interval:
            threading.Thread(target=self._fsync_loop, name="ingestd-fsync", daemon=True).start()

    # -- the hot path ---------------------------------------------------------------------------
    def append(self, row: bytes) -> None:
        """Queue one row for the next commit (called per request)."""
        self._pending.append(row)

    def commit(self) -> bool:
        """Write every queued row with one write(2). False (and nothing half-written) on failure."""
        if not self._pending:
            return True
        data = b"".join(self._pending)
        self._pending.clear()
        try:
            if self._fd < 0:
                self._open()
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            self.write_errors += 1
            log.error("spool write failed: %s", exc)
            self._undo_partial_write()
            return False
        self._size += len(data)
        with self._lock:
            self._bytes += len(data)
        self.commits += 1
        if self._size >= self.segment_max_bytes:
            self.seal()
        return True

    def _undo_partial_write(self) -> None:
        """After a failed write, cut the segment back so it holds only acknowledged rows."""
        if self._fd >= 0:
            try:
                os.ftruncate(self._fd, self._size)
                os.lseek(self._fd, self._size, os.SEEK_SET)
            except OSError as exc:
                log.error("spool truncate after failed write failed: %s", exc)
                self.seal()

    def _open(self) -> None:
        self._path = self.directory / (segment_name() + OPEN_SUFFIX)
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        self._size = 0
        self._opened_at = time.monotonic()

    # -- sealing ----------------------------------------------------------------------------------
    def seal_if_due(self) -> None:
        """Called on a timer: seal the open segment once it is old enough."""
        if self._fd >= 0 and time.monotonic() - self._opened_at >= self.segment_max_age:
            self.seal()

    def seal(self) -> None:
        """Close the open segment and hand it to the sink."""
        if self._fd < 0:
            return
        with self._lock:
            fd, path, size = self._fd, self._path, self._size
            self._fd, self._path, self._size = -1, None, 0
            try:
                if self.fsync_interval:
                    os.fdatasync(fd)
            finally:
                os.close(fd)
        assert path is not None
        if size == 0:
            path.unlink()
            return
        sealed = path.with_suffix(SEALED_SUFFIX)
        path.rename(sealed)
        self.on_sealed(sealed)

    def close(self) -> None:
        """Write what is queued and seal; called on shutdown."""
        self.commit()
        self.seal()
        self._fsync_stop.set()

    # -- accounting (shared with the sink thread) -----------------------------------------------
    def release(self, size: int) -> None:
        """Called by the sink after it deleted or quarantined a segment of `size` bytes."""
        with self._lock:
            self._bytes -= size

    def resync(self) -> None:
        """Recount the bytes on disk; called on the loop when another process ships this directory."""
        total = self._size
        for path in sealed_segments(self.directory):
            try:
                total += path.stat().st_size
            except FileNotFoundError:  # shipped while we counted
                pass
        with self._lock:
            self._bytes = total

    @property
    def bytes_on_disk(self) -> int:
        return self._bytes

    @property
    def over_cap(self) -> bool:
        return self._bytes >= self.max_bytes

    @property
    def over_soft_cap(self) -> bool:
        return self._bytes >= self.soft_bytes

    def _fsync_loop(self) -> None:
        while not self._fsync_stop.wait(self.fsync_interval):
            with self._lock:
                if self._fd >= 0:
                    try:
                        os.fdatasync(self._fd)
                    except OSError as exc:
                        log.error("fdatasync failed: %s", exc)
