"""`ingestd migrate --cluster NAME`: the schema/ files rewritten for a ClickHouse cluster.

Any schema file works, because the rewrite is by rule, not by name. For every statement:
  * a table on a *MergeTree engine X becomes `X_local` on Replicated*MergeTree (one per shard,
    replicated), plus `X` on Distributed over `X_local`: readers (reports, /query) keep their names;
  * a materialized view fires on inserts into a local table, so its TO target and every table it
    reads are renamed to their `_local` tables;
  * every other table (the Null-engine `events_incoming`), view, database or ALTER gets ON CLUSTER.
ingestd inserts a segment into `analytics.events_incoming` on the node its DSN names (a whole
segment to one shard), not into a Distributed table: a retried segment then reaches the same
replicated tables with the same insert_deduplication_token and is dropped as a duplicate, which a
Distributed insert (rows re-split across shards) would not guarantee.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

from . import clickhouse

log = logging.getLogger("ingestd.cluster")

DATABASE = clickhouse.DATABASE
LOCAL_SUFFIX = "_local"
REPLICA_PATH = "/clickhouse/tables/{shard}/%s/%s"  # the {shard} and {replica} macros are each server's
CLUSTER_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
# The migrations record is one table replicated on every node (no {shard}): any node knows what ran.
MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS {db}.schema_migrations ON CLUSTER '{cluster}' "
    "(version String, applied_at DateTime64(3) DEFAULT now64(3)) "
    "ENGINE = ReplicatedMergeTree('/clickhouse/tables/all/{db}/schema_migrations', '{{replica}}') ORDER BY version"
)

_NAME = r"(?:`?(?P<db>\w+)`?\.)?`?(?P<table>\w+)`?"
_CREATE = re.compile(r"^\s*CREATE\s+(?P<kind>TABLE|MATERIALIZED\s+VIEW|VIEW|DATABASE|DICTIONARY)\s+"
                     r"(?P<ine>IF\s+NOT\s+EXISTS\s+)?(?P<name>" + _NAME + r")", re.IGNORECASE)
_ALTER = re.compile(r"^\s*(?P<kind>ALTER\s+TABLE|DROP\s+(?:TABLE|VIEW|DICTIONARY)(?:\s+IF\s+EXISTS)?|"
                    r"TRUNCATE\s+TABLE(?:\s+IF\s+EXISTS)?)\s+(?P<name>" + _NAME + r")", re.IGNORECASE)
_ENGINE = re.compile(r"\bENGINE\s*=\s*(\w+)", re.IGNORECASE)
_COLUMN_CHANGE = re.compile(r"^\s*(ADD|DROP|MODIFY|RENAME|COMMENT)\s+COLUMN\b", re.IGNORECASE)


class ClusterSchemaError(ValueError):
    """A schema statement the cluster rewrite does not know how to convert."""


def _engine(statement: str) -> tuple[str, int, int, str] | None:
    """(engine name, start, end, argument text) of the ENGINE clause, or None; parentheses balanced."""
    match = _ENGINE.search(statement)
    if not match:
        return None
    end, args = match.end(), ""
    rest = statement[end:]
    stripped = rest.lstrip()
    if stripped.startswith("("):
        start = end + len(rest) - len(stripped)
        depth = 0
        for i in range(start, len(statement)):
            depth += {"(": 1, ")": -1}.get(statement[i], 0)
            if depth == 0:
                args, end = statement[start + 1:i].strip(), i + 1
                break
    return match.group(1), match.start(), end, args


def _is_storage(engine: str) -> bool:
    return engine.endswith("MergeTree") and not engine.startswith("Replicated")


def storage_tables(statements: list[str]) -> set[str]:
    """Names of the objects holding rows on a *MergeTree engine (they get a `_local` twin)."""
    found = set()
    for statement in statements:
        match = _CREATE.match(statement)
        engine = _engine(statement)
        if match and engine and _is_storage(engine[0]) and not re.search(r"\bTO\s", statement[:engine[1]], re.I):
            found.add(match.group("table"))
    return found


def _rename_storage(text: str, storage: set[str]) -> str:
    """Table references to storage tables (`analytics.X`, or a bare X after FROM/JOIN/TO) point at
    their `_local` tables; a column that happens to share a table's name is left alone."""
    if not storage:
        return text
    names = "|".join(sorted(map(re.escape, storage), key=len, reverse=True))
    qualified = re.compile(r"(?<![\w.])(`?%s`?\.)`?(%s)`?(?![\w`])" % (DATABASE, names))
    text = qualified.sub(lambda m: f"{m.group(1)}{m.group(2)}{LOCAL_SUFFIX}", text)
    bare = re.compile(r"\b(FROM|JOIN|TO)(\s+)`?(%s)`?(?![\w.`])" % names, re.IGNORECASE)
    return bare.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3)}{LOCAL_SUFFIX}", text)


def _on_cluster(statement: str, match: re.Match, cluster: str, name: str | None = None) -> str:
    """The statement with its object renamed (optional) and ON CLUSTER after the name."""
    db = (match.group("db") or DATABASE) if match.group("kind").upper() != "DATABASE" else None
    table = name or match.group("table")
    target = f"{db}.{table}" if db else table
    return f"{statement[:match.start('name')]}{target} ON CLUSTER '{cluster}'{statement[match.end('name'):]}"


def _replicated(statement: str, engine, db: str, table: str) -> str:
    name, start, end, args = engine
    path = REPLICA_PATH % (db, table)
    new_args = ", ".join([f"'{path}'", "'{replica}'"] + ([args] if args else []))
    statement = f"{statement[:start]}ENGINE = Replicated{name}({new_args}){statement[end:]}"
    # the replicated tables' dedup window (same meaning; the non-replicated one is ignored there)
    return re.sub(r"\bnon_replicated_deduplication_window\b", "replicated_deduplication_window", statement)


def convert(statement: str, cluster: str, storage: set[str]) -> list[str]:
    """One single-node statement as the statements that create the same thing on `cluster`."""
    create = _CREATE.match(statement)
    if create:
        kind = re.sub(r"\s+", " ", create.group("kind").upper())
        db, name = create.group("db") or DATABASE, create.group("table")
        if kind in ("DATABASE", "VIEW", "DICTIONARY"):
            return [_on_cluster(statement, create, cluster)]
        engine = _engine(statement)
        if kind == "MATERIALIZED VIEW" and (engine is None or re.search(r"\bTO\s", statement[:engine[1]], re.I)):
            body = statement[create.end("name"):]
            return [_on_cluster(statement[:create.end("name")] + _rename_storage(body, storage), create, cluster)]
        if engine is None or not _is_storage(engine[0]):  # Null, Memory, Buffer…: created on every node
            return [_on_cluster(statement, create, cluster)]
        local = name + LOCAL_SUFFIX
        body = statement[create.end("name"):]
        if kind == "MATERIALIZED VIEW":  # inner storage: its sources are local tables too
            body = _rename_storage(body, storage - {name})
        local_statement = _on_cluster(statement[:create.end("name")] + body, create, cluster, local)
        local_statement = _replicated(local_statement, _engine(local_statement), db, local)
        ine = "IF NOT EXISTS " if create.group("ine") else ""
        distributed = (f"CREATE TABLE {ine}{db}.{name} ON CLUSTER '{cluster}' AS {db}.{local} "
                       f"ENGINE = Distributed('{cluster}', '{db}', '{local}', rand())")
        return [local_statement, distributed]
    alter = _ALTER.match(statement)
    if alter:
        name = alter.group("table")
        if name not in storage:
            return [_on_cluster(statement, alter, cluster)]
        out = [_on_cluster(statement, alter, cluster, name + LOCAL_SUFFIX)]
        rest = statement[alter.end("name"):]
        if alter.group("kind").upper().startswith("DROP") or _COLUMN_CHANGE.match(rest):
            out.append(_on_cluster(statement, alter, cluster))  # the Distributed table follows
        return out
    raise ClusterSchemaError(f"cannot convert for a cluster: {statement.split(chr(10))[0][:120]!r}")


def plan(cluster: str, schema_dir: Path | None = None) -> list[tuple[str, list[str]]]:
    """[(file name, statements)] for `cluster`, the database and migrations record first."""
    if not CLUSTER_NAME.match(cluster):
        raise ClusterSchemaError(f"cluster name {cluster!r}: expected letters, digits, '_', '.', '-'")
    files = clickhouse.migration_files(schema_dir or clickhouse.SCHEMA_DIR)
    parsed = [(path.name, clickhouse.split_statements(path.read_text())) for path in files]
    storage = storage_tables([s for _, statements in parsed for s in statements])
    out = [("", [f"CREATE DATABASE IF NOT EXISTS {DATABASE} ON CLUSTER '{cluster}'",
                 MIGRATIONS_TABLE.format(db=DATABASE, cluster=cluster)])]
    for name, statements in parsed:
        out.append((name, [c for s in statements for c in convert(s, cluster, storage)]))
    return out


def _run(client, file_name: str, statement: str) -> None:
    """One DDL statement; a failure stops the migration with one line naming the file and statement."""
    try:
        client.command(statement)
    except Exception as exc:  # noqa: BLE001 - ClickHouse's own message, first line
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise SystemExit(f"ingestd: cluster migration stopped at {file_name or 'the database'}: "
                         f"{statement.splitlines()[0][:100]}: {reason}") from None


def migrate(dsn: str, name: str, schema_dir: Path | None = None) -> list[str]:
    """Apply the cluster schema through the node `dsn` names; return the files applied this time."""
    steps = plan(name, schema_dir)
    client = clickhouse.connect(dsn)
    try:
        for statement in steps[0][1]:
            _run(client, "", statement)
        done = {row[0] for row in client.query(f"SELECT version FROM {DATABASE}.schema_migrations").result_rows}
        applied = []
        for file_name, statements in steps[1:]:
            if file_name in done:
                continue
            for statement in statements:
                _run(client, file_name, statement)
            client.insert(f"{DATABASE}.schema_migrations", [[file_name]], column_names=["version"])
            applied.append(file_name)
            log.info("applied migration %s on cluster %s", file_name, name)
        return applied
    finally:
        client.close()


def render(name: str, schema_dir: Path | None = None) -> str:
    """The whole plan as one SQL script (`ingestd migrate --cluster NAME --dry-run`)."""
    lines = []
    for file_name, statements in plan(name, schema_dir):
        lines.append(f"-- {file_name or 'database and migrations record'}")
        lines.extend(statement.rstrip() + ";\n" for statement in statements)
    return "\n".join(lines)
