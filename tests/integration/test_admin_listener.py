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
