"""events.check_query / check_json (the shape-rule fast paths) only ever say what validate() says.

Whenever a fast path answers (not None), the general path must accept the same beacon with the same
event type, the same missing fields, the same ks, and the same query once the ks is cut out.
Inputs: the whole bench corpus, then generated beacons built from the fields the rules look at.
"""
import sys
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingestd import events, ks
from ingestd.beacon import BeaconApp
from ingestd.events import Rejection, check_json, check_query, json_params, split_query, validate

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import corpus  # noqa: E402


def general(params: dict, body: dict | None, api: bool, strict: bool):
    """What the general path decides: ("ok", type id, missing) or ("rejected", reason)."""
    try:
        if api:
            BeaconApp._check_service(params, body)
        checked = validate(params, body, strict)
    except Rejection as rejection:
        return ("rejected", rejection.reason)
    return ("ok", checked.event_type.id, checked.missing)


def assert_query_agrees(query: bytes, api: bool, strict: bool) -> bool:
    fast = check_query(query, api, strict)
    if fast is None:
        return False
    event_type, missing, ks_at, parts = fast
    params = split_query(query)
    assert general(params, None, api, strict) == ("ok", event_type.id, list(missing)), query
    if ks_at is None:
        assert b"ks" not in params
    else:
        stripped, value = ks.cut_pair(query, parts, ks_at)
        assert value == params[b"ks"]
        assert stripped == ks.strip_from_query(query)
    return True


def assert_json_agrees(obj: dict, query: bytes, api: bool, strict: bool) -> bool:
    fast = check_json(obj, query, api, strict)
    if fast is None:
        return False
    event_type, missing, raw_ks = fast
    body, texts = json_params(obj)
    assert general(split_query(query), body, api, strict) == ("ok", event_type.id, list(missing)), obj
    assert raw_ks == texts.get("ks")
    return True


def test_the_corpus_takes_the_fast_paths_and_they_agree_with_validate():
    taken = total = 0
    for request in corpus.generate(4000, seed=7):
        path, _, query = request.target.partition("?")
        api = path == "/api_v3/index.php"
        if request.method == "GET":
            total += 1
            for strict in (False, True):
                taken += assert_query_agrees(query.encode(), api, strict) and not strict
        elif request.content_type == "application/json":
            try:
                obj = orjson.loads(request.body)
            except orjson.JSONDecodeError:
                continue
            total += 1
            for strict in (False, True):
                taken += assert_json_agrees(obj, query.encode(), api, strict) and not strict
    assert taken > 0.95 * total  # the point of them: nearly every valid beacon is fast


# -- generated beacons ----------------------------------------------------------------------------------
FIELD_NAMES = ["eventType", "partnerId", "entryId", "flavourId", "sessionId", "eventIndex", "bufferTime",
               "actualBitrate", "preferredBitrate", "position", "socialNetwork", "playbackSpeed", "ks",
               "service", "action", "buttonName", "buttonType", "uiConfId", "other", ""]
NUMBER_VALUES = [b"", b"0", b"1", b"01", b"-1", b"1.5", b"1%2E5", b"%2D2", b".5", b"5.", b"-", b"1e5", b"1+",
                 b"9" * 18, b"9" * 19, b"x"]
TEXT_VALUES = [b"", b"x", b"S0VZ", b"a%26b", b"+", b"%6Bs", b"S0VZS0VZS0VZS0VZS0VZ", b"a=b"]
NUMERIC_NAMES = {"eventIndex", "bufferTime", "actualBitrate", "preferredBitrate", "position", "playbackSpeed",
                 "uiConfId", "partnerId"}


@st.composite
def queries(draw):
    names = draw(st.lists(st.sampled_from(FIELD_NAMES + ["%6Bs", "event%54ype"]), max_size=12))
    if draw(st.booleans()):  # mostly a plausible beacon, with values drawn for the fields checked
        names = ["eventType", "partnerId", "entryId", "service", "action"] + names
    pairs = []
    for name in names:
        if name == "eventType":
            value = draw(st.sampled_from([b"1", b"3", b"22", b"99", b"10002", b"01", b" 3", b"", b"x",
                                                  b"%093", b"3%0A", b"%0D3", b"+3+", b"%203"]))
        elif name in ("service", "action"):
            value = draw(st.sampled_from([b"analytics", b"trackEvent", b"x"]))
        else:
            value = draw(st.sampled_from(NUMBER_VALUES if name in NUMERIC_NAMES else TEXT_VALUES))
        pairs.append(name.encode() + (b"" if draw(st.integers(0, 40)) == 0 else b"=" + value))
    return b"&".join(draw(st.permutations(pairs)))


@settings(max_examples=3000, deadline=None)
@given(queries(), st.booleans(), st.booleans())
def test_check_query_agrees_with_validate(query, api, strict):
    assert_query_agrees(query, api, strict)


@pytest.mark.parametrize("query", [
    b"eventType=3&partnerId=1&entryId=e&flavourId=f&sessionId=s&eventIndex=1&bufferTime=0&actualBitrate=1"
    b"&preferredBitrate=2&ks=S0VZS0VZS0VZS0VZS0VZ&referrer=S0VZS0VZS0VZS0VZS0VZ",  # an echo of the ks
    b"ks=S0VZ&eventType=1&partnerId=1&entryId=e",  # the ks first
    b"eventType=1&partnerId=1&entryId=e&ks=",  # empty, last
    b"eventType=1&xks=1&partnerId=1&ks=S0VZ&entryId=e&ksx=2",  # in the middle, among names ending or starting ks
])
def test_check_query_cuts_the_ks_as_strip_from_query_does(query):
    assert assert_query_agrees(query, False, False)


JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2**64, 2**64), st.sampled_from([0, 1, 3, 99, 10002]),
                        st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(["", "1", "x", "3"]),
                        st.lists(st.integers(0, 3), max_size=2))


@st.composite
def bodies(draw):
    names = draw(st.lists(st.sampled_from(FIELD_NAMES), max_size=12, unique=True))
    obj = {name: draw(JSON_VALUES) for name in names}
    if draw(st.booleans()):  # mostly a plausible beacon: a known type and a partner
        obj.setdefault("eventType", draw(st.sampled_from([1, 3, 22, 99, 10002])))
        obj.setdefault("partnerId", draw(st.integers(-5, 2**63)))
        obj.setdefault("entryId", "e")
    # a round trip, so the values are what orjson.loads gives (ints past 64 bits become floats)
    return orjson.loads(orjson.dumps({k: float(v) if type(v) is int and not -2**63 <= v < 2**64 else v
                                      for k, v in obj.items()}))


@settings(max_examples=3000, deadline=None)
@given(bodies(), st.sampled_from([b"service=analytics&action=trackEvent", b"", b"eventType=3"]),
       st.booleans(), st.booleans())
def test_check_json_agrees_with_validate(obj, query, api, strict):
    assert_json_agrees(obj, query, api, strict)


def test_rule_caches_are_bounded():
    for n in range(events.RULE_CACHE_ENTRIES + 10):
        check_query(b"eventType=1&partnerId=1&entryId=e&n%d=1" % n, False, False)
    assert len(events._SHAPES[False]) <= events.RULE_CACHE_ENTRIES
