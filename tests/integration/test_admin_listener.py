"""The admin listener's guards against a real server: /query refusals that readonly=1 would not make."""
from __future__ import annotations

import urllib.parse

import pytest

from conftest import Ingestd, http_request


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module (a start costs seconds of chDB)."""
    server = Ingestd(tmp_path_factory.mktemp("admin")).start()
    yield server
    server.stop()


def test_outfile_behind_a_comment_is_refused(server, tmp_path):
    """INTO/**/OUTFILE and INTO --c⏎OUTFILE would write a file under readonly=1: refused with 403."""
    for sql in ("SELECT 'x' INTO/**/OUTFILE '{}' TRUNCATE FORMAT RawBLOB", "SELECT 'x' INTO -- c\nOUTFILE '{}'"):
        target = tmp_path / "out.txt"
        status, _, body = http_request(server.admin_port, "GET", "/query?" + urllib.parse.urlencode(
            {"query": sql.format(target)}))
        assert status == 403 and b"OUTFILE" in body and not target.exists()


def test_admin_responses_carry_no_cors_header_beacons_do(server):
    """A web page must not read /query or /metrics from a browser; players still read beacon replies."""
    for method, target in (("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/nowhere"),
                           ("GET", "/query?query=SELECT%201"), ("GET", "/query?query=SELECT%20nope"),
                           ("GET", "/query?query=DROP%20TABLE%20t"), ("POST", "/ship?action=bogus")):
        status, headers, _ = http_request(server.admin_port, method, target)
        assert status and "access-control-allow-origin" not in headers, (target, status)
    status, headers, _ = server.get("/collect?eventType=1&partnerId=1&entryId=e")
    assert status == 200 and headers["access-control-allow-origin"] == "*"
    status, headers, _ = server.get("/nowhere")
    assert status == 404 and headers["access-control-allow-origin"] == "*"
