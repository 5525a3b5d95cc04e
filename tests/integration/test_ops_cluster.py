"""`ingestd migrate --cluster`: every generated statement parsed by real ClickHouse (formatQuery in chDB)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO

from ingestd import clickhouse, cluster

CLUSTER = "ingest_cluster"


@pytest.fixture(scope="module")
def parse(tmp_path_factory):
    """ClickHouse's own parser: statement -> its canonical text (raises on a syntax error)."""
    client = clickhouse.connect(f"chdb://{tmp_path_factory.mktemp('parser')}")

    def formatted(sql: str) -> str:
        return client.query("SELECT formatQuery({sql:String})", parameters={"sql": sql}).result_rows[0][0]

    yield formatted
    client.close()


def single_node_storage() -> set[str]:
    statements = [s for p in clickhouse.migration_files() for s in clickhouse.split_statements(p.read_text())]
    return cluster.storage_tables(statements)


def test_every_statement_for_every_schema_file_parses_and_is_clustered(parse):
    steps = cluster.plan(CLUSTER)
    assert [name for name, _ in steps[1:]] == [p.name for p in clickhouse.migration_files()]
    texts = [parse(statement) for _, statements in steps for statement in statements]
    for text in texts:
        assert re.search(rf"ON CLUSTER '?{CLUSTER}'?", text), text
        for engine in re.findall(r"ENGINE = (\w*MergeTree)", text):
            assert engine.startswith("Replicated"), text
    storage = single_node_storage()
    assert {"events", "rejected_events"} <= storage
    for table in storage:  # readers keep the name: a Distributed table over the replicated local one
        assert any(f"CREATE TABLE IF NOT EXISTS analytics.{table}_local ON CLUSTER" in t and "ENGINE = Replicated" in t
                   for t in texts), table
        assert any(t.startswith(f"CREATE TABLE IF NOT EXISTS analytics.{table} ON CLUSTER")
                   and f"Distributed('{CLUSTER}', 'analytics', '{table}_local'" in t for t in texts), table
    views = [t for t in texts if t.startswith("CREATE MATERIALIZED VIEW")]
    assert len(views) >= 2
    for view in views:  # views fire on local inserts: they read and write local tables only
        assert re.search(r"\bTO analytics\.\w+_local\b", view), view
        for source in re.findall(r"\bFROM analytics\.(\w+)", view):
            assert source not in storage, view


def test_rewrite_rules_on_a_schema_of_every_shape(parse, tmp_path):
    (tmp_path / "001_shapes.sql").write_text("""
-- a comment
CREATE TABLE IF NOT EXISTS analytics.events_incoming (q String) ENGINE = Null;
CREATE TABLE IF NOT EXISTS analytics.events (q String, v UInt32) ENGINE = ReplacingMergeTree(v) ORDER BY q
SETTINGS non_replicated_deduplication_window = 100;
CREATE TABLE IF NOT EXISTS analytics.totals (k String, a UInt64, b UInt64)
ENGINE = SummingMergeTree((a, b)) ORDER BY k;
CREATE MATERIALIZED VIEW IF NOT EXISTS analytics.events_mv TO analytics.events AS
SELECT q, 1 AS v FROM analytics.events_incoming;
CREATE MATERIALIZED VIEW IF NOT EXISTS analytics.totals_mv TO analytics.totals AS
SELECT q AS k, count() AS events, 1 AS a, 2 AS b FROM analytics.events GROUP BY k;
CREATE MATERIALIZED VIEW IF NOT EXISTS analytics.inner_mv ENGINE = AggregatingMergeTree ORDER BY q AS
SELECT q FROM analytics.events GROUP BY q;
CREATE VIEW IF NOT EXISTS analytics.recent AS SELECT * FROM analytics.events LIMIT 10;
ALTER TABLE analytics.events ADD COLUMN IF NOT EXISTS w String;
ALTER TABLE analytics.events MODIFY TTL toDate('2100-01-01');
""")
    (statements,) = [s for _, s in cluster.plan("prod", tmp_path)[1:]]
    texts = [parse(s).replace("`", "") for s in statements]  # compare without identifier quotes
    assert "ENGINE = Null" in texts[0] and "analytics.events_incoming ON CLUSTER prod" in texts[0]
    assert ("ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/analytics/events_local', "
            "'{replica}', v)") in texts[1]
    assert "replicated_deduplication_window = 100" in texts[1] and "non_replicated" not in texts[1]
    assert "Distributed('prod', 'analytics', 'events_local', rand())" in texts[2]
    assert "ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/analytics/totals_local', '{replica}', (a, b))" \
        in texts[3]
    assert "TO analytics.events_local" in texts[5] and "FROM analytics.events_incoming" in texts[5]
    # a column named like a table stays a column; the table it reads becomes local
    assert "count() AS events" in texts[6] and "FROM analytics.events_local" in texts[6]
    assert "analytics.inner_mv_local ON CLUSTER prod" in texts[7] and "ReplicatedAggregatingMergeTree" in texts[7]
    assert "FROM analytics.events_local" in texts[7]
    assert "Distributed('prod', 'analytics', 'inner_mv_local', rand())" in texts[8]
    assert "FROM analytics.events\nLIMIT" in texts[9]  # a plain view reads the Distributed table
    assert texts[10].startswith("ALTER TABLE analytics.events_local ON CLUSTER prod\n    (ADD COLUMN")
    assert texts[11].startswith("ALTER TABLE analytics.events ON CLUSTER prod\n    (ADD COLUMN")  # Distributed too
    assert texts[12].startswith("ALTER TABLE analytics.events_local ON CLUSTER prod\n    (MODIFY TTL")
    assert len(texts) == 13


def test_a_statement_it_cannot_convert_is_refused(tmp_path):
    (tmp_path / "001_seed.sql").write_text("INSERT INTO analytics.events VALUES ('x');\n")
    with pytest.raises(cluster.ClusterSchemaError, match="cannot convert for a cluster: .INSERT INTO"):
        cluster.plan("prod", tmp_path)


def run_cli(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTD_")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "ingestd", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_dry_run_prints_the_sql_and_a_cluster_clickhouse_lacks_fails_in_one_line(tmp_path):
    result = run_cli("migrate", "--cluster", "prod", "--dry-run")
    assert result.returncode == 0
    assert "CREATE TABLE IF NOT EXISTS analytics.events ON CLUSTER 'prod' AS analytics.events_local" in result.stdout
    result = run_cli("migrate", "--cluster", "prod", "--clickhouse", f"chdb://{tmp_path / 'ch'}")
    assert result.returncode == 1
    assert result.stderr.startswith("ingestd: cluster migration stopped at the database: CREATE DATABASE")
    assert "CLUSTER_DOESNT_EXIST" in result.stderr and "Traceback" not in result.stderr


def test_dry_run_without_a_cluster_prints_the_sql_and_changes_nothing(tmp_path):
    """`migrate --dry-run` used to migrate for real when no cluster was named."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTD_")}
    env["PYTHONPATH"] = str(REPO)
    for dsn in ([], ["--clickhouse", f"chdb://{tmp_path / 'ch'}"]):
        result = subprocess.run([sys.executable, "-m", "ingestd", "migrate", "--dry-run", *dsn], capture_output=True,
                                text=True, env=env, cwd=tmp_path, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "CREATE DATABASE IF NOT EXISTS analytics;" in result.stdout
        assert "CREATE TABLE IF NOT EXISTS analytics.events\n" in result.stdout
        assert [line for line in result.stdout.splitlines() if line.startswith("-- 0")] == [
            f"-- {p.name}" for p in clickhouse.migration_files()]
        assert "ON CLUSTER" not in result.stdout and "migration(s)" not in result.stdout
    assert list(tmp_path.iterdir()) == []  # neither ./data nor the named directory was created


def test_replaced_views_are_dropped_and_recreated_on_every_node(parse):
    """Migrations that replace a view (DROP VIEW + CREATE) and add a Nullable-keyed table stay clustered."""
    steps = dict(cluster.plan(CLUSTER))
    for file_name, views in (("009_referrer_domain.sql", ["referrer_daily_mv"]),
                             ("010_nonempty_ids.sql", ["entry_hourly_mv", "context_daily_mv", "referrer_daily_mv"]),
                             ("011_rejections_partner_nullable.sql", ["rejections_daily_mv"])):
        texts = [parse(s).replace("`", "") for s in steps[file_name]]
        drops = [t for t in texts if t.startswith("DROP")]
        assert drops == [f"DROP VIEW IF EXISTS analytics.{v} ON CLUSTER {CLUSTER}" for v in views], file_name
    texts = [parse(s).replace("`", "") for s in steps["011_rejections_partner_nullable.sql"]]
    assert "ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/analytics/rejections_daily_v2_local'" in texts[0]
    assert "allow_nullable_key = 1" in texts[0] and "replicated_deduplication_window = 10000" in texts[0]
    assert "TO analytics.rejections_daily_v2_local" in texts[3] and "FROM analytics.rejected_events_local" in texts[3]
