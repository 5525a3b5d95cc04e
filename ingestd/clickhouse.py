"""ClickHouse access: client construction from a DSN (chdb:// or http(s)://) and the migrations runner.

The only module besides sink/admin/reports that imports clickhouse_connect.
"""
from __future__ import annotations

import ctypes
import logging
import os
import re
import sys
from pathlib import Path

import clickhouse_connect

log = logging.getLogger("ingestd.clickhouse")

SCHEMA_DIR = Path(os.environ.get("INGESTD_SCHEMA_DIR") or Path(__file__).resolve().parent.parent / "schema")
DATABASE = "analytics"

# Settings every shipment uses: the segment id is the dedup token, and the views see the same
# deduplicated blocks, so a replayed segment changes neither raw nor aggregate tables.
INSERT_SETTINGS = {
    "insert_deduplicate": 1,
    "deduplicate_blocks_in_dependent_materialized_views": 1,
    # a JSON body is spooled as the player sent it: its numbers, booleans, objects and arrays are
    # read into the body Map(String, String) as their JSON text (the defaults since 23.x; explicit)
    "input_format_json_read_numbers_as_strings": 1,
    "input_format_json_read_bools_as_strings": 1,
    "input_format_json_read_objects_as_strings": 1,
    "input_format_json_read_arrays_as_strings": 1,
}


def chdb_path(dsn: str) -> Path | None:
    """The data directory of an embedded-engine DSN, or None for a server DSN."""
    if dsn.startswith("chdb://"):
        return Path(dsn[len("chdb://"):]).expanduser().resolve()
    return None


# The embedded engine's allocator (jemalloc, read when chDB loads): two arenas and freed pages
# returned at once. Measured with `make bench`: peak RSS after shipping a 150k-row backlog 740 -> 513
# MiB at the same ingest rate (tcache:false also saves memory but halves the rate). A value already
# in the environment wins.
EMBEDDED_MALLOC_CONF = "narenas:2,dirty_decay_ms:0,muzzy_decay_ms:0"


def connect(dsn: str, **kwargs):
    """A clickhouse-connect client for `dsn`; chdb:// paths may be relative and are created."""
    path = chdb_path(dsn)
    if path is not None:
        os.environ.setdefault("JE_MALLOC_CONF", EMBEDDED_MALLOC_CONF)
        path.mkdir(parents=True, exist_ok=True)
        return clickhouse_connect.get_client(dsn=f"chdb://{path}", **kwargs)
    if not re.match(r"^https?://", dsn):
        raise ValueError(f"unsupported ClickHouse DSN {redact(dsn)!r}: use chdb://PATH or http(s)://…")
    kwargs.setdefault("connect_timeout", 5)
    kwargs.setdefault("send_receive_timeout", 60)
    return clickhouse_connect.get_client(dsn=dsn, **kwargs)


MADV_DONTNEED = 4
SHARED_OBJECT = re.compile(r"\.so(\.[0-9.]+)?$")


def release_startup_pages() -> int:
    """Unmap the clean pages of loaded libraries' read-only segments; return the bytes released.

    The embedded engine's library (~530 MiB) is mapped into this process, and starting it (static
    initialisers, relocations, registering every function and format) touches ~270 MiB of it once;
    those pages stay mapped and counted in our RSS although shipping then uses ~120 MiB of code.
    MADV_DONTNEED drops them from our page tables only: the file's pages stay in the page cache, and
    what is used again faults back in (a minor fault). Safe only for pages that are the file's own
    bytes, so mappings that are writable or hold any private (copy-on-write) page are left alone.
    Libraries are never unmapped while loaded, so the ranges read here stay what they were.
    """
    if not sys.platform.startswith("linux"):
        return 0
    try:
        with open("/proc/self/smaps") as f:
            text = f.read()
    except OSError:
        return 0
    candidates, current = [], None
    for line in text.splitlines():
        field, _, rest = line.partition(" ")
        if not field.endswith(":"):  # a mapping's header: range perms offset dev inode [path]
            parts = line.split(None, 5)
            path = parts[5] if len(parts) > 5 else ""
            current = None
            if "w" not in parts[1] and path.startswith("/") and SHARED_OBJECT.search(path):
                start, end = (int(x, 16) for x in parts[0].split("-"))
                current = {"start": start, "size": end - start, "rss": 0, "private": 0}
                candidates.append(current)
        elif current is not None and field in ("Rss:", "Anonymous:", "Private_Dirty:", "Shared_Dirty:"):
            kib = int(rest.split()[0])
            current["rss" if field == "Rss:" else "private"] += kib * 1024
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    released = 0
    for m in candidates:
        if m["rss"] and not m["private"] and libc.madvise(m["start"], m["size"], MADV_DONTNEED) == 0:
            released += m["rss"]
    return released


def redact(dsn: str) -> str:
    """The DSN with any password replaced, for logs and --print-config."""
    # the password runs to the last '@' before the host (clickhouse-connect splits there: p@ss is a password)
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:/@?#]*:)[^/?#]*@", r"\1***@", dsn)


def split_statements(sql: str) -> list[str]:
    """Statements of a schema file: separated by ';' at the end of a line; '--' comments dropped."""
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    parts = re.split(r";\s*$", "\n".join(lines), flags=re.MULTILINE)
    return [p.strip() for p in parts if p.strip()]


def migration_files(schema_dir: Path = SCHEMA_DIR) -> list[Path]:
    return sorted(p for p in schema_dir.glob("[0-9][0-9][0-9]_*.sql"))


_RECORD_STATEMENTS = (  # run before the files: the database and the record of applied files
    f"CREATE DATABASE IF NOT EXISTS {DATABASE}",
    f"CREATE TABLE IF NOT EXISTS {DATABASE}.schema_migrations "
    "(version String, applied_at DateTime64(3) DEFAULT now64(3)) ENGINE = MergeTree ORDER BY version",
)


def render(schema_dir: Path = SCHEMA_DIR) -> str:
    """Every statement `migrate` may run, as one SQL script (`ingestd migrate --dry-run`), laid out as
    cluster.render does. Nothing is opened: files already recorded would be skipped by a real run."""
    lines = ["-- database and migrations record"]
    lines.extend(statement + ";\n" for statement in _RECORD_STATEMENTS)
    for path in migration_files(schema_dir):
        lines.append(f"-- {path.name}")
        lines.extend(statement.rstrip() + ";\n" for statement in split_statements(path.read_text()))
    return "\n".join(lines)


def migrate(client, schema_dir: Path = SCHEMA_DIR) -> list[str]:
    """Apply numbered schema files not yet recorded in analytics.schema_migrations; return their names.

    Every statement is idempotent (IF NOT EXISTS), so a crash between a file and its record is safe.
    """
    for statement in _RECORD_STATEMENTS:
        client.command(statement)
    done = {row[0] for row in client.query(f"SELECT version FROM {DATABASE}.schema_migrations").result_rows}
    applied = []
    for path in migration_files(schema_dir):
        if path.name in done:
            continue
        for statement in split_statements(path.read_text()):
            client.command(statement)
        # a plain INSERT statement: client.insert would import pandas (~50 MiB resident) to type-check rows
        client.command(f"INSERT INTO {DATABASE}.schema_migrations (version) VALUES ({{version:String}})",
                       parameters={"version": path.name})
        applied.append(path.name)
        log.info("applied migration %s", path.name)
    return applied
