"""The per-request caches are bounded in bytes, not only in entries: the sender chooses how big an entry is."""
import sys
import tracemalloc
from pathlib import Path

import orjson

from conftest import beacon_app
from ingestd import beacon, events
from ingestd.events import check_json, check_query, json_params

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import corpus  # noqa: E402

MiB = 1 << 20


def clear_rule_caches() -> None:
    """Empty the shape and rule caches and their counts (what the caches hold is counted along with them)."""
    events._SHAPES[False].clear()
    events._JSON_RULES.clear()
    events._JSON_KEY_BYTES.clear()
    events._KEPT[:] = [0, 0, 0]


def big_form(i: int, names: int) -> bytes:
    return b"eventType=3&partnerId=1&entryId=e&" + b"&".join(b"n%d_%d=1" % (i, j) for j in range(names))


def test_a_shape_with_thousands_of_names_is_not_cached():
    before = len(events._SHAPES[False]), len(events._JSON_RULES), len(events._JSON_KEY_BYTES)
    for i in range(50):
        assert check_query(big_form(i, 4000), False, False) is None  # validate() decides
        obj = {"eventType": 3, "partnerId": 1, "entryId": "e", **{"n%d_%d" % (i, j): 1 for j in range(3000)}}
        assert check_json(obj, b"", False, False) is None
        json_params({"eventType": 3, ("k%d" % i) * 1000: 1})  # one name of 3+ KiB
    assert (len(events._SHAPES[False]), len(events._JSON_RULES)) == before[:2]
    assert all(len(key) <= events.CACHED_NAME_BYTES for key in events._JSON_KEY_BYTES)


def test_the_corpus_shapes_are_all_cacheable():
    """The bounds sit well above what real players send, so they stay on the fast path."""
    for request in corpus.generate(3000, seed=3):
        path, _, query = request.target.partition("?")
        if request.method == "POST" and request.content_type == "application/json":
            try:
                names = list(orjson.loads(request.body))
            except (orjson.JSONDecodeError, TypeError):
                continue
            assert len(names) <= events.SHAPE_NAMES and sum(map(len, names)) <= events.SHAPE_BYTES - events.SHAPE_NAMES
        else:
            names = [pair.partition("=")[0] for pair in query.split("&")]
            assert len(names) <= events.SHAPE_NAMES and len("&".join(names)) <= events.SHAPE_BYTES


def test_full_rule_caches_stay_small_with_the_largest_shapes_they_keep():
    """Every cache at its entry cap, each entry as large as is cached: tens of MiB, not GiB."""
    clear_rule_caches()
    filler = events.SHAPE_NAMES - 3
    width = (events.SHAPE_BYTES - 40) // filler - 1  # the joined names just under SHAPE_BYTES
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(events.RULE_CACHE_ENTRIES):
            names = [b"%d_%d_" % (i, j) for j in range(filler)]
            names = [n + b"x" * (width - len(n)) for n in names]
            query = b"eventType=3&partnerId=1&entryId=e&" + b"&".join(n + b"=1" for n in names)
            assert check_query(query, False, False) is not None
            obj = {"eventType": 3, "partnerId": 1, "entryId": "e", **{n.decode(): 1 for n in names}}
            assert check_json(obj, b"", False, False) is not None
            json_params(obj)
            del obj
        assert len(events._SHAPES[False]) == len(events._JSON_RULES) == events.RULE_CACHE_ENTRIES
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
        clear_rule_caches()
    assert used < 150 * MiB, used / MiB


def test_rules_per_shape_and_type_tuples_per_json_rule_are_bounded_in_all():
    """One shape keeps a compiled rule per event type sent with it, a JSON rule up to 64 type tuples: both
    are counted across the cache, so cycling types and numeric fields cannot grow it past its bound."""
    numeric = sorted(n.decode() for n in events._NUMERIC_RAW)
    floats = sorted(events._FLOAT_FIELDS)[:6]
    clear_rule_caches()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(400):  # a different set of numeric fields each time: a different pattern per rule
            names = ["eventType", "partnerId", "entryId"] + [n for j, n in enumerate(numeric) if i >> (j % 9) & 1]
            for type_id in events.REGISTRY:
                query = "&".join(f"{n}={type_id if n == 'eventType' else 1}" for n in names + [f"x{i}"])
                check_query(query.encode(), False, False)
            for kinds in range(64):  # each float field as an int or a float
                obj = {"eventType": 3, "partnerId": 1, "entryId": "e", f"x{i}": 1,
                       **{n: (1 if kinds >> j & 1 else 1.5) for j, n in enumerate(floats)}}
                assert check_json(obj, b"", False, False) is not None
        rules = sum(len(shape.rules) for shape in events._SHAPES[False].values() if shape)
        kinds = sum(len(rule[4]) for rule in events._JSON_RULES.values() if rule)
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
        clear_rule_caches()
    assert rules <= events.RULE_CACHE_ENTRIES and kinds <= events.KINDS_KEPT
    assert used < 64 * MiB, used / MiB


def test_ks_cache_keeps_only_ks_values_of_real_size():
    from ingestd.http import Request

    app = beacon_app()
    for i in range(100):
        for size in (200, 7000):
            query = b"eventType=3&partnerId=1&entryId=e&ks=%d" % i + b"A" * size
            app.handle(Request(b"GET", b"/collect", query, {}, b"", "127.0.0.1", 1.0, True))
    assert len(app._ks_seen) == 100
    assert all(len(ks) <= beacon.KS_CACHE_VALUE_BYTES for ks in app._ks_seen)
    assert len(app.spool.pending) == 200
    rows = [orjson.loads(row) for row in app.spool.pending]
    assert all(row[0] == "e" and row[7]["hash"] for row in rows)  # described all the same
