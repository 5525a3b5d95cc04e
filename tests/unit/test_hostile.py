"""Unit tests of the hostile-input pieces: client IP and privacy modes, rate limit, ks redaction, connection gate."""
import ipaddress
import time
import os
import urllib.parse

import orjson
import pytest

from conftest import beacon_app
from ingestd import clientip, ks, ratelimit
from ingestd.http import CLOCK, ConnectionGate, HttpProtocol, Limits, Response


class Req:
    def __init__(self, peer, **headers):
        self.peer = peer
        self.headers = {k.replace("_", "-").encode(): v.encode() for k, v in headers.items()}


def nets(*cidrs):
    return tuple(ipaddress.ip_network(c) for c in cidrs)


# -- client IP -----------------------------------------------------------------------------------------
def test_full_mode_is_the_peer_and_ignores_headers_from_untrusted_peers():
    resolver = clientip.ClientIP("full")
    spoof = Req("203.0.113.7", x_forwarded_for="1.2.3.4", forwarded="for=5.6.7.8")
    assert resolver.stored(spoof) == "203.0.113.7"
    assert resolver.client(spoof) == "203.0.113.7"
    assert resolver.wanted_headers == frozenset()  # nothing extra parsed when no proxy is trusted


def test_ipv4_mapped_peers_are_stored_as_ipv4():
    assert clientip.ClientIP("full").stored(Req("::ffff:198.51.100.9")) == "198.51.100.9"


@pytest.mark.parametrize("peer, expected", [
    ("198.51.100.200", "198.51.100.0"),
    ("2001:db8:abcd:1234:5678::1", "2001:db8:abcd::"),
    ("::ffff:10.1.2.3", "10.1.2.0"),
])
def test_truncate_keeps_a_24_or_48(peer, expected):
    assert clientip.ClientIP("truncate").stored(Req(peer)) == expected


def test_drop_stores_nothing():
    assert clientip.ClientIP("drop").stored(Req("198.51.100.1")) == ""


def test_hash_is_stable_within_a_day_keyed_and_rotates(tmp_path, monkeypatch):
    day = 20000
    monkeypatch.setattr(CLOCK, "seconds", day * 86400 + 5)
    a = clientip.ClientIP("hash", key_dir=tmp_path)
    b = clientip.ClientIP("hash", key_dir=tmp_path)  # another worker sharing the spool
    first = a.stored(Req("198.51.100.1"))
    assert len(first) == 16 and int(first, 16) >= 0 and "198" not in first
    assert a.stored(Req("198.51.100.1")) == first == b.stored(Req("198.51.100.1"))
    assert a.stored(Req("198.51.100.2")) != first
    assert oct(os.stat(tmp_path / f"ip-hash-key-{day}").st_mode & 0o777) == "0o600"
    other = clientip.ClientIP("hash", key_dir=tmp_path / "elsewhere")
    assert other.stored(Req("198.51.100.1")) != first  # keyed: not a plain hash anyone can recompute
    monkeypatch.setattr(CLOCK, "seconds", (day + 1) * 86400 + 5)
    assert a.stored(Req("198.51.100.1")) != first  # a new day, a new key
    assert sorted(p.name for p in tmp_path.glob("ip-hash-key-*")) == [f"ip-hash-key-{day + 1}"]


def test_workers_share_one_key_directory(tmp_path):
    assert clientip.key_directory(tmp_path / "spool" / "w3") == tmp_path / "spool" / "ip-keys"
    assert clientip.key_directory(tmp_path / "spool") == tmp_path / "spool" / "ip-keys"


def test_trusted_proxy_headers_are_believed_right_to_left():
    resolver = clientip.ClientIP("full", nets("10.0.0.0/8", "2001:db8::/32"))
    assert resolver.wanted_headers == clientip.PROXY_HEADERS
    # the client may send its own X-Forwarded-For: only the hops our proxies appended are believed
    req = Req("10.0.0.5", x_forwarded_for="6.6.6.6, 203.0.113.9, 10.0.0.4")
    assert resolver.client(req) == "203.0.113.9"
    assert resolver.stored(req) == "203.0.113.9"
    assert resolver.client(Req("10.0.0.5", x_forwarded_for="[2001:db9::1]:443")) == "2001:db9::1"
    assert resolver.client(Req("10.0.0.5", x_forwarded_for="203.0.113.9:8080")) == "203.0.113.9"
    # Forwarded only when X-Forwarded-For is absent
    assert resolver.client(Req("10.0.0.5", forwarded='for="[2001:db9::7]";proto=https, for=10.1.1.1')) == \
        "2001:db9::7"
    assert resolver.client(Req("10.0.0.5", forwarded="for=198.51.100.3", x_forwarded_for="203.0.113.1")) == \
        "203.0.113.1"
    # garbage or an obfuscated hop stops the walk at the last address we could read
    assert resolver.client(Req("10.0.0.5", x_forwarded_for="1.2.3.4, garbage, 10.9.9.9")) == "10.9.9.9"
    assert resolver.client(Req("10.0.0.5", forwarded="for=_hidden")) == "10.0.0.5"
    assert resolver.client(Req("10.0.0.5")) == "10.0.0.5"  # no header: the proxy itself
    # a peer outside the trusted ranges cannot forge any of it
    assert resolver.client(Req("203.0.113.50", x_forwarded_for="1.1.1.1")) == "203.0.113.50"


def test_trusted_proxy_with_truncation():
    resolver = clientip.ClientIP("truncate", nets("127.0.0.1/32"))
    assert resolver.stored(Req("127.0.0.1", x_forwarded_for="203.0.113.77")) == "203.0.113.0"
    assert resolver.stored(Req("127.0.0.1", x_forwarded_for="198.51.100.1")) == "198.51.100.0"  # not cached


# -- rate limit --------------------------------------------------------------------------------------
def test_token_bucket_burst_then_rate_then_refill():
    now = [100.0]
    limiter = ratelimit.RateLimiter(5, clock=lambda: now[0])
    allowed = [limiter.allow("198.51.100.1") for _ in range(12)]
    assert allowed[:10] == [0] * 10  # a burst of 2 s worth
    assert allowed[10] == 1 and allowed[11] == 1  # then Retry-After: 1
    assert limiter.allow("198.51.100.2") == 0  # per address
    now[0] += 1.0  # five more tokens
    assert [limiter.allow("198.51.100.1") for _ in range(6)] == [0] * 5 + [1]


def test_ipv6_is_limited_per_64():
    now = [0.0]
    limiter = ratelimit.RateLimiter(1, clock=lambda: now[0])
    assert limiter.allow("2001:db8:1:2::1") == 0
    assert limiter.allow("2001:db8:1:2::2") == 0
    assert limiter.allow("2001:db8:1:2:ffff::3") > 0  # same /64: same bucket
    assert limiter.allow("2001:db8:1:3::1") == 0


def test_ipv4_mapped_peers_are_limited_per_address():
    # a dual-stack listener ([::]:PORT) sees IPv4 clients as ::ffff:a.b.c.d: each is its own client
    now = [0.0]
    limiter = ratelimit.RateLimiter(0.5, clock=lambda: now[0])
    assert limiter.allow("::ffff:198.51.100.1") == 0
    assert limiter.allow("::ffff:198.51.100.2") == 0
    assert limiter.allow("::ffff:198.51.100.3") == 0
    assert limiter.allow("::ffff:198.51.100.1") > 0  # the same client again
    assert limiter.allow("198.51.100.2") > 0  # the same bucket as its plain spelling


def test_retry_after_grows_with_a_slow_rate():
    limiter = ratelimit.RateLimiter(0.1, clock=lambda: 0.0)
    assert limiter.allow("a") == 0
    assert limiter.allow("a") == 10


def test_bucket_table_is_bounded(monkeypatch):
    monkeypatch.setattr(ratelimit, "MAX_BUCKETS", 100)
    now = [0.0]
    limiter = ratelimit.RateLimiter(10, clock=lambda: now[0])
    for i in range(100):
        limiter.allow(f"10.0.0.{i}")
    now[0] = 10.0  # everyone idle long enough to be full again
    limiter.allow("10.0.1.1")
    assert len(limiter.buckets) == 1


def test_request_guard_answers_429_with_retry_after():
    check = ratelimit.request_guard(1, lambda request: request.peer)
    req = Req("198.51.100.1")
    assert check(req) is None and check(req) is None
    refusal = check(req)
    assert isinstance(refusal, Response) and refusal.status == 429 and b"retry-after: 1" in refusal.headers


# -- ks ----------------------------------------------------------------------------------------------------
SECRET = b"YjdlZTNkMGUzZDYxMzY0OGJjZDVjOTYzOWVkMjFlNTg2ZmMyZDRlOXw1ODUyMzE"


@pytest.mark.parametrize("body", [
    b'{"eventType": 3, "ks": "' + SECRET + b'", "broken',  # JSON that fails to parse
    b'[{"ks":"' + SECRET + b'"}]',  # JSON that is not an object
    b'{"\\u006bs":"' + SECRET + b'"}',  # escaped key
    b"eventType=abc&ks=" + SECRET,  # form / text
    b"eventType=abc&%6Bs=" + SECRET + b"&x=1",  # percent-encoded name
    b"eventType=abc&k%73=" + SECRET,
])
def test_redact_masks_ks_in_any_body(body):
    out = ks.redact(body)
    assert SECRET not in out and ks.MASK in out


def test_strip_removes_every_ks_and_its_echo_in_other_values():
    query = (b"ks=" + SECRET + b"%3D%3D&referrer=http%3A%2F%2Fx%2Fp%3Fks%3D" + SECRET + b"%253D&%6Bs=second"
             + b"&eventType=3")
    out = ks.strip_from_query(query)
    assert SECRET not in out and b"second" not in out and out.endswith(b"&eventType=3")
    masked = ks.strip_from_query(query, ks.MASK)
    assert SECRET not in masked and masked.startswith(b"ks=<redacted>&")


# -- connection gate ------------------------------------------------------------------------------------
class FakeTransport:
    def __init__(self, peer="127.0.0.1"):
        self.peer = peer
        self.written = []
        self.closed = False

    def get_extra_info(self, name):
        return (self.peer, 1234)

    def write(self, data):
        self.written.append(data)

    def close(self):
        self.closed = True

    def is_closing(self):
        return self.closed

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


class App:
    wanted_headers = frozenset()

    def __init__(self):
        self.open = set()
        self.errors = []

    def connection_made(self, conn):
        self.open.add(conn)

    def connection_lost(self, conn):
        self.open.discard(conn)

    def protocol_error(self, conn, status):
        self.errors.append(status)

    def handle(self, request):
        return Response(200, b"ok")


class Counters:
    connections_refused = 0
    connections_evicted = 0


def connect(app, gate):
    conn = HttpProtocol(app, Limits(), gate)
    transport = FakeTransport()
    conn.connection_made(transport)
    return conn, transport


def test_gate_closes_longest_idle_connections_to_admit_new_ones():
    app, counters = App(), Counters()
    gate = ConnectionGate(4, counters)
    conns = [connect(app, gate) for _ in range(4)]
    for i, (conn, _) in enumerate(conns):
        conn.last_activity = 100.0 - i  # the last one has been idle longest
    conns[0][0].data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # served: now idle, most recent
    newcomer, transport = connect(app, gate)
    assert not transport.closed and newcomer in gate.open
    assert sum(t.closed for _, t in conns) == 4 and counters.connections_evicted == 4  # batch: all idle ones
    assert counters.connections_refused == 0


def test_gate_cuts_a_slow_request_then_refuses_when_all_are_busy():
    app, counters = App(), Counters()
    gate = ConnectionGate(2, counters)
    slow, slow_t = connect(app, gate)
    slow.data_received(b"GET /collect?a")  # a request begun and never finished
    slow.request_started -= 5  # ... five seconds ago
    fast, fast_t = connect(app, gate)
    fast.data_received(b"GET /collect?b")  # begun just now
    third, third_t = connect(app, gate)
    assert slow_t.closed and b"408" in slow_t.written[-1] and not third_t.closed
    assert app.errors == [408]
    third.data_received(b"GET /collect?c")
    fourth, fourth_t = connect(app, gate)  # both open connections are mid-request and recent
    assert fourth_t.closed and fourth_t.written[0].startswith(b"HTTP/1.1 503")
    assert counters.connections_refused == 1 and fourth not in app.open
    fourth.connection_lost(None)  # a refused connection never reaches the app
    slow.connection_lost(None)
    assert app.open == {fast, third} and set(gate.open) == {fast, third}


def test_fresh_connection_gets_the_header_timeout_and_idle_keepalive_the_idle_timeout():
    app = App()
    conn = HttpProtocol(app, Limits(header_timeout=2, idle_timeout=30))
    transport = FakeTransport()
    conn.connection_made(transport)
    assert not conn.check_timeout(conn.last_activity + 1)
    assert conn.check_timeout(conn.last_activity + 3)  # never sent a byte: gone at the header timeout
    conn = HttpProtocol(app, Limits(header_timeout=2, idle_timeout=30))
    conn.connection_made(FakeTransport())
    conn.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert not conn.check_timeout(conn.last_activity + 3)  # between requests: the idle timeout
    assert conn.check_timeout(conn.last_activity + 31)


def test_bare_crlfs_do_not_hold_a_connection_past_its_timeouts():
    # llhttp skips CR/LF before a request without a callback: they are not a request begun
    app = App()
    conn = HttpProtocol(app, Limits(header_timeout=2, idle_timeout=30))
    conn.connection_made(FakeTransport())
    conn.last_activity -= 1.5  # accepted 1.5 s ago
    conn.data_received(b"\r\n")
    assert conn.check_timeout(time.monotonic() + 1)  # no request begun: the header timeout from the accept
    conn = HttpProtocol(app, Limits(header_timeout=2, idle_timeout=30))
    conn.connection_made(FakeTransport())
    conn.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.last_activity -= 20  # answered 20 s ago
    conn.data_received(b"\r\n\r\n")
    assert conn.check_timeout(time.monotonic() + 15)  # idle since the last request, CRLFs or not


def test_half_close_still_gets_the_queued_answers():
    from ingestd.http import Ticket

    ticket = Ticket()

    class Deferred(App):
        def handle(self, request):
            return ticket

    conn = HttpProtocol(Deferred(), Limits())
    transport = FakeTransport()
    conn.connection_made(transport)
    conn.data_received(b"GET /collect HTTP/1.1\r\nHost: x\r\n\r\n")
    assert conn.eof_received() is True and not transport.closed  # the answer is still owed
    ticket.resolve(Response(200, b"1"))
    assert transport.written and transport.written[0].startswith(b"HTTP/1.1 200") and transport.closed


def test_ks_v1_and_v2_are_decoded_without_keeping_the_secret():
    import base64

    from conftest import DOCUMENT_KS
    from ingestd.events import form_decode

    v1 = ks.describe(form_decode(DOCUMENT_KS.encode()))
    assert (v1["status"], v1["partner_id"], v1["expiry"], v1["privileges"]) == (
        "v1", "585231", "1435160676", "view:*,widget:1")
    v2_token = base64.urlsafe_b64encode(b"v2|585231|" + bytes(range(200, 256)) * 2)
    v2 = ks.describe(v2_token)
    assert (v2["status"], v2["partner_id"]) == ("v2", "585231")
    assert set(v2) == {"hash", "status", "partner_id"}
    assert ks.describe(b"not a ks at all")["status"] == "undecodable"


# -- ks echoes in every spelling, ks in bodies of any syntax --------------------------------------------
KS2 = b"MDAwMDAwMDAwMDAwMDAwMDAwMmJkYzU0NWQ2YzgwZGR8NTg1MjMxOzU4NTIzMTsxNDM1MTYwNjc2OzA7MTQzNTA3NDI3Ni4xMDt2aWV3ZXJ+MTA/Pjt2aWV3Oiosd2lkZ2V0OjE7Ow=="


def _spellings_leaked(out: bytes) -> list[bytes]:
    core = KS2.rstrip(b"=")
    quoted = urllib.parse.quote_from_bytes(core, safe=b"").encode()
    # no 24-byte piece of the secret survives in any spelling (raw, once or twice percent-encoded)
    return [form for form in (core, quoted, quoted.replace(b"%", b"%25"), urllib.parse.quote_from_bytes(core).encode())
            if any(form[i:i + 24] in out for i in range(0, len(form) - 24, 8))]


@pytest.mark.parametrize("ks_as, echo", [
    (urllib.parse.quote(KS2), urllib.parse.quote("https://s/w?ks=" + urllib.parse.quote(KS2))),
    (urllib.parse.quote(KS2, safe=""), urllib.parse.quote("https://s/w?ks=" + urllib.parse.quote(KS2, safe=""), safe="")),
    (KS2.decode().replace("+", "%2B"), urllib.parse.quote("https://s/w?ks=" + KS2.decode(), safe="")),
    (urllib.parse.quote(KS2, safe=""), "https://s/w?ks=" + KS2.decode()),
])
def test_echo_of_the_ks_is_masked_in_its_percent_encoded_spellings(ks_as, echo):
    query = b"eventType=3&partnerId=5&entryId=e&ks=" + ks_as.encode() + b"&referrer=" + echo.encode()
    for out in (ks.strip_from_query(query), ks.strip_from_query(query, ks.MASK)):
        # the view decodes the query once: the stored referrer must not hold the ks either
        assert not _spellings_leaked(out) and not _spellings_leaked(urllib.parse.unquote_to_bytes(out)), out


@pytest.mark.parametrize("body", [
    b'--XX\r\nContent-Disposition: form-data; name="ks"\r\n\r\n' + KS2 + b"\r\n--XX--\r\n",  # multipart
    b'--XX\r\nContent-Disposition: form-data; name="ks"\r\nContent-Type: text/plain\r\n\r\n' + KS2 + b"\r\n--XX--",
    b'{"eventType":"abc","ks":"' + KS2 + b'","referrer":"https://s/?ks=' + KS2 + b'"}',  # JSON echo
    b'{"eventType":"abc","ks":"' + KS2 + b'","r":"?ks=' + urllib.parse.quote_from_bytes(KS2, safe="").encode() + b'"',
    b'{"ks":"' + KS2.replace(b"/", b"\\/") + b'","r":"' + KS2 + b'"}',  # JSON-escaped '/' in the value
    b"eventType=abc&ks=" + urllib.parse.quote_from_bytes(KS2, safe="").encode() + b"&r=" + KS2,  # form echo
    b"<beacon><ks>" + KS2 + b"</ks></beacon>",  # a syntax not parsed: the whole body is masked
    b"ks: " + KS2,
])
def test_redact_masks_the_ks_and_its_echoes_in_any_body(body):
    out = ks.redact(body)
    assert not _spellings_leaked(out) and ks.MASK in out, out


def test_redact_masks_values_found_elsewhere_and_keeps_bodies_that_name_no_ks():
    assert ks.redact(b"a=1&b=" + KS2, [], [KS2]) == b"a=1&b=" + ks.MASK
    assert ks.redact(b"tracks=1&thanks=2&ks_version=3") == b"tracks=1&thanks=2&ks_version=3"


def test_json_beacon_echo_of_its_ks_is_masked_fast_and_general_path():
    from ingestd.http import Request

    app = beacon_app()
    play = {"eventType": 3, "partnerId": 5, "entryId": "e"}
    quoted = urllib.parse.quote(KS2.decode(), safe="")
    sent = [
        (b"", {**play, "ks": KS2.decode(), "referrer": "https://s/?ks=" + KS2.decode()}),  # fast path
        (b"", {**play, "eventType": "3", "ks": KS2.decode(), "x": ["?ks=" + quoted, {"k": KS2.decode()}]}),  # general
        (b"ks=" + quoted.encode(), {**play, "referrer": "https://s/?ks=" + KS2.decode()}),  # ks in the query
        (b"", {**play, "ks": KS2.decode(), "referrer": "https://s/?ks=" + quoted}),
        (b"", {"eventType": "abc", "ks": KS2.decode(), "referrer": "https://s/?ks=" + KS2.decode()}),  # rejected
    ]
    for query, obj in sent:
        body = orjson.dumps(obj)
        app.handle(Request(b"POST", b"/collect", query, {b"content-type": b"application/json"}, body,
                           "127.0.0.1", 1.0, True))
    assert len(app.spool.pending) == len(sent)
    for row in app.spool.pending:
        assert not _spellings_leaked(row), row
        assert ks.MASK in row


def test_a_ks_named_in_no_syntax_parsed_is_flagged_also_inside_an_encoded_url():
    assert ks.names_ks_unmasked(b"r=https%3A%2F%2Fs%2F%3Fks%3Dabc")  # an echo of a value not known
    assert not ks.names_ks_unmasked(b"r=https%3A%2F%2Fs%2F%3Fks%3D<redacted>")
    assert not ks.names_ks_unmasked(b"tracks=1&thanks=2&ks_version=3&looks=ks_x")


# -- spellings the first masking missed (review 2) --------------------------------------------------------
def _lower_escapes(text: bytes) -> bytes:
    import re
    return re.sub(rb"%[0-9A-F]{2}", lambda m: m.group().lower(), text)


def test_an_echo_with_lower_case_escapes_is_masked():
    once = urllib.parse.quote_from_bytes(KS2, safe=b"").encode()  # upper case, as the ks parameter is sent
    echo = urllib.parse.quote_from_bytes(b"http://x/p?ks=" + _lower_escapes(once), safe=b"").encode()  # %252b
    assert b"%252b" in echo or b"%252f" in echo
    query = b"eventType=3&partnerId=5&entryId=e&ks=" + once + b"&referrer=" + echo
    for out in (ks.strip_from_query(query), ks.strip_from_query(query, ks.MASK)):
        assert not _spellings_leaked(out) and not _spellings_leaked(urllib.parse.unquote_to_bytes(out)), out
        assert not _spellings_leaked(urllib.parse.unquote_to_bytes(urllib.parse.unquote_to_bytes(out).upper()))
    # once encoded, lower case, in a JSON value (mask_tree) and in a rejected body (mask_forms)
    forms = ks.text_forms([], [KS2])
    # (the padding is left, as with upper-case escapes: it is not secret)
    assert ks.mask_tree({"r": "?ks=" + _lower_escapes(once).decode()}, forms) == {"r": "?ks=<redacted>%3d%3d"}
    assert ks.redact(b'{"r":"' + _lower_escapes(once) + b'"}', [], [KS2]) == b'{"r":"<redacted>%3d%3d"}'
    # a ks that is not Base64 (not Latin-1 either) is quoted byte by byte: its lower-case spelling too
    odd = "n\u00e9\u4e2d-session-0123456789"
    lowered = _lower_escapes(urllib.parse.quote(odd, safe="").encode()).decode()
    assert ks.mask_tree({"r": lowered}, ks.text_forms([], [odd.encode()])) == {"r": "<redacted>"}


def test_a_json_ks_whose_plus_arrived_as_a_space_masks_its_echo_with_the_plus():
    assert b"+" in KS2
    spaced = KS2.replace(b"+", b" ")
    assert ks.mask_values(b"r=https://s/?ks=" + KS2, [], [spaced]) == b"r=https://s/?ks=" + ks.MASK
    assert ks.mask_tree({"r": "?ks=" + KS2.decode()}, ks.text_forms([], [spaced])) == {"r": "?ks=<redacted>"}


def test_an_echo_with_json_escaped_slashes_is_masked_in_a_body_that_fails_to_parse():
    escaped = KS2.replace(b"/", b"\\/")
    body = b'{"eventType":2,"ks":"' + escaped + b'","token":"' + escaped + b'",'
    out = ks.redact(body)
    assert escaped.rstrip(b"=") not in out and not _spellings_leaked(out.replace(b"\\/", b"/")), out


def test_echoes_of_the_first_distinct_values_are_probed_not_of_the_first_copies():
    other = b"djJ8NTg1MjMxfFNFQ1JFVFNFQ1JFVFNFQ1JFVA"
    query = b"eventType=3" + b"&ks=" + b"QUFBQUFBQUFBQUFBQUFBQUFB" * 1 + b"&ks=QUFBQUFBQUFBQUFBQUFBQUFB" * 8 \
        + b"&ks=" + other + b"&referrer=" + urllib.parse.quote_from_bytes(b"http://x/?ks=" + other, safe=b"").encode()
    assert other not in ks.strip_from_query(query)


def _send(app, method, query, body=b""):
    from ingestd.http import Request
    app.handle(Request(method, b"/collect", query, {b"content-type": b"application/json"}, body,
                       "127.0.0.1", 1.0, True))
    return app.spool.pending[-1]


OTHER = b"djJ8NTg1MjMxfFNFQ1JFVFNFQ1JFVFNFQ1JFVA"  # a second ks (v2)


def test_a_json_beacon_masks_the_echoes_of_every_ks_in_its_query_and_body():
    play = {"eventType": 3, "partnerId": 5, "entryId": "e"}
    echo = {"referrer": "http://x/?ks=" + OTHER.decode()}
    app = beacon_app()
    for query, obj in [(b"ks=" + KS2, {**play, "ks": OTHER.decode(), **echo}),  # one in the query, one in the body
                       (b"ks=" + KS2 + b"&ks=" + OTHER, {**play, **echo})]:  # two in the query
        row = _send(app, b"POST", query, orjson.dumps(obj))
        assert OTHER not in row and not _spellings_leaked(row) and ks.MASK in row, row
    assert len(app.spool.pending) == 2 and all(r.startswith(b'["e"') for r in app.spool.pending)


def test_a_ks_nested_in_an_accepted_json_body_is_masked_fast_and_general_path():
    app = beacon_app()
    play = {"eventType": 3, "partnerId": 5, "entryId": "e"}
    for obj in [{**play, "context": {"ks": KS2.decode()}, "r": "?ks=" + KS2.decode()},  # fast path
                {**play, "eventType": "3", "context": {"ks": KS2.decode()}},  # general: stored as JSON text
                {**play, "list": [{"\u006bs": KS2.decode()}]}]:
        row = _send(app, b"POST", b"", orjson.dumps(obj))
        assert row.startswith(b'["e"') and not _spellings_leaked(row) and ks.MASK in row, row
    # a body naming no nested ks is stored as it was sent
    row = _send(app, b"POST", b"", orjson.dumps({**play, "context": {"tracks": "ks"}}))
    assert b'{"tracks":"ks"}' in row and ks.MASK not in row


def test_a_rejected_get_query_naming_a_ks_in_a_syntax_not_parsed_is_masked_as_a_whole():
    app = beacon_app()
    row = orjson.loads(_send(app, b"GET", b"eventType=zz&data=<ks>" + KS2 + b"</ks>"))
    assert row[0] == "r" and row[4] == "<redacted>"
    row = orjson.loads(_send(app, b"GET", b"eventType=zz&tracks=1&ks_version=2"))  # names no ks: kept
    assert row[4] == "eventType=zz&tracks=1&ks_version=2"


def test_a_rejected_json_beacon_files_only_a_numeric_partner_and_type():
    """The partner and type a rejection is filed under are spooled apart from the masked body: text that
    is not a number could hold a ks, so only numbers are kept."""
    app = beacon_app()
    row = orjson.loads(_send(app, b"POST", b"ks=" + KS2, orjson.dumps({"partnerId": "ks=" + KS2.decode(),
                                                                          "eventType": "x"})))
    assert row[0] == "r" and row[5] == {} and KS2[:16].decode() not in str(row)
    row = orjson.loads(_send(app, b"POST", b"", orjson.dumps({"partnerId": " -5 ", "eventType": 3, "entryId": ""})))
    assert row[0] == "r" and row[5] == {"partnerId": " -5 ", "eventType": "3"}


@pytest.mark.parametrize("query, names", [
    (b"partnerId=1&referrer=https%3A%2F%2Fshop.example%2Fks%2Fitem", False), (b"eventType=ks", False),
    (b"data=<ks>S</ks>", True), (b"data=ks:S", True), (b"data=%7B%22ks%22%3A%22S%22%7D", True),
    (b"data=%3Cks%3ES%3C%2Fks%3E", True), (b"x=a+ks+%3D+s", True), (b"ks=<redacted>", False),
])
def test_a_query_names_a_ks_only_where_a_value_could_follow(query, names):
    assert ks.names_ks_unmasked(query, as_name=True) is names
