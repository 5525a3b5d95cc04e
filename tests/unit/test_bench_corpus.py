"""The benchmark corpus: reproducible, realistic in shape, and its valid/invalid labels agree with the server."""
import sys
from collections import Counter
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import corpus  # noqa: E402
import micro  # noqa: E402


def test_same_seed_same_corpus_other_seed_other_corpus():
    assert corpus.generate(500, seed=7) == corpus.generate(500, seed=7)
    assert corpus.generate(500, seed=7) != corpus.generate(500, seed=8)


def test_corpus_has_the_forms_sessions_and_invalid_share_it_promises():
    requests = corpus.generate(5000, seed=1)
    forms = Counter((r.method, r.target.split("?")[0], r.content_type.split(";")[0]) for r in requests)
    assert forms[("GET", "/api_v3/index.php", "")] > 500
    assert forms[("GET", "/collect", "")] > 100
    assert forms[("POST", "/api_v3/index.php", "application/json")] > 500
    assert forms[("POST", "/api_v3/index.php", "text/plain")] > 50
    types = Counter(r.event_type for r in requests if r.valid)
    assert types[99] > types[3] > 0 and types[1] >= types[2] >= types[3]  # views dominate; funnel narrows
    assert {11, 12, 13, 14, 33, 4, 35}.issubset(types)
    invalid = sum(not r.valid for r in requests) / len(requests)
    assert 0.008 <= invalid <= 0.025
    kinds = Counter(r.invalid_kind for r in requests if not r.valid)
    assert len(kinds) >= 6
    assert len({r.target.split("partnerId=")[1].split("&")[0] for r in requests if "partnerId=" in r.target}) > 20


def test_every_request_gets_the_status_its_label_promises():
    """Through the real protocol and app (no sockets): valid -> 200, invalid -> 400, one line per request."""
    requests = corpus.generate(3000, seed=3)
    bench = micro.Bench(requests)
    try:
        statuses = []
        for raw in bench.raw:
            conn = micro.HttpProtocol(bench.app)
            transport = micro.FakeTransport()
            written = []
            transport.write = written.append
            conn.connection_made(transport)
            conn.data_received(raw)
            bench.loop.run()
            statuses.append(int(b"".join(written).split(b" ", 2)[1]))
        wrong = [(r.invalid_kind, r.target[:120], s) for r, s in zip(requests, statuses) if s != (200 if r.valid else 400)]
        assert wrong == []
    finally:
        bench.close()


def test_instruction_counter_child_runs_the_protocol_stage(capsys):
    import instructions

    instructions.run_stage(requests=200, seed=1, form="get", passes=1)
    beacons = int(capsys.readouterr().out.split()[-1])
    assert 0 < beacons < 200  # the GET part of the 200
