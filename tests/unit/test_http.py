"""The HTTP protocol without sockets: request bytes in, response bytes out, through a fake transport."""
from __future__ import annotations

import pytest

from ingestd.http import MAX_PIPELINE, HttpProtocol, Limits, Response, Ticket


class FakeTransport:
    """Records what the protocol writes and whether it closed or paused the connection."""

    def __init__(self):
        self.data = bytearray()
        self.closed = False
        self.reading = True

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.data += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name, default=None):
        return ("203.0.113.7", 50000) if name == "peername" else default


class FakeApp:
    """Answers `/echo` at once (the body names the request), `/later` with a Ticket resolved by the test."""

    wanted_headers = frozenset({b"content-type", b"content-length", b"user-agent", b"expect"})

    def __init__(self):
        self.requests = []
        self.tickets: list[Ticket] = []
        self.protocol_errors: list[int] = []
        self.errors = []
        self.open = 0

    def connection_made(self, conn):
        self.open += 1

    def connection_lost(self, conn):
        self.open -= 1

    def protocol_error(self, conn, status):
        self.protocol_errors.append(status)

    def handle_error(self, request, exc):
        self.errors.append(exc)

    def handle(self, request):
        self.requests.append(request)
        if request.path == b"/later":
            ticket = Ticket()
            self.tickets.append(ticket)
            return ticket
        if request.path == b"/boom":
            raise RuntimeError("app bug")
        if request.path == b"/empty":
            return Response(204, headers=b"x-preflight: yes\r\n")
        return Response(200, b"%s %s?%s body=%s" % (request.method, request.path, request.query, request.body))


def connect(limits: Limits | None = None):
    app = FakeApp()
    proto = HttpProtocol(app, limits)
    transport = FakeTransport()
    proto.connection_made(transport)
    return app, proto, transport


def parse_responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split the bytes written to the transport into (status, headers, body) tuples."""
    out = []
    data = bytes(data)
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"incomplete response head: {data[:200]!r}"
        lines = head.decode("latin-1").split("\r\n")
        version, status, _ = lines[0].split(" ", 2)
        assert version == "HTTP/1.1"
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            assert name.lower() not in headers, f"header {name} repeated"
            headers[name.lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        out.append((int(status), headers, rest[:length]))
        data = rest[length:]
    return out


GET = b"GET /echo?n=%d HTTP/1.1\r\nHost: x\r\nUser-Agent: t\r\n\r\n"


def test_one_request_whole():
    app, proto, transport = connect()
    proto.data_received(b"GET /echo?a=1&b=%2E HTTP/1.1\r\nHost: x\r\nUser-Agent: curl/8\r\nX-Other: y\r\n\r\n")
    [(status, headers, body)] = parse_responses(transport.data)
    assert status == 200 and body == b"GET /echo?a=1&b=%2E body="
    assert headers["access-control-allow-origin"] == "*"
    assert headers["content-type"] == "text/plain" and headers["connection"] == "keep-alive"
    assert headers["date"].endswith("GMT")
    request = app.requests[0]
    assert request.headers == {b"user-agent": b"curl/8"}  # only the headers the app asked for
    assert request.peer == "203.0.113.7" and request.keep_alive
    assert not transport.closed


def test_byte_by_byte_gives_the_same_bytes_as_whole():
    requests = (GET % 1) + b"POST /echo?q HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello" + (GET % 3)
    _, proto, whole = connect()
    proto.data_received(requests)
    app, proto, split = connect()
    for i in range(len(requests)):
        proto.data_received(requests[i:i + 1])
    assert [r.body for r in app.requests] == [b"", b"hello", b""]
    strip_date = [(s, {k: v for k, v in h.items() if k != "date"}, b) for s, h, b in parse_responses(split.data)]
    assert strip_date == [(s, {k: v for k, v in h.items() if k != "date"}, b) for s, h, b in parse_responses(whole.data)]
    assert [b for _, _, b in parse_responses(split.data)] == [
        b"GET /echo?n=1 body=", b"POST /echo?q body=hello", b"GET /echo?n=3 body="]


def test_ten_pipelined_requests_in_one_read_answer_in_order():
    app, proto, transport = connect()
    proto.data_received(b"".join(GET % i for i in range(10)))
    responses = parse_responses(transport.data)
    assert [body for _, _, body in responses] == [b"GET /echo?n=%d body=" % i for i in range(10)]
    assert len(app.requests) == 10 and not transport.closed


def test_later_immediate_reply_waits_for_an_earlier_ticket():
    app, proto, transport = connect()
    proto.data_received(b"GET /later?first HTTP/1.1\r\n\r\n" + GET % 2 + b"GET /later?third HTTP/1.1\r\n\r\n" + GET % 4)
    assert transport.data == b""  # /echo?n=2 is decided, but the ticket before it is not
    first, third = app.tickets
    third.resolve(Response(200, b"third"))
    assert transport.data == b""  # still blocked on the first
    first.resolve(Response(200, b"first"))
    assert [b for _, _, b in parse_responses(transport.data)] == [
        b"first", b"GET /echo?n=2 body=", b"third", b"GET /echo?n=4 body="]


def test_one_ticket_resolves_replies_on_several_connections():
    ticket = Ticket()
    conns = []
    for _ in range(3):
        app, proto, transport = connect()
        app.handle = lambda request: ticket
        proto.data_received(GET % 0)
        conns.append(transport)
    assert all(t.data == b"" for t in conns)
    ticket.resolve(Response(200, b"1459671407"))
    assert all(parse_responses(t.data)[0][2] == b"1459671407" for t in conns)


def test_http10_closes_after_the_reply():
    app, proto, transport = connect()
    proto.data_received(b"GET /echo?x HTTP/1.0\r\n\r\n")
    [(status, headers, _)] = parse_responses(transport.data)
    assert status == 200 and headers["connection"] == "close" and transport.closed
    assert not app.requests[0].keep_alive


def test_http10_keep_alive_is_honoured_and_said():
    _, proto, transport = connect()
    proto.data_received(b"GET /echo?x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    [(_, headers, _)] = parse_responses(transport.data)
    assert headers["connection"] == "keep-alive" and not transport.closed


def test_connection_close_closes_and_ignores_what_follows():
    app, proto, transport = connect()
    proto.data_received(b"GET /echo?1 HTTP/1.1\r\nConnection: close\r\n\r\n" + GET % 2)
    [(status, headers, _)] = parse_responses(transport.data)
    assert status == 200 and headers["connection"] == "close" and transport.closed
    assert len(app.requests) == 1 and app.protocol_errors == []  # the second request is not handled


def test_connection_close_after_a_pending_ticket_waits_for_it():
    app, proto, transport = connect()
    proto.data_received(b"GET /later HTTP/1.1\r\n\r\nGET /echo HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert transport.data == b"" and not transport.closed
    app.tickets[0].resolve(Response(200, b"late"))
    assert [b for _, _, b in parse_responses(transport.data)] == [b"late", b"GET /echo? body="]
    assert transport.closed


@pytest.mark.parametrize("garbage", [
    b"NOT HTTP AT ALL\r\n\r\n",
    b"GET /echo HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
    b"GET /echo HTTP/9.9\r\n\r\n",
    b"GET /echo HTTP/1.1\r\nBad Header Name: x\r\n\r\n",
    b"\x00\x01\x02\r\n\r\n",
])
def test_malformed_request_gets_400_and_close(garbage):
    app, proto, transport = connect()
    proto.data_received(garbage)
    [(status, headers, body)] = parse_responses(transport.data)
    assert status == 400 and headers["connection"] == "close" and body.startswith(b"malformed HTTP request")
    assert transport.closed and app.protocol_errors == [400] and app.requests == []
    proto.data_received(GET % 1)  # nothing more is read from a failed connection
    assert len(parse_responses(transport.data)) == 1


def test_malformed_after_a_good_request_answers_both_in_order():
    app, proto, transport = connect()
    proto.data_received(b"GET /later HTTP/1.1\r\n\r\nBROKEN\r\n\r\n")
    assert transport.data == b""  # the 400 waits for the reply before it
    app.tickets[0].resolve(Response(200, b"ok"))
    assert [s for s, _, _ in parse_responses(transport.data)] == [200, 400] and transport.closed


def test_request_target_over_limit_is_414():
    app, proto, transport = connect(Limits(max_url=100))
    proto.data_received(b"GET /echo?" + b"a" * 95 + b" HTTP/1.1\r\n\r\n")
    [(status, _, body)] = parse_responses(transport.data)
    assert status == 414 and b"100 bytes" in body and transport.closed and app.requests == []


def test_request_target_at_limit_is_served():
    app, proto, transport = connect(Limits(max_url=100))
    proto.data_received(b"GET /echo?" + b"a" * 90 + b" HTTP/1.1\r\n\r\n")
    assert parse_responses(transport.data)[0][0] == 200


def test_long_target_split_across_reads_is_414():
    app, proto, transport = connect(Limits(max_url=100))
    proto.data_received(b"GET /echo?" + b"a" * 60)
    assert transport.data == b""
    proto.data_received(b"a" * 60 + b" HTTP/1.1\r\n\r\n")
    assert parse_responses(transport.data)[0][0] == 414


def test_headers_over_limit_are_431():
    app, proto, transport = connect(Limits(max_headers=200))
    proto.data_received(b"GET /echo HTTP/1.1\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 30) for i in range(10)) + b"\r\n")
    [(status, headers, _)] = parse_responses(transport.data)
    assert status == 431 and headers["connection"] == "close" and app.protocol_errors == [431]


@pytest.mark.parametrize("head", [b"GET /echo HTTP/1.1\r\nX-Junk: ", b"GET /echo HTTP/1.1\r\nX-Junk"])
def test_endless_header_line_is_431_after_a_bounded_span(head):
    # httptools buffers a header line until it ends and calls on_header only then
    app, proto, transport = connect()
    proto.data_received(head)
    reads = 0
    while not transport.closed:
        proto.data_received(b"x" * 65536)
        reads += 1
        assert reads <= proto.max_span // 65536 + 1, "the endless line was not cut"
    [(status, _, body)] = parse_responses(transport.data)
    assert status == 431 and b"not complete after" in body and app.protocol_errors == [431]


def test_body_in_one_byte_chunks_up_to_the_limit_is_not_cut_by_the_span():
    app, proto, transport = connect()
    proto.data_received(b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunks = b"1\r\nx\r\n" * proto.max_body
    for at in range(0, len(chunks), 4096):
        proto.data_received(chunks[at:at + 4096])
    proto.data_received(b"0\r\n\r\n" + GET % 1)  # a pipelined request behind it
    [(s1, _, body), (s2, _, _)] = parse_responses(transport.data)
    assert s1 == 200 and body.endswith(b"body=" + b"x" * proto.max_body) and s2 == 200


def test_a_request_finished_in_a_long_pipelined_read_is_not_cut_by_the_span():
    app, proto, transport = connect()
    first = GET % 0
    proto.data_received(first[:10])
    proto.data_received(first[10:] + b"".join(GET % n for n in range(1, 4000)))  # ~200 KB in one read
    responses = parse_responses(transport.data)
    assert len(responses) == 4000 and {status for status, _, _ in responses} == {200}


def test_declared_body_over_limit_is_413_before_it_arrives():
    app, proto, transport = connect(Limits(max_body=1000))
    proto.data_received(b"POST /echo HTTP/1.1\r\nContent-Length: 1001\r\n\r\n")
    [(status, _, _)] = parse_responses(transport.data)
    assert status == 413 and transport.closed and app.requests == []


def test_chunked_body_over_limit_is_413():
    app, proto, transport = connect(Limits(max_body=1000))
    chunk = b"%x\r\n%s\r\n" % (600, b"x" * 600)
    proto.data_received(b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk + chunk + b"0\r\n\r\n")
    assert parse_responses(transport.data)[0][0] == 413 and app.requests == []


def test_expect_100_continue_is_answered_before_the_body():
    app, proto, transport = connect()
    proto.data_received(b"POST /echo HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    assert transport.data == b"HTTP/1.1 100 Continue\r\n\r\n"
    proto.data_received(b"hello")
    final = bytes(transport.data)[len(b"HTTP/1.1 100 Continue\r\n\r\n"):]
    assert parse_responses(final)[0][2] == b"POST /echo? body=hello"


def test_expect_100_continue_is_ignored_from_http10():
    # RFC 9110 §10.1.1: an HTTP/1.0 client cannot have sent a meaningful expectation
    app, proto, transport = connect()
    proto.data_received(b"POST /echo HTTP/1.0\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    assert transport.data == b""
    proto.data_received(b"hello")
    assert not transport.data.startswith(b"HTTP/1.1 100")
    assert parse_responses(transport.data)[0][2] == b"POST /echo? body=hello"


@pytest.mark.parametrize("request_bytes", [
    b"GET /echo?a=1 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nhello",
])
def test_upgrade_request_gets_one_400_and_never_reaches_the_app(request_bytes):
    # llhttp would end the request at its head and give the rest to the new protocol (a POST body too)
    app, proto, transport = connect()
    proto.data_received(request_bytes)
    responses = parse_responses(transport.data)
    assert [status for status, _, _ in responses] == [400] and b"upgrade" in responses[0][2]
    assert app.requests == [] and transport.closed


def test_expect_100_continue_waits_behind_a_queued_reply():
    app, proto, transport = connect()
    proto.data_received(b"GET /later HTTP/1.1\r\n\r\n"
                        b"POST /echo HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nhi")
    assert transport.data == b""  # no interim reply ahead of the first request's answer
    app.tickets[0].resolve(Response(200, b"first"))
    assert [b for _, _, b in parse_responses(transport.data)] == [b"first", b"POST /echo? body=hi"]


def test_expect_over_the_body_limit_is_413_without_100():
    app, proto, transport = connect(Limits(max_body=10))
    proto.data_received(b"POST /echo HTTP/1.1\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n")
    assert parse_responses(transport.data)[0][0] == 413


def test_expect_before_an_over_limit_length_gets_100_then_413():
    app, proto, transport = connect(Limits(max_body=10))
    proto.data_received(b"POST /echo HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n")
    data = bytes(transport.data)
    assert data.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert parse_responses(data[len(b"HTTP/1.1 100 Continue\r\n\r\n"):])[0][0] == 413 and app.requests == []


def test_many_tiny_chunks_over_limit_are_413():
    app, proto, transport = connect(Limits(max_body=20000))
    proto.data_received(b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1\r\nx\r\n" * 20001)
    assert parse_responses(transport.data)[0][0] == 413 and app.requests == []


def test_chunked_body_within_limit_is_joined():
    app, proto, transport = connect()
    proto.data_received(b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    assert parse_responses(transport.data)[0][2] == b"POST /echo? body=abcde"


def test_absolute_form_target_is_routed_by_its_path():
    app, proto, transport = connect()
    proto.data_received(b"GET http://beacon.example:8080/echo?a=1 HTTP/1.1\r\n\r\n")
    assert app.requests[0].path == b"/echo" and app.requests[0].query == b"a=1"


def test_fragment_is_not_part_of_the_query():
    app, proto, transport = connect()
    proto.data_received(b"GET /echo?a=1#frag HTTP/1.1\r\n\r\n")
    assert app.requests[0].query == b"a=1"


def test_204_has_no_content_length_nor_body():
    _, proto, transport = connect()
    proto.data_received(b"OPTIONS /empty HTTP/1.1\r\n\r\n" + GET % 1)
    raw = bytes(transport.data)
    first = raw[:raw.index(b"\r\n\r\n") + 4]
    assert first.startswith(b"HTTP/1.1 204 No Content\r\n")
    assert b"content-length" not in first and b"x-preflight: yes" in first
    assert b"access-control-allow-origin: *" in first
    assert raw[len(first):].startswith(b"HTTP/1.1 200 OK")  # nothing between the two


def test_app_exception_is_500_and_the_connection_lives_on():
    app, proto, transport = connect()
    proto.data_received(b"GET /boom HTTP/1.1\r\n\r\n" + GET % 2)
    assert [s for s, _, _ in parse_responses(transport.data)] == [500, 200]
    assert len(app.errors) == 1 and not transport.closed


def test_repeated_wanted_header_is_joined():
    app, proto, _ = connect()
    proto.data_received(b"GET /echo HTTP/1.1\r\nUser-Agent: a\r\nuser-agent: b\r\n\r\n")
    assert app.requests[0].headers[b"user-agent"] == b"a, b"


def test_reading_pauses_when_too_many_replies_wait():
    app, proto, transport = connect()
    proto.data_received(b"GET /later HTTP/1.1\r\n\r\n" * MAX_PIPELINE)
    assert not transport.reading
    for ticket in app.tickets:
        ticket.resolve(Response(200, b"ok"))
    assert transport.reading and len(parse_responses(transport.data)) == MAX_PIPELINE


def test_connection_lost_is_reported_to_the_app():
    app, proto, _ = connect()
    assert app.open == 1
    proto.connection_lost(None)
    assert app.open == 0


def test_shutdown_lets_a_half_received_request_finish_then_closes():
    app, proto, transport = connect()
    proto.data_received(b"GET /echo?x HTTP/1.1\r\nHost: a\r\n")
    proto.shutdown()
    assert not transport.closed
    proto.data_received(b"\r\n" + GET % 2)
    [(status, _, body)] = parse_responses(transport.data)
    assert (status, body) == (200, b"GET /echo?x body=") and transport.closed
    assert len(app.requests) == 1  # the request pipelined behind it is neither handled nor stored


def test_shutdown_closes_an_idle_connection_at_once():
    app, proto, transport = connect()
    proto.data_received(GET % 1)
    proto.shutdown()
    assert transport.closed
    proto.data_received(GET % 2)
    assert len(app.requests) == 1
