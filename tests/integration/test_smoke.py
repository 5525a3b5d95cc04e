"""The README's quick start, end to end: the document's example request lands as a typed row."""
from conftest import DOCUMENT_EXAMPLE, DOCUMENT_KS


def test_document_example_lands_as_typed_row(ingestd):
    status, headers, body = ingestd.get("/api_v3/index.php?service=analytics&action=trackEvent&" + DOCUMENT_EXAMPLE)
    assert status == 200
    assert headers["access-control-allow-origin"] == "*"
    assert body.isdigit() and abs(int(body) - __import__("time").time()) < 5
    assert ingestd.wait_rows("SELECT count() AS n FROM analytics.events", 1) == 1
    row = ingestd.query("SELECT * FROM analytics.events")[0]
    assert row["event_type"] == 2
    assert row["partner_id"] == "585231" or row["partner_id"] == 585231
    assert row["entry_id"] == "0_n5nbuy6i"
    assert row["session_id"] == "C90BFCFC-2EBF-5893-892D-2121162F414A"
    assert row["position"] == 18
    assert row["client_tag"] == "kdp:v3.9.2"
    assert row["referrer"] == "http%3A//abc.go.com/shows/the-bachelorette/video/most-recent/VDKA0_lawz79v7"
    assert row["missing_fields"] == ["flavourId"]
    assert row["ks_status"] == "v1" and row["ks_partner_id"] in (585231, "585231")
    assert DOCUMENT_KS not in str(row)
