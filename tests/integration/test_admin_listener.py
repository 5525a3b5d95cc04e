"""The admin listener against a real server: /query refusals that readonly=1 would not make, no CORS
header on its replies, and `ingestd query` talking to it."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.parse

import pytest
from conftest import REPO, Ingestd, http_request

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module (a start costs seconds of chDB), its admin listener behind a token."""
    server = Ingestd(tmp_path_factory.mktemp("admin"), "--admin-token", TOKEN).start(wait_clickhouse=False)
    deadline = time.monotonic() + 60
    while http_request(server.admin_port, "GET", "/query?query=SELECT%201", headers=AUTH)[0] != 200:
        assert time.monotonic() < deadline, server.log_text()
        time.sleep(0.1)
    yield server
    server.stop()


def query_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("INGESTD_")}
    environ.update(PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run([sys.executable, "-m", "ingestd", "query", *args], capture_output=True, text=True,
                          env=environ, timeout=120)


def test_outfile_behind_a_comment_is_refused(server, tmp_path):
    """INTO/**/OUTFILE and INTO --c⏎OUTFILE would write a file under readonly=1: refused with 403."""
    for sql in ("SELECT 'x' INTO/**/OUTFILE '{}' TRUNCATE FORMAT RawBLOB", "SELECT 'x' INTO -- c\nOUTFILE '{}'"):
        target = tmp_path / "out.txt"
        status, _, body = http_request(server.admin_port, "GET", "/query?" + urllib.parse.urlencode(
            {"query": sql.format(target)}), headers=AUTH)
        assert status == 403 and b"OUTFILE" in body and not target.exists()


def test_admin_responses_carry_no_cors_header_beacons_do(server):
    """A web page must not read /query or /metrics from a browser; players still read beacon replies."""
    for method, target, headers in (
            ("GET", "/healthz", {}), ("GET", "/readyz", {}), ("GET", "/metrics", {}), ("GET", "/metrics", AUTH),
            ("GET", "/nowhere", AUTH), ("GET", "/query?query=SELECT%201", AUTH),
            ("GET", "/query?query=SELECT%20nope", AUTH), ("GET", "/query?query=DROP%20TABLE%20t", AUTH),
            ("POST", "/ship?action=bogus", AUTH)):
        status, got, _ = http_request(server.admin_port, method, target, headers=headers)
        assert status and "access-control-allow-origin" not in got, (target, status)
    status, got, _ = server.get("/collect?eventType=1&partnerId=1&entryId=e")
    assert status == 200 and got["access-control-allow-origin"] == "*"
    status, got, _ = server.get("/nowhere")
    assert status == 404 and got["access-control-allow-origin"] == "*"


def test_query_cli_through_admin_posts_takes_host_port_and_the_token_from_the_environment(server):
    """`ingestd query --admin` as `report --admin`: HOST:PORT, INGESTD_ADMIN_TOKEN, SQL over 8 KiB."""
    long_sql = f"SELECT length('{'x' * 10000}') AS n"
    out = query_cli("--admin", f"127.0.0.1:{server.admin_port}", "--format", "TSV", long_sql,
                    env={"INGESTD_ADMIN_TOKEN": TOKEN})
    assert (out.returncode, out.stdout, out.stderr) == (0, "10000\n", "")
    out = query_cli("--admin", server.admin_url, "--admin-token", TOKEN, "--format", "TSV", "SELECT 2")
    assert (out.returncode, out.stdout) == (0, "2\n")
    denied = query_cli("--admin", server.admin_url, "SELECT 1")
    assert denied.returncode != 0 and "401" in denied.stderr


def test_query_cli_on_a_held_database_says_use_admin(server):
    out = query_cli("--clickhouse", server.clickhouse, "SELECT 1")
    assert out.returncode != 0
    assert out.stderr == ("ingestd: the embedded database is in use by a running server: "
                          "use --admin URL to query through it\n")


def test_head_gets_a_405_without_content_and_the_next_reply_stays_in_step(server):
    """A client reads no content after a reply to HEAD: content would be taken for the next reply."""
    with socket.create_connection(("127.0.0.1", server.admin_port), timeout=10) as sock:
        sock.sendall(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while data.count(b"HTTP/1.1 ") < 2 or not data.endswith(b"ok\n"):
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 405") and b"content-length: 0" in head.lower()
    assert rest.startswith(b"HTTP/1.1 200")
