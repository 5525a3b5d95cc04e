"""No raw ks anywhere: after the document's example and rejected requests carrying a ks, search every table and the spool."""
import base64
import json
import urllib.parse
import urllib.request
from urllib.parse import quote

from conftest import DOCUMENT_EXAMPLE, DOCUMENT_KS

BEACON = "/api_v3/index.php?service=analytics&action=trackEvent&"
PLAY = {"eventType": 3, "partnerId": 585231, "entryId": "0_e", "flavourId": "f", "sessionId": "s", "eventIndex": 1,
        "bufferTime": 0, "actualBitrate": 1, "preferredBitrate": 2}
KS_DECODED = urllib.parse.unquote(DOCUMENT_KS)  # the base64 text, '=' padded
SIGNATURE = base64.b64decode(KS_DECODED).split(b"|")[0].decode()  # the secret part inside it
# every spelling of the credential that must not be stored
# a realistic KS v1 whose Base64 holds '/' and '+' (and padding): its echoes are spelled differently
KS2_PLAIN = b"0000000000000000002bdc545d6c80dd|585231;585231;1435160676;0;1435074276.10;viewer~10?>;view:*,widget:1;;"
KS2 = base64.b64encode(KS2_PLAIN).decode()
assert "/" in KS2 and "+" in KS2 and KS2.endswith("=")
FORBIDDEN = [DOCUMENT_KS, KS_DECODED, KS_DECODED.rstrip("="), urllib.parse.quote(KS_DECODED, safe=""), SIGNATURE,
             KS2.rstrip("="), urllib.parse.quote(KS2.rstrip("="), safe=""), urllib.parse.quote(KS2.rstrip("=")),
             urllib.parse.quote(urllib.parse.quote(KS2.rstrip("="), safe=""), safe="")]


def ship(server, action):
    request = urllib.request.Request(f"{server.admin_url}/ship?action={action}", method="POST")
    urllib.request.urlopen(request, timeout=10).close()


def test_no_raw_ks_in_any_table_or_spool_file(make_ingestd):
    server = make_ingestd("--hold-shipping").start()
    without_ks = DOCUMENT_EXAMPLE.replace("&ks=" + DOCUMENT_KS, "")
    referrer_echo = urllib.parse.quote("http://example.com/embed?ks=" + KS_DECODED, safe="")
    accepted = [
        server.get(BEACON + DOCUMENT_EXAMPLE),  # the document's own example
        server.get(BEACON + without_ks + "&%6Bs=" + DOCUMENT_KS),  # an escaped parameter name
        server.get(BEACON + DOCUMENT_EXAMPLE + "&ks=second&customVar2=" + referrer_echo),  # repeated, echoed
        server.post(BEACON + without_ks, json.dumps({"ks": KS_DECODED}).encode()),  # in a JSON body
        server.post(BEACON, DOCUMENT_EXAMPLE.encode(), "text/plain"),  # sendBeacon text body
        # a JSON body whose referrer echoes its ks (the fast path, then the general one, percent-encoded)
        server.post(BEACON, json.dumps({**PLAY, "ks": KS2, "referrer": "https://site/watch?ks=" + KS2}).encode()),
        server.post(BEACON, json.dumps({**PLAY, "eventType": "3", "ks": KS2,
                                        "referrer": "https://site/watch?ks=" + quote(KS2, safe="")}).encode()),
        # the usual double encoding: the ks encoded once, the referrer that carried it encoded again
        server.get(BEACON + without_ks + "&ks=" + quote(KS2) + "&referrer=" + quote("https://site/watch?ks=" + quote(KS2))),
        server.get(BEACON + without_ks + "&ks=" + quote(KS2, safe="") + "&referrer="
                   + quote("https://site/watch?ks=" + quote(KS2, safe=""), safe="")),
        # the ks in the query string, echoed in the JSON body
        server.post(BEACON + "ks=" + quote(KS2, safe=""), json.dumps({**PLAY, "referrer": "https://s/?ks=" + KS2}).encode()),
    ]
    rejected = [
        server.get(BEACON + "eventType=abc&ks=" + DOCUMENT_KS),
        server.get(BEACON + "eventType=abc&k%73=" + DOCUMENT_KS + "&referrer=" + referrer_echo),
        server.post(BEACON, b'{"eventType": "abc", "ks": "' + KS_DECODED.encode() + b'"', "application/json"),
        server.post(BEACON, b'[{"ks": "' + KS_DECODED.encode() + b'"}]', "application/json"),
        server.post(BEACON, json.dumps({"eventType": "abc", "ks": KS_DECODED}).encode()),
        server.post(BEACON, ("eventType=abc&%6Bs=" + DOCUMENT_KS).encode(), "text/plain"),
        server.post(BEACON, ("eventType=abc&%6Bs=" + DOCUMENT_KS).encode(), "application/x-www-form-urlencoded"),
        server.post(BEACON, b'--XX\r\nContent-Disposition: form-data; name="ks"\r\n\r\n' + KS2.encode()
                    + b"\r\n--XX--\r\n", "multipart/form-data; boundary=XX"),  # a syntax not read, masked
        server.post(BEACON, json.dumps({"eventType": "abc", "ks": KS2, "referrer": "https://s/?ks=" + KS2}).encode()),
        server.post(BEACON, b'{"eventType":"abc","ks":"' + KS2.encode() + b'","r":"?ks=' + quote(KS2, safe="").encode()
                    + b'"', "application/json"),  # broken JSON with an echo
        server.post(BEACON, ("eventType=abc&ks=" + quote(KS2, safe="") + "&referrer="
                             + quote("https://s/?ks=" + quote(KS2, safe=""), safe="")).encode(), "text/plain"),
        server.post(BEACON, b"<beacon><ks>" + KS2.encode() + b"</ks></beacon>", "text/plain"),  # not parsed: masked
    ]
    assert [a[0] for a in accepted] == [200] * len(accepted)
    assert [r[0] for r in rejected] == [400] * len(rejected)

    # the spool, before anything is shipped (sealed and open segments alike)
    files = [p for p in server.spool.rglob("*") if p.is_file()]
    spooled = b"".join(p.read_bytes() for p in files)
    assert spooled.count(b"\n") >= len(accepted) + len(rejected)
    for secret in FORBIDDEN:
        assert secret.encode() not in spooled, secret

    ship(server, "resume")
    assert server.wait_rows("SELECT count() AS n FROM analytics.events", len(accepted)) == len(accepted)
    assert server.wait_rows("SELECT count() AS n FROM analytics.rejected_events", len(rejected)) == len(rejected)
    # what was decoded instead: partner, expiry, privileges and a hash for joining
    rows = server.query("SELECT ks_status, ks_partner_id, ks_expiry, ks_privileges, ks_hash FROM analytics.events")
    assert {(r["ks_status"], int(r["ks_partner_id"]), int(r["ks_expiry"]), r["ks_privileges"]) for r in rows} == \
        {("v1", 585231, 1435160676, "view:*,widget:1")}
    assert len({r["ks_hash"] for r in rows}) == 2  # the document's ks and KS2
    masked = server.query("SELECT raw_query, raw_body, ks_hash FROM analytics.rejected_events")
    assert sum("<redacted>" in r["raw_query"] + r["raw_body"] for r in masked) == len(rejected)

    columns = server.query(
        "SELECT table, name, type FROM system.columns WHERE database = 'analytics' "
        "AND (type LIKE '%String%' OR type LIKE 'Map%') AND type NOT LIKE '%AggregateFunction%'")
    tables = {c["table"] for c in columns}
    assert {"events", "rejected_events"} <= tables
    searched = 0
    for column in columns:
        for secret in FORBIDDEN:
            found = server.query(
                f"SELECT count() AS n FROM analytics.`{column['table']}` "
                f"WHERE position(toString(`{column['name']}`), {{s:String}}) > 0".replace("{s:String}", _sql(secret)))
            assert int(found[0]["n"]) == 0, (column, secret)
            searched += 1
    assert searched >= len(FORBIDDEN) * 10


def _sql(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def test_redacting_a_hostile_64_kib_body_takes_linear_time():
    """A rejected body is redacted on the event loop: no 64 KiB body may cost more than a few milliseconds
    (the multipart pattern once retried the rest of the body from every 'name=ks': 5 s)."""
    import time

    from ingestd import ks

    for unit in (b"name=ks\n", b"name=ks ", b'name="ks"\r\n', b"name=ks\r\nx\r\n", b'"ks":"', b'"ks": ', b"&ks",
                 b"ks&", b"%6bs=", b'"\\u006bs":"x'):
        body = (unit * (65536 // len(unit) + 1))[:65536]
        # CPU time, not wall time: other processes on a shared machine do not count. ~30 ms now; the
        # quadratic pattern took 5 s, so the bound is far from both
        started = time.process_time()
        ks.redact(body)
        ks.body_secrets(body)
        assert time.process_time() - started < 1.0, unit
