"""What keeps the embedded engine's resident memory down (issue 5, peak RSS ≤ 512 MiB).

Run in a child process: the engine is one per process, and the numbers must be this process's own.
"""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO

SCRIPT = r"""
import json, sys, time
from ingestd import clickhouse, sink

def rss_file():
    for line in open("/proc/self/status"):
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024

client = clickhouse.connect(sys.argv[1])
clickhouse.migrate(client)
before = rss_file()
released = clickhouse.release_startup_pages()
after = rss_file()
now = int(time.time() * 1000)
row = ["e", now, "127.0.0.1", "test", "eventType=3&partnerId=7&entryId=0_a&sessionId=s&eventIndex=1&position=4",
       {}, [], {}, "", "", ""]
sink.insert(client, (json.dumps(row) + "\n").encode(), "test-memory-1")
events = client.query("SELECT partner_id, entry_id, position FROM analytics.events").result_rows
table = client.query("SELECT create_table_query FROM system.tables WHERE database = 'analytics' AND name = 'events'")
print(json.dumps(dict(before=before, after=after, released=released, pandas="pandas" in sys.modules,
                      events=[list(r) for r in events], create=table.result_rows[0][0])))
"""


def test_startup_pages_released_engine_still_works_and_no_pandas(tmp_path):
    out = subprocess.run([sys.executable, "-c", SCRIPT, f"chdb://{tmp_path / 'ch'}"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # the engine's library pages touched by its start-up (~250 MiB) leave this process's RSS...
    assert result["released"] > 100 * 2**20, result
    assert result["after"] < result["before"] - 100 * 2**20, result
    # ...and the engine runs on: an insert through the views and a query after the release
    assert result["events"] == [[7, "0_a", 4.0]]
    # recording migrations no longer imports pandas (~50 MiB)
    assert result["pandas"] is False
    # analytics.events merges column by column from the first merge (schema/008)
    assert "vertical_merge_algorithm_min_rows_to_activate = 1" in result["create"]
