"""The systemd notification protocol (sd_notify): READY, STATUS, WATCHDOG and STOPPING datagrams.

`notify()` is the protocol (one datagram to $NOTIFY_SOCKET); `supervise()` is the task a server's
event loop runs so that systemd learns when it is ready, what it is doing, and that the loop is alive.
Under `--workers N` the workers' $NOTIFY_SOCKET is the supervisor's (ingestd.workers), not systemd's.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

log = logging.getLogger("ingestd.sdnotify")

STATUS_PERIOD = 5.0  # seconds between STATUS= lines (systemctl status shows the last one)


def notify(message: str) -> bool:
    """Send `message` (e.g. "READY=1") to systemd if it is listening; False when not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            # never block the event loop: a listener that does not read loses messages, not our time
            sock.send(message.encode(), socket.MSG_DONTWAIT)
        return True
    except OSError:
        return False


def watchdog_period() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of $WATCHDOG_USEC, as sd_watchdog_enabled(3) advises), or None."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    owner = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (owner.isdigit() and int(owner) != os.getpid()):
        return None
    return int(usec) / 2e6


def status_text(events_per_second: float, spool_bytes: int, segments: int, clickhouse: str) -> str:
    """The STATUS= line, plus machine-readable INGESTD_* fields a --workers supervisor adds up."""
    return (f"STATUS={events_per_second:.0f} events/s, spool {spool_bytes / 1048576:.1f} MiB "
            f"({segments} segments), ClickHouse {clickhouse}\n"
            f"INGESTD_EVENTS_PER_S={events_per_second:.1f}\nINGESTD_SPOOL_BYTES={spool_bytes}")


async def supervise(server, ready_timeout: float) -> None:
    """Run on the server's loop: READY=1 once ClickHouse is migrated (or after `ready_timeout`, still
    spooling), then STATUS= every STATUS_PERIOD and WATCHDOG=1 at the watchdog period."""
    sink = server.sink
    shipping = server.ship
    period = watchdog_period()
    deadline = time.monotonic() + ready_timeout
    next_ping = 0.0
    while shipping and not sink.connected.is_set() and time.monotonic() < deadline:
        if period and time.monotonic() >= next_ping:  # systemd's watchdog may run before READY=1
            notify("WATCHDOG=1")
            next_ping = time.monotonic() + period
        await asyncio.sleep(0.05)
    counted = server.metrics.events_accepted
    last_count, last_at = sum(counted.values()), time.monotonic()

    def status() -> str:
        nonlocal last_count, last_at
        count, now = sum(counted.values()), time.monotonic()
        rate = (count - last_count) / max(now - last_at, 1e-3)
        last_count, last_at = count, now
        if not shipping:
            state = "shipped by the owner process"
        elif sink.connected.is_set() and sink.healthy:
            state = "connected"
        else:
            state = "unreachable, spooling: " + (sink.last_error or "connecting")
        return status_text(rate, server.spool.bytes_on_disk, sink.backlog_segments, state)

    if shipping and not sink.connected.is_set():
        log.warning("ClickHouse not ready after %.0fs: reporting ready anyway, beacons are spooled", ready_timeout)
    notify(status() + "\nREADY=1")
    next_status = time.monotonic() + STATUS_PERIOD
    while True:
        await asyncio.sleep(min(period or STATUS_PERIOD, STATUS_PERIOD))
        if period:
            notify("WATCHDOG=1")  # sent from the event loop itself: a stuck loop stops the pings
        if time.monotonic() >= next_status:
            next_status += STATUS_PERIOD
            notify(status())
