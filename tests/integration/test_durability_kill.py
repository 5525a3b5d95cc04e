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
    """Four kill -9s at different moments of a 24k-beacon load; the restarted server drains everything."""
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

        def after_next_shipment(moment: str) -> None:
            """Kill right after the sink confirmed a segment, with more sealed ones waiting: mid-insert."""
            shipped = server.metrics().get("ingestd_batches_shipped_total", 0)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if server.metrics().get("ingestd_batches_shipped_total", 0) > shipped:
                    return kill_and_restart(moment)
            raise AssertionError("no shipment seen:\n" + server.log_text()[-2000:])

        # 1. early in the load: group commits landing, the first segments sealing
        await until(lambda: load.acked_count >= 1500)
        await asyncio.to_thread(kill_and_restart, "early in the load")
        # 2. while the sink ships (the restarted process replays the leftovers first)
        await until(lambda: load.acked_count >= 8000)
        await asyncio.to_thread(after_next_shipment, "during a shipment")
        # 3. at full load, writes and shipments both in progress
        await until(lambda: load.acked_count >= 15000)
        await asyncio.to_thread(kill_and_restart, "at full load")
        # 4. during the startup replay of what the killed processes left
        await asyncio.to_thread(after_next_shipment, "during the startup replay")

    try:
        result = load.run_alongside(killer, timeout=150)
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
