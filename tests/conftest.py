"""Shared fixtures: a real ingestd process on ephemeral ports with a fresh embedded ClickHouse."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SERVING = re.compile(r"serving beacons on ([\d.]+):(\d+), admin on ([\d.]+):(\d+)")

# The upstream document's own example request (query string only).
DOCUMENT_EXAMPLE = (
    "kalsig=1ebb5aea0c5f253fd8c578febe6a752f&clientTag=kdp%3Av3%2E9%2E2"
    "&sessionId=C90BFCFC%2D2EBF%2D5893%2D892D%2D2121162F414A&eventIndex=3&eventType=2"
    "&referrer=http%253A%2F%2Fabc%2Ego%2Ecom%2Fshows%2Fthe%2Dbachelorette%2Fvideo%2Fmost%2Drecent%2FVDKA0%5Flawz79v7"
    "&entryId=0_n5nbuy6i&ks=YjdlZTNkMGUzZDYxMzY0OGJjZDVjOTYzOWVkMjFlNTg2ZmMyZDRlOXw1ODUyMzE7NTg1MjMxOzE0MzUx"
    "NjA2NzY7MDsxNDM1MDc0Mjc2Ljc2MTk7MDt2aWV3Oiosd2lkZ2V0OjE7Ow%3D%3D&sessionStartTime=1435075182567"
    "&uiConfId=23521211&partnerId=585231&position=18&clientVer=3%2E0%3Av3%2E9%2E2&playbackContext=sports"
    "&customVar1=Finnance"
)
DOCUMENT_KS = DOCUMENT_EXAMPLE.split("&ks=")[1].split("&")[0]


def beacon_app():
    """A BeaconApp with no disk and no loop: its spool rows collect in `app.spool.pending`, and the
    group commit is never run (the tests read the rows, not the replies)."""
    from ingestd.beacon import BeaconApp
    from ingestd.metrics import Metrics

    class Spool:
        over_cap = over_soft_cap = False

        def __init__(self):
            self.pending = []

        def append(self, row):
            self.pending.append(row)

    class Loop:
        def call_soon(self, callback):
            pass

    return BeaconApp(Spool(), Metrics(), Loop())


class Ingestd:
    """An `ingestd serve` child process; ports are read back from its start log line."""

    def __init__(self, tmp: Path, *args: str, clickhouse: str | None = None, spool: Path | None = None,
                 env: dict | None = None, prefix: list[str] | None = None):
        self.tmp = Path(tmp)
        self.prefix = list(prefix or [])  # a command the server runs under (e.g. a sandbox)
        self.clickhouse = clickhouse or f"chdb://{self.tmp / 'ch'}"
        self.spool = Path(spool or self.tmp / "spool")
        self.args = list(args)
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.log_lines: list[str] = []
        self.port = self.admin_port = 0

    def start(self, timeout: float = 60.0, wait_clickhouse: bool = True) -> "Ingestd":
        cmd = [*self.prefix, sys.executable, "-m", "ingestd", "serve", "--listen", "127.0.0.1:0",
               "--admin", "127.0.0.1:0", "--clickhouse", self.clickhouse, "--spool", str(self.spool), *self.args]
        env = {**os.environ, "PYTHONPATH": str(REPO), **self.env}
        env = {k: v for k, v in env.items() if not k.startswith("INGESTD_") or k in self.env}
        self.log_lines = []
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
                                     cwd=self.tmp)
        ready = threading.Event()

        def pump():
            for line in self.proc.stderr:
                self.log_lines.append(line)
                match = SERVING.search(line)
                if match and not ready.is_set():
                    self.port, self.admin_port = int(match.group(2)), int(match.group(4))
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(timeout) or not self.port:
            self.kill()
            raise RuntimeError("ingestd did not start:\n" + "".join(self.log_lines))
        if wait_clickhouse:
            self.wait_metric("ingestd_clickhouse_connected", 1, timeout)
        return self

    def metrics(self) -> dict[str, float]:
        """The admin /metrics page as {'name{labels}': value}."""
        with urllib.request.urlopen(self.admin_url + "/metrics", timeout=10) as response:
            text = response.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def wait_metric(self, name: str, at_least: float, timeout: float = 30.0) -> float:
        deadline = time.monotonic() + timeout
        value = 0.0
        while time.monotonic() < deadline:
            value = self.metrics().get(name, 0.0)
            if value >= at_least:
                return value
            time.sleep(0.05)
        raise AssertionError(f"{name} stayed at {value} (< {at_least}):\n" + self.log_text())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def get(self, path_and_query: str, **kw):
        return http_request(self.port, "GET", path_and_query, **kw)

    def post(self, path_and_query: str, body: bytes, content_type: str = "application/json", **kw):
        return http_request(self.port, "POST", path_and_query, body=body,
                            headers={"Content-Type": content_type}, **kw)

    def query(self, sql: str, fmt: str = "JSONEachRow") -> list[dict]:
        """Rows of a read-only query through the admin listener."""
        import json

        url = self.admin_url + "/query?" + urllib.parse.urlencode({"query": sql, "default_format": fmt})
        with urllib.request.urlopen(url, timeout=60) as response:
            text = response.read().decode()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def wait_rows(self, sql_count: str, expected: int, timeout: float = 30.0) -> int:
        """Poll a `SELECT count() AS n …` query until it reaches `expected`; return the last count."""
        deadline = time.monotonic() + timeout
        count = -1
        while time.monotonic() < deadline:
            rows = self.query(sql_count)
            count = int(rows[0]["n"]) if rows else 0
            if count >= expected:
                return count
            time.sleep(0.2)
        return count

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_text(self) -> str:
        return "".join(self.log_lines)


def http_request(port: int, method: str, target: str, body: bytes | None = None, headers: dict | None = None,
                 timeout: float = 10.0):
    """One request on a fresh connection: (status, headers {lower: value}, body bytes)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def query_direct(dsn: str, sql: str) -> list[tuple]:
    """Rows from a database no server holds (after it stopped)."""
    sys.path.insert(0, str(REPO))
    from ingestd import clickhouse

    client = clickhouse.connect(dsn)
    try:
        return client.query(sql).result_rows
    finally:
        client.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ingestd(tmp_path):
    """A running server with a fresh embedded ClickHouse; stopped (SIGTERM) after the test."""
    server = Ingestd(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def make_ingestd(tmp_path):
    """Factory for servers with extra flags; all are stopped after the test."""
    started = []

    def make(*args, **kw):
        kw.setdefault("spool", None)
        server = Ingestd(kw.pop("tmp", tmp_path), *args, **kw)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()
