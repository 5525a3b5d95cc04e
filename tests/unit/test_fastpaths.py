"""The hot path's fast paths give exactly what the straightforward code they shortcut gives."""
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from ingestd import events, http, ks
from ingestd.events import Rejection, form_decode, json_params, number_error, split_query, validate

# pieces that make the fast paths' edge cases likely: escapes of k, s, '.', '-', separators, digits
QUERY_PIECES = st.sampled_from([b"ks", b"k", b"s", b"&", b"=", b"a", b"%6B", b"%6b", b"%73", b"%2E", b"+",
                                b"1", b"%", b"eventType", b"%zz", b"0123456789abcdef"])  # a ks-long value
queries = st.lists(QUERY_PIECES, max_size=12).map(b"".join)


def reference_split(query: bytes) -> dict:
    params = {}
    for pair in query.split(b"&"):
        name, _, value = pair.partition(b"=")
        if b"%" in name or b"+" in name:
            name = form_decode(name)
        if name and name not in params:
            params[name] = value
    return params


def reference_strip(query: bytes, mask: bytes = b"") -> bytes:
    kept, values = [], []
    for pair in query.split(b"&"):
        name, _, value = pair.partition(b"=")
        if form_decode(name) == b"ks":
            values.append(value)
            if mask:
                kept.append(name + b"=" + mask)
            continue
        kept.append(pair)
    return ks._mask_echoes(b"&".join(kept), values) if values else query


@settings(max_examples=1500, deadline=None)
@given(queries)
def test_split_query_matches_the_pair_by_pair_loop(query):
    assert split_query(query) == reference_split(query)  # (the fast path's key order may differ)


@settings(max_examples=1500, deadline=None)
@given(queries, st.sampled_from([b"", b"<redacted>"]))
def test_ks_strip_matches_the_pair_by_pair_loop(query, mask):
    assert ks.strip_from_query(query, mask) == reference_strip(query, mask)


NUMBER_PIECES = st.sampled_from([b"0", b"7", b"12", b".", b"-", b"+", b"e", b"E", b"%2E", b"%2D", b"%2e", b"%",
                                 b"x", b"999999999", b" "])
numbers = st.lists(NUMBER_PIECES, min_size=1, max_size=6).map(b"".join)


@settings(max_examples=1500, deadline=None)
@given(numbers, st.sampled_from(["bufferTime", "eventIndex"]), st.booleans())
def test_numeric_fast_path_accepts_exactly_what_number_error_accepts(value, field, in_json_body):
    kind = "float" if field == "bufferTime" else "int"
    base = b"eventType=99&partnerId=1&entryId=e&"
    if in_json_body:  # a JSON body's values are plain text, not form-encoded
        args = (split_query(b"service=analytics"), {**split_query(base), field.encode(): value})
        plain = value
    else:
        args = (split_query(base + field.encode() + b"=" + value), None)
        plain = form_decode(value)
    try:
        validate(*args, False)
        accepted = True
    except Rejection:
        accepted = False
    assert accepted == (number_error(plain, kind) is None)


json_values = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1),
                        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=5),
                        st.lists(st.integers(-2**63, 2**63 - 1), max_size=2))  # what orjson.loads gives


def reference_body_params(obj: dict) -> dict:
    out = {}
    for key, value in obj.items():
        if not key:
            continue
        if isinstance(value, str):
            raw = value.encode("utf-8", "surrogatepass")
        elif value is None:
            raw = b""
        elif value is True or value is False:
            raw = b"true" if value else b"false"
        else:
            raw = orjson.dumps(value)
        out[key.encode("utf-8", "surrogatepass")] = raw
    return out


@given(st.dictionaries(st.text(max_size=4), json_values, max_size=5))
def test_json_params_are_the_per_value_conversions_in_one_pass(obj):
    raw_params, texts = json_params(obj)
    reference = reference_body_params(obj)
    assert raw_params == reference
    assert texts == {k.decode(): v.decode() for k, v in reference.items()}  # what the row used to decode


def test_render_cache_is_the_rendered_bytes_and_follows_the_clock():
    response = http.Response(200, b"123")
    for keep_alive in (True, False, True):
        assert http.render(response, keep_alive) == http._render(response, keep_alive)
    before = http.render(response, True)
    http.CLOCK.date_header = b"date: Thu, 01 Jan 1970 00:00:00 GMT\r\n"  # a tick
    try:
        after = http.render(response, True)
        assert after != before and b"1970" in after and after == http._render(response, True)
    finally:
        http.CLOCK.tick()


def test_registry_fast_path_constants_agree():
    assert events._SHORT_DIGITS <= 18  # plain digits this long always fit Int64


def outcome(query, body):
    try:
        checked = validate(query, body, False)
        return ("accepted", checked.event_type.id, checked.missing)
    except Rejection as rejection:
        return ("rejected", rejection.reason, rejection.message)


NAMES = st.sampled_from([b"service", b"action", b"eventType", b"partnerId", b"entryId", b"position",
                         b"eventIndex", b"other"])
VALUES = st.sampled_from([b"", b"1", b"99", b"3", b"x", b"1%2E5", b"analytics", b"-2", b"1.5"])


@settings(max_examples=1500, deadline=None)
@given(st.dictionaries(NAMES, VALUES, max_size=4), st.dictionaries(NAMES, VALUES, min_size=1, max_size=6))
def test_json_body_read_as_is_when_the_query_overrides_no_field(query, body):
    merged = {**body, **{k: form_decode(v) for k, v in query.items()}}  # the general rule
    assert outcome(query, body) == outcome({}, merged)
