"""Backpressure and write failures: a 503 with Retry-After instead of a 200 for what is not on disk."""
from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request

import pytest
from conftest import Ingestd, free_port
from durability_load import (
    PARTNER_ID, beacon_path, check_exactly_once, run_load, spool_files, spooled_keys, stored_via_admin,
    wait_drained,
)

CAP = 256 * 1024


def dead_clickhouse() -> str:
    return f"http://127.0.0.1:{free_port()}"


def admin_get(server: Ingestd, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(server.admin_url + path, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def json_beacon(server: Ingestd, index: int) -> dict:
    body = {"eventType": 3, "partnerId": PARTNER_ID, "entryId": "0_durable", "flavourId": "0_f",
            "sessionId": "json", "eventIndex": index, "bufferTime": 0, "actualBitrate": 1, "preferredBitrate": 1}
    status, _, reply = server.post("/api_v3/index.php?service=analytics&action=trackEvent",
                                   json.dumps(body).encode())
    assert status == 200, reply
    return json.loads(reply)


def test_spool_cap_answers_503_then_recovers_when_clickhouse_returns(tmp_path):
    """Over the cap: 503 + Retry-After, /readyz 503, nothing refused on disk; a reachable restart drains it."""
    server = Ingestd(tmp_path, "--spool-max-bytes", str(CAP), "--segment-max-bytes", "16K",
                     clickhouse=dead_clickhouse()).start(wait_clickhouse=False)
    try:
        assert json_beacon(server, 0)["viewEventsEnabled"] is True
        # Below the soft threshold (half the cap) every beacon is taken; above it JSON players are
        # told to stop their VIEW heartbeats.
        below_soft = run_load(server.port, 100, connections=4, session="soft")
        assert len(below_soft.acked) == 100
        while server.metrics()["ingestd_spool_bytes"] < CAP // 2:
            more = run_load(server.port, 20, connections=1, session=f"fill{len(below_soft.acked)}")
            assert len(more.acked) == 20
            below_soft.acked |= more.acked
        assert json_beacon(server, 1)["viewEventsEnabled"] is False
        assert server.metrics()["ingestd_view_events_disabled_total"] == 1
        assert admin_get(server, "/readyz")[0] == 200

        result = run_load(server.port, 2000, connections=16, session="cap")
        assert 0 < len(result.acked) < 2000
        assert result.refused == {503: 2000 - len(result.acked) - len(result.in_flight)}
        assert result.retry_after == {"5"}
        status, _, body = server.get("/collect?" + beacon_path("after", 0).split("?", 1)[1])
        assert (status, body) == (503, b"spool full: ClickHouse is behind; retry later\n")
        status, _, body = server.post("/collect", b"{not json")  # rejected rows count against the cap too
        assert status == 503
        status, reason = admin_get(server, "/readyz")
        assert status == 503 and "over its cap" in reason
        on_disk = spooled_keys(server.spool)
        assert result.acked <= on_disk and below_soft.acked <= on_disk
        assert not (result.refused_keys & on_disk)  # a 503 was not written either
        assert server.stop() == 0
    finally:
        server.kill()

    server = Ingestd(tmp_path, "--spool-max-bytes", str(CAP), "--segment-max-bytes", "16K").start()
    try:
        wait_drained(server)
        assert admin_get(server, "/readyz")[0] == 200
        after = run_load(server.port, 300, connections=4, session="after")
        assert len(after.acked) == 300
        wait_drained(server)
        stored = stored_via_admin(server)
        result.acked |= below_soft.acked | after.acked | {("json", 0), ("json", 1)}
        assert check_exactly_once(stored, result) == 0
    finally:
        assert server.stop() == 0


def test_readyz_is_503_while_replaying_a_large_backlog(tmp_path):
    """After a restart with more than 10 leftover segments, /readyz says so until they are shipped."""
    server = Ingestd(tmp_path, "--segment-max-bytes", "8K", clickhouse=dead_clickhouse()).start(wait_clickhouse=False)
    try:
        result = run_load(server.port, 400, connections=4, session="backlog")
        assert len(result.acked) == 400
        assert admin_get(server, "/readyz")[0] == 200  # ClickHouse down alone: still taking beacons
    finally:
        assert server.stop() == 0
    assert len(spool_files(server.spool)) > 10
    server = Ingestd(tmp_path, "--hold-shipping").start()  # connected, shipping held: mid-replay
    try:
        status, reason = admin_get(server, "/readyz")
        assert status == 503 and "replaying a backlog" in reason
        urllib.request.urlopen(urllib.request.Request(server.admin_url + "/ship?action=resume", method="POST"))
        wait_drained(server)
        assert admin_get(server, "/readyz") == (200, "ready\n")
        assert check_exactly_once(stored_via_admin(server), result) == 0
    finally:
        assert server.stop() == 0


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (a real filesystem that fills up); skipped where mounting is not permitted."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_disk_full_answers_503_never_200_and_recovers(tmp_path, small_disk):
    """ENOSPC on the spool: 503s (never a 200, never a crash); 200s again once space returns."""
    spool = small_disk / "spool"
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"\0" * (640 * 1024))
    server = Ingestd(tmp_path, "--segment-max-bytes", "64K", clickhouse=dead_clickhouse(), spool=spool)
    server.start(wait_clickhouse=False)
    try:
        result = run_load(server.port, 2000, connections=16, session="full")
        assert 0 < len(result.acked) < 2000
        assert set(result.refused) == {503} and result.retry_after == {"5"}
        assert result.refusal_bodies == {b"event not stored: spool write failed; retry later\n"}
        assert server.metrics()["ingestd_spool_write_errors_total"] > 0
        assert server.proc.poll() is None and admin_get(server, "/healthz")[0] == 200
        on_disk = spooled_keys(spool)
        assert result.acked <= on_disk
        assert not (result.refused_keys & on_disk)
        for path in spool_files(spool):  # no half-written row left behind by the failed writes
            data = path.read_bytes()
            assert data == b"" or data.endswith(b"\n"), path

        os.unlink(ballast)  # space returns
        after = run_load(server.port, 200, connections=4, session="freed")
        assert len(after.acked) == 200
        assert server.stop() == 0
    finally:
        server.kill()
    server = Ingestd(tmp_path, spool=spool).start()
    try:
        wait_drained(server)
        result.acked |= after.acked
        assert check_exactly_once(stored_via_admin(server), result) == 0
    finally:
        assert server.stop() == 0


def test_restart_on_a_full_disk_repairs_in_place_and_drains(tmp_path, small_disk):
    """A crash left a torn segment and the disk is full: ingestd still starts, cuts the tail, ships all."""
    spool = small_disk / "spool"
    server = Ingestd(tmp_path, "--segment-max-bytes", "64K", clickhouse=dead_clickhouse(), spool=spool)
    server.start(wait_clickhouse=False)
    try:
        result = run_load(server.port, 1000, connections=8, session="fullstart")
        assert len(result.acked) == 1000
    finally:
        server.kill()  # kill -9: the last segment stays *.open
    [torn] = spool.glob("*.open")
    with open(torn, "ab") as f:
        f.write(b'["e",1,"127.0.0.1","ua","eventType=2&sessionId=half')  # a row cut by the crash
    with open(small_disk / "ballast", "wb", buffering=0) as f:  # fill the disk to the last byte
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    server = Ingestd(tmp_path, spool=spool).start()
    try:
        wait_drained(server)
        assert check_exactly_once(stored_via_admin(server), result) == 0
    finally:
        assert server.stop() == 0
