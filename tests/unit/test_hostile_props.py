"""Property tests: no query string, body or header value makes the pure functions raise anything but Rejection."""
import math
from urllib.parse import quote_from_bytes

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestd import clientip, events, ks

NAMES = [n.encode() for n in events.FIELDS] + [b"", b"%6Bs", b"k%73", b"eventType", b"partnerId", b"entryId",
                                              b"%65ventType", b"a+b", b"%", b"%zz", b"\x00", b"\xff\xfe"]
ABSURD = [b"", b"-", b"+", b".", b"e", b"1e999", b"-1e-999", b"NaN", b"nan", b"inf", b"-Infinity", b"0x1F",
          b"99999999999999999999999999", b"-99999999999999999999", b"1" * 5000, b"%31%32", b"%", b"%%",
          b"%zz", b"%E2%82", b"\xff", b"\x00", "١٢٣".encode(), "１２".encode(), b"1_000", b" 1", b"1 ",
          b"+1", b"%2B1", b"1.2.3", b"..", b"1e", b"1e+", b"3", b"2", b"10002", b"585231"]

raw_bytes = st.binary(max_size=300)
name = st.one_of(st.sampled_from(NAMES), st.binary(max_size=12))
value = st.one_of(
    st.sampled_from(ABSURD),
    raw_bytes,
    st.text(max_size=50).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.text(max_size=30).map(lambda t: quote_from_bytes(t.encode("utf-8", "surrogatepass")).encode()),
    st.integers(min_value=-(10 ** 30), max_value=10 ** 30).map(lambda i: str(i).encode()),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda f: repr(f).encode()),
)
pairs = st.lists(st.tuples(name, value), max_size=40)


def _join(items, sep=b"&"):
    return sep.join(n + b"=" + v for n, v in items)


PROPS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _validate(query, body=None, strict=False):
    try:
        return events.validate(query, body, strict)
    except events.Rejection as rejection:
        assert rejection.reason in events.REASONS
        assert "\n" not in rejection.message
        return None


@PROPS
@given(raw_bytes, st.booleans())
def test_arbitrary_bytes_only_ever_reject(data, strict):
    """Random bytes as a query string split, and validate or reject with a known reason."""
    _validate(events.split_query(data), None, strict)


clean_pairs = st.lists(st.tuples(name.filter(lambda n: b"&" not in n and b"=" not in n),
                                  value.map(lambda v: v.replace(b"&", b""))), max_size=40)


@PROPS
@given(clean_pairs, st.booleans())
def test_structured_queries_only_ever_reject(items, strict):
    """Repeated, empty, escaped and absurd names and values: validate or reject; the first of a name wins."""
    params = events.split_query(_join(items))
    first = {}
    for n, v in items:
        first.setdefault(events.form_decode(n) if (b"%" in n or b"+" in n) else n, v)
    first.pop(b"", None)
    assert params == first
    checked = _validate(params, None, strict)
    if checked is not None:  # whatever is accepted is what ClickHouse can store in typed columns
        partner = events.form_decode(params[b"partnerId"])
        assert -(2 ** 63) <= int(partner) < 2 ** 63


@PROPS
@given(pairs, pairs)
def test_json_bodies_only_ever_reject(query_items, body_items):
    body = {n.decode("utf-8", "replace"): v.decode("utf-8", "replace") for n, v in body_items}
    _validate(events.split_query(_join(query_items)), events.body_params(body) or None)


@settings(max_examples=20, deadline=None)
@given(st.sampled_from([b"a", b"a=", b"=", b"&", b"a=1&", b"%6Bs=x&"]), st.integers(1, 10_000))
def test_huge_and_many_parameters(unit, count):
    query = unit * count + b"eventType=" + b"9" * 100_000
    _validate(events.split_query(query))


@PROPS
@given(raw_bytes)
def test_ks_describe_never_raises(data):
    info = ks.describe(data)
    assert info["status"] in ("v1", "v2", "undecodable") and len(info["hash"]) == 32


@PROPS
@given(pairs, st.binary(min_size=16, max_size=80).filter(lambda b: b"&" not in b and b"=" not in b))
def test_no_spelling_of_ks_survives_stripping(items, secret):
    """Whatever else a query holds, a ks under any escaped name is gone after stripping or masking."""
    encoded = quote_from_bytes(secret, safe="").encode()
    for spelled in (b"ks", b"%6Bs", b"k%73", b"%6b%73"):
        query = _join(items + [(spelled, encoded)] + items)
        stripped = ks.strip_from_query(query)
        assert encoded not in stripped and b"ks" not in events.split_query(stripped)
        masked = ks.strip_from_query(query, ks.MASK)
        assert encoded not in masked and events.split_query(masked)[b"ks"] == ks.MASK
        assert encoded not in ks.redact(query)


@PROPS
@given(st.one_of(raw_bytes, st.text(max_size=80).map(str.encode)), st.one_of(st.none(), raw_bytes))
def test_forwarded_headers_never_raise(xff, forwarded):
    resolver = clientip.ClientIP("truncate", (__import__("ipaddress").ip_network("127.0.0.0/8"),))

    class Request:
        peer = "127.0.0.1"
        headers = {b"x-forwarded-for": xff} if xff else {}

    if forwarded is not None:
        Request.headers = {**Request.headers, b"forwarded": forwarded}
    client = resolver.client(Request)
    assert clientip.parse_ip(client) is not None
    resolver.stored(Request)


BASE = {b"eventType": b"3", b"partnerId": b"585231", b"entryId": b"0_abc", b"flavourId": b"0_f",
        b"sessionId": b"s1", b"eventIndex": b"1", b"bufferTime": b"0", b"actualBitrate": b"400",
        b"preferredBitrate": b"-1"}


@PROPS
@given(st.dictionaries(st.sampled_from(sorted(events._NUMERIC_RAW) + [b"entryId"]), st.sampled_from(ABSURD),
                       max_size=6), st.booleans())
def test_absurd_numbers_in_a_valid_beacon(overrides, strict):
    """Accepted numbers are ones ClickHouse reads back: integers fit Int64, floats are finite literals."""
    params = {**BASE, **overrides}
    if _validate(params, None, strict) is None:
        return
    for raw_name, raw in params.items():
        kind = events._NUMERIC_RAW.get(raw_name, (None, None))[1]
        text = events.form_decode(raw)
        if raw and kind == "int":
            assert -(2 ** 63) <= int(text) < 2 ** 63, (raw_name, raw)
        elif raw and kind == "float":
            assert math.isfinite(float(text)), (raw_name, raw)
