"""--workers 2 on the embedded engine: two processes serve one port, every acknowledged event lands
once, and a worker killed with kill -9 is restarted and its spool shipped."""
from __future__ import annotations

import http.client
import json
import os
import signal
import time

from conftest import DOCUMENT_EXAMPLE, Ingestd, free_port, query_direct
from test_ops_sdnotify import FakeSystemd

SESSION = "C90BFCFC%2D2EBF%2D5893%2D892D%2D2121162F414A"


def beacon(n: int) -> str:
    return ("/api_v3/index.php?service=analytics&action=trackEvent&"
            + DOCUMENT_EXAMPLE.replace(SESSION, f"ops-w-{n}"))


def serving_workers(server: Ingestd) -> dict[int, bool]:
    """{pid: is_owner} of every worker that logged its start line."""
    found = {}
    for line in server.log_lines:
        if "serving beacons on" in line:
            entry = json.loads(line)
            found[entry["pid"]] = not entry["msg"].endswith("admin on -")
    return found


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    if not os.path.isdir(f"/proc/{pid}/fd"):  # a worker that was killed
        return inodes
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def serving_pid(server_port: int, client_port: int, pids) -> int | None:
    """The pid holding the server side of a 127.0.0.1 connection, read from /proc/net/tcp."""
    wanted = (f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}")
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            if (cols[1], cols[2]) == wanted:
                for pid in pids:
                    if cols[9] in socket_inodes(pid):
                        return pid
    return None


def send(server: Ingestd, numbers, per_connection: int = 5) -> tuple[int, set[int]]:
    """Send one beacon per number, keep-alive; return (acknowledged, pids that served them)."""
    acked, pids, workers = 0, set(), list(serving_workers(server))
    numbers = list(numbers)
    for start in range(0, len(numbers), per_connection):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
        for n in numbers[start:start + per_connection]:
            conn.request("GET", beacon(n))
            response = conn.getresponse()
            response.read()
            acked += response.status == 200
        pids.add(serving_pid(server.port, conn.sock.getsockname()[1], workers))
        conn.close()
    return acked, pids


def test_two_workers_share_the_port_and_survive_kill_9(tmp_path):
    systemd = FakeSystemd(tmp_path / "notify.sock")
    server = Ingestd(tmp_path, "--workers", "2", "--segment-max-age-ms", "3000",
                     env={"NOTIFY_SOCKET": systemd.path})
    try:
        server.start()
        assert "READY=1" in systemd.wait_for("READY=1", 60)  # the supervisor's, once both workers are ready
        workers = wait_for(lambda: len(serving_workers(server)) == 2 and serving_workers(server), 30, "2 workers")
        owner = next(pid for pid, is_owner in workers.items() if is_owner)
        spooler = next(pid for pid, is_owner in workers.items() if not is_owner)

        acked, pids = send(server, range(0, 200))
        assert acked == 200
        assert pids == {owner, spooler}, f"connections served by {pids}, workers {workers}"
        # the owner's /metrics adds up both workers
        wait_for(lambda: server.metrics().get('ingestd_http_responses_total{status="200"}') == 200, 10,
                 "/metrics to count both workers' 200 responses")
        open_segments = list((tmp_path / "spool" / "w1").glob("*.open"))
        assert open_segments and open_segments[0].stat().st_size > 0  # unsealed, acknowledged rows

        os.kill(spooler, signal.SIGKILL)
        wait_for(lambda: len(serving_workers(server)) == 3, 30, "the killed worker's restart")
        restarted = next(pid for pid in serving_workers(server) if pid not in workers)
        more, pids = send(server, range(200, 300))
        acked += more
        assert more == 100
        assert restarted in pids or pids == {owner}  # the kernel chose; either way nothing was refused
        assert "worker 1 (pid %d) died (signal 9)" % spooler in server.log_text()

        # the killed worker's open segment was sealed by its successor and shipped by the owner
        shipped = server.wait_rows("SELECT count() AS n FROM analytics.events WHERE startsWith(session_id, 'ops-w-')",
                                   acked, timeout=30)
        assert shipped == acked
        assert not open_segments[0].exists()

        # the owner (database, admin listener, shipping) survives kill -9 too
        more, _ = send(server, range(300, 340))
        acked += more
        owner_open = list((tmp_path / "spool" / "w0").glob("*.open"))
        os.kill(owner, signal.SIGKILL)
        wait_for(lambda: len(serving_workers(server)) == 4, 30, "the owner's restart")
        assert "worker 0 (pid %d) died (signal 9)" % owner in server.log_text()
        server.wait_metric("ingestd_clickhouse_connected", 1)  # reopened the embedded database
        assert server.wait_rows("SELECT count() AS n FROM analytics.events WHERE startsWith(session_id, 'ops-w-')",
                                acked, timeout=30) == acked
        assert not any(p.exists() for p in owner_open)
    finally:
        code = server.stop()
    try:
        systemd.wait_for("STOPPING=1", 5)
    finally:
        systemd.close()
    assert code == 0
    rows = query_direct(server.clickhouse, "SELECT count(), uniqExact(session_id) FROM analytics.events "
                                           "WHERE startsWith(session_id, 'ops-w-')")
    assert rows == [(acked, acked)]  # every acknowledged event exactly once


def test_a_worker_whose_loop_is_stuck_is_killed_and_restarted(tmp_path):
    """The supervisor is the workers' watchdog (WATCHDOG_USEC passed on): SIGSTOP stands in for a stuck loop."""
    systemd = FakeSystemd(tmp_path / "notify.sock")
    server = Ingestd(tmp_path, "--workers", "2", env={"NOTIFY_SOCKET": systemd.path, "WATCHDOG_USEC": "1000000"})
    try:
        server.start()
        systemd.wait_for("READY=1", 60)
        workers = wait_for(lambda: len(serving_workers(server)) == 2 and serving_workers(server), 30, "2 workers")
        stuck = next(pid for pid, is_owner in workers.items() if not is_owner)
        os.kill(stuck, signal.SIGSTOP)
        wait_for(lambda: len(serving_workers(server)) == 3, 30, "the stuck worker's replacement")
        assert f"worker 1 (pid {stuck}) silent for" in server.log_text()
        systemd.wait_for("WATCHDOG=1", 5, nth=4)  # the supervisor itself kept pinging systemd
        assert server.get("/api_v3/index.php?service=analytics&action=trackEvent&" + DOCUMENT_EXAMPLE)[0] == 200
    finally:
        code = server.stop()
        systemd.close()
    assert code == 0


def test_a_worker_that_keeps_dying_stops_the_service_for_systemd(tmp_path):
    """Its socket would leave 1/N of connections unanswered: after 5 quick deaths the supervisor exits 1."""
    (tmp_path / "spool").mkdir()
    (tmp_path / "spool" / "w1").write_text("not a directory")  # worker 1 cannot open its spool
    server = Ingestd(tmp_path, "--workers", "2")
    server.start(wait_clickhouse=False)
    try:
        assert server.proc.wait(60) == 1
    finally:
        server.kill()
    log = server.log_text()
    assert log.count("worker 1 (pid") >= 5 and "died 5 times in a row" in log
    assert "shutdown complete" in log  # the owner still stopped in order


def test_workers_together_hold_at_most_the_spool_cap(tmp_path):
    """--workers 2 with ClickHouse down: the spools together stop at --spool-max-bytes, and /readyz says so."""
    cap = 256 * 1024
    server = Ingestd(tmp_path, "--workers", "2", "--spool-max-bytes", str(cap), "--segment-max-bytes", "16K",
                     clickhouse=f"http://127.0.0.1:{free_port()}/")
    try:
        server.start(wait_clickhouse=False)
        wait_for(lambda: len(serving_workers(server)) == 2, 60, "both workers")
        refused = 0
        for n in range(4000):  # a new connection each: the kernel spreads them over both workers
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
            conn.request("GET", beacon(n))
            response = conn.getresponse()
            response.read()
            conn.close()
            refused += response.status == 503
            if refused > 300:
                break
        assert refused > 300
        on_disk = sum(p.stat().st_size for p in server.spool.rglob("*") if p.suffix in (".seg", ".open"))
        # each worker may pass its share by the one group commit that crossed it
        assert cap // 2 < on_disk <= cap + 8192
        wait_for(lambda: "over its share of the cap" in readyz(server) or "over its cap" in readyz(server),
                 10, "/readyz to report the full spool")
        assert server.stop() == 0
    finally:
        server.kill()


def readyz(server: Ingestd) -> str:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(server.admin_url + "/readyz", timeout=10) as response:
            return response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.read().decode()



def test_a_stopping_supervisor_refuses_new_connections_instead_of_leaving_them_hanging(tmp_path):
    """Our copy of a worker's listening socket kept it in the SO_REUSEPORT group after the worker closed
    its own: the kernel completed handshakes that nobody read until the supervisor exited. And with a
    ClickHouse server the workers drained one after another, the owner serving meanwhile."""
    import socket

    blackhole = socket.socket()  # a ClickHouse that never answers: each drain lasts --drain-timeout
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(64)
    dsn = f"http://u:pw@127.0.0.1:{blackhole.getsockname()[1]}/"
    server = Ingestd(tmp_path, "--workers", "2", "--drain-timeout", "5", "--ready-timeout", "1", clickhouse=dsn)
    try:
        server.start(wait_clickhouse=False)
        wait_for(lambda: len(serving_workers(server)) == 2, 30, "2 workers")
        stopped_at = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(1)
        hanging = 0
        for _ in range(12):
            try:
                with socket.create_connection(("127.0.0.1", server.port), timeout=0.3) as sock:
                    sock.sendall(b"GET /collect HTTP/1.1\r\nHost: x\r\n\r\n")
                    sock.recv(1)  # an answer or the close: not hanging
            except (ConnectionRefusedError, ConnectionResetError):
                pass
            except (TimeoutError, socket.timeout):
                hanging += 1
        assert hanging == 0
        assert server.proc.wait(timeout=30) == 0
        assert time.monotonic() - stopped_at < 9  # the two 5 s drains ran side by side, not one after another
    finally:
        server.stop()
        blackhole.close()
