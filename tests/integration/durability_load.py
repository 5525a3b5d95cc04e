"""A pipelining asyncio load client for the durability tests: it records the key of every 200 it gets.

Each beacon carries a unique (sessionId, eventIndex) key. A connection sends `pipeline` requests
with one write, then reads their replies in order. A key whose reply never arrived (the server died
or closed the connection first) is "in flight": it may or may not have been stored.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PARTNER_ID = 4242
BEACON_PATH = (
    "/api_v3/index.php?service=analytics&action=trackEvent&eventType=3&partnerId=%d&entryId=0_durable"
    "&flavourId=0_f&bufferTime=0.5&actualBitrate=800&preferredBitrate=800&position=12.5"
    "&clientTag=kdp%%3Av3%%2E9%%2E2&referrer=https%%3A%%2F%%2Fexample.com%%2Fwatch"
    "&sessionId={session}&eventIndex={index}" % PARTNER_ID
)
REQUEST = "GET " + BEACON_PATH + " HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: durability-load\r\n\r\n"
CONNECT_RETRY_SECONDS = 0.05  # while the server is down (killed, restarting), retry this often


def beacon_path(session: str, index: int) -> str:
    return BEACON_PATH.format(session=session, index=index)


@dataclass
class LoadResult:
    acked: set = field(default_factory=set)  # keys answered 200
    in_flight: set = field(default_factory=set)  # keys sent whose reply never came
    refused: dict = field(default_factory=dict)  # status -> count (non-200 replies)
    refused_keys: set = field(default_factory=set)
    retry_after: set = field(default_factory=set)  # Retry-After values seen on 503s
    refusal_bodies: set = field(default_factory=set)  # distinct bodies of non-200 replies
    bodies: set = field(default_factory=set)  # distinct 200 bodies (sampled)
    sent: int = 0
    connection_errors: int = 0


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


class Load:
    """`total` beacons over `connections` keep-alive connections to the port `port()` returns."""

    def __init__(self, port, total: int, connections: int = 16, pipeline: int = 8, session: str = "load",
                 stop_on_refusal: bool = False):
        self.port = port  # a callable: the server may restart on another port
        self.total = total
        self.connections = connections
        self.pipeline = pipeline
        self.session = session
        self.stop_on_refusal = stop_on_refusal
        self.result = LoadResult()
        self._next = 0
        self.stopped = False

    def _take(self, conn_id: int) -> list[tuple[str, int]]:
        n = min(self.pipeline, self.total - self._next)
        if n <= 0 or self.stopped:
            return []
        first = self._next
        self._next += n
        return [(f"{self.session}-{conn_id}", i) for i in range(first, first + n)]

    async def _connection(self, conn_id: int, deadline: float) -> None:
        result = self.result
        keys: list = []
        while time.monotonic() < deadline and not self.stopped:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port())
            except OSError:
                result.connection_errors += 1
                await asyncio.sleep(CONNECT_RETRY_SECONDS)
                continue
            try:
                while time.monotonic() < deadline:
                    keys = self._take(conn_id)
                    if not keys:
                        return
                    writer.write("".join(REQUEST.format(session=s, index=i) for s, i in keys).encode())
                    result.sent += len(keys)
                    while keys:
                        status, headers, body = await _read_response(reader)
                        key = keys.pop(0)
                        if status == 200:
                            result.acked.add(key)
                            if len(result.bodies) < 16:
                                result.bodies.add(body)
                        else:
                            result.refused[status] = result.refused.get(status, 0) + 1
                            result.refused_keys.add(key)
                            result.refusal_bodies.add(body)
                            if "retry-after" in headers:
                                result.retry_after.add(headers["retry-after"])
                            if self.stop_on_refusal:
                                self.stopped = True
                        if headers.get("connection") == "close":
                            raise ConnectionResetError("server closed the connection")
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                result.connection_errors += 1
                result.in_flight.update(keys)
                keys = []
            finally:
                writer.close()
        result.in_flight.update(keys)

    async def run(self, timeout: float = 120.0) -> LoadResult:
        deadline = time.monotonic() + timeout
        await asyncio.gather(*(self._connection(c, deadline) for c in range(self.connections)))
        return self.result

    def run_alongside(self, action, timeout: float = 120.0) -> LoadResult:
        """Run the load and the coroutine `action()` (kills, signals) together; return what the load saw."""
        async def both():
            task = asyncio.create_task(action())
            result = await self.run(timeout)
            await task
            return result

        return asyncio.run(both())

    @property
    def acked_count(self) -> int:
        return len(self.result.acked)


# -- checks shared by the durability tests ------------------------------------------------------------
STORED_KEYS_SQL = (
    "SELECT session_id, event_index, count() AS n FROM analytics.events "
    f"WHERE partner_id = {PARTNER_ID} GROUP BY session_id, event_index"
)


def run_load(port, total: int, **kw) -> LoadResult:
    """Run a load to completion (or its timeout) and return what it saw."""
    timeout = kw.pop("timeout", 60.0)
    return asyncio.run(Load(port if callable(port) else (lambda: port), total, **kw).run(timeout))


def check_exactly_once(stored: list[tuple[str, int, int]], result: LoadResult) -> int:
    """Every 200 stored once, nothing twice, extras only among in-flight keys; return the extras."""
    twice = [row for row in stored if row[2] > 1]
    assert not twice, f"{len(twice)} beacons stored more than once, e.g. {twice[:5]}"
    keys = {(s, int(i)) for s, i, _ in stored}
    missing = result.acked - keys
    assert not missing, f"{len(missing)} acknowledged beacons lost, e.g. {sorted(missing)[:5]}"
    extra = keys - result.acked
    unexplained = extra - result.in_flight
    assert not unexplained, f"{len(unexplained)} stored beacons were refused or never sent: {sorted(unexplained)[:5]}"
    return len(extra)


def stored_via_admin(server) -> list[tuple[str, int, int]]:
    return [(r["session_id"], int(r["event_index"]), int(r["n"])) for r in server.query(STORED_KEYS_SQL)]


def spool_files(directory: Path) -> list[Path]:
    return sorted(p for p in Path(directory).iterdir() if p.suffix in (".seg", ".open"))


def wait_drained(server, timeout: float = 90.0) -> None:
    """Until the server's spool is empty: every leftover and new segment shipped."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not spool_files(server.spool) and server.metrics().get("ingestd_spool_bytes") == 0:
            return
        time.sleep(0.1)
    raise AssertionError("spool did not drain:\n" + server.log_text()[-3000:])


def spooled_keys(directory: Path) -> set:
    """(sessionId, eventIndex) of every load beacon in a spool directory's segment files."""
    import orjson
    from urllib.parse import parse_qs

    keys = set()
    for path in spool_files(directory):
        for line in path.read_bytes().splitlines():
            row = orjson.loads(line)
            params = parse_qs(row[4])
            if "sessionId" in params:
                keys.add((params["sessionId"][0], int(params["eventIndex"][0])))
    return keys


def ingestd_cli(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run `python -m ingestd ARGS` as a user would."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTD_")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "ingestd", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
