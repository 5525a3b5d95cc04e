"""The insert cost of the aggregate materialized views: rows/s into analytics.events with and without them.

Both variants run in the same process on the same embedded ClickHouse, alternating round by round
(A B A B …) so machine noise hits both alike. Each insert is what the sink does with one spool
segment: JSONCompactEachRow rows into analytics.events_incoming with a dedup token; events_mv decodes
them into analytics.events in both variants. "without views" detaches the aggregate views
(schema/002+) for its rounds; "with views" has them all attached, as `ingestd serve` runs.

    .venv/bin/python bench/mv_insert.py                 # short default run (~20 s)
    .venv/bin/python bench/mv_insert.py --rows 200000 --rounds 5 --cpu 1
"""
from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ingestd import clickhouse  # noqa: E402
from ingestd.sink import FORMAT, INCOMING_TABLE  # noqa: E402

AGGREGATE_VIEWS = ("entry_hourly_mv", "interactions_hourly_mv", "referrer_daily_mv", "context_daily_mv",
                   "quality_daily_mv", "rejections_daily_mv")
# A realistic mix: mostly VIEW beacons, then the life-cycle and a few interactions.
EVENT_MIX = [99] * 60 + [1] * 8 + [2] * 6 + [3] * 6 + [11, 12, 13, 14] * 2 + [22, 23, 25, 31, 35, 38, 41, 98]


def make_rows(count: int, seed: int) -> list[bytes]:
    """Incoming rows as the beacon app spools them, ~600-byte query strings like a Kaltura player's."""
    rng = random.Random(seed)
    start_ms = int(time.time() * 1000) - 7 * 86400 * 1000
    rows = []
    for n in range(count):
        event_type = rng.choice(EVENT_MIX)
        session = f"{rng.randrange(count // 20 + 1):08x}-2ebf-5893-892d-2121162f414a"
        params = {
            "service": "analytics", "action": "trackEvent", "eventType": event_type,
            "partnerId": rng.choice((585231, 1001, 2002, 3003)), "entryId": f"0_{rng.randrange(200):06d}",
            "flavourId": "0_abc123", "sessionId": session, "eventIndex": n % 50, "kalsig": "1ebb5aea0c5f253fd8c578febe6a752f",
            "bufferTime": rng.randrange(0, 40) / 4, "actualBitrate": rng.choice((400, 800, 1200, 2500)),
            "preferredBitrate": 2500, "deliveryType": rng.choice(("hls", "dash")), "playbackType": "vod",
            "sessionStartTime": start_ms, "uiConfId": 23521211, "clientVer": "3.0:v3.9.2", "clientTag": "kdp:v3.9.2",
            "position": rng.randrange(600), "playbackContext": rng.choice(("sports", "news", "")),
            "customVar1": rng.choice(("Finance", "Kids")), "userId": f"user{rng.randrange(5000)}",
            "referrer": quote(quote(f"http://site{rng.randrange(50)}.example.com/shows/video/{rng.randrange(999)}", safe="/"),
                              safe=""),
            "socialNetwork": "twitter", "reportType": "spam", "caption": "en", "playbackSpeed": 1.5, "errorCode": "1002",
            "targetPosition": 30, "joinTime": 1.25,
        }
        query = "&".join(f"{k}={quote(str(v), safe='%')}" for k, v in params.items())
        received = start_ms + rng.randrange(7 * 86400 * 1000)
        rows.append(orjson.dumps(("e", received, "10.0.0.1", "Mozilla/5.0", query, {}, [], {}, "", "", "")) + b"\n")
    return rows


def cpu_seconds() -> float:
    """CPU time of this process, all threads (chDB inserts run on its own threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def insert_all(client, batches: list[bytes], token_prefix: str, extra: dict | None = None) -> tuple[float, float]:
    """Insert every batch as the sink ships a segment; return (wall seconds, CPU seconds)."""
    started, cpu_started = time.perf_counter(), cpu_seconds()
    for n, data in enumerate(batches):
        settings = dict(clickhouse.INSERT_SETTINGS, insert_deduplication_token=f"{token_prefix}-{n}", **(extra or {}))
        client.raw_insert(INCOMING_TABLE, None, data, settings=settings, fmt=FORMAT)
    return time.perf_counter() - started, cpu_seconds() - cpu_started


def set_views(client, attached: bool) -> None:
    for view in AGGREGATE_VIEWS:
        client.command(f"{'ATTACH' if attached else 'DETACH'} TABLE IF {'NOT ' if attached else ''}EXISTS "
                       f"analytics.{view}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=60_000, help="rows per round and variant (default 60000)")
    parser.add_argument("--batch", type=int, default=10_000, help="rows per insert, like a spool segment")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per variant, alternating (default 3)")
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to one CPU")
    parser.add_argument("--max-threads", type=int, default=None,
                        help="add max_threads/max_insert_threads to the inserts (both variants)")
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    extra = {"max_threads": args.max_threads, "max_insert_threads": args.max_threads} if args.max_threads else {}
    rows = make_rows(args.rows, args.seed)
    batches = [b"".join(rows[i:i + args.batch]) for i in range(0, len(rows), args.batch)]
    mean_bytes = sum(map(len, rows)) / len(rows)
    directory = Path(tempfile.mkdtemp(prefix="ingestd-mv-bench-"))
    client = clickhouse.connect(f"chdb://{directory}")
    try:
        clickhouse.migrate(client)
        results: dict[str, list[float]] = {"without views": [], "with views": []}
        cpu: dict[str, list[float]] = {"without views": [], "with views": []}
        for round_no in range(args.rounds):
            for variant in ("without views", "with views"):
                set_views(client, attached=variant == "with views")
                # untimed: the first insert after attaching builds and JIT-compiles the views' pipelines
                insert_all(client, batches[:1], f"warm{round_no}-{variant}", extra)
                seconds, cpu_used = insert_all(client, batches, f"r{round_no}-{variant}", extra)
                results[variant].append(len(rows) / seconds)
                cpu[variant].append(cpu_used / len(rows) * 1e6)
        set_views(client, attached=True)
        aggregate_rows = client.query("SELECT count() FROM analytics.entry_hourly").result_rows[0][0]
    finally:
        client.close()
        shutil.rmtree(directory, ignore_errors=True)
    base = statistics.median(results["without views"])
    print(f"mv_insert: {args.rows} rows/round ({mean_bytes:.0f} B/row), {args.batch} rows/insert, "
          f"{args.rounds} rounds, settings {extra or 'as the sink'}, {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
    print(f"{'variant':<15} {'median rows/s':>14} {'min':>10} {'max':>10} {'vs without':>11} {'CPU µs/row':>11}")
    for variant, rates in results.items():
        median = statistics.median(rates)
        print(f"{variant:<15} {median:>14,.0f} {min(rates):>10,.0f} {max(rates):>10,.0f} {median / base:>10.2f}x "
              f"{statistics.median(cpu[variant]):>11.1f}")
    assert aggregate_rows > 0, "the views did not run"
    return 0


if __name__ == "__main__":
    sys.exit(main())
