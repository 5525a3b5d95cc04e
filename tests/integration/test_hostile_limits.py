"""Limits against a running server: slowloris, --max-connections, --rate-limit, client IP modes behind a proxy."""
import asyncio
import socket
import statistics
import threading
import time

from conftest import DOCUMENT_EXAMPLE

BEACON = "/api_v3/index.php?service=analytics&action=trackEvent&" + DOCUMENT_EXAMPLE
REQUEST = f"GET {BEACON} HTTP/1.1\r\nHost: t\r\n\r\n".encode()


def read_response(sock: socket.socket, buf: bytearray) -> tuple[int, bytes]:
    """One response from a keep-alive socket (our server always sends content-length)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(rest) < length:
        rest += sock.recv(65536)
    del buf[:len(head) + 4 + length]
    return int(head.split(b" ")[1]), head + b"\r\n\r\n" + rest[:length]


def beacon_latencies(port: int, seconds: float, stop: threading.Event | None = None) -> list[float]:
    """Valid beacons one after another on one keep-alive connection; each round trip in seconds."""
    latencies = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not (stop and stop.is_set()):
            started = time.perf_counter()
            sock.sendall(REQUEST)
            status, _ = read_response(sock, buf)
            latencies.append(time.perf_counter() - started)
            assert status == 200
            time.sleep(0.005)
    return latencies


async def slowloris(port: int, opened: list, closed: list, limit: float) -> None:
    """Send a request one byte a second until the server hangs up; record when it did and what it said."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    opened.append(started)
    payload = REQUEST
    said = b""
    try:
        for i in range(len(payload)):
            writer.write(payload[i:i + 1])
            try:
                said = await asyncio.wait_for(reader.read(1024), 1.0)
                if said or reader.at_eof():
                    break
            except asyncio.TimeoutError:
                pass
            if time.monotonic() - started > limit:
                break
        else:
            said = b"sent it all"
        if said and not reader.at_eof():
            said += await asyncio.wait_for(reader.read(), 2)
    except (ConnectionResetError, BrokenPipeError):
        said = said or b"reset"
    closed.append((time.monotonic() - started, said))
    writer.close()


def test_slowloris_closed_at_header_timeout_while_beacons_flow(make_ingestd):
    """50 connections sending one byte a second are cut at the 2 s header timeout; other beacons get 200 fast."""
    server = make_ingestd("--header-timeout", "2").start()
    beacon_latencies(server.port, 0.3)  # warm the path
    opened, closed, results = [], [], {}
    stop = threading.Event()

    def measure():
        results["latencies"] = beacon_latencies(server.port, 8, stop)

    client = threading.Thread(target=measure)

    async def attack():
        tasks = [asyncio.create_task(slowloris(server.port, opened, closed, 8)) for _ in range(50)]
        await asyncio.sleep(0.2)
        client.start()
        await asyncio.gather(*tasks)

    asyncio.run(attack())
    stop.set()
    client.join()
    latencies = sorted(results["latencies"])
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(f"\nslowloris: {len(closed)} closed after {min(t for t, _ in closed):.1f}-{max(t for t, _ in closed):.1f} s; "
          f"{len(latencies)} beacons meanwhile, median {statistics.median(latencies) * 1000:.2f} ms, "
          f"p99 {p99 * 1000:.2f} ms")
    assert len(closed) == 50
    for elapsed, said in closed:
        assert 2.0 <= elapsed <= 4.0, elapsed  # the header timeout, swept once a second
        assert said.startswith(b"HTTP/1.1 408"), said[:60]
    assert len(latencies) > 200 and p99 < 0.010
    assert server.metrics()["ingestd_connections_timed_out_total"] >= 50


async def idle_connections(port: int, count: int) -> list:
    conns = []
    for _ in range(count):
        conns.append(await asyncio.open_connection("127.0.0.1", port))
    return conns


def test_max_connections_with_500_idle_connections_still_serves_beacons(make_ingestd):
    """At --max-connections the longest-idle connections make room: a flood of idle sockets locks nobody out."""
    server = make_ingestd("--max-connections", "100").start()

    async def scenario():
        conns = await idle_connections(server.port, 500)
        await asyncio.sleep(0.3)
        loop = asyncio.get_running_loop()
        statuses = [await loop.run_in_executor(None, lambda: server.get(BEACON)[0]) for _ in range(20)]
        still_open = 0
        for reader, writer in conns:
            try:
                data = await asyncio.wait_for(reader.read(1), 0.01)
                still_open += data != b"" and not reader.at_eof()
            except asyncio.TimeoutError:
                still_open += 1
            writer.close()
        return statuses, still_open

    statuses, still_open = asyncio.run(scenario())
    metrics = server.metrics()
    assert statuses == [200] * 20
    assert still_open <= 100
    assert metrics["ingestd_connections_evicted_total"] >= 400
    assert metrics["ingestd_connections_refused_total"] == 0


def test_max_connections_refuses_with_503_when_every_connection_is_busy(make_ingestd):
    """When all open connections are mid-request (and recent), a newcomer gets 503 + Retry-After and is closed."""
    server = make_ingestd("--max-connections", "10", "--header-timeout", "5").start()
    busy = []
    for _ in range(10):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(b"GET /collect?eventType=")  # a request begun, not finished
        busy.append(sock)
    time.sleep(0.1)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in answer and b"connection: close" in answer
    assert server.metrics()["ingestd_connections_refused_total"] == 1
    time.sleep(1.2)  # now the stalled requests are older than a second: the next newcomer cuts one of them
    assert server.get(BEACON)[0] == 200
    for sock in busy:
        sock.close()


def test_rate_limit_per_client_behind_a_trusted_proxy(make_ingestd):
    """--rate-limit 1/s: a burst of 2 passes, then 429 + Retry-After; another client is unaffected; IPs truncated."""
    # (1/s so that a slow, shared machine cannot refill a token while the 15 requests are sent)
    server = make_ingestd("--rate-limit", "1/s", "--trust-proxy", "127.0.0.1/32", "--ip-mode", "truncate").start()
    hostile = {"X-Forwarded-For": "6.6.6.6, 203.0.113.77"}  # the client's own claim (6.6.6.6) is not believed
    answers = [server.get(BEACON, headers=hostile) for _ in range(15)]
    statuses = [status for status, _, _ in answers]
    assert statuses[:2] == [200] * 2 and statuses[2:] == [429] * 13, statuses
    status, headers, body = answers[-1]
    assert headers["retry-after"] == "1" and b"rate limit" in body
    assert server.get(BEACON, headers={"X-Forwarded-For": "198.51.100.9"})[0] == 200
    time.sleep(1.1)
    assert server.get(BEACON, headers=hostile)[0] == 200  # refilled at 1/s
    metrics = server.metrics()
    assert metrics["ingestd_rate_limited_total"] == 13 and metrics['ingestd_http_responses_total{status="429"}'] == 13
    assert server.wait_rows("SELECT count() AS n FROM analytics.events", 4) == 4
    ips = {row["ip"]: int(row["n"]) for row in
           server.query("SELECT ip, count() AS n FROM analytics.events GROUP BY ip")}
    assert ips == {"203.0.113.0": 3, "198.51.100.0": 1}


def test_untrusted_peer_cannot_spoof_and_hash_mode_hides_the_address(make_ingestd):
    """Without --trust-proxy the headers are ignored; --ip-mode hash stores a keyed hash, in both tables."""
    server = make_ingestd("--ip-mode", "hash").start()
    spoof = {"X-Forwarded-For": "203.0.113.5", "Forwarded": "for=198.51.100.5"}
    assert server.get(BEACON, headers=spoof)[0] == 200
    assert server.get(BEACON)[0] == 200
    assert server.get("/collect?eventType=abc", headers=spoof)[0] == 400
    assert server.wait_rows("SELECT count() AS n FROM analytics.events", 2) == 2
    assert server.wait_rows("SELECT count() AS n FROM analytics.rejected_events", 1) == 1
    ips = [r["ip"] for r in server.query("SELECT ip FROM analytics.events UNION ALL "
                                         "SELECT ip FROM analytics.rejected_events")]
    assert len(set(ips)) == 1 and len(ips[0]) == 16 and int(ips[0], 16) >= 0  # the same peer, hashed
    assert ips[0] not in ("127.0.0.1", "203.0.113.5", "198.51.100.5")
    keys = list((server.spool / "ip-keys").glob("ip-hash-key-*"))
    assert len(keys) == 1 and keys[0].stat().st_mode & 0o077 == 0


def test_oversized_upload_gets_its_413_not_a_reset(make_ingestd):
    """The server refuses at 64 KiB but drains the rest (lingering close), so the client reads the 413."""
    server = make_ingestd().start()
    body = b"a" * (1 << 20)
    head = b"POST /collect HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body)
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(head + body)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 413") and b"connection: close" in answer
    assert server.get(BEACON)[0] == 200
