"""`--workers N`: a supervisor process and N beacon processes sharing the port with SO_REUSEPORT.

The supervisor binds every listening socket itself and hands worker i its own, so a restarted
worker gets its socket, and the connections queued on it, back. It restarts a worker that dies
(kill -9 included) or stops pinging, and speaks sd_notify to systemd for all of them: each
worker's NOTIFY_SOCKET is the supervisor's datagram socket, so a worker reports READY, STATUS and
WATCHDOG exactly as it would to systemd, and the supervisor says READY=1 once all of them did.

Worker i spools into SPOOL/w<i>. Worker 0 is the owner: it serves the admin listener and migrates.
With the embedded engine (one process per data directory) the owner's sink ships every worker's
spool; with a server DSN each worker ships its own. The owner also ships leftovers (SPOOL itself and
SPOOL/w<i> for i >= N, from a run with another N). The supervisor opens no ClickHouse client.
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from . import __version__, sdnotify
from .config import Settings
from .spool import SpoolBusy, acquire_lock, recover

log = logging.getLogger("ingestd.workers")

WORKER_DIR = re.compile(r"^w(\d+)$")
CHILD_WATCHDOG_USEC = 30_000_000  # a worker's loop silent this long is killed and restarted
START_GRACE = 60.0  # seconds beyond --ready-timeout a worker may take to say READY=1
RESTART_DELAY_MAX = 10.0  # seconds: a worker that keeps dying is restarted at most this slowly
STABLE_AFTER = 10.0  # seconds a worker must live for its next death to be restarted at once
# A worker that dies this many times in a row within STABLE_AFTER stops the service (exit 1, for
# systemd's Restart= and its start limit): its socket would hold 1/N of new connections unanswered.
MAX_QUICK_DEATHS = 5
STOP_GRACE = 15.0  # seconds beyond --drain-timeout a worker may take to stop before SIGKILL
METRICS_PERIOD = 1.0  # seconds between a worker's metrics snapshots (the owner's /metrics adds them up)
METRICS_FILE = "metrics.json"


def leftover_spools(root: Path, keep: int) -> list[Path]:
    """Spool directories no running process writes to: SPOOL/w<i> for i >= keep, and SPOOL itself when
    keep > 0. Each is locked for this process (one another process holds is skipped) and its open
    segments are sealed, so that a sink can ship them."""
    found = []
    if root.is_dir():
        found = sorted((p for p in root.iterdir() if (m := WORKER_DIR.match(p.name)) and int(m.group(1)) >= keep),
                       key=lambda p: int(p.name[1:]))
    if keep > 0:
        found.insert(0, root)
    kept = []
    for directory in found:
        try:
            acquire_lock(directory)  # held until this process exits: nobody else writes or ships it
        except SpoolBusy:
            log.warning("spool directory %s is in use by another ingestd process: not shipping it", directory)
            continue
        recover(directory)
        kept.append(directory)
    return kept


def worker_spool(root: Path, index: int) -> Path:
    return root / f"w{index}"


def plan_shipping(settings: Settings) -> list[list[Path]]:
    """The spool directories each worker's sink ships ([] = shipped by the owner)."""
    root, n = Path(settings.spool), settings.workers
    leftovers = leftover_spools(root, keep=n)
    if settings.clickhouse.startswith("chdb://"):
        return [[worker_spool(root, i) for i in range(n)] + leftovers] + [[] for _ in range(1, n)]
    return [[worker_spool(root, 0)] + leftovers] + [[worker_spool(root, i)] for i in range(1, n)]


def read_snapshot(path: Path) -> dict:
    """A worker's last metrics snapshot ({} before its first one)."""
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}


async def publish_snapshots(metrics, path: Path) -> None:
    """Run on a spooling worker's loop: its metrics, replaced atomically every METRICS_PERIOD."""
    partial = path.with_suffix(".tmp")
    while True:
        partial.write_text(json.dumps(metrics.snapshot()))
        os.replace(partial, path)
        await asyncio.sleep(METRICS_PERIOD)


def _flags(settings: Settings, spool: Path) -> dict:
    """Settings as load() flags for a worker: the supervisor's effective configuration, one spool each."""
    out = {}
    for name in Settings.__dataclass_fields__:
        value = getattr(settings, name)
        out[name] = [str(n) for n in value] if name == "trust_proxy" else value
    out.update(config="", spool=str(spool))
    return out


class Worker:
    """What the supervisor knows of one worker process."""

    def __init__(self, index: int):
        self.index = index
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0
        self.last_seen = 0.0
        self.ready = False
        self.restart_at = 0.0
        self.quick_deaths = 0
        self.fields: dict[str, str] = {}


class Supervisor:
    """Owns the listening sockets and the worker processes; talks to systemd for all of them."""

    def __init__(self, settings: Settings):
        from .server import bind

        self.settings = settings
        self.n = settings.workers
        if not settings.listen.endswith(":0"):
            # SO_REUSEPORT would let us join another process's group on this port: check it is free first
            bind(settings.listen).close()
        first = bind(settings.listen, reuse_port=True)
        port = first.getsockname()[1]
        host = settings.listen.rpartition(":")[0]
        self.sockets = [first] + [bind(f"{host}:{port}", reuse_port=True) for _ in range(1, self.n)]
        self.admin = bind(settings.admin) if settings.admin else None
        self.shipping = plan_shipping(settings)
        self.workers = [Worker(i) for i in range(self.n)]
        self.notify_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.notify_sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.notify_sock.bind(f"\0ingestd-{os.getpid()}-{os.urandom(6).hex()}")
        self.notify_sock.setblocking(False)
        usec = os.environ.get("WATCHDOG_USEC", "")
        self.child_watchdog_usec = int(usec) if sdnotify.watchdog_period() else CHILD_WATCHDOG_USEC
        self.stopping = False
        self.failed = False
        self.told_ready = False
        self.restarts = 0

    # -- workers --------------------------------------------------------------------------------------
    def spawn(self, worker: Worker) -> None:
        i = worker.index
        beacon = self.sockets[i]
        admin = self.admin if i == 0 else None
        spec = {
            "supervisor": os.getpid(),
            "index": i,
            "settings": _flags(self.settings, worker_spool(Path(self.settings.spool), i)),
            "beacon_fd": beacon.fileno(),
            "admin_fd": admin.fileno() if admin else None,
            "ship": [str(p) for p in self.shipping[i]],
            "migrate": None if i == 0 else False,
        }
        env = {k: v for k, v in os.environ.items() if k not in ("WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")}
        env["NOTIFY_SOCKET"] = "@" + self.notify_sock.getsockname()[1:].decode()
        env["WATCHDOG_USEC"] = str(self.child_watchdog_usec)
        fds = [beacon.fileno()] + ([admin.fileno()] if admin else [])
        worker.proc = subprocess.Popen([sys.executable, "-m", "ingestd.workers"], stdin=subprocess.PIPE,
                                       pass_fds=fds, env=env, start_new_session=True)
        try:
            worker.proc.stdin.write(json.dumps(spec).encode())
            worker.proc.stdin.close()
        except BrokenPipeError:  # it died at once; reap() reports and restarts it
            pass
        worker.started_at = worker.last_seen = time.monotonic()
        worker.ready = False
        worker.fields = {}
        log.info("worker %d started (pid %d)%s", i, worker.proc.pid, " as owner" if i == 0 else "")

    def reap(self, now: float) -> None:
        """Restart workers that died or whose loop stopped pinging."""
        for w in self.workers:
            if w.proc is None:
                if now >= w.restart_at:
                    self.spawn(w)
                continue
            silent = now - w.last_seen
            if w.proc.poll() is None:
                limit = self.child_watchdog_usec / 1e6 if w.ready else self.settings.ready_timeout + START_GRACE
                if silent > limit:
                    log.error("worker %d (pid %d) silent for %.0fs: killing it", w.index, w.proc.pid, silent)
                    w.proc.kill()
                    w.proc.wait()
                else:
                    continue
            code = w.proc.returncode
            how = f"signal {-code}" if code < 0 else f"exit {code}"
            lived = now - w.started_at
            w.quick_deaths = w.quick_deaths + 1 if lived < STABLE_AFTER else 0
            delay = min(0.5 * 2 ** (w.quick_deaths - 1), RESTART_DELAY_MAX) if w.quick_deaths else 0.0
            log.error("worker %d (pid %d) died (%s) after %.1fs: restarting in %.1fs", w.index, w.proc.pid, how,
                      lived, delay)
            self.restarts += 1
            w.proc = None
            w.restart_at = now + delay
            if w.quick_deaths >= MAX_QUICK_DEATHS:
                log.error("worker %d died %d times in a row within %.0fs each: stopping ingestd", w.index,
                          w.quick_deaths, STABLE_AFTER)
                self.stopping = self.failed = True

    def read_notifications(self) -> None:
        """Take in the workers' sd_notify datagrams (the sender's pid comes with SCM_CREDENTIALS)."""
        by_pid = {w.proc.pid: w for w in self.workers if w.proc is not None}
        while True:
            try:
                data, ancdata, _, _ = self.notify_sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except BlockingIOError:
                return
            pid = next((struct.unpack("iII", d[:12])[0] for level, kind, d in ancdata
                        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS), None)
            worker = by_pid.get(pid)
            if worker is None:
                continue
            worker.last_seen = time.monotonic()
            for line in data.decode("utf-8", "replace").splitlines():
                key, _, value = line.partition("=")
                if key == "READY" and value == "1":
                    worker.ready = True
                worker.fields[key] = value

    def status(self) -> str:
        up = sum(1 for w in self.workers if w.proc is not None and w.ready)
        rate = sum(float(w.fields.get("INGESTD_EVENTS_PER_S", 0)) for w in self.workers)
        spool = sum(int(w.fields.get("INGESTD_SPOOL_BYTES", 0)) for w in self.workers)
        owner = self.workers[0].fields.get("STATUS", "")
        clickhouse = owner.partition("ClickHouse ")[2] or "starting"
        return (f"STATUS={up}/{self.n} workers, {rate:.0f} events/s, spool {spool / 1048576:.1f} MiB, "
                f"{self.restarts} restarts, ClickHouse {clickhouse}")

    # -- the supervisor loop -----------------------------------------------------------------------------
    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        log.info("ingestd %s supervising %d workers on %s:%d", __version__, self.n,
                 *self.sockets[0].getsockname()[:2],
                 extra={"version": __version__, "config": self.settings.redacted()})
        for w in self.workers:
            self.spawn(w)
        period = sdnotify.watchdog_period()
        next_ping = next_status = 0.0
        while not self.stopping:
            select.select([self.notify_sock], [], [], 0.1)
            self.read_notifications()
            now = time.monotonic()
            self.reap(now)
            if not self.told_ready and all(w.ready for w in self.workers):
                self.told_ready = True
                sdnotify.notify(self.status() + "\nREADY=1")
                log.info("all %d workers ready", self.n)
            if period and now >= next_ping:
                sdnotify.notify("WATCHDOG=1")
                next_ping = now + period
            if self.told_ready and now >= next_status:
                sdnotify.notify(self.status())
                next_status = now + sdnotify.STATUS_PERIOD
        return self.stop()

    def _on_signal(self, signum, frame) -> None:
        self.stopping = True

    def stop(self) -> int:
        """Stop the workers: with the embedded engine the spooling ones first, then the owner, which
        ships what they sealed; with a ClickHouse server all at once (each ships its own spool)."""
        sdnotify.notify("STOPPING=1")
        log.info("stopping %d workers", self.n)
        # Our copies of the listening sockets would keep each in the port's SO_REUSEPORT group after its
        # worker closed its own: the kernel would go on completing handshakes nobody reads, reset only
        # when we exit. Closed, a socket ends with its worker's copy, and clients are refused at once.
        for sock in self.sockets:
            sock.close()
        if self.admin is not None:
            self.admin.close()
        if self.settings.clickhouse.startswith("chdb://"):
            clean = self._stop(self.workers[1:]) & self._stop(self.workers[:1])
        else:
            clean = self._stop(self.workers)
        return 0 if clean and not self.failed else 1

    def _stop(self, workers: list[Worker]) -> bool:
        procs = [w.proc for w in workers if w.proc is not None and w.proc.poll() is None]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.drain_timeout + STOP_GRACE
        period = sdnotify.watchdog_period()
        next_ping = 0.0
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            select.select([self.notify_sock], [], [], 0.1)
            self.read_notifications()
            if period and time.monotonic() >= next_ping:
                sdnotify.notify("WATCHDOG=1")
                next_ping = time.monotonic() + period
        clean = True
        for proc in procs:
            if proc.poll() is None:
                log.error("worker pid %d did not stop in time: killing it", proc.pid)
                proc.kill()
                proc.wait()
                clean = False
        return clean


def run(settings: Settings) -> int:
    """`ingestd serve --workers N` (N > 1): supervise N worker processes until SIGTERM/SIGINT."""
    return Supervisor(settings).run()


def _die_with(supervisor: int) -> None:
    """Ask the kernel for SIGTERM when the supervisor dies (even by kill -9), so no worker is orphaned."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:  # it died before the request was in place
        sys.exit(1)


def worker_main() -> int:
    """A worker process: the spec (settings, sockets, what to ship) arrives as JSON on stdin."""
    from . import config, logs
    from .server import Server, run_until_stopped

    spec = json.loads(sys.stdin.buffer.read())
    _die_with(spec["supervisor"])
    settings = config.load(spec["settings"], environ={})
    logs.setup(settings.log_level)
    beacon = socket.socket(fileno=spec["beacon_fd"])
    beacon.setblocking(False)
    admin = socket.socket(fileno=spec["admin_fd"]) if spec["admin_fd"] is not None else None
    try:
        server = Server(settings, beacon, admin, ship_directories=[Path(p) for p in spec["ship"]],
                        migrate=spec["migrate"])
    except SpoolBusy as exc:  # the previous worker on this spool is still stopping: the supervisor retries
        log.error("%s", exc)
        return 1
    root = Path(settings.spool).parent
    if spec["index"] == 0:  # the owner's /metrics counts every worker
        server.metrics.peers = [functools.partial(read_snapshot, worker_spool(root, i) / METRICS_FILE)
                                for i in range(1, settings.workers)]
        return run_until_stopped(server, server.run())

    async def serve_and_publish():
        publisher = asyncio.get_running_loop().create_task(
            publish_snapshots(server.metrics, Path(settings.spool) / METRICS_FILE))
        try:
            await server.run()
        finally:
            publisher.cancel()

    return run_until_stopped(server, serve_and_publish())


if __name__ == "__main__":
    sys.exit(worker_main())
