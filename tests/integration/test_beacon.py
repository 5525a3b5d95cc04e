"""The beacon endpoint end to end: the real server on an ephemeral port, rows checked in embedded ClickHouse.

One server serves the whole module (a second one for --validation strict); every test tags its
requests with its own User-Agent and reads back only the rows carrying it.
"""
from __future__ import annotations

import http.client
import socket
import time
import urllib.parse

import orjson
import pytest
from conftest import DOCUMENT_EXAMPLE, DOCUMENT_KS, Ingestd, http_request

from ingestd import events

API = "/api_v3/index.php?service=analytics&action=trackEvent&"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server whose segments seal after 100 ms, so rows reach ClickHouse quickly."""
    srv = Ingestd(tmp_path_factory.mktemp("beacon"), "--segment-max-age-ms", "100").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory):
    srv = Ingestd(tmp_path_factory.mktemp("strict"), "--segment-max-age-ms", "100", "--validation", "strict").start()
    yield srv
    srv.stop()


def settle(srv: Ingestd, timeout: float = 30.0) -> None:
    """Wait until everything acknowledged so far is in ClickHouse (the spool is empty)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if srv.metrics().get("ingestd_spool_bytes", 1) == 0:
            return
        time.sleep(0.05)
    raise AssertionError("spool did not drain:\n" + srv.log_text())


def rows(srv: Ingestd, table: str, agent: str, columns: str = "*", order: str = "received_at") -> list[dict]:
    settle(srv)
    return srv.query(f"SELECT {columns} FROM analytics.{table} WHERE user_agent = '{agent}' ORDER BY {order}")


def get(srv: Ingestd, target: str, agent: str, **kw):
    headers = {"User-Agent": agent, **kw.pop("headers", {})}
    return srv.get(target, headers=headers, **kw)


def post(srv: Ingestd, target: str, body: bytes, content_type: str, agent: str):
    return http_request(srv.port, "POST", target, body=body, headers={"Content-Type": content_type, "User-Agent": agent})


def raw_exchange(port: int, data: bytes, responses: int, timeout: float = 10.0) -> list[tuple[int, dict, bytes]]:
    """Send `data` in one write on one socket and read `responses` responses (or until the server closes)."""
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        buf = b""
        while len(out) < responses:
            while b"\r\n\r\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    return out
                buf += chunk
            head, _, buf = buf.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = dict((k.lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:]))
            length = int(headers.get("content-length", 0))
            while len(buf) < length:
                chunk = sock.recv(65536)
                assert chunk, "connection closed inside a body"
                buf += chunk
            out.append((int(lines[0].split()[1]), headers, buf[:length]))
            buf = buf[length:]
    return out


def as_int(value) -> int | None:
    return None if value is None else int(value)  # JSON output quotes 64-bit integers


# -- every event type --------------------------------------------------------------------------------

def sample_value(field: str, type_id: int) -> str:
    kind = events.FIELDS[field][1]
    if kind == "int":
        return str(type_id * 1000 + len(field))
    if kind == "float":
        return f"{type_id}.25"
    return f"{field}-{type_id}"


def test_each_of_the_33_event_types_lands_as_one_typed_row(server):
    agent = "every-type"
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)  # one keep-alive connection
    sent = {}
    started = time.time()
    for type_id, entry in sorted(events.REGISTRY.items()):
        params = {field: sample_value(field, type_id) for field in sorted(entry.required)}
        params.update(eventType=str(type_id), partnerId="4242", sessionId=f"s-{type_id}")
        sent[type_id] = params
        conn.request("GET", API + urllib.parse.urlencode(params), headers={"User-Agent": agent})
        response = conn.getresponse()
        assert (response.status, response.read().isdigit()) == (200, True), type_id
    conn.close()
    found = rows(server, "events", agent, "*, toUnixTimestamp64Milli(received_at) AS received_ms", order="event_type")
    assert [row["event_type"] for row in found] == sorted(events.REGISTRY)  # exactly one row per type
    for row in found:
        params = sent[row["event_type"]]
        assert row["missing_fields"] == [] and row["extra"] == {}
        assert row["ip"] == "127.0.0.1" and started - 1 <= as_int(row["received_ms"]) / 1000 <= time.time()
        assert as_int(row["partner_id"]) == 4242
        for field, value in params.items():
            column, kind = events.FIELDS[field]
            if kind == "int":
                assert as_int(row[column]) == int(value), (field, row[column])
            elif kind == "float":
                assert row[column] == float(value), (field, row[column])
            else:
                assert row[column] == value, (field, row[column])


# -- rejections ------------------------------------------------------------------------------------

REJECTIONS = [
    # (name, method, target, body, content type, reason, message)
    ("no-type", "GET", API + "partnerId=1&entryId=e", None, None, "missing_event_type", "eventType is missing"),
    ("unknown-type", "GET", API + "eventType=7&partnerId=1&entryId=e", None, None, "unknown_event_type",
     "eventType '7' is not a known event type"),
    ("no-partner", "GET", API + "eventType=3&entryId=e", None, None, "missing_partner_id",
     "eventType 3 (Play): partnerId is missing"),
    ("bad-partner", "GET", API + "eventType=3&partnerId=abc&entryId=e", None, None, "bad_partner_id",
     "eventType 3 (Play): partnerId 'abc' is not an integer"),
    ("no-entry", "GET", "/collect?eventType=1&partnerId=1&entryId=", None, None, "missing_entry_id",
     "eventType 1 (Player Impression): entryId is missing or empty"),
    ("nan", "GET", API + "eventType=99&partnerId=1&entryId=e&bufferTime=NaN", None, None, "bad_number",
     "eventType 99 (View): bufferTime 'NaN' is not a number"),
    ("inf", "GET", API + "eventType=3&partnerId=1&entryId=e&position=-inf", None, None, "bad_number",
     "eventType 3 (Play): position '-inf' is not a number"),
    ("overflow", "GET", API + "eventType=3&partnerId=1&entryId=e&actualBitrate=1e999", None, None, "bad_number",
     "eventType 3 (Play): actualBitrate '1e999' is not a finite number"),
    ("not-int", "GET", API + "eventType=3&partnerId=1&entryId=e&eventIndex=three", None, None, "bad_number",
     "eventType 3 (Play): eventIndex 'three' is not an integer"),
    ("service", "GET", "/api_v3/index.php?service=media&action=trackEvent&eventType=3&partnerId=1&entryId=e",
     None, None, "unsupported_service", "service 'media' is not supported: use service=analytics&action=trackEvent"),
    ("action", "GET", "/api_v3/index.php?service=analytics&action=list&eventType=3&partnerId=1&entryId=e",
     None, None, "unsupported_service", "action 'list' is not supported: use service=analytics&action=trackEvent"),
    ("bad-json", "POST", API + "eventType=3&partnerId=1&entryId=e", b'{"position": 1,', "application/json",
     "bad_request", "body is not JSON: unexpected end of data: line 1 column 16 (char 15)"),
    ("json-array", "POST", API + "eventType=3&partnerId=1&entryId=e", b"[1, 2]", "application/json",
     "bad_request", "body is not a JSON object"),
    ("json-nan", "POST", API + "eventType=3&partnerId=1&entryId=e", b'{"position": "NaN"}', "application/json",
     "bad_number", "eventType 3 (Play): position 'NaN' is not a number"),
    ("multipart", "POST", API + "eventType=3&partnerId=1&entryId=e", b"--x\r\n", "multipart/form-data; boundary=x",
     "bad_request", "Content-Type 'multipart/form-data' is not supported: send JSON, text/plain or form-encoded"),
]


def test_each_rejection_rule_is_400_with_its_reason_and_one_rejected_row(server):
    for name, method, target, body, content_type, reason, message in REJECTIONS:
        agent = f"reject-{name}"
        if method == "GET":
            status, headers, text = get(server, target, agent)
        else:
            status, headers, text = post(server, target, body, content_type, agent)
        assert (status, text) == (400, message.encode() + b"\n"), name
        assert headers["access-control-allow-origin"] == "*"
    settle(server)
    stored = server.query("SELECT user_agent, reason, message, raw_query, raw_body, partner_id, event_type "
                          "FROM analytics.rejected_events WHERE startsWith(user_agent, 'reject-') ORDER BY user_agent")
    by_agent = {row["user_agent"]: row for row in stored}
    assert len(stored) == len(by_agent) == len(REJECTIONS)  # one row each
    for name, method, target, body, content_type, reason, message in REJECTIONS:
        row = by_agent[f"reject-{name}"]
        assert (row["reason"], row["message"]) == (reason, message), name
        assert row["raw_query"] == target.partition("?")[2]
        assert row["raw_body"] == (body.decode() if body else "")
    assert by_agent["reject-bad-partner"]["partner_id"] is None
    assert as_int(by_agent["reject-bad-partner"]["event_type"]) == 3
    assert as_int(by_agent["reject-nan"]["partner_id"]) == 1
    counts = server.query("SELECT count() AS n FROM analytics.events WHERE startsWith(user_agent, 'reject-')")
    assert int(counts[0]["n"]) == 0  # nothing rejected reached the events table


def test_strict_mode_rejects_missing_required_and_keeps_it(strict_server):
    agent = "strict-missing"
    status, _, text = get(strict_server, API + DOCUMENT_EXAMPLE, agent)
    assert (status, text) == (400, b"eventType 2 (Play Requested): missing flavourId\n")
    status, _, _ = get(strict_server, API + DOCUMENT_EXAMPLE + "&flavourId=0_f", agent)
    assert status == 200
    [row] = rows(strict_server, "rejected_events", agent)
    assert (row["reason"], row["message"]) == ("missing_required", "eventType 2 (Play Requested): missing flavourId")
    assert "<redacted>" in row["raw_query"] and row["ks_hash"]  # the ks is never stored raw
    [event] = rows(strict_server, "events", agent)
    assert event["missing_fields"] == [] and event["flavour_id"] == "0_f"


def test_default_mode_records_missing_fields(server):
    agent = "default-missing"
    assert get(server, "/collect?" + DOCUMENT_EXAMPLE, agent)[0] == 200
    assert get(server, "/collect?eventType=3&partnerId=7&entryId=e&sessionId=", agent)[0] == 200
    found = rows(server, "events", agent, order="event_type")
    assert [row["missing_fields"] for row in found] == [
        ["flavourId"], ["actualBitrate", "bufferTime", "eventIndex", "flavourId", "preferredBitrate", "sessionId"]]


# -- HTTP behaviour --------------------------------------------------------------------------------

def beacon_request(query: str, agent: str, extra_headers: str = "") -> bytes:
    return (f"GET /collect?{query} HTTP/1.1\r\nHost: t\r\nUser-Agent: {agent}\r\n{extra_headers}\r\n").encode()


def test_keep_alive_serves_several_requests_on_one_connection(server):
    agent = "keep-alive"
    before = server.metrics()["ingestd_connections_total"]
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        for i in range(3):
            sock.sendall(beacon_request(f"eventType=33&partnerId=1&entryId=e&eventIndex={i}", agent))
            response = sock.recv(65536)
            assert response.startswith(b"HTTP/1.1 200 OK\r\n") and b"connection: keep-alive" in response
    assert server.metrics()["ingestd_connections_total"] == before + 1
    assert [as_int(r["event_index"]) for r in rows(server, "events", agent, order="event_index")] == [0, 1, 2]


def test_ten_pipelined_requests_one_write_ten_ordered_responses_one_spool_commit(server):
    agent = "pipelined"
    types = sorted(events.REGISTRY)[:10]
    # even requests are valid, odd ones lack partnerId: the 400 messages name their type, so the
    # order of the responses is visible
    batch = b"".join(
        beacon_request(f"eventType={t}&partnerId=9&entryId=e&eventIndex={i}&buttonName=b" if i % 2 == 0
                       else f"eventType={t}&entryId=e&eventIndex={i}", agent)
        for i, t in enumerate(types))
    commits = server.metrics()["ingestd_spool_commits_total"]
    responses = raw_exchange(server.port, batch, 10)
    assert server.metrics()["ingestd_spool_commits_total"] == commits + 1
    assert [status for status, _, _ in responses] == [200, 400] * 5
    for i, (status, _, body) in enumerate(responses):
        if status == 400:
            entry = events.REGISTRY[types[i]]
            assert body == f"{entry.label}: partnerId is missing\n".encode()
        else:
            assert body.isdigit()
    assert [as_int(r["event_index"]) for r in rows(server, "events", agent, order="event_index")] == [0, 2, 4, 6, 8]
    assert len(rows(server, "rejected_events", agent)) == 5


def test_http10_and_connection_close_close_after_the_reply(server):
    agent = "closing"
    for request in (b"GET /collect?eventType=31&partnerId=1&entryId=e HTTP/1.0\r\nUser-Agent: closing\r\n\r\n",
                    beacon_request("eventType=32&partnerId=1&entryId=e", agent, "Connection: close\r\n")):
        # a second request after the close is not served (and not stored)
        responses = raw_exchange(server.port, request + beacon_request("eventType=34&partnerId=1&entryId=e", agent), 2)
        assert len(responses) == 1 and responses[0][0] == 200 and responses[0][1]["connection"] == "close"
    assert [r["event_type"] for r in rows(server, "events", agent, order="event_type")] == [31, 32]


def test_json_post_merges_query_and_body_and_answers_json(server):
    agent = "json-post"
    query = API + "eventType=3&partnerId=585231&entryId=0_abc&sessionId=a%3Ab"
    body = {"eventIndex": 4, "bufferTime": 0.5, "actualBitrate": -1, "preferredBitrate": 1200, "flavourId": "0_f",
            "position": -12.5, "playbackSpeed": 1.5, "userId": "u@example.com", "soundMode": 2,
            "entryId": "body-loses", "customKey": "kept", "referrer": "https://site.example/p?a=1&b=%2E"}
    status, headers, text = post(server, query, orjson.dumps(body), "application/json", agent)
    assert status == 200 and headers["content-type"] == "application/json"
    reply = orjson.loads(text)
    assert reply["viewEventsEnabled"] is True and abs(reply["time"] - time.time()) < 5 and set(reply) == {
        "time", "viewEventsEnabled"}
    [row] = rows(server, "events", agent)
    assert (row["event_type"], as_int(row["partner_id"]), row["entry_id"], row["session_id"]) == (
        3, 585231, "0_abc", "a:b")
    assert (as_int(row["event_index"]), row["buffer_time"], row["actual_bitrate"], row["preferred_bitrate"]) == (
        4, 0.5, -1, 1200)
    assert (row["position"], row["playback_speed"], row["user_id"], as_int(row["sound_mode"])) == (
        -12.5, 1.5, "u@example.com", 2)
    assert row["referrer"] == "https://site.example/p?a=1&b=%2E"  # a JSON string is not form-decoded
    assert row["missing_fields"] == [] and row["extra"] == {"customKey": "kept"}


def test_player_json_beacon_is_stored_as_the_general_path_stores_it(server):
    """The player's own form (service/action in the query string, every field in the body) takes the
    fast path, which spools the parsed body as it is; a field in the query string forces the general
    path, which converts each value to text first. ClickHouse must end with the same row."""
    body = {"eventType": 3, "partnerId": 585231, "entryId": "0_abc", "flavourId": "0_f", "sessionId": "s",
            "eventIndex": 4, "bufferTime": 0.5, "actualBitrate": 1e16, "preferredBitrate": 1200,
            "position": -12.5, "ks": DOCUMENT_KS, "userId": "u", "soundMode": 2, "customFlag": True,
            "customNull": None, "customObj": {"a": [1, "x"]}, "customFloat": 0.1, "customText": "a+b%2E"}
    fast_agent, general_agent = "json-fast", "json-general"
    assert events.check_json(body, API[len("/api_v3/index.php?"):-1].encode(), True, False) is not None
    assert post(server, API[:-1], orjson.dumps(body), "application/json", fast_agent)[0] == 200
    assert post(server, API + "customVar3=", orjson.dumps(body), "application/json", general_agent)[0] == 200
    [fast] = rows(server, "events", fast_agent)
    [general] = rows(server, "events", general_agent)
    for row in (fast, general):
        for column in ("received_at", "inserted_at", "user_agent"):
            row.pop(column)
    assert fast == general
    assert fast["extra"] == {"customFlag": "true", "customNull": "", "customObj": '{"a":[1,"x"]}',
                             "customFloat": "0.1", "customText": "a+b%2E"}
    assert (fast["actual_bitrate"], fast["buffer_time"]) == (1e16, 0.5) and fast["ks_hash"]


def test_expect_100_continue_as_curl_sends_a_large_body(server):
    body = orjson.dumps({"eventIndex": 1, "customVar1": "x" * 2000})
    head = (f"POST /collect?eventType=1&partnerId=1&entryId=expect HTTP/1.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head)
        assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK\r\n")


def test_text_and_form_posts_answer_the_time(server):
    agent = "form-post"
    query = "eventType=21&partnerId=77&entryId=0_x&sessionId=s&eventIndex={i}&customVar1=a+b%2E"
    for i, content_type in enumerate(("text/plain;charset=UTF-8", "application/x-www-form-urlencoded")):
        status, headers, text = post(server, "/collect", query.replace("{i}", str(i)).encode(), content_type, agent)
        assert status == 200 and text.isdigit() and abs(int(text) - time.time()) < 5
        assert headers["content-type"] == "text/plain"
    # query string and body merge; the query string wins on a repeated name
    status, _, _ = post(server, "/collect?eventType=22&partnerId=77", b"partnerId=1&entryId=0_y&socialNetwork=x",
                        "text/plain", agent)
    assert status == 200
    found = rows(server, "events", agent, order="event_type, event_index")
    assert [(r["event_type"], as_int(r["event_index"]), r["custom_var1"]) for r in found[:2]] == [
        (21, 0, "a b."), (21, 1, "a b.")]
    assert (as_int(found[2]["partner_id"]), found[2]["entry_id"], found[2]["social_network"]) == (77, "0_y", "x")


def test_json_sent_as_text_plain_is_read_as_json(server):
    agent = "json-as-text"
    body = orjson.dumps({"eventType": 45, "partnerId": 3, "entryId": "e", "eventIndex": 1})
    status, headers, text = post(server, "/collect", body, "text/plain", agent)
    assert status == 200 and orjson.loads(text)["viewEventsEnabled"] is True
    [row] = rows(server, "events", agent)
    assert (row["event_type"], as_int(row["event_index"])) == (45, 1)


def test_options_preflight(server):
    status, headers, body = http_call(server, "OPTIONS", API, headers={
        "Origin": "https://player.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert status == 204 and body == b""
    assert headers["access-control-allow-origin"] == "*"
    assert headers["access-control-allow-methods"] == "GET, POST, OPTIONS"
    assert headers["access-control-allow-headers"] == "Content-Type"
    assert int(headers["access-control-max-age"]) > 0
    assert "content-length" not in headers


def http_call(srv, method, target, **kw):
    return http_request(srv.port, method, target, **kw)


def test_unknown_path_is_404_and_other_methods_405(server):
    status, headers, body = http_call(server, "GET", "/index.html")
    assert status == 404 and headers["access-control-allow-origin"] == "*" and b"/collect" in body
    for method in ("PUT", "DELETE", "HEAD", "PATCH"):
        status, headers, _ = http_call(server, method, "/collect?eventType=3")
        assert status == 405, method
        assert headers["allow"] == "GET, POST, OPTIONS" and headers["access-control-allow-origin"] == "*"


def test_head_gets_a_405_without_content_and_the_connection_stays_in_step(server):
    # a client reads no content after a reply to HEAD: content would be taken for the next reply
    head = b"HEAD /collect HTTP/1.1\r\nHost: x\r\n\r\nOPTIONS /collect HTTP/1.1\r\nHost: x\r\n\r\n"
    [(status, headers, body), (second, _, _)] = raw_exchange(server.port, head, 2)
    assert status == 405 and headers["allow"] == "GET, POST, OPTIONS"
    assert headers.get("content-length", "0") == "0" and body == b"" and second == 204


def test_oversized_target_headers_and_body_are_refused(server):
    errors = server.metrics()
    target = "/collect?eventType=3&partnerId=1&entryId=e&pad=" + "x" * 8200
    [(status, headers, body)] = raw_exchange(server.port, f"GET {target} HTTP/1.1\r\n\r\n".encode(), 2)
    assert status == 414 and headers["connection"] == "close" and b"8192" in body
    big_headers = "".join(f"X-Pad-{i}: {'v' * 100}\r\n" for i in range(90))
    [(status, headers, _)] = raw_exchange(server.port, f"GET /collect HTTP/1.1\r\n{big_headers}\r\n".encode(), 2)
    assert status == 431 and headers["access-control-allow-origin"] == "*"
    request = b"POST /collect HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Length: 70000\r\n\r\n"
    [(status, headers, _)] = raw_exchange(server.port, request, 2)
    assert status == 413 and headers["connection"] == "close"
    [(status, headers, body)] = raw_exchange(server.port, b"BREW /collect HTCPCP/1.0\r\n\r\n", 2)
    assert status == 400 and headers["connection"] == "close"
    after = server.metrics()
    for code in (400, 413, 414, 431):
        key = f'ingestd_http_protocol_errors_total{{status="{code}"}}'
        assert after[key] == errors.get(key, 0) + 1, code
    assert http_call(server, "GET", "/collect?eventType=3&partnerId=1&entryId=e")[0] == 200  # still serving


def test_an_endless_header_line_is_cut_and_others_are_served_meanwhile(server):
    before = server.metrics().get('ingestd_http_protocol_errors_total{status="431"}', 0)
    reply, sent = b"", 0
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /collect HTTP/1.1\r\nX-Junk: ")
        while not reply and sent < 64 << 20:  # unbounded, it would take all 64 MiB (and quadratic CPU)
            try:
                sock.sendall(b"x" * (1 << 20))
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1 << 20
            assert http_call(server, "GET", "/collect?eventType=3&partnerId=1&entryId=e")[0] == 200
            sock.setblocking(False)
            try:
                reply = sock.recv(4096)
            except BlockingIOError:
                pass
            sock.setblocking(True)
        while b"\r\n" not in reply:
            chunk = sock.recv(4096)
            assert chunk, "closed without a reply"
            reply += chunk
    # cut after ~0.8 MiB; what the sockets' buffers hold on top is sent before the reply is seen
    assert reply.startswith(b"HTTP/1.1 431 ") and sent < 16 << 20, (reply[:100], sent)
    assert server.metrics()['ingestd_http_protocol_errors_total{status="431"}'] == before + 1


def test_unknown_parameters_land_in_extra_and_api_parameters_do_not(server):
    agent = "extra"
    query = ("service=analytics&action=trackEvent&apiVersion=3.3.0&format=1&eventType=1&partnerId=5&entryId=e"
             "&utm_source=news+letter&x%20y=%2E&empty=&ks=" + DOCUMENT_KS + "&position=5&position=7")
    assert get(server, "/api_v3/index.php?" + query, agent)[0] == 200
    [row] = rows(server, "events", agent)
    assert row["extra"] == {"utm_source": "news letter", "x y": ".", "empty": ""}
    assert row["position"] == 5  # the first of repeated names wins
    assert row["ks_status"] == "v1" and as_int(row["ks_partner_id"]) == 585231  # ks: decoded, never stored
    assert DOCUMENT_KS not in str(row)


def test_service_and_action_are_case_insensitive_and_not_required_on_collect(server):
    agent = "service-case"
    assert get(server, "/api_v3/index.php?service=Analytics&action=TRACKEVENT&eventType=1&partnerId=5&entryId=e",
               agent)[0] == 200
    assert get(server, "/collect?service=media&eventType=1&partnerId=5&entryId=e", agent)[0] == 200
    assert len(rows(server, "events", agent)) == 2


def test_session_ids_and_session_start_time_in_seconds_or_milliseconds(server):
    agent = "sessions"
    two_guids = "C90BFCFC-2EBF-5893-892D-2121162F414A:0B0E8B7F-5F5D-4D8A-9C8B-3F1B9E2A7C11"
    base = "eventType=1&partnerId=5&entryId=e&eventIndex={i}&sessionId={sid}&sessionStartTime={start}"
    sent = [(two_guids, "1435075182"), (urllib.parse.quote(two_guids), "1435075182567"), ("", "")]
    for i, (sid, start) in enumerate(sent):
        assert get(server, "/collect?" + base.format(i=i, sid=sid, start=start), agent)[0] == 200
    found = rows(server, "events", agent, "session_id, toUnixTimestamp64Milli(session_started_at) AS started_ms, "
                                        "session_start_time, missing_fields", order="event_index")
    assert [(r["session_id"], as_int(r["started_ms"]), as_int(r["session_start_time"])) for r in found] == [
        (two_guids, 1435075182000, 1435075182), (two_guids, 1435075182567, 1435075182567), ("", None, None)]
    assert found[2]["missing_fields"] == ["flavourId", "sessionId"]


def test_percent_decoding_end_to_end(server):
    agent = "decoding"
    query = ("eventType=2&partnerId=585231&entryId=0_n5nbuy6i&eventIndex=1"
             "&clientVer=3%2E0%3Av3%2E9%2E2"  # %2E is '.'
             "&customVar1=Fin+nance"  # '+' is a space
             "&referrer=http%253A%2F%2Fabc%2Ego%2Ecom%2F"  # double-encoded: stored decoded once
             "&customVar2=100%25+sure%zz%"  # bad escapes are kept as sent
             "&customVar3=caf%C3%A9%FF%FE"  # invalid UTF-8 becomes U+FFFD (one per invalid run)
             "&playbackContext=aHR0cHM6Ly94LmV4YW1wbGUv")  # Base64 is kept as sent
    status, _, _ = get(server, "/collect?" + query, agent)
    assert status == 200
    [row] = rows(server, "events", agent)
    assert row["client_ver"] == "3.0:v3.9.2"
    assert row["custom_var1"] == "Fin nance"
    assert row["referrer"] == "http%3A//abc.go.com/"
    assert row["custom_var2"] == "100% sure%zz%"
    assert row["custom_var3"] == "café\ufffd"
    assert row["playback_context"] == "aHR0cHM6Ly94LmV4YW1wbGUv"


def test_raw_non_ascii_bytes_do_not_crash(server):
    # httptools refuses a raw byte over 0x7F in the target: 400 and close, as for any malformed request
    request = b"GET /collect?eventType=1&partnerId=5&entryId=e&customVar1=\xff\xc3( HTTP/1.1\r\n\r\n"
    [(status, headers, body)] = raw_exchange(server.port, request, 1)
    assert (status, headers["connection"]) == (400, "close") and body.startswith(b"malformed HTTP request")
    # ... but allows them in a header value (obs-text): the User-Agent is kept with U+FFFD
    request = b"GET /collect?eventType=1&partnerId=5&entryId=raw-ua HTTP/1.1\r\nUser-Agent: raw\xff\xfe-ua\r\n\r\n"
    assert raw_exchange(server.port, request, 1)[0][0] == 200
    settle(server)
    [row] = server.query("SELECT user_agent FROM analytics.events WHERE entry_id = 'raw-ua'")
    assert row["user_agent"] == "raw\ufffd\ufffd-ua"
    assert http_call(server, "GET", "/collect?eventType=1&partnerId=5&entryId=e")[0] == 200


def test_document_example_on_collect_and_api_paths(server):
    agent = "document"
    for path in ("/collect?", API):
        status, headers, body = get(server, path + DOCUMENT_EXAMPLE, agent)
        assert status == 200 and headers["access-control-allow-origin"] == "*" and body.isdigit()
    found = rows(server, "events", agent)
    assert len(found) == 2 and all(r["missing_fields"] == ["flavourId"] for r in found)
    assert {r["custom_var1"] for r in found} == {"Finnance"} and found[0]["extra"] == {}


# -- Python's number rules are ClickHouse's ----------------------------------------------------------

NUMBER_SAMPLES = [
    "5", "-5", "+5", "05", "0", "-0", " 5", "5 ", "\t5", "1.5", "1.", "-.5", ".5", "+.5", ".", "-.", "1e3", "1E3",
    "1e+3", "1e-3", "1.e3", ".e3", "1e", "e3", "1e3.5", "1e0003", "1e400", "-1e400", "1e-400", "1e308", "nan",
    "NaN", "inf", "-inf", "Infinity", "0x10", "0x1p3", "1_000", "", "-", "+", "--5", "+-5", "1,5", "1.5.5",
    "5abc", "٣", "9223372036854775807", "9223372036854775808", "-9223372036854775808", "-9223372036854775809",
    "0000000000000000000000000005", "123456789012345678901234567890", "9" * 400,
]


def test_number_rules_match_clickhouse():
    """A value validation accepts is exactly one ClickHouse's toInt64OrNull/toFloat64OrNull read as finite."""
    chdb = pytest.importorskip("chdb")

    def literal(value: str) -> str:
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'").replace("\t", "\\t") + "'"

    selects = ", ".join(
        f"toInt64OrNull({literal(v)}) IS NOT NULL AS i{n}, "
        f"isFinite(ifNull(toFloat64OrNull({literal(v)}), nan)) AS f{n}" for n, v in enumerate(NUMBER_SAMPLES))
    result = orjson.loads(str(chdb.query(f"SELECT {selects}", "JSON")))["data"][0]
    for n, value in enumerate(NUMBER_SAMPLES):
        assert (events.number_error(value.encode(), "int") is None) == bool(result[f"i{n}"]), value
        assert (events.number_error(value.encode(), "float") is None) == bool(result[f"f{n}"]), value


def test_form_decoding_matches_clickhouse():
    chdb = pytest.importorskip("chdb")
    samples = ["a+b", "%2E%2e", "http%253A%2F%2F", "100%", "%zz", "%4", "%", "%FF%C3", "%2B", "", "caf%C3%A9",
               "+%20+", "%%41", "%4%41", "%zz%41", "%z%41", "%%%41", "%+1", "%a+b", "a%4", "%g+", "%e2%82%ac+%E2"]
    selects = ", ".join(f"hex(decodeURLFormComponent('{s}')) AS d{n}" for n, s in enumerate(samples))
    result = orjson.loads(str(chdb.query(f"SELECT {selects}", "JSON")))["data"][0]
    for n, sample in enumerate(samples):
        assert events.form_decode(sample.encode()).hex().upper() == result[f"d{n}"], sample


EVENT_TYPE_SAMPLES = ["3", " 3", "3 ", "  3  ", "\t3", "3\t", "3\n", "\r3", "3\r\n", "\x0b3", "\x0c3", "03", "+3",
                      "3.0", "99", "10002", " 10002 ", "x", ""]


def test_event_type_rules_match_clickhouse():
    """validate() reads eventType as the view does: toUInt16OrZero(trimBoth(...)), which trims spaces only."""
    chdb = pytest.importorskip("chdb")

    def literal(value: str) -> str:
        return "'" + value.encode("unicode_escape").decode().replace("'", "\\'") + "'"

    selects = ", ".join(f"toUInt16OrZero(trimBoth({literal(v)})) AS t{n}" for n, v in enumerate(EVENT_TYPE_SAMPLES))
    result = orjson.loads(str(chdb.query(f"SELECT {selects}", "JSON")))["data"][0]
    for n, value in enumerate(EVENT_TYPE_SAMPLES):
        query = {b"eventType": urllib.parse.quote(value).encode(), b"partnerId": b"5", b"entryId": b"e"}
        for args in ((query, None), ({}, {**query, b"eventType": value.encode()})):  # query string, JSON body
            try:
                stored = events.validate(*args, False).event_type.id
            except events.Rejection:
                continue  # rejected: kept in rejected_events, nothing typed is stored
            assert stored == int(result[f"t{n}"]), value


def test_event_type_with_tab_or_newline_is_rejected_not_stored_as_0(server):
    agent = "event-type-control-whitespace"
    sent = [
        get(server, "/collect?eventType=%093&partnerId=5&entryId=e", agent),
        get(server, "/collect?eventType=3%0A&partnerId=5&entryId=e", agent),
        get(server, "/collect?eventType=3%0D&partnerId=5&entryId=e", agent),
        post(server, "/collect", b'{"eventType":"\\t3","partnerId":5,"entryId":"e"}', "application/json", agent),
        post(server, "/collect", b"eventType=3\r\n&partnerId=5&entryId=e", "text/plain", agent),
    ]
    assert [status for status, *_ in sent] == [400] * 5
    assert get(server, "/collect?eventType=%203%20&partnerId=5&entryId=e", agent)[0] == 200  # spaces: trimBoth
    assert [as_int(r["event_type"]) for r in rows(server, "events", agent, "event_type")] == [3]
    rejected = rows(server, "rejected_events", agent, "reason")
    assert [r["reason"] for r in rejected] == ["unknown_event_type"] * 5


def test_rejected_json_beacon_is_filed_under_its_partner_and_type(server):
    """A player's JSON beacon has its partner and type in the body: its rejection is counted under them."""
    agent = "json-rejected-partner"
    sent = [
        post(server, "/collect", b'{"eventType":3,"partnerId":5,"entryId":"e","bufferTime":"NaN"}', "application/json", agent),
        post(server, "/collect", b'{"eventType":"3","partnerId":"7","entryId":"e","eventIndex":" 4"}', "application/json", agent),
        post(server, "/collect?partnerId=9", b'{"eventType":3,"partnerId":"x","entryId":""}', "application/json", agent),
        post(server, "/collect", b'{"eventType":true,"partnerId":[5]}', "application/json", agent),
    ]
    assert [status for status, *_ in sent] == [400] * 4
    rejected = rows(server, "rejected_events", agent, "partner_id, event_type")
    filed = sorted(((as_int(r["partner_id"]), as_int(r["event_type"])) for r in rejected), key=str)
    # the query string wins; only numbers and strings are read (sorted: the four may share a millisecond)
    assert filed == sorted([(5, 3), (7, 3), (9, 3), (None, None)], key=str)


def test_a_rejected_get_keeps_a_query_that_only_holds_the_word_ks(server):
    """A ks token that names nothing (a referrer's /ks/ path) leaves a rejected GET's query as sent, so the
    row is still filed under its partner."""
    agent = "rejected-ks-lookalike"
    target = "/collect?partnerId=123&eventType=x&referrer=https%3A%2F%2Fshop.example%2Fks%2Fitem"
    assert get(server, target, agent)[0] == 400
    [row] = rows(server, "rejected_events", agent, "raw_query, partner_id")
    assert row["raw_query"] == target.partition("?")[2] and as_int(row["partner_id"]) == 123


def test_json_nested_too_deeply_to_write_is_400_and_kept_redacted(server):
    """orjson reads 1024 levels but writes 254: such a body is a 400 kept in rejected_events, not a 500."""
    agent = "json-too-deep"
    ks_value = "S0VZdGVzdGtzdGVzdGtzdGVzdA=="

    def deep(head: bytes, levels: int) -> bytes:
        return head + b',"x":' + b"[" * levels + b"]" * levels + b"}"

    bodies = [
        deep(b'{"eventType":3,"partnerId":5,"entryId":"e"', 254),  # fast path: the row's dump fails
        deep(b'{"eventType":"3","partnerId":5,"entryId":"e","ks":"' + ks_value.encode() + b'"', 300),  # general path
        deep(b'{"eventType":3,"partnerId":5,"entryId":"e","ks":"' + ks_value.encode() + b'"', 254),  # fast, ks cut
        deep(b'{"eventType":"abc","ks":"' + ks_value.encode() + b'"', 260),  # rejected anyway, with a ks
    ]
    statuses = [post(server, "/collect", body, "application/json", agent)[0] for body in bodies]
    assert statuses == [400] * 4
    rejected = rows(server, "rejected_events", agent, "reason, message, raw_body")
    assert [r["reason"] for r in rejected] == ["bad_request"] * 4  # (the last one could not be stored either)
    assert all("nested too deeply" in r["message"] for r in rejected)
    assert all(r["raw_body"].endswith("]]]}") for r in rejected)  # the body as sent...
    assert all(ks_value not in r["raw_body"] and ks_value.rstrip("=") not in r["raw_body"] for r in rejected)
    assert sum("<redacted>" in r["raw_body"] for r in rejected) == 3  # ...with its ks masked
    assert rows(server, "events", agent, "event_type") == []
    assert "Traceback" not in server.log_text()
