"""Report fixes shipped as migrations after 008, applied the way a deployment gets them: on a database
that already applied 001–008 and holds aggregates, then fed the reviewer's repro beacons.

In process on the embedded engine (no server): rows go into analytics.events_incoming as the sink
ships them, so every materialized view runs; the reports are schema/reports/*.sql with bound parameters.
"""
from __future__ import annotations

import datetime as dt
import shutil

import orjson
import pytest

from ingestd import clickhouse, reports

OLD = [p for p in clickhouse.migration_files() if p.name < "009"]
BEFORE = int(dt.datetime(2026, 1, 5, 12, tzinfo=dt.timezone.utc).timestamp() * 1000)  # aggregated by 001–008
AFTER = int(dt.datetime(2026, 1, 6, 12, tzinfo=dt.timezone.utc).timestamp() * 1000)   # after the upgrade
DAY_BEFORE, DAY_AFTER = dt.date(2026, 1, 5), dt.date(2026, 1, 6)

REFERRER_PARTNER, SESSION_PARTNER, OLD_PARTNER = 4242, 5151, 7
REFERRERS = ["https%3A%2F%2Fwww.example.com%2F", "https%3A%2F%2FWWW.Example.com%2F",
             "http%3A%2F%2F%5B2001%3Adb8%3A%3A1%5D%3A8080%2Fx", "http%3A%2F%2Fuser%40%5B%3A%3A1%5D%2F",
             "HTTP%3A%2F%2FLOCALHOST%3A8080%2Fa"]


def send(client, ts: int, query: str, kind: str = "e", reason: str = "", message: str = "") -> None:
    client.command("INSERT INTO analytics.events_incoming (kind, received_ms, q, reason, message) "
                   "VALUES ({kind:String}, {ts:Int64}, {q:String}, {reason:String}, {message:String})",
                   parameters={"kind": kind, "ts": ts, "q": query, "reason": reason, "message": message})


def old_beacons(client) -> None:
    """What a deployment aggregated before the upgrade (with the old, defective views)."""
    send(client, BEFORE, f"eventType=1&partnerId={OLD_PARTNER}&entryId=e0")                  # no sessionId
    send(client, BEFORE, f"eventType=1&partnerId={OLD_PARTNER}&entryId=e0&sessionId=a")
    send(client, BEFORE, f"eventType=3&partnerId={OLD_PARTNER}&entryId=e0&sessionId=a"
                         "&referrer=https%3A%2F%2FWWW.Example.com%2F")
    send(client, BEFORE, "eventType=3&entryId=e0", "r", "missing_partner_id", "eventType 3 (Play): partnerId is missing")


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fixes")
    old_schema = tmp / "schema_008"
    old_schema.mkdir()
    for path in OLD:
        shutil.copy(path, old_schema / path.name)
    client = clickhouse.connect(f"chdb://{tmp / 'ch'}")
    try:
        assert clickhouse.migrate(client, old_schema) == [p.name for p in OLD]
        old_beacons(client)
        client.applied = clickhouse.migrate(client)  # the upgrade: only the new files
        for n, referrer in enumerate(REFERRERS):
            send(client, AFTER, f"eventType=3&partnerId={REFERRER_PARTNER}&entryId=r1&sessionId=r{n}&referrer={referrer}")
        # defect 2: an empty sessionId is no session, and a play with neither id is no viewer
        send(client, AFTER, f"eventType=1&partnerId={SESSION_PARTNER}&entryId=s1")
        send(client, AFTER, f"eventType=1&partnerId={SESSION_PARTNER}&entryId=s1&sessionId=a")
        send(client, AFTER, f"eventType=3&partnerId={SESSION_PARTNER}&entryId=s1&sessionId=")
        send(client, AFTER, f"eventType=3&partnerId={SESSION_PARTNER}&entryId=s1&sessionId=a")
        # defect 3: partnerId=-1 is a valid partner; missing and non-integer partners are not
        # (each insert differs: identical blocks are dropped by the tables' deduplication window)
        for n, (query, reason) in enumerate((("eventType=1&partnerId=-1", "missing_entry_id"),
                                             ("eventType=1&partnerId=-1", "missing_entry_id"),
                                             ("eventType=1&entryId=x", "missing_partner_id"),
                                             ("eventType=1&partnerId=abc&entryId=x", "bad_partner_id"),
                                             (f"eventType=1&partnerId={-(1 << 63)}", "missing_entry_id"))):
            send(client, AFTER + n, query, "r", reason, f"{reason} message")
        yield client
    finally:
        client.close()


def report(client, name: str, **params) -> list[dict]:
    rep = reports.available()[name]
    values = {"partner": None, "entry": None, "from": reports.FROM_DEFAULT, "to": reports.TO_DEFAULT,
              "limit": 20, "interval": "day", **params}
    out = client.raw_query(rep.sql, parameters={p: values[p] for p in rep.params}, fmt="JSONCompact",
                           settings={"readonly": 1})
    names, rows = reports.typed_rows(orjson.loads(out))
    return [dict(zip(names, row)) for row in rows]


def test_the_upgrade_applies_only_the_new_migrations(db):
    assert db.applied == [p.name for p in clickhouse.migration_files() if p.name >= "009"]
    assert db.applied, "the fixes are new migration files"
    assert clickhouse.migrate(db) == []  # and once only


def test_referrer_domain_is_lower_cased_before_www_is_stripped_and_keeps_ipv6_brackets(db):
    rows = report(db, "referrers", partner=REFERRER_PARTNER)
    assert {r["domain"]: r["plays"] for r in rows} == {"example.com": 2, "[2001:db8::1]": 1, "[::1]": 1,
                                                       "localhost": 1}


def test_empty_session_ids_are_neither_sessions_nor_viewers(db):
    (summary,) = report(db, "summary", partner=SESSION_PARTNER)
    assert summary["loads"] == 2 and summary["plays"] == 2
    assert summary["sessions"] == 1
    assert summary["unique_viewers"] == 1
    (top,) = report(db, "top-content", partner=SESSION_PARTNER)
    assert top["unique_viewers"] == 1
    (timeline,) = report(db, "timeline", partner=SESSION_PARTNER)
    assert timeline["unique_viewers"] == 1
    (referrer,) = report(db, "referrers", partner=SESSION_PARTNER)
    assert referrer["unique_viewers"] == 1
    (context,) = report(db, "contexts", partner=SESSION_PARTNER)
    assert context["unique_viewers"] == 1


def test_partner_minus_one_is_a_partner_of_its_own_in_rejections(db):
    rows = report(db, "rejections", **{"from": DAY_AFTER})
    got = {(r["partner_id"], r["reason"]): r["rejected"] for r in rows}
    assert got == {(-1, "missing_entry_id"): 2, (None, "missing_partner_id"): 1, (None, "bad_partner_id"): 1,
                   (-(1 << 63), "missing_entry_id"): 1}
    assert [r["partner_id"] for r in report(db, "rejections", partner=-1)] == [-1]
    assert [r["partner_id"] for r in report(db, "rejections", partner=-(1 << 63))] == [-(1 << 63)]


def test_rows_aggregated_before_the_upgrade_stay_as_they_were(db):
    """The migrations fix what is aggregated from then on; earlier aggregates are not rewritten."""
    (summary,) = report(db, "summary", partner=OLD_PARTNER)
    assert summary["sessions"] == 2  # counted by 002's view, empty sessionId included
    plays = {r["domain"]: r["plays"] for r in report(db, "referrers", partner=OLD_PARTNER)}
    assert plays == {"www.example.com": 1, "(none)": 0}  # 004's view: 'WWW.' kept
    rows = report(db, "rejections", **{"to": DAY_BEFORE})
    assert [(r["partner_id"], r["reason"], r["rejected"]) for r in rows] == [(None, "missing_partner_id", 1)]
    # a missing partner before and after the upgrade is one row of the report
    everything = {(r["partner_id"], r["reason"]): r["rejected"] for r in report(db, "rejections")}
    assert everything[(None, "missing_partner_id")] == 2
