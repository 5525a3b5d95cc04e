"""Wiring: event loop, listeners, spool, sink, admin, signals and the shutdown order. No logic of its own."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import uvloop

from . import __version__, clientip, ratelimit, sdnotify
from .admin import READY_BACKLOG_SEGMENTS
from .admin import start as start_admin
from .beacon import BeaconApp
from .config import ConfigError, Settings, split_address
from .http import CLOCK, ConnectionGate, HttpProtocol, Limits
from .metrics import Metrics
from .sink import Sink
from .spool import Spool, SpoolError

log = logging.getLogger("ingestd.server")

TICK_SECONDS = 0.25  # clock, segment age and timeout checks; a segment is sealed at most this late
LISTEN_BACKLOG = 4096
CONNECTION_DRAIN_SECONDS = 2.0  # on shutdown, time for clients to receive replies already decided
# Of --drain-timeout, kept back for closing ClickHouse, the interpreter's exit and a busy loop's
# signal latency, so the process is gone within the timeout a supervisor was promised.
EXIT_MARGIN_SECONDS = 1.0
EXIT_MARGIN_FRACTION = 0.25


def bind(address: str, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket for HOST:PORT (port 0 picks a free one)."""
    host, port = split_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:  # a busy port or a foreign address: one line at start, not a traceback
        sock.close()
        raise ConfigError(f"cannot listen on {address}: {exc.strerror}") from None
    sock.listen(LISTEN_BACKLOG)
    sock.setblocking(False)
    return sock



QUERY_THREADS = 4  # the loop's default executor: admin /query requests at once


class QueryPool(ThreadPoolExecutor):
    """The loop's default executor (admin /query). Counts the calls submitted and not finished, so
    that a stop knows whether the interpreter's exit would wait for one (a query cannot be interrupted)."""

    def __init__(self, workers: int):
        super().__init__(workers, thread_name_prefix="ingestd-executor")
        self.unfinished = 0
        self._count_lock = threading.Lock()

    def submit(self, fn, /, *args, **kwargs):
        def counted():
            try:
                return fn(*args, **kwargs)
            finally:
                with self._count_lock:
                    self.unfinished -= 1

        with self._count_lock:
            self.unfinished += 1
        return super().submit(counted)


def started_executor(workers: int) -> QueryPool:
    """A thread pool whose threads are already running: started before the loop thread is niced,
    they keep the normal priority, and so do the engine's threads they start while running a query."""
    executor = QueryPool(workers)
    started = threading.Barrier(workers + 1)
    for _ in range(workers):  # each blocks until all have started, so each submit starts a thread
        executor.submit(started.wait)
    started.wait()
    return executor


def lower_loop_priority(nice: int) -> None:
    """Make this (the event loop's) thread nicer than the sink and the embedded engine's threads.

    On a box short of CPU (the embedded engine inserting on the cores that accept beacons), the
    loop would otherwise take the CPU the inserts need: the spool grows without bound and freshness
    with it. Niced, the loop yields to them and beacons wait briefly in the socket queues instead.
    Threads inherit the value of the thread that starts them, so this runs after the sink started.
    """
    if nice <= 0:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)  # this thread only, on Linux
    except (OSError, AttributeError) as exc:
        log.warning("cannot lower the event loop's priority (--loop-nice %d): %s", nice, exc)


def spool_share(settings: Settings) -> int:
    """This process's part of --spool-max-bytes: under --workers N each of the N spools holds at most
    1/N of it, so the box as a whole never holds more than the cap (and no worker waits on another)."""
    return settings.spool_max_bytes // settings.workers


class Server:
    """One ingestd process: the beacon listener, the admin listener, the spool and its sink."""

    def __init__(self, settings: Settings, beacon_sock: socket.socket, admin_sock: socket.socket | None,
                 *, ship_directories: list[Path] | None = None, migrate: bool | None = None):
        """ship_directories: the spools this process's sink ships (default: its own; [] under --workers
        when an owner process ships this one); migrate: whether the sink migrates ClickHouse first."""
        self.settings = settings
        self.beacon_sock = beacon_sock
        self.admin_sock = admin_sock
        self.metrics = Metrics()
        self.hold = threading.Event()
        if settings.hold_shipping:
            self.hold.set()
        self.spool = Spool(
            Path(settings.spool),
            segment_max_bytes=settings.segment_max_bytes,
            segment_max_age=settings.segment_max_age_ms / 1000,
            max_bytes=spool_share(settings),
            fsync_interval=settings.fsync_interval_ms / 1000 if settings.fsync == "interval" else None,
        )
        if ship_directories is None:
            ship_directories = [Path(settings.spool)]
        self.ship = bool(ship_directories)
        # the sink's release() keeps the spool's byte count exact only when it ships this spool alone;
        # otherwise (--workers, leftovers) the count is re-read from disk every second
        self.recount_spool = ship_directories != [Path(settings.spool)]
        if migrate is None:
            migrate = not settings.cluster  # a cluster's schema is `ingestd migrate --cluster`'s job
        self.sink = Sink(settings.clickhouse, ship_directories, self.metrics,
                         release=None if self.recount_spool else self.spool.release, hold=self.hold,
                         migrate=migrate, sync_inserts=settings.fsync == "interval")
        self.spool.on_sealed = self.sink.notify
        self.limits = Limits(header_timeout=settings.header_timeout, idle_timeout=settings.idle_timeout)
        self.stopped = None
        self.shutting_down = False
        self.abandon_sink = False  # leave with os._exit: a thread (sink insert, admin query) is still running
        self.queries: QueryPool | None = None
        self.app: BeaconApp | None = None
        m = self.metrics
        m.gauges["ingestd_spool_bytes"] = lambda: self.spool.bytes_on_disk
        m.gauges["ingestd_spool_segments"] = lambda: len(self.sink.pending())
        m.gauges["ingestd_clickhouse_connected"] = lambda: int(self.sink.connected.is_set() and self.sink.healthy)
        m.gauges["ingestd_shipping_held"] = lambda: int(self.hold.is_set())

    def not_ready_reason(self) -> str | None:
        """Why /readyz answers 503, or None.

        Not ready: shutting down; the spool (under --workers: any worker's) over its share of the
        cap (beacons get 503); or shipping the leftovers of a previous process while more than
        READY_BACKLOG_SEGMENTS remain. A ClickHouse outage alone does not make the process unready:
        beacons are still kept.
        """
        if self.shutting_down:
            return "shutting down"
        if self.spool.over_cap:
            return (f"spool over its cap ({self.spool.bytes_on_disk} of {self.spool.max_bytes} bytes): "
                    "beacons are answered 503")
        for peer in self.metrics.peers:  # the owner of --workers: every worker's spool (a second-old count)
            held = peer().get("gauges", {}).get("ingestd_spool_bytes", 0)
            if held >= self.spool.max_bytes:
                return (f"a worker's spool is over its share of the cap ({held} of {self.spool.max_bytes} "
                        "bytes): beacons it takes are answered 503")
        if self.sink.replaying and self.sink.replay_left > READY_BACKLOG_SEGMENTS:
            return f"replaying a backlog of {self.sink.replay_left} segments left by the previous process"
        return None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.stopped = asyncio.Event()
        ips = clientip.from_settings(self.settings)
        guard = ratelimit.request_guard(self.settings.rate_limit, ips.client) if self.settings.rate_limit else None
        self.app = BeaconApp(self.spool, self.metrics, loop, strict=self.settings.strict, client_ip=ips,
                             rate_limit=guard)
        self.app.wanted_headers = self.app.wanted_headers | ips.wanted_headers  # X-Forwarded-For if trusted
        app, limits, gate = self.app, self.limits, ConnectionGate(self.settings.max_connections, self.metrics)
        beacon = await loop.create_server(lambda: HttpProtocol(app, limits, gate), sock=self.beacon_sock,
                                          backlog=LISTEN_BACKLOG)
        admin = None
        if self.admin_sock is not None:
            admin, _ = await start_admin(self, loop, self.admin_sock, Limits(max_body=1 << 20))
        if self.ship:
            self.sink.start()
        # admin queries; the shutdown's drain has its own thread, so queries queued here cannot delay it
        self.queries = started_executor(QUERY_THREADS) if self.settings.loop_nice else QueryPool(QUERY_THREADS)
        loop.set_default_executor(self.queries)
        if self.settings.loop_nice:
            lower_loop_priority(self.settings.loop_nice)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopped.set)
        ticker = loop.create_task(self._tick())
        log.info("ingestd %s serving beacons on %s, admin on %s", __version__,
                 "%s:%d" % self.beacon_sock.getsockname()[:2],
                 "%s:%d" % self.admin_sock.getsockname()[:2] if self.admin_sock else "-",
                 extra={"version": __version__, "config": self.settings.redacted()})
        notifier = loop.create_task(sdnotify.supervise(self, self.settings.ready_timeout))
        await self.stopped.wait()
        sdnotify.notify("STOPPING=1")
        notifier.cancel()
        await self._shutdown(beacon, admin, ticker)

    async def _tick(self) -> None:
        """Once per TICK_SECONDS: the clock (and the 200 bodies), segment age, connection timeouts."""
        last_sweep = 0.0
        while True:
            await asyncio.sleep(TICK_SECONDS)
            now_s = int(time.time())
            if now_s != CLOCK.seconds:
                CLOCK.tick()
                self.app.refresh()
            self.spool.seal_if_due()
            now = time.monotonic()
            if now - last_sweep >= 1.0:
                last_sweep = now
                if self.recount_spool:
                    self.spool.resync()
                for conn in list(self.app.connections):
                    if conn.check_timeout(now):
                        self.metrics.connections_timed_out += 1

    async def _shutdown(self, beacon, admin, ticker) -> None:
        """Stop accepting, answer in-flight requests, seal, ship; all within --drain-timeout."""
        timeout = self.settings.drain_timeout
        deadline = time.monotonic() + timeout - min(EXIT_MARGIN_SECONDS, timeout * EXIT_MARGIN_FRACTION)
        log.info("shutting down: draining connections and the spool (up to %.1fs)", self.settings.drain_timeout)
        self.shutting_down = True
        beacon.close()
        if admin is not None:
            admin.close()  # no new admin queries; those running finish or are abandoned at exit
        for conn in list(self.app.connections):
            conn.shutdown()
        # Requests already parsed are answered after their group commit, one loop iteration away.
        connections_deadline = min(deadline, time.monotonic() + CONNECTION_DRAIN_SECONDS)
        while self.app.connections and time.monotonic() < connections_deadline:
            await asyncio.sleep(0.02)
        self.app.accepting = False
        self.app.commit()
        ticker.cancel()
        self.spool.close()
        if not self.ship:
            log.info("shutdown complete: spool sealed for the owner process to ship")
            return
        self.hold.clear()  # ship even if a benchmark held shipping: what is left waits for the next start
        loop = asyncio.get_running_loop()
        # Not on the default executor: admin queries (up to a minute each) may occupy or queue on it.
        drainer = ThreadPoolExecutor(1, thread_name_prefix="ingestd-drain")
        drained = await loop.run_in_executor(drainer, self.sink.drain, max(0.0, deadline - time.monotonic()))
        self.sink.stop()
        await loop.run_in_executor(drainer, self.sink.join, max(0.05, deadline - time.monotonic()))
        drainer.shutdown(wait=False)
        left = len(self.sink.pending())
        if drained and not left:
            log.info("shutdown complete: spool shipped")
        else:
            log.warning("shutdown: %d segment(s) left in the spool for the next start", left)
        if self.sink.is_alive():
            # An insert still running at the deadline: its segment stays on disk and is shipped
            # again (same dedup token) on the next start. Leave without waiting for it.
            log.warning("shutdown: drain timeout reached during an insert; exiting without waiting")
            self.abandon_sink = True
        self._drop_queries(loop)

    def _drop_queries(self, loop) -> None:
        """Called last in a shutdown: admin queries running or queued are not waited for."""
        if self.queries is None:
            return
        # Not cancel_futures: admin.py's done callback would raise CancelledError into the loop; the
        # queued queries never start anyway, as the process leaves with os._exit below.
        self.queries.shutdown(wait=False)
        # The loop's close waits for its default executor's threads: give it an idle one instead.
        loop.set_default_executor(ThreadPoolExecutor(1, thread_name_prefix="ingestd-executor"))
        if self.queries.unfinished:
            # The interpreter's exit would join the threads in the middle of a query: leave without them.
            log.warning("shutdown: %d admin quer%s running or queued; exiting without waiting",
                        self.queries.unfinished, "y" if self.queries.unfinished == 1 else "ies")
            self.abandon_sink = True


def serve(settings: Settings, beacon_sock=None, admin_sock=None) -> int:
    """Run one ingestd process until SIGTERM/SIGINT; sockets may be passed in already bound."""
    beacon_sock = beacon_sock or bind(settings.listen, reuse_port=settings.workers > 1)
    if admin_sock is None and settings.admin:
        admin_sock = bind(settings.admin)
    from .workers import leftover_spools

    own = Path(settings.spool)
    try:
        server = Server(settings, beacon_sock, admin_sock, ship_directories=[own, *leftover_spools(own, keep=0)])
    except SpoolError as exc:  # busy, or not writable: one line, not a traceback
        log.error("%s", exc)
        return 1
    return run_until_stopped(server, server.run())


def run_until_stopped(server: Server, main) -> int:
    """Run `main` (server.run(), or a coroutine around it) on uvloop, then leave as the shutdown decided."""
    uvloop.run(main)
    if server.abandon_sink:
        logging.shutdown()
        os._exit(0)  # the interpreter's teardown would wait on (or crash under) the running insert or query
    return 0
