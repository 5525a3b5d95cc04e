"""kill -9 under load: every acknowledged beacon reaches ClickHouse exactly once after restarts."""
from __future__ import annotations

import asyncio
import time

from conftest import Ingestd, free_port
from durability_load import Load, check_exactly_once, stored_via_admin, wait_drained

TOTAL_BEACONS = 24_000
CONNECTIONS = 16
# Small segments make shipments frequent, so kills land while the sink is inserting.
SERVER_ARGS = ("--segment-max-bytes", "64K", "--segment-max-age-ms", "300", "--drain-timeout", "5")


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
        extras = check_exactly_once(stored_via_admin(server), result)
    finally:
        server.stop()
    with capsys.disabled():
        print(f"\nkill -9 moments (moment, acks so far, sealed segments waiting): {moments}")
        print(f"acknowledged {len(result.acked)}, in flight at kills {len(result.in_flight)}, "
              f"stored beyond the 200s {extras}, refused {result.refused}")
