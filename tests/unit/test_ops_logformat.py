"""Logs: JSON lines, identical warnings/errors rate-limited with a count of what was dropped."""
from __future__ import annotations

import io
import json
import logging

import pytest

from ingestd import logs


@pytest.fixture
def captured(monkeypatch):
    """Log records as parsed JSON lines, through the real formatter and filter."""
    stream = io.StringIO()
    monkeypatch.setattr(logs.sys, "stderr", stream)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logs.setup("debug")
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    root.handlers[:], root.level = saved


def test_lines_are_json_with_pid_and_extras(captured):
    logging.getLogger("ingestd.test").info("started %s", "x", extra={"version": "1.0", "config": {"workers": 2}})
    (entry,) = captured()
    assert entry["msg"] == "started x" and entry["level"] == "info" and entry["logger"] == "ingestd.test"
    assert entry["version"] == "1.0" and entry["config"] == {"workers": 2} and isinstance(entry["pid"], int)


def test_identical_errors_are_rate_limited_and_counted(captured, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(logs.time, "monotonic", lambda: clock[0])
    log = logging.getLogger("ingestd.sink")
    for _ in range(100):
        log.warning("ClickHouse not reachable: %s", "connection refused")
    log.warning("ClickHouse not reachable: %s", "timed out")  # a different error is its own line
    clock[0] += logs.REPEAT_WINDOW + 1
    log.warning("ClickHouse not reachable: %s", "connection refused")
    entries = captured()
    assert [e["msg"] for e in entries] == ["ClickHouse not reachable: connection refused",
                                           "ClickHouse not reachable: timed out",
                                           "ClickHouse not reachable: connection refused"]
    assert "suppressed" not in entries[0] and entries[2]["suppressed"] == 99


def test_debug_and_info_lines_are_not_rate_limited(captured):
    log = logging.getLogger("ingestd.sink")
    for i in range(3):
        log.debug("shipped %s: %d rows", "seg", 10)
    assert len(captured()) == 3
