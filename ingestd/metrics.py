"""Process metrics: plain counters bumped on the hot path, formatted as Prometheus text at scrape time."""
from __future__ import annotations

import bisect
from collections import Counter

# Histogram bounds: a segment holds 1 row to ~100k rows; a chDB insert takes ms to seconds.
BATCH_ROWS_BUCKETS = (1, 10, 100, 1_000, 10_000, 100_000, 1_000_000)
INSERT_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def observe(buckets: Counter, bounds: tuple, value: float) -> None:
    """Count `value` in the bucket of the smallest bound >= value ('+Inf' above them all)."""
    index = bisect.bisect_left(bounds, value)
    buckets[str(bounds[index]) if index < len(bounds) else "+Inf"] += 1


def render_histogram(name: str, help_text: str, bounds: tuple, buckets: Counter, total: float, count: int) -> list[str]:
    """Prometheus histogram lines: cumulative buckets, sum, count."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
    cumulative = 0
    for bound in [str(b) for b in bounds] + ["+Inf"]:
        cumulative += buckets.get(bound, 0)
        lines.append(f'{name}_bucket{{le="{bound}"}} {cumulative}')
    lines.append(f"{name}_sum {total:.6f}")
    lines.append(f"{name}_count {count}")
    return lines


# Values that describe the service, not an amount: added up over --workers processes they take the max.
# Gauge names, or the snapshot key (the attribute name) of a plain value.
NOT_SUMMED = frozenset({"ingestd_clickhouse_connected", "ingestd_shipping_held", "_batch_rows_last"})


class Metrics:
    """Counters of one process. Label values come from small fixed sets (statuses, types, reasons)."""

    def __init__(self):
        self.responses = Counter()  # status -> count
        self.events_accepted = Counter()  # event type id -> count
        self.events_rejected = Counter()  # reason -> count
        self.view_events_disabled = 0
        self.spool_commits = 0
        self.spool_write_errors = 0
        self.connections_open = 0
        self.connections_total = 0
        self.connections_refused = 0
        self.connections_timed_out = 0
        self.connections_evicted = 0
        self.rate_limited = 0
        self.protocol_errors = Counter()  # status -> count
        self.batches_shipped = 0
        self.rows_shipped = 0
        self.bytes_shipped = 0
        self.ship_failures = 0
        self.segments_quarantined = 0
        # histograms as plain Counters (bound -> observations) and numbers, so they add up like the rest
        self.batch_rows_buckets = Counter()
        self.batch_rows_sum = 0
        self.batch_rows_count = 0
        self.insert_seconds_buckets = Counter()
        self._insert_seconds_sum = 0.0
        self.insert_seconds_count = 0
        self._batch_rows_last = 0
        self.gauges: dict[str, callable] = {}  # name -> function returning the current value
        self.peers: list[callable] = []  # functions returning other processes' snapshots (--workers)

    def snapshot(self) -> dict:
        """Counters and current gauge values as plain data, for another process to add up."""
        out: dict = {"gauges": {name: fn() for name, fn in self.gauges.items()}}
        for name, value in vars(self).items():
            if isinstance(value, Counter):
                out[name] = {str(k): v for k, v in value.items()}
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                out[name] = value
        return out

    def add(self, snapshot: dict) -> None:
        """Add another process's snapshot: counters and gauges sum, except the per-service states."""
        for name, value in snapshot.items():
            if name == "gauges":
                for gauge, number in value.items():
                    mine = self.gauges[gauge]() if gauge in self.gauges else 0
                    total = max(mine, number) if gauge in NOT_SUMMED else mine + number
                    self.gauges[gauge] = lambda total=total: total
            elif isinstance(value, dict):
                getattr(self, name).update(value)  # Counter.update adds
            elif name in NOT_SUMMED:
                setattr(self, name, max(getattr(self, name), value))
            elif isinstance(getattr(self, name, None), (int, float)):
                setattr(self, name, getattr(self, name) + value)

    # The sink assigns these two per shipment; the setters also feed the histograms, so the sink
    # need not know about them.
    @property
    def batch_rows_last(self) -> int:
        return self._batch_rows_last

    @batch_rows_last.setter
    def batch_rows_last(self, rows: int) -> None:
        self._batch_rows_last = rows
        observe(self.batch_rows_buckets, BATCH_ROWS_BUCKETS, rows)
        self.batch_rows_sum += rows
        self.batch_rows_count += 1

    @property
    def insert_seconds_sum(self) -> float:
        return self._insert_seconds_sum

    @insert_seconds_sum.setter
    def insert_seconds_sum(self, total: float) -> None:
        observe(self.insert_seconds_buckets, INSERT_SECONDS_BUCKETS, total - self._insert_seconds_sum)
        self._insert_seconds_sum = total

    def render(self) -> str:
        if self.peers:  # the owner of --workers: this process plus every other worker
            total = Metrics()
            for snapshot in (self.snapshot(), *(peer() for peer in self.peers)):
                total.add(snapshot)
            return total.render()
        lines = []

        def counter(name, help_text, values, label=None):
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} counter")
            if label is None:
                lines.append(f"{name} {values}")
            else:
                for key, value in sorted(values.items(), key=lambda kv: str(kv[0])):
                    lines.append(f'{name}{{{label}="{key}"}} {value}')

        counter("ingestd_http_responses_total", "HTTP responses by status.", self.responses, "status")
        counter("ingestd_events_accepted_total", "Beacons accepted (spooled) by event type.",
                self.events_accepted, "type")
        counter("ingestd_events_rejected_total", "Beacons rejected by reason.", self.events_rejected, "reason")
        counter("ingestd_http_protocol_errors_total", "Requests refused at the HTTP layer, by status.",
                self.protocol_errors, "status")
        counter("ingestd_view_events_disabled_total",
                "JSON beacons answered viewEventsEnabled=false (load shedding).", self.view_events_disabled)
        counter("ingestd_spool_commits_total", "Group commits (write calls) to the spool.", self.spool_commits)
        counter("ingestd_spool_write_errors_total", "Failed spool writes (answered 503).", self.spool_write_errors)
        counter("ingestd_connections_total", "Connections accepted.", self.connections_total)
        counter("ingestd_connections_refused_total", "Connections refused over --max-connections.",
                self.connections_refused)
        counter("ingestd_connections_timed_out_total", "Connections closed by the header or idle timeout.",
                self.connections_timed_out)
        counter("ingestd_connections_evicted_total",
                "Idle or slow connections closed to admit new ones at --max-connections.", self.connections_evicted)
        counter("ingestd_rate_limited_total", "Requests answered 429 by the per-IP rate limit.", self.rate_limited)
        counter("ingestd_batches_shipped_total", "Segments inserted into ClickHouse.", self.batches_shipped)
        counter("ingestd_rows_shipped_total", "Rows inserted into ClickHouse.", self.rows_shipped)
        counter("ingestd_bytes_shipped_total", "Spool bytes inserted into ClickHouse.", self.bytes_shipped)
        counter("ingestd_ship_failures_total", "Failed insert attempts (retried).", self.ship_failures)
        counter("ingestd_segments_quarantined_total", "Segments ClickHouse refused for good (moved aside).",
                self.segments_quarantined)
        lines += render_histogram("ingestd_insert_seconds", "ClickHouse insert latency per segment.",
                                  INSERT_SECONDS_BUCKETS, self.insert_seconds_buckets, self.insert_seconds_sum,
                                  self.insert_seconds_count)
        lines += render_histogram("ingestd_batch_rows", "Rows per shipped segment (one insert).", BATCH_ROWS_BUCKETS,
                                  self.batch_rows_buckets, self.batch_rows_sum, self.batch_rows_count)
        lines.append("# HELP ingestd_batch_rows_last Rows in the last shipped segment.")
        lines.append("# TYPE ingestd_batch_rows_last gauge")
        lines.append(f"ingestd_batch_rows_last {self.batch_rows_last}")
        lines.append("# HELP ingestd_connections_open Connections open now.")
        lines.append("# TYPE ingestd_connections_open gauge")
        lines.append(f"ingestd_connections_open {self.connections_open}")
        for name, fn in sorted(self.gauges.items()):
            lines.append(f"# TYPE {name} gauge")
            lines.append(f"{name} {fn()}")
        return "\n".join(lines) + "\n"
