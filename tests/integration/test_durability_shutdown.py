"""SIGTERM under load: exit 0 within --drain-timeout; every 200 reaches ClickHouse by the next start."""
from __future__ import annotations

import asyncio
import json
import signal
import time

import pytest

from conftest import Ingestd
from durability_load import Load, check_exactly_once, stored_via_admin, wait_drained

DRAIN_TIMEOUT = 3.0


@pytest.mark.parametrize("backlog", [False, True], ids=["shipping-keeps-up", "backlog-beyond-drain-timeout"])
def test_sigterm_under_load_exits_0_in_time_and_keeps_every_200(tmp_path, capsys, backlog):
    """SIGTERM mid-load: in-flight requests answered, spool sealed and shipped or kept, exit 0 in time."""
    # With shipping held during the load and small segments, the drain cannot ship it all in time.
    extra = ("--hold-shipping", "--segment-max-bytes", "8K") if backlog else ("--segment-max-bytes", "256K")
    server = Ingestd(tmp_path, "--drain-timeout", str(DRAIN_TIMEOUT), *extra).start()
    load = Load(lambda: server.port, 20_000, connections=16, pipeline=8, session="term")
    stop = {}

    async def terminate():
        while load.acked_count < (12_000 if backlog else 3000):
            await asyncio.sleep(0.005)
        started = time.monotonic()
        stop["signal_at"] = time.time()
        server.proc.send_signal(signal.SIGTERM)
        stop["code"] = await asyncio.to_thread(server.proc.wait, 30)
        stop["seconds"] = time.monotonic() - started
        stop["acked"] = load.acked_count
        load.stopped = True

    try:
        result = load.run_alongside(terminate, timeout=60)
    finally:
        server.kill()
    log = server.log_text()
    assert stop["code"] == 0, log[-3000:]
    timeline = [f"{json.loads(line)['ts'] - stop['signal_at']:+.2f}s {json.loads(line)['msg']}"
                for line in log.splitlines() if '"ts"' in line and json.loads(line)["ts"] >= stop["signal_at"]]
    assert stop["seconds"] <= DRAIN_TIMEOUT, (stop, timeline)
    assert "shutting down" in log
    assert set(result.refused) <= {503}  # "shutting down", never anything else
    left = [line for line in log.splitlines() if "left in the spool" in line]
    assert bool(left) == backlog, log[-3000:]
    server = Ingestd(tmp_path).start()  # same spool and database, shipping not held
    try:
        wait_drained(server)
        extras = check_exactly_once(stored_via_admin(server), result)
    finally:
        assert server.stop() == 0
    with capsys.disabled():
        print(f"\n{'backlog' if backlog else 'no backlog'}: SIGTERM after {stop['acked']} acks: exit {stop['code']} in {stop['seconds']:.2f}s "
              f"(drain timeout {DRAIN_TIMEOUT}s); acknowledged {len(result.acked)}, in flight "
              f"{len(result.in_flight)}, stored beyond the 200s {extras}, refused {result.refused}")
        print("  " + "\n  ".join(timeline))


def test_sigterm_does_not_wait_for_slow_admin_queries(tmp_path):
    """Admin queries running and queued at SIGTERM neither delay the drain nor the exit past --drain-timeout."""
    import threading
    import urllib.parse
    import urllib.request

    server = Ingestd(tmp_path, "--drain-timeout", str(DRAIN_TIMEOUT)).start()
    slow = " UNION ALL ".join(["SELECT sleepEachRow(2) + number AS x FROM numbers(1)"] * 4)  # ~8 s
    url = server.admin_url + "/query?" + urllib.parse.urlencode({"query": f"SELECT sum(x) FROM ({slow})"})

    def query():
        try:
            urllib.request.urlopen(url, timeout=60).read()
        except OSError:
            pass  # the process left without answering: what this test wants

    try:
        clients = [threading.Thread(target=query, daemon=True) for _ in range(6)]  # more than QUERY_THREADS
        for client in clients:
            client.start()
        time.sleep(1.0)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0
        assert time.monotonic() - started < DRAIN_TIMEOUT + 4.0  # (it waited for the queries: 23 s)
        assert "admin queries running or queued; exiting without waiting" in "".join(server.log_lines)
    finally:
        server.kill()
