"""The server's log on a real run: a start line with version and configuration, one debug line per
shipped batch, nothing per request."""
from __future__ import annotations

import json

from conftest import DOCUMENT_EXAMPLE

BEACON = "/api_v3/index.php?service=analytics&action=trackEvent&" + DOCUMENT_EXAMPLE
REQUESTS = 100


def test_log_has_start_line_and_batch_lines_but_nothing_per_request(make_ingestd):
    server = make_ingestd("--log-level", "debug", "--segment-max-age-ms", "200").start()
    for _ in range(REQUESTS):
        assert server.get(BEACON)[0] == 200
    server.wait_rows("SELECT count() AS n FROM analytics.events", REQUESTS)
    assert server.stop() == 0
    entries = [json.loads(line) for line in server.log_lines]  # every line is JSON
    start = next(e for e in entries if "serving beacons on" in e["msg"])
    assert start["version"] and start["config"]["log_level"] == "debug" and start["config"]["workers"] == 1
    shipped = [e for e in entries if e["level"] == "debug" and e["msg"].startswith("shipped ")]
    assert shipped and sum(int(e["msg"].split(": ")[1].split()[0]) for e in shipped) == REQUESTS
    assert len(entries) < REQUESTS / 2, [e["msg"] for e in entries]  # lines scale with batches, not requests
    assert not any("trackEvent" in e["msg"] or "GET " in e["msg"] for e in entries)
