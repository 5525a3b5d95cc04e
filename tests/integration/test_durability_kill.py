"""kill -9 under load: every acknowledged beacon reaches ClickHouse exactly once after restarts."""
from __future__ import annotations

import asyncio
import time

from conftest import Ingestd, free_port
from durability_load import PARTNER_ID, Load

TOTAL_BEACONS = 24_000
CONNECTIONS = 16
# Small segments make shipments frequent, so kills land while the sink is inserting.
SERVER_ARGS = ("--segment-max-bytes", "64K", "--segment-max-age-ms", "300", "--drain-timeout", "5")


def stored_keys(server: Ingestd) -> list[tuple[str, int, int]]:
    """(session_id, event_index, copies) of every load event in analytics.events."""
    rows = server.query(
        "SELECT session_id, event_index, count() AS n FROM analytics.events "
        f"WHERE partner_id = {PARTNER_ID} GROUP BY session_id, event_index"
    )
    return [(r["session_id"], int(r["event_index"]), int(r["n"])) for r in rows]


def wait_drained(server: Ingestd, timeout: float = 90.0) -> None:
    """Until the spool is empty: every leftover and new segment shipped."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not list(server.spool.glob("*.seg")) and not list(server.spool.glob("*.open")):
            if server.metrics().get("ingestd_spool_bytes") == 0:
                return
        time.sleep(0.2)
    raise AssertionError("spool did not drain:\n" + server.log_text()[-3000:])


def assert_exactly_once(server: Ingestd, result) -> int:
    """Every 200 stored once, nothing stored twice, extras only from in-flight keys; return extras."""
    stored = stored_keys(server)
    twice = [(s, i, n) for s, i, n in stored if n > 1]
    assert not twice, f"{len(twice)} keys stored more than once, e.g. {twice[:5]}"
    keys = {(s, i) for s, i, _ in stored}
    missing = result.acked - keys
    assert not missing, f"{len(missing)} acknowledged beacons lost, e.g. {sorted(missing)[:5]}"
    extra = keys - result.acked
    unexplained = extra - result.in_flight
    assert not unexplained, f"{len(unexplained)} stored beacons never sent or refused: {sorted(unexplained)[:5]}"
    return len(extra)


def test_kill_9_under_load_loses_and_duplicates_nothing(tmp_path, capsys):
    """Three kill -9s at different moments of a 24k-beacon load; the restarted server drains everything."""
    port = free_port()
    server = Ingestd(tmp_path, "--listen", f"127.0.0.1:{port}", *SERVER_ARGS)
    server.start()
    load = Load(lambda: port, TOTAL_BEACONS, connections=CONNECTIONS, pipeline=8, session="kill")
    moments = []

    async def killer():
        async def until(condition, timeout=60.0):
            deadline = time.monotonic() + timeout
            while not condition():
                assert time.monotonic() < deadline, "load stalled before the kill moment"
                await asyncio.sleep(0.005)

        def kill_and_restart(moment: str) -> None:
            segments = len(list(server.spool.glob("*.seg")))
            server.proc.kill()
            server.proc.wait()
            moments.append((moment, load.acked_count, segments))
            server.start()

        # 1. early: the first segment is still open, nothing shipped yet
        await until(lambda: load.acked_count >= 1500)
        await asyncio.to_thread(kill_and_restart, "early, first segment open")
        # 2. while the sink ships: right after a shipment was counted, with more sealed and waiting
        await until(lambda: load.acked_count >= 8000)

        def shipping():
            shipped = server.metrics().get("ingestd_batches_shipped_total", 0)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if server.metrics().get("ingestd_batches_shipped_total", 0) > shipped:
                    return kill_and_restart("during a shipment")
            raise AssertionError("no shipment seen")

        await asyncio.to_thread(shipping)
        # 3. right after a restart, while leftover segments replay and new writes land
        await until(lambda: load.acked_count >= 15000)
        await asyncio.to_thread(kill_and_restart, "during load, before the replay")
        await asyncio.sleep(0.3)
        await asyncio.to_thread(kill_and_restart, "during the startup replay of leftovers")

    async def main():
        kill_task = asyncio.create_task(killer())
        result = await load.run(timeout=150)
        await kill_task
        return result

    try:
        result = asyncio.run(main())
        assert len(moments) == 4
        assert result.sent >= TOTAL_BEACONS - CONNECTIONS * 8
        assert len(result.acked) >= 20_000, (len(result.acked), result.refused)
        wait_drained(server)
        extras = assert_exactly_once(server, result)
    finally:
        server.stop()
    with capsys.disabled():
        print(f"\nkill -9 moments (moment, acks so far, sealed segments waiting): {moments}")
        print(f"acknowledged {len(result.acked)}, in flight at kills {len(result.in_flight)}, "
              f"stored beyond the 200s {extras}, refused {result.refused}")
