"""Report files, parameter binding values and table rendering, without a database."""
import argparse

import pytest

from ingestd import reports
from ingestd.admin import refuse_reason, unescape_param


def test_every_report_file_declares_name_description_and_known_params():
    found = reports.available()
    assert {"summary", "top-content", "funnel", "timeline", "referrers", "contexts", "quality", "interactions",
            "rejections"} <= found.keys()
    for report in found.values():
        assert report.description and set(report.params) <= reports.PARAMS.keys()
        for param in report.params:  # declared = bound in the SQL, and nothing is formatted in
            assert "{" + param + ":" in report.sql, (report.name, param)
        assert "%s" not in report.sql and "{}" not in report.sql


@pytest.mark.parametrize("value", [None, "\\N", "a\\b", "tab\there", "line\nbreak", "o'brien", "\\", "x" * 5000])
def test_admin_parameter_escaping_round_trips(value):
    assert unescape_param(reports.escape_param(value)) == value


@pytest.mark.parametrize("text", ["99999999999999999999", "-9223372036854775809", "1; DROP", "1.5", ""])
def test_partner_must_be_a_64_bit_integer(text):
    with pytest.raises(argparse.ArgumentTypeError):
        reports._partner(text)


def test_partner_range_edges():
    assert reports._partner("9223372036854775807") == 2**63 - 1
    assert reports._partner("-9223372036854775808") == -(2**63)


def test_table_aligns_numbers_right_and_decimals():
    out = reports.render_table(["name", "plays", "ratio"], [["a", 5, 0.5], ["long name", 12345, 0.1234], ["c", 0, None]])
    lines = out.splitlines()
    assert lines[0] == "name       plays   ratio"
    assert lines[2] == "a              5  0.5000"
    assert lines[3] == "long name  12345  0.1234"
    assert lines[4] == "c              0       -"
    assert lines[-1] == "(3 rows)"


def test_a_vertical_report_is_shown_one_metric_per_line():
    assert reports.available()["summary"].vertical and not reports.available()["top-content"].vertical
    names = [f"m{n}" for n in range(7)]
    out = reports.render_table(names, [list(range(len(names) - 1)) + [None]], vertical=True)
    assert out.splitlines()[:2] == ["m0  0", "m1  1"] and out.splitlines()[-1] == "m6  -"


def test_csv_and_json():
    assert reports.render(["a", "b"], [[1, None]], "csv") == "a,b\n1,\n"
    assert reports.render(["a", "b"], [[1, None]], "json").replace(" ", "").replace("\n", "") == '[{"a":1,"b":null}]'


@pytest.mark.parametrize("sql", ["INSERT INTO t VALUES (1)", "/* c */ drop table t", "SELECT 1 INTO OUTFILE 'x'",
                                 "SELECT 1; SELECT 2", "system flush logs", "  CREATE TABLE t (a Int8) ENGINE=Memory"])
def test_query_refusals(sql):
    assert refuse_reason(sql).startswith("read-only:")


@pytest.mark.parametrize("sql", [
    "SELECT 'x' INTO/**/OUTFILE '/tmp/f' TRUNCATE FORMAT RawBLOB", "SELECT 'x' INTO -- c\nOUTFILE '/tmp/f'",
    "SELECT 1 into\toutfile 'f'", "SELECT 'outfile'",  # the word anywhere, even in a string
    "BACKUP TABLE analytics.events TO Disk('d', 'b')", "restore table t FROM Disk('d', 'b')", "UNDROP TABLE t",
    "/* a /* nested */ still a comment */ UNDROP TABLE t", "# c\nUNDROP TABLE t", "-- c\n/* d */ -- e\nALTER TABLE t",
])
def test_query_refusals_past_comments(sql):
    """No comment hides OUTFILE or a write statement (ClickHouse nests /* */ and reads # comments)."""
    assert refuse_reason(sql).startswith("read-only:")


def test_selects_pass():
    assert refuse_reason("SELECT count() FROM analytics.events FORMAT JSON") is None


def test_shipment_histograms():
    """The sink's per-shipment assignments feed cumulative Prometheus histograms."""
    from ingestd.metrics import Metrics

    m = Metrics()
    for rows, seconds in ((5, 0.02), (5000, 0.3), (2_000_000, 20.0)):
        m.batch_rows_last = rows
        m.insert_seconds_sum += seconds
        m.insert_seconds_count += 1
    text = m.render()
    for line in ('ingestd_batch_rows_bucket{le="1"} 0', 'ingestd_batch_rows_bucket{le="10"} 1',
                 'ingestd_batch_rows_bucket{le="10000"} 2', 'ingestd_batch_rows_bucket{le="+Inf"} 3',
                 "ingestd_batch_rows_count 3", 'ingestd_insert_seconds_bucket{le="0.025"} 1',
                 'ingestd_insert_seconds_bucket{le="0.5"} 2', 'ingestd_insert_seconds_bucket{le="10.0"} 2',
                 'ingestd_insert_seconds_bucket{le="+Inf"} 3', "ingestd_insert_seconds_count 3",
                 "ingestd_insert_seconds_sum 20.320000", "ingestd_batch_rows_last 2000000"):
        assert line in text.splitlines(), line


def test_workers_metrics_take_the_max_of_batch_rows_last():
    """ingestd_batch_rows_last is one segment's rows: over --workers it is not summed."""
    from ingestd.metrics import Metrics

    owner, other = Metrics(), Metrics()
    owner.batch_rows_last, other.batch_rows_last = 300, 500
    owner.peers.append(other.snapshot)
    text = owner.render().splitlines()
    assert "ingestd_batch_rows_last 500" in text
    assert "ingestd_batch_rows_count 2" in text  # the histogram still adds up
