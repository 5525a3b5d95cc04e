"""The durable spool: owns the segment files under the spool directory, nothing else.

Rows are JSONCompactEachRow lines, exactly the bytes of one ClickHouse insert into
`analytics.events_incoming`. The event loop appends rows and calls `commit()` once per
iteration (group commit: one write(2) for every request parsed in it); only after it returns
True are those requests answered 200. A segment is sealed (renamed `*.open` -> `*.seg`) at a size
or age limit and then belongs to the sink, which ships it and deletes it.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from pathlib import Path

import orjson

log = logging.getLogger("ingestd.spool")

OPEN_SUFFIX = ".open"
SEALED_SUFFIX = ".seg"
QUARANTINE_DIR = "failed"
LOCK_FILE = ".lock"
WRITE_ERROR_LOG_SECONDS = 10.0  # a full disk fails every commit: log the first, then once per this


class SpoolError(RuntimeError):
    """The spool directory cannot be used: the message is one line saying why."""


class SpoolBusy(SpoolError):
    """Another process (a server or a replay) owns this spool directory."""


def acquire_lock(directory: Path) -> int:
    """Lock a spool directory for this process (released when it exits); return the lock's fd.

    Two processes on one spool would seal each other's open segments and ship them twice.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except OSError as exc:  # read-only (ProtectSystem=strict outside ReadWritePaths), no permission, …
        raise SpoolError(f"spool directory {directory} cannot be used: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SpoolBusy(f"spool directory {directory} is in use by another ingestd process") from None
    return fd


@contextlib.contextmanager
def lock_directory(directory: Path):
    """Hold a spool directory's lock for the duration of a `with` block (ingestd replay)."""
    fd = acquire_lock(Path(directory))
    try:
        yield
    finally:
        os.close(fd)


class _Names:
    """Segment names: `<ns>-<pid>-<n>`, strictly increasing within a process and after every
    segment already in the directory, so shipping order is creation order even if the clock
    steps back across a restart."""

    last_ns = 0
    counter = 0


def segment_name() -> str:
    """A name that sorts in creation order and is unique across processes and restarts."""
    _Names.last_ns = max(time.time_ns(), _Names.last_ns + 1)
    _Names.counter += 1
    return f"{_Names.last_ns:019d}-{os.getpid()}-{_Names.counter:06d}"


def names_after(paths: list[Path]) -> None:
    """Make every new segment name sort after these (leftovers of an earlier process)."""
    for path in paths:
        prefix = path.name.split("-", 1)[0]
        if prefix.isdigit():
            _Names.last_ns = max(_Names.last_ns, int(prefix))


def is_row(line: bytes) -> bool:
    """A complete spool row: one JSON array on one line (what the beacon app writes)."""
    if line[:1] != b"[" or line[-1:] != b"]":
        return False
    try:
        return isinstance(orjson.loads(line), list)
    except orjson.JSONDecodeError:
        return False


def repair(path: Path) -> tuple[int, int]:
    """Keep only the complete rows of a segment a crash left open; return (bytes kept, bytes set aside).

    A crash mid-write(2) leaves half a row at the end (never acknowledged: its write did not
    return); a power loss without fsync can leave zero-filled blocks. Such bytes are never
    shipped: they are copied to failed/NAME.torn for a human to inspect, and the rest is kept.
    A torn tail alone is cut in place, which needs no free space (the disk may be full).
    """
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the segment ends with a complete line
    bad = [line for line in lines if not is_row(line)]
    if not bad and not tail:
        return len(data), 0
    torn = b"".join(line + b"\n" for line in bad) + tail
    try:
        target_dir = path.parent / QUARANTINE_DIR
        target_dir.mkdir(exist_ok=True)
        with open(target_dir / (path.name.split(".")[0] + ".torn"), "ab") as f:
            f.write(torn)
    except OSError as exc:  # never acknowledged bytes: losing the copy loses no event
        log.error("spool segment %s: cannot keep its %d torn bytes in %s: %s", path.name, len(torn),
                  QUARANTINE_DIR, exc)
    if not bad:
        kept = len(data) - len(tail)
        os.truncate(path, kept)
    else:
        rows = b"".join(line + b"\n" for line in lines if is_row(line))
        scratch = path.with_suffix(".repair")
        with open(scratch, "wb") as f:
            f.write(rows)
            os.fdatasync(f.fileno())
        os.replace(scratch, path)
        kept = len(rows)
    log.warning("spool segment %s: set aside %d torn bytes (%d bad lines), kept %d bytes",
                path.name, len(torn), len(bad), kept)
    return kept, len(torn)


def sealed_segments(directory: Path) -> list[Path]:
    """Sealed segments in the order they must be shipped (their names sort by creation time)."""
    return sorted(directory.glob("*" + SEALED_SUFFIX))


def recover(directory: Path) -> list[Path]:
    """Seal what a previous process left open (repairing torn tails); return all sealed segments."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.repair"):  # a crash during an earlier repair: the .open is intact
        stale.unlink()
    for path in sorted(directory.glob("*" + OPEN_SUFFIX)):
        try:
            kept, _ = repair(path)
        except OSError as exc:  # e.g. a full disk: ship the rest (freeing space), repair it next start
            log.error("cannot repair spool segment %s now, left for the next start: %s", path.name, exc)
            continue
        if kept == 0:
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
        # rows for the next commit; the beacon app appends to it directly (a method call per request costs)
        self.pending: list[bytes] = []
        self._fd = -1
        self._path: Path | None = None
        self._size = 0
        self._opened_at = 0.0
        self._unsealed: list[Path] = []  # closed segments whose rename to *.seg failed; retried
        self._bytes_lock = threading.Lock()  # _bytes is shared with the sink thread
        self._bytes = 0  # open + sealed bytes on disk
        # read per request: plain attributes kept by _set_bytes(), not properties (a call each)
        self.over_cap = self.over_soft_cap = False
        self._sync_lock = threading.Lock()  # what the fsync thread must sync next
        self._to_sync: list[int] = []  # fds of sealed segments, closed by the fsync thread
        self._dir_dirty = False  # a segment was created or renamed since the last directory fsync
        self.write_errors = 0
        self._error_logged_at = float("-inf")
        self.commits = 0
        self._lock_fd = acquire_lock(self.directory)
        leftovers = recover(self.directory)
        names_after(leftovers)
        self._set_bytes(sum(path.stat().st_size for path in leftovers))
        self._fsync_stop = threading.Event()
        self._fsync_thread = None
        if fsync_interval:
            self._fsync_thread = threading.Thread(target=self._fsync_loop, name="ingestd-fsync", daemon=True)
            self._fsync_thread.start()

    # -- the hot path ---------------------------------------------------------------------------
    def append(self, row: bytes) -> None:
        """Queue one row for the next commit (called per request)."""
        self.pending.append(row)

    def commit(self) -> bool:
        """Write every queued row with one write(2). False (and nothing half-written) on failure."""
        if not self.pending:
            return True
        data = b"".join(self.pending)
        self.pending.clear()
        try:
            if self._fd < 0:
                self._open()
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            self.write_errors += 1
            now = time.monotonic()
            if now - self._error_logged_at >= WRITE_ERROR_LOG_SECONDS:
                self._error_logged_at = now
                log.error("spool write failed, beacons answered 503 (%d failed writes so far): %s",
                          self.write_errors, exc)
            self._undo_partial_write()
            return False
        self._size += len(data)
        with self._bytes_lock:
            self._set_bytes(self._bytes + len(data))
        self.commits += 1
        if self._size >= self.segment_max_bytes:
            self.seal()
        return True

    def _undo_partial_write(self) -> None:
        """After a failed write, cut the segment back so it holds only acknowledged rows."""
        if self._fd < 0:
            return
        try:
            os.ftruncate(self._fd, self._size)
        except OSError as exc:
            # The torn bytes stay; the segment is left *.open so the next start repairs it.
            log.error("spool truncate after a failed write failed: %s; abandoning %s", exc, self._path)
            os.close(self._fd)
            self._fd, self._path, self._size = -1, None, 0

    def _open(self) -> None:
        path = self.directory / (segment_name() + OPEN_SUFFIX)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        self._path = path
        self._size = 0
        self._opened_at = time.monotonic()
        self._dir_dirty = True

    # -- sealing ----------------------------------------------------------------------------------
    def seal_if_due(self) -> None:
        """Called on a timer: seal the open segment once it is old enough; retry failed renames."""
        if self._unsealed:
            self._rename_unsealed()
        if self._fd >= 0 and time.monotonic() - self._opened_at >= self.segment_max_age:
            self.seal()

    def seal(self) -> None:
        """Close the open segment and hand it to the sink. Never raises: its rows are already written."""
        if self._fd < 0:
            return
        fd, path, size = self._fd, self._path, self._size
        self._fd, self._path, self._size = -1, None, 0
        if self._fsync_thread is not None:
            with self._sync_lock:
                self._to_sync.append(fd)  # the fsync thread syncs what is left, then closes it
        else:
            try:
                os.close(fd)
            except OSError as exc:  # the rows were written; a late error (e.g. NFS) changes nothing
                log.error("closing spool segment %s failed: %s", path, exc)
        assert path is not None
        if size == 0:
            try:
                path.unlink()
            except OSError:
                pass
            return
        self._unsealed.append(path)
        self._rename_unsealed()

    def _rename_unsealed(self) -> None:
        while self._unsealed:
            path = self._unsealed[0]
            sealed = path.with_suffix(SEALED_SUFFIX)
            try:
                path.rename(sealed)
            except OSError as exc:
                log.error("cannot seal spool segment %s (retrying): %s", path.name, exc)
                return
            self._unsealed.pop(0)
            self._dir_dirty = True
            self.on_sealed(sealed)

    def close(self) -> None:
        """Write what is queued and seal; called on shutdown."""
        self.commit()
        self.seal()
        self._fsync_stop.set()
        if self._fsync_thread is not None:
            self._fsync_thread.join()

    # -- accounting (shared with the sink thread) -----------------------------------------------
    def release(self, size: int) -> None:
        """Called by the sink after it deleted or quarantined a segment of `size` bytes."""
        with self._bytes_lock:
            self._set_bytes(max(0, self._bytes - size))

    def resync(self) -> None:
        """Recount the bytes on disk; called on the loop when another process ships this directory."""
        total = self._size
        for path in [*self._unsealed, *sealed_segments(self.directory)]:
            try:
                total += path.stat().st_size
            except FileNotFoundError:  # shipped while we counted
                pass
        with self._bytes_lock:
            self._set_bytes(total)

    def _set_bytes(self, total: int) -> None:
        self._bytes = total
        self.over_cap = total >= self.max_bytes
        self.over_soft_cap = total >= self.soft_bytes

    @property
    def bytes_on_disk(self) -> int:
        return self._bytes

    # -- --fsync interval -------------------------------------------------------------------------
    def _fsync_loop(self) -> None:
        """Every fsync_interval: fdatasync the open segment, sealed ones, and the directory entries.

        Runs off the event loop so a slow disk never delays a reply; syncs a dup of the open fd so
        the loop may seal (close) it meanwhile.
        """
        stopping = False
        while not stopping:
            stopping = self._fsync_stop.wait(self.fsync_interval)
            with self._sync_lock:
                fds, self._to_sync = self._to_sync, []
            try:
                current = os.dup(self._fd) if self._fd >= 0 else -1
            except OSError:  # sealed between the check and the dup
                current = -1
            if current >= 0:
                fds.append(current)
            for fd in fds:
                try:
                    os.fdatasync(fd)
                except OSError as exc:
                    log.error("fdatasync of a spool segment failed: %s", exc)
                finally:
                    os.close(fd)
            if self._dir_dirty:
                self._dir_dirty = False
                try:
                    dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
                    try:
                        os.fsync(dir_fd)
                    finally:
                        os.close(dir_fd)
                except OSError as exc:
                    log.error("fsync of the spool directory failed: %s", exc)
