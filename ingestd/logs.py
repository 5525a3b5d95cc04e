"""Logging: JSON lines on stderr (journald keeps them), identical errors rate-limited."""
from __future__ import annotations

import logging
import sys
import time

import orjson

REPEAT_WINDOW = 60.0  # seconds: the same message is logged once per window, with a count of the rest


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,  # tells --workers processes apart in one journal
            "msg": record.getMessage(),
        }
        for key in ("event", "config", "version", "suppressed"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class RepeatFilter(logging.Filter):
    """Drops a warning/error identical to one logged within REPEAT_WINDOW; the next one says how many."""

    def __init__(self):
        super().__init__()
        self.seen: dict[tuple, list] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.msg, repr(record.args)[:200])
        now = time.monotonic()
        entry = self.seen.get(key)
        if entry and now - entry[0] < REPEAT_WINDOW:
            entry[1] += 1
            return False
        if entry and entry[1]:
            record.suppressed = entry[1]
        self.seen[key] = [now, 0]
        if len(self.seen) > 1000:
            self.seen.clear()
        return True


def setup(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
