"""systemd's notification protocol, spoken for real: a unix datagram socket stands in for systemd."""
from __future__ import annotations

import socket
import time

import pytest
from conftest import DOCUMENT_EXAMPLE, Ingestd, free_port

BEACON = "/api_v3/index.php?service=analytics&action=trackEvent&" + DOCUMENT_EXAMPLE


class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET: collects (time, message) datagrams."""

    def __init__(self, path):
        self.path = str(path)  # NOTIFY_SOCKET's value; "@name" is an abstract socket, as systemd allows
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.path[1:] if self.path.startswith("@") else self.path)
        self.messages: list[tuple[float, str]] = []

    def wait_for(self, line: str, timeout: float, nth: int = 1) -> str:
        """The `nth` message holding `line` (as one of its lines), waiting up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            found = [m for _, m in self.messages if line in m.splitlines()]
            if len(found) >= nth:
                return found[nth - 1]
            if time.monotonic() >= deadline:
                raise AssertionError(f"no {line!r} #{nth} within {timeout}s; got {[m for _, m in self.messages]}")
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))
            except socket.timeout:
                pass

    def close(self):
        self.sock.close()


@pytest.fixture
def systemd(tmp_path):
    fake = FakeSystemd(tmp_path / "notify.sock")
    yield fake
    fake.close()


def test_ready_after_migrations_and_listener_then_watchdog_then_stopping(tmp_path, systemd):
    """READY=1 comes once the port accepts and the schema exists; WATCHDOG=1 pings; STOPPING=1 on SIGTERM."""
    server = Ingestd(tmp_path, env={"NOTIFY_SOCKET": systemd.path, "WATCHDOG_USEC": "300000"})
    server.start(wait_clickhouse=False)
    try:
        ready = systemd.wait_for("READY=1", 60)
        assert any(line.startswith("STATUS=") and "events/s" in line and "ClickHouse connected" in line
                   for line in ready.splitlines()), ready
        status, _, _ = server.get(BEACON)  # the port accepts
        assert status == 200
        assert server.query("SELECT count() AS n FROM analytics.schema_migrations")[0]["n"] >= 1
        systemd.wait_for("WATCHDOG=1", 2, nth=5)  # they keep coming, every 150 ms (half of WATCHDOG_USEC)
        server.proc.send_signal(15)
        systemd.wait_for("STOPPING=1", 10)
        assert server.proc.wait(30) == 0
    finally:
        server.stop()


def test_ready_with_clickhouse_unreachable_after_bounded_wait(tmp_path, systemd):
    """ClickHouse down at start: READY=1 after --ready-timeout, STATUS says so, beacons are spooled."""
    dsn = f"http://127.0.0.1:{free_port()}/"
    server = Ingestd(tmp_path, "--ready-timeout", "0.5", "--drain-timeout", "0.5", clickhouse=dsn,
                     env={"NOTIFY_SOCKET": systemd.path, "WATCHDOG_USEC": "200000"})
    server.start(wait_clickhouse=False)
    try:
        ready = systemd.wait_for("READY=1", 30)
        assert "unreachable, spooling" in ready, ready
        messages = [m for _, m in systemd.messages]
        assert "WATCHDOG=1" in messages[:messages.index(ready)]  # the loop pings while READY=1 waits
        status, _, _ = server.get(BEACON)
        assert status == 200
        assert server.metrics()["ingestd_clickhouse_connected"] == 0
    finally:
        assert server.stop() == 0
    assert "ClickHouse not ready after" in server.log_text()
