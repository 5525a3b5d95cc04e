"""The server's log on a real run: a start line with version and configuration, one debug line per
shipped batch, nothing per request."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import DOCUMENT_EXAMPLE, REPO

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


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_spool_directory_that_cannot_be_made_is_one_log_line_not_a_traceback(tmp_path, workers):
    """A spool outside the unit's ReadWritePaths (read-only under ProtectSystem=strict) fails like this."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTD_")}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run([sys.executable, "-m", "ingestd", "serve", "--listen", "127.0.0.1:0", "--admin",
                             "127.0.0.1:0", "--spool", "/proc/ingestd-spool", "--workers", workers],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert json.loads(line)["msg"] == "spool directory /proc/ingestd-spool cannot be used: No such file or directory"
