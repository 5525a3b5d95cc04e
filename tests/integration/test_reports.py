"""Reports end to end: a synthetic data set through the running server, every report checked against
an independent plain-Python computation (the oracle) over the same events.

Time: reports bucket by the server's receive time (UTC). To spread the data set over several days,
the server runs with shipping held; once every beacon is spooled (through HTTP, validated as usual),
the test re-stamps each spooled row's received_ms with its simulated time (same width, so the
segment's size is unchanged) and resumes shipping. Everything after the spool is the real path:
the sink, the dedup token, the materialized views, the admin listener.
"""
from __future__ import annotations

import base64
import datetime as dt
import http.client
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from pathlib import Path
from urllib.parse import quote

import orjson
import pytest
from conftest import REPO, Ingestd

from ingestd import reports

SEED = 20260302
DAY0 = dt.datetime(2026, 3, 2, tzinfo=dt.timezone.utc)
DAYS = 5
SESSIONS = 72
PARTNERS = {1001: ["0_a1", "0_a2", "0_o'brien"], 2002: ["1_b1", "1_b2", "1_b3"], 3003: ["2_c1", "2_c2"]}
USERS = [f"user{n}@example.com" for n in range(20)]
URLS = ["https://www.news-site.com/article/1", "http://blog.example.org/post?id=7&x=%20y",
        "https://Video.Portal.TV/watch?v=9", "https://news-site.com/other", "http://localhost:8080/test",
        "https://WWW.News-Site.com/upper", "http://[2001:db8::1]:8080/x"]
VARIANTS = ("plain", "percent_once", "percent_twice", "base64", "base64_unescaped", "base64_urlsafe",
            "none", "garbage")
SPEEDS = (0.5, 1.25, 1.5, 2.0)
EVENT_NAMES = {21: "share clicked", 22: "shared", 23: "download clicked", 24: "report clicked",
               25: "report submitted", 31: "enter fullscreen", 32: "exit fullscreen", 33: "pause clicked",
               34: "replay clicked", 35: "seek", 38: "captions", 41: "speed", 42: "audio selected"}


# -- the data set ------------------------------------------------------------------------------------
def _base64_url_with(char: str, urlsafe: bool = False) -> str:
    """A URL whose Base64 form contains `char` ('+' or '-'), to exercise those alphabets."""
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    for n in range(100):
        url = f"https://shop.example.net/item/{n}?q=~~~"
        if char in encode(url.encode()).decode():
            return url
    raise AssertionError("no such URL")


def referrer_param(rng: random.Random, variant: str) -> tuple[str | None, str, str]:
    """(the referrer as it appears in the query string, or None; the expected domain; the URL)."""
    url = rng.choice(URLS)
    if variant == "plain":
        return quote(url, safe=""), url, url
    if variant == "percent_once":  # the upstream document's example: encoded, then encoded again
        return quote(quote(url, safe="/"), safe=""), url, url
    if variant == "percent_twice":
        return quote(quote(quote(url, safe=""), safe=""), safe=""), url, url
    if variant == "base64":
        return quote(base64.b64encode(url.encode()).decode(), safe=""), url, url
    if variant == "base64_unescaped":  # '+' not escaped: it arrives as a space
        url = _base64_url_with("+")
        return base64.b64encode(url.encode()).decode(), url, url
    if variant == "base64_urlsafe":
        url = _base64_url_with("-", urlsafe=True)
        return quote(base64.urlsafe_b64encode(url.encode()).decode(), safe=""), url, url
    if variant == "garbage":
        return "not%20a%20url", "", ""
    return None, "", ""


def expected_domain(url: str) -> str:
    host = (urllib.parse.urlsplit(url).hostname or "").lower() if url else ""
    if ":" in host:  # an IPv6 literal keeps its brackets
        return f"[{host}]"
    return host.removeprefix("www.")


def quarter(rng: random.Random, high: int) -> float:
    """A multiple of 1/4: sums of these are exact in binary floating point, in any order."""
    return rng.randint(0, high * 4) / 4


def make_sessions(rng: random.Random) -> list[dict]:
    """Events of SESSIONS viewing sessions, each a full player life cycle, over DAYS days."""
    events = []
    for n in range(SESSIONS):
        partner = rng.choice(list(PARTNERS))
        entry = rng.choice(PARTNERS[partner])
        day = n % DAYS
        start = DAY0 + dt.timedelta(days=day, seconds=rng.randint(0, 86399))
        if n % 17 == 0:  # crosses midnight: its events land on two days
            start = DAY0 + dt.timedelta(days=day, hours=23, minutes=59, seconds=10)
        raw_referrer, _, url = referrer_param(rng, VARIANTS[n % len(VARIANTS)])
        common = {
            "partnerId": str(partner), "entryId": entry, "sessionId": f"sess-{n:03d}", "flavourId": "0_fl",
            "deliveryType": rng.choice(["hls", "dash", "http"]), "playbackType": rng.choice(["vod", "live"]),
            "clientVer": rng.choice(["3.9.2", "7.43.1"]),
            "playbackContext": rng.choice(["sports", "news", ""]),
            "customVar1": rng.choice(["Finance & Co", "Kids", ""]), "customVar2": rng.choice(["a", "b"]),
            "customVar3": rng.choice(["", "x/y"]),
        }
        if rng.random() < 0.6:
            common["userId"] = rng.choice(USERS)
        session = {"common": common, "raw_referrer": raw_referrer, "url": url, "events": []}
        t = int(start.timestamp() * 1000)
        index = 0

        def add(event_type: int, **fields) -> None:
            nonlocal t, index
            index += 1
            session["events"].append({"eventType": event_type, "eventIndex": index, "ts": t, **fields})
            t += rng.randint(1, 4) * 1000

        add(1)
        if rng.random() < 0.12:  # bounced after the player loaded
            events.append(session)
            continue
        add(2)
        if rng.random() < 0.08:  # asked to play, never played
            events.append(session)
            continue
        play = {"bufferTime": quarter(rng, 3), "actualBitrate": rng.choice([400, 800, 1200]),
                "preferredBitrate": rng.choice([800, 2500])}
        if rng.random() < 0.7:
            play["joinTime"] = quarter(rng, 4)
        add(3, **play)
        length = rng.randint(0, 14)
        reached = 0
        for view in range(1, length + 1):
            add(99, bufferTime=quarter(rng, 10), actualBitrate=rng.choice([400, 800, 1200, 2500]),
                preferredBitrate=rng.choice([800, 2500]))
            while reached < 4 and view / 12 >= (reached + 1) / 4:
                reached += 1
                add(10 + reached)
            roll = rng.random()
            if roll < 0.05:
                add(22, socialNetwork=rng.choice(["facebook", "twitter", "linkedin"]))
            elif roll < 0.08:
                add(21)
            elif roll < 0.10:
                add(23)
            elif roll < 0.12:
                add(24)
                add(25, reportType=rng.choice(["spam", "violent"]))
            elif roll < 0.16:
                add(31)
                add(32)
            elif roll < 0.20:
                add(33)
                add(4, bufferTime=quarter(rng, 2), actualBitrate=800, preferredBitrate=800)
            elif roll < 0.25:
                add(35, targetPosition=rng.randint(0, 300))
            elif roll < 0.28:
                add(38, caption=rng.choice(["en", "fr"]))
            elif roll < 0.31:
                add(41, playbackSpeed=rng.choice(SPEEDS))
            elif roll < 0.33:
                add(42, language=rng.choice(["en", "es"]))
            elif roll < 0.36:
                add(98, errorCode=rng.choice(["1002", "3016"]))
        events.append(session)
    return events


# Beacons the server must reject: (query without sessionId/eventIndex, expected reason, partner or None)
BAD_BEACONS = [
    ("eventType=3&entryId=0_a1", "missing_partner_id", None),
    ("eventType=3&partnerId=abc&entryId=0_a1", "bad_partner_id", None),
    ("eventType=77&partnerId=1001&entryId=0_a1", "unknown_event_type", 1001),
    ("eventType=1&partnerId=1001", "missing_entry_id", 1001),
    ("eventType=99&partnerId=2002&entryId=1_b1&bufferTime=abc", "bad_number", 2002),
    ("partnerId=2002&entryId=1_b1", "missing_event_type", 2002),
    ("eventType=1&partnerId=-1", "missing_entry_id", -1),  # a valid partner, not a missing one
]


def flatten(sessions: list[dict]) -> list[dict]:
    """One dict per accepted event, with every parameter the server will store."""
    rows = []
    for s in sessions:
        for e in s["events"]:
            rows.append({**s["common"], **e, "url": s["url"]})
    return rows


def rejected_set(rng: random.Random) -> list[dict]:
    out = []
    for n in range(18):
        query, reason, partner = BAD_BEACONS[n % len(BAD_BEACONS)]
        ts = int((DAY0 + dt.timedelta(days=n % DAYS, seconds=rng.randint(0, 86399))).timestamp() * 1000)
        out.append({"query": f"{query}&sessionId=rej-{n}&eventIndex=1", "reason": reason, "partner": partner,
                    "ts": ts, "sessionId": f"rej-{n}"})
    return out


def beacon_query(session: dict, event: dict) -> str:
    params = {**session["common"], **{k: v for k, v in event.items() if k != "ts"}}
    query = urllib.parse.urlencode({k: str(v) for k, v in params.items()}, quote_via=quote)
    if session["raw_referrer"] is not None:
        query += "&referrer=" + session["raw_referrer"]
    return query


# -- the oracle ------------------------------------------------------------------------------------------
def day_of(ts: int) -> dt.date:
    return dt.datetime.fromtimestamp(ts / 1000, dt.timezone.utc).date()


def hour_of(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:00")


def viewer(e: dict) -> str:
    return "u:" + e["userId"] if e.get("userId") else "s:" + e["sessionId"]


def ratio(a, b):
    return None if not b else a / b


def select(events, partner=None, entry=None, date_from=None, date_to=None):
    return [e for e in events
            if (partner is None or int(e["partnerId"]) == partner)
            and (entry is None or e["entryId"] == entry)
            and (date_from is None or day_of(e["ts"]) >= date_from)
            and (date_to is None or day_of(e["ts"]) <= date_to)]


def count(events, event_type):
    return sum(1 for e in events if e["eventType"] == event_type)


def playback_metrics(events) -> dict:
    """The metrics several reports share, by their documented definitions."""
    plays = count(events, 3)
    views = [e for e in events if e["eventType"] == 99]
    view_seconds = 10 * len(views)
    buffer = sum(e["bufferTime"] for e in views)
    joins = [e["joinTime"] for e in events if e["eventType"] == 3 and "joinTime" in e]
    reached = [count(events, t) for t in (11, 12, 13, 14)]
    return {
        "loads": count(events, 1), "plays": plays,
        "unique_viewers": len({viewer(e) for e in events if e["eventType"] == 3}),
        "minutes_viewed": view_seconds / 60,
        "avg_time_viewed": ratio(view_seconds / 60, plays),
        "play_through_ratio": ratio(reached[3], plays),
        "avg_view_drop_off": ratio(sum(reached) / 4, plays),
        "avg_buffer_time": ratio(buffer, view_seconds / 60),
        "buffering_ratio": ratio(buffer, buffer + view_seconds),
        "avg_bitrate": ratio(sum(e["actualBitrate"] for e in views), len(views)),
        "avg_preferred_bitrate": ratio(sum(e["preferredBitrate"] for e in views), len(views)),
        "avg_join_time": ratio(sum(joins), len(joins)),
        "error_rate": ratio(count(events, 98), plays),
    }


def oracle(name: str, events: list[dict], rejected: list[dict], partner=None, entry=None, date_from=None,
           date_to=None, limit=20, interval="day") -> list[dict]:
    sel = select(events, partner, entry, date_from, date_to)
    if name == "summary":
        m = playback_metrics(sel)
        m["load_play_ratio"] = ratio(m["plays"], m["loads"])
        m["sessions"] = len({e["sessionId"] for e in sel})
        m.pop("avg_preferred_bitrate")
        return [m]
    if name == "funnel":
        stages = ["impression", "play request", "play", "reached 25%", "reached 50%", "reached 75%", "reached 100%"]
        counts = [count(sel, t) for t in (1, 2, 3, 11, 12, 13, 14)]
        return [{"stage": s, "events": c, "of_loads": ratio(c, counts[0]), "of_previous": ratio(c, counts[max(i - 1, 0)])}
                for i, (s, c) in enumerate(zip(stages, counts))]
    groups: dict[tuple, list] = defaultdict(list)
    if name == "top-content":
        for e in sel:
            groups[(int(e["partnerId"]), e["entryId"])].append(e)
        rows = [{"partner_id": k[0], "entry_id": k[1], **playback_metrics(v)} for k, v in groups.items()]
        rows.sort(key=lambda r: (-r["plays"], r["partner_id"], r["entry_id"]))
        return rows[:limit]
    if name == "timeline":
        for e in sel:
            groups[hour_of(e["ts"]) if interval == "hour" else str(day_of(e["ts"]))].append(e)
        return [{"period": k, **playback_metrics(v)} for k, v in sorted(groups.items())]
    if name == "referrers":
        for e in sel:
            if e["eventType"] in (1, 3, 14, 99):
                groups[expected_domain(e["url"]) or "(none)"].append(e)
        total = sum(count(v, 3) for v in groups.values())
        rows = [{"domain": k, **playback_metrics(v)} for k, v in groups.items()]
        for r in rows:
            r["share_of_plays"] = ratio(r["plays"], total)
        rows.sort(key=lambda r: (-r["plays"], -r["loads"], r["domain"]))
        return rows[:limit]
    if name == "contexts":
        keys = ("playbackContext", "customVar1", "customVar2", "customVar3")
        for e in sel:
            if e["eventType"] in (1, 3, 14, 99):
                groups[tuple(e.get(k, "") for k in keys)].append(e)
        rows = [{"playback_context": k[0], "custom_var1": k[1], "custom_var2": k[2], "custom_var3": k[3],
                 **playback_metrics(v)} for k, v in groups.items()]
        rows.sort(key=lambda r: (-r["plays"], -r["loads"], r["playback_context"], r["custom_var1"],
                                 r["custom_var2"], r["custom_var3"]))
        return rows[:limit]
    if name == "quality":
        for e in sel:
            if e["eventType"] in (3, 98, 99):
                groups[(e["deliveryType"], e["playbackType"], e["clientVer"])].append(e)
        rows = []
        for k, v in groups.items():
            m = playback_metrics(v)
            m["bitrate_ratio"] = ratio(m["avg_bitrate"], m["avg_preferred_bitrate"]) if m["avg_bitrate"] else None
            rows.append({"delivery_type": k[0], "playback_type": k[1], "client_ver": k[2], **m})
        rows.sort(key=lambda r: (-r["plays"], r["delivery_type"], r["playback_type"], r["client_ver"]))
        return rows
    if name == "interactions":
        detail_of = {22: "socialNetwork", 25: "reportType", 38: "caption", 41: "playbackSpeed", 42: "language"}
        for e in sel:
            if e["eventType"] in EVENT_NAMES:
                detail = e.get(detail_of.get(e["eventType"], ""), "")
                if e["eventType"] == 41:
                    detail = f"{detail:g}"
                groups[(e["eventType"], detail)].append(e)
        per_type = defaultdict(int)
        for (t, _), v in groups.items():
            per_type[t] += len(v)
        rows = [{"event_type": t, "event": EVENT_NAMES[t], "detail": d, "events": len(v),
                 "share_of_type": len(v) / per_type[t]} for (t, d), v in groups.items()]
        rows.sort(key=lambda r: (r["event_type"], -r["events"], r["detail"]))
        return rows
    if name == "rejections":
        for r in rejected:
            if (partner is None or r["partner"] == partner) and (date_from is None or day_of(r["ts"]) >= date_from) \
                    and (date_to is None or day_of(r["ts"]) <= date_to):
                groups[(r["partner"], r["reason"])].append(r)
        total = sum(len(v) for v in groups.values())
        rows = [{"partner_id": k[0], "reason": k[1], "rejected": len(v), "share": len(v) / total,
                 "last_seen": dt.datetime.fromtimestamp(max(r["ts"] for r in v) / 1000, dt.timezone.utc)
                 .strftime("%Y-%m-%d %H:%M:%S")} for k, v in groups.items()]
        # ClickHouse sorts NULL last
        rows.sort(key=lambda r: (-r["rejected"], r["partner_id"] is None, r["partner_id"] or 0, r["reason"]))
        return rows
    raise AssertionError(name)


UNIQ_COLUMNS = {"unique_viewers", "sessions"}


def assert_rows_match(name: str, got: list[dict], want: list[dict]) -> None:
    """Counts exact; ratios and averages to the report's rounding; uniq within 2 % (exact here in practice)."""
    assert len(got) == len(want), f"{name}: {len(got)} rows, oracle has {len(want)}:\n{got}\n{want}"
    for g, w in zip(got, want):
        for column, value in g.items():
            if column == "example_message":
                continue
            assert column in w, f"{name}: column {column} not in the oracle"
            expected = w[column]
            where = f"{name} row {g} column {column}: oracle {expected!r}"
            if column in UNIQ_COLUMNS:
                assert abs(value - expected) <= max(1, 0.02 * expected), where
            elif isinstance(expected, float) or (isinstance(value, float) and expected is not None):
                assert value is not None and math.isclose(value, expected, abs_tol=0.51e-2 if column == "minutes_viewed"
                                                          or "bitrate" in column else 0.51e-4), where
            else:
                assert value == expected, where


# -- the running server ----------------------------------------------------------------------------------
def send_all(port: int, sessions: list[dict], rejected: list[dict]) -> None:
    """Every beacon over one keep-alive connection, alternating the two beacon paths."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        n = 0
        for s in sessions:
            for e in s["events"]:
                path = "/collect?" if n % 2 else "/api_v3/index.php?service=analytics&action=trackEvent&"
                conn.request("GET", path + beacon_query(s, e))
                response = conn.getresponse()
                body = response.read()
                assert response.status == 200, (response.status, body, beacon_query(s, e))
                n += 1
        for r in rejected:
            conn.request("GET", "/collect?" + r["query"])
            response = conn.getresponse()
            body = response.read()
            assert response.status == 400 and body, (r, body)
    finally:
        conn.close()


def restamp_spool(spool: Path, times: dict[tuple[str, str], int]) -> list[Path]:
    """Give each spooled row its simulated receive time; return the sealed segments."""
    deadline = time.monotonic() + 20
    while list(spool.glob("*.open")) and time.monotonic() < deadline:
        time.sleep(0.1)  # shipping is held, but segments are still sealed at their age limit
    assert not list(spool.glob("*.open")), "segments were not sealed"
    segments = sorted(spool.glob("*.seg"))
    for path in segments:
        lines = []
        for line in path.read_bytes().splitlines():
            row = orjson.loads(line)
            params = dict(urllib.parse.parse_qsl(row[4]))
            row[1] = times[(params["sessionId"], params["eventIndex"])]
            new = orjson.dumps(row)
            assert len(new) == len(line), "re-stamping must keep the segment's size"
            lines.append(new)
        tmp = path.with_suffix(".restamp")
        tmp.write_bytes(b"\n".join(lines) + b"\n")
        tmp.rename(path)
    return segments


def post(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="POST", data=b""), timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture(scope="module")
def dataset():
    rng = random.Random(SEED)
    sessions = make_sessions(rng)
    rejected = rejected_set(rng)
    return sessions, flatten(sessions), rejected


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, dataset):
    """A server whose database holds the data set; also the copies of its segments for the replay test."""
    sessions, events, rejected = dataset
    tmp = tmp_path_factory.mktemp("reports")
    server = Ingestd(tmp, "--hold-shipping").start()
    try:
        send_all(server.port, sessions, rejected)
        times = {(e["sessionId"], str(e["eventIndex"])): e["ts"] for e in events}
        times.update({(r["sessionId"], "1"): r["ts"] for r in rejected})
        segments = restamp_spool(server.spool, times)
        copies = tmp / "copies"
        copies.mkdir()
        for path in segments:
            shutil.copy(path, copies / path.name)
        assert post(server.admin_url + "/ship?action=resume")[0] == 200
        assert server.wait_rows("SELECT count() AS n FROM analytics.events", len(events)) == len(events)
        assert server.wait_rows("SELECT count() AS n FROM analytics.rejected_events", len(rejected)) == len(rejected)
        server.copies = copies
        yield server
    finally:
        server.stop()


def run_report(server, name: str, **params) -> list[dict]:
    """One report through the running server's admin listener, as `ingestd report --admin` runs it."""
    report = reports.available()[name]
    values = {"partner": None, "entry": None, "from": reports.FROM_DEFAULT, "to": reports.TO_DEFAULT,
              "limit": 20, "interval": "day", **params}
    names, rows = reports.typed_rows(reports.run_admin(server.admin_url, report.sql,
                                                       {p: values[p] for p in report.params}))
    return [dict(zip(names, row)) for row in rows]


P1 = 1001
D1, D3 = DAY0.date() + dt.timedelta(days=1), DAY0.date() + dt.timedelta(days=3)
CASES = [
    (name, params)
    for name in ("summary", "top-content", "funnel", "timeline", "referrers", "contexts", "quality",
                 "interactions", "rejections")
    for params in ({}, {"partner": P1, "from": D1, "to": D3})
] + [
    ("summary", {"entry": "0_o'brien"}),
    ("funnel", {"partner": 2002, "entry": "1_b2"}),
    ("timeline", {"partner": 2002, "interval": "hour", "from": D1, "to": D1}),
    ("interactions", {"entry": "1_b1"}),
    ("top-content", {"limit": 3}),
    ("rejections", {"partner": 2002}),
]


@pytest.mark.parametrize("name,params", CASES, ids=[f"{n}-{'-'.join(map(str, p.values())) or 'all'}" for n, p in CASES])
def test_report_matches_oracle(loaded, dataset, name, params):
    """Each report's numbers equal the oracle's over the same events."""
    _, events, rejected = dataset
    got = run_report(loaded, name, **params)
    oracle_params = {"date_from" if k == "from" else "date_to" if k == "to" else k: v for k, v in params.items()}
    want = oracle(name, events, rejected, **oracle_params)
    assert want, "the case must select some data"
    assert_rows_match(name, got, want)
    if name == "rejections":
        messages = {(r["partner_id"], r["reason"]): r["example_message"] for r in got}
        for key, message in messages.items():
            assert message, key  # one of the server's one-line reasons


def test_data_set_is_realistic(dataset):
    """The data set covers what the issue asks: sessions, partners, entries, days, referrer shapes, life cycle."""
    sessions, events, _ = dataset
    assert len(sessions) >= 50
    assert len({e["partnerId"] for e in events}) >= 3 and len({e["entryId"] for e in events}) >= 8
    assert len({day_of(e["ts"]) for e in events}) >= DAYS
    assert len({expected_domain(e["url"]) for e in events}) >= 5
    assert {"https://WWW.News-Site.com/upper", "http://[2001:db8::1]:8080/x"} <= {e["url"] for e in events}
    assert {1, 2, 3, 4, 11, 12, 13, 14, 21, 22, 23, 24, 25, 31, 35, 38, 41, 98, 99} <= {e["eventType"] for e in events}


def test_replayed_segments_do_not_double_count(loaded):
    """Shipping every segment a second time (a replay after a crash) changes neither raw nor aggregates."""
    before = {name: run_report(loaded, name) for name in ("summary", "referrers", "quality", "interactions",
                                                           "rejections", "contexts")}
    raw_before = loaded.query("SELECT count() AS n FROM analytics.events")[0]["n"]
    shipped = loaded.metrics()["ingestd_batches_shipped_total"]
    copies = sorted(loaded.copies.glob("*.seg"))
    for path in copies:
        shutil.copy(path, loaded.spool / path.name)
    loaded.wait_metric("ingestd_batches_shipped_total", shipped + len(copies))
    assert not list(loaded.spool.glob("*.seg"))
    assert loaded.query("SELECT count() AS n FROM analytics.events")[0]["n"] == raw_before
    for name, rows in before.items():
        assert run_report(loaded, name) == rows, name


def cli(*args: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("INGESTD_")}
    return subprocess.run([sys.executable, "-m", "ingestd", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env={**clean, "PYTHONPATH": str(REPO), **(env or {})})


def test_cli_list_and_table_output_via_admin(loaded):
    """`ingestd report --list` names every report; each runs through --admin and prints an aligned table."""
    listed = cli("report", "--list")
    assert listed.returncode == 0, listed.stderr
    names = [line.split()[0] for line in listed.stdout.splitlines()]
    assert names == sorted(reports.available()) and len(names) >= 9
    out = cli("report", "top-content", "--admin", loaded.admin_url, "--partner", str(P1), "--limit", "3")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["partner_id", "entry_id", "plays"]
    assert lines[1].startswith("----------  ") and lines[-1] == "(3 rows)"
    widths = {len(line) for line in lines[:-1]}
    assert len(widths) <= 2  # header, rule and rows line up (trailing spaces trimmed on the last column)
    as_csv = cli("report", "funnel", "--admin", loaded.admin_url, "--format", "csv")
    assert as_csv.stdout.splitlines()[0] == "stage,events,of_loads,of_previous"
    refused = cli("report", "quality", "--entry", "0_a1", "--admin", loaded.admin_url)
    assert refused.returncode != 0 and "does not take --entry" in refused.stderr
    # neither --admin nor --clickhouse: the configured database is held, so the configured admin is asked
    configured = cli("report", "funnel", "--format", "json",
                     env={"INGESTD_CLICKHOUSE": loaded.clickhouse, "INGESTD_ADMIN": f"127.0.0.1:{loaded.admin_port}"})
    assert configured.returncode == 0 and "asking it at" in configured.stderr, configured.stderr
    assert json.loads(configured.stdout) == run_report(loaded, "funnel")


MALICIOUS = ["0_a1' OR '1'='1", "0_a1'; DROP TABLE analytics.events; --", "\\N", "{entry:String}", "x" * 4000,
             "0_a1\\' OR 1=1 --", "%27%20OR%201=1"]


def test_malicious_parameters_are_bound_as_data(loaded, dataset):
    """Quotes, statement separators and huge values select nothing and change nothing."""
    _, events, _ = dataset
    for value in MALICIOUS:
        rows = run_report(loaded, "summary", entry=value)
        assert rows[0]["plays"] == 0 and rows[0]["loads"] == 0, value
    quoted = run_report(loaded, "summary", entry="0_o'brien")  # a real entry id with a quote in it
    assert quoted[0]["plays"] == count(select(events, entry="0_o'brien"), 3) > 0
    assert loaded.query("SELECT count() AS n FROM analytics.events")[0]["n"] == len(events)
    huge = cli("report", "summary", "--partner", "99999999999999999999999", "--admin", loaded.admin_url)
    assert huge.returncode == 2 and "64-bit" in huge.stderr
    bad_date = cli("report", "summary", "--from", "2026-01-01'; DROP", "--admin", loaded.admin_url)
    assert bad_date.returncode == 2 and "not a date" in bad_date.stderr


def admin_get(server, path: str, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(server.admin_url + path, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


WRITES = ["INSERT INTO analytics.events (event_type) VALUES (1)", "ALTER TABLE analytics.events DELETE WHERE 1",
          "DROP TABLE analytics.events", "CREATE TABLE analytics.x (a Int8) ENGINE = Memory",
          "SYSTEM STOP MERGES", "  -- a comment first\n drop table analytics.events"]


def test_query_refuses_writes(loaded, tmp_path):
    """/query refuses writes before ClickHouse sees them, and readonly=1 refuses what slips past."""
    for sql in WRITES:
        status, body = admin_get(loaded, "/query?" + urllib.parse.urlencode({"query": sql}))
        assert status == 403 and body.startswith(b"read-only:"), (sql, status, body)
    # not on the refusal list: ClickHouse's own readonly=1 refuses it (chDB enforces it too)
    status, body = admin_get(loaded, "/query?" + urllib.parse.urlencode(
        {"query": "EXCHANGE TABLES analytics.events AND analytics.rejected_events"}))
    assert status == 403 and b"readonly" in body.lower(), body
    status, body = admin_get(loaded, "/query?" + urllib.parse.urlencode(
        {"query": "SELECT * FROM file('/etc/hostname', 'LineAsString')"}))
    assert status == 403 and b"readonly" in body.lower(), body
    target = tmp_path / "out.txt"  # readonly=1 would not stop this one: refused by ingestd
    status, body = admin_get(loaded, "/query?" + urllib.parse.urlencode({"query": f"SELECT 1 INTO OUTFILE '{target}'"}))
    assert status == 403 and b"OUTFILE" in body and not target.exists()
    status, body = admin_get(loaded, "/query?" + urllib.parse.urlencode({"query": "SELECT 1; DROP TABLE analytics.events"}))
    assert status == 403
    status, body = admin_get(loaded, "/query?" + urllib.parse.urlencode(
        {"query": "SELECT {p:Nullable(Int64)} IS NULL, {s:String}", "param_p": "\\N", "param_s": "a'b"}))
    assert status == 200 and body == b"1\ta\\'b\n"


def test_metrics_page_lists_what_the_issue_asks(loaded):
    """Requests by status, events by type, rejections by reason, batch sizes, insert latency, spool."""
    status, body = admin_get(loaded, "/metrics")
    text = body.decode()
    for needle in ('ingestd_http_responses_total{status="200"}', 'ingestd_events_accepted_total{type="99"}',
                   'ingestd_events_rejected_total{reason="bad_number"}', "ingestd_batch_rows_bucket{le=",
                   "ingestd_insert_seconds_bucket{le=", "ingestd_insert_seconds_count", "ingestd_spool_bytes",
                   "ingestd_spool_segments"):
        assert needle in text, needle


def test_admin_token(make_ingestd, tmp_path):
    """With --admin-token, /metrics and /query need the bearer token; the health probes do not."""
    server = make_ingestd("--admin-token", "s3cret", tmp=tmp_path).start(wait_clickhouse=False)
    assert admin_get(server, "/healthz")[0] == 200
    assert admin_get(server, "/metrics")[0] == 401
    assert admin_get(server, "/metrics", {"Authorization": "Bearer wrong"})[0] == 403
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, body = admin_get(server, "/metrics", {"Authorization": "Bearer s3cret"})
        if status == 200 and b"ingestd_clickhouse_connected 1" in body:
            break
        time.sleep(0.1)
    assert status == 200
    out = cli("report", "funnel", "--admin", server.admin_url, "--admin-token", "s3cret", "--format", "json")
    assert out.returncode == 0, out.stderr
    assert [r["stage"] for r in json.loads(out.stdout)][0] == "impression"
    denied = cli("report", "funnel", "--admin", server.admin_url)
    assert denied.returncode != 0 and "401" in denied.stderr


def test_reports_on_a_stopped_server(loaded):
    """After the server stops, every report opens the database directly and gives the same rows."""
    through_admin = {name: run_report(loaded, name) for name in reports.available()}
    running = cli("report", "summary", "--clickhouse", loaded.clickhouse)
    assert running.returncode != 0 and "--admin" in running.stderr  # the server holds the database
    assert loaded.stop() == 0
    for name, rows in through_admin.items():
        out = cli("report", name, "--clickhouse", loaded.clickhouse, "--format", "json")
        assert out.returncode == 0, (name, out.stderr)
        assert json.loads(out.stdout) == rows, name
