"""Micro-benchmark of the per-request path, no sockets: ns per beacon, for quick A/B of hot-path changes.

    .venv/bin/python bench/micro.py                # all stages, best of 5 passes over the corpus
    .venv/bin/python bench/micro.py --profile      # cProfile of the protocol stage, top functions

Stages (each includes the ones above it):
  validate  events.split_query + events.validate (+ json_params for JSON) of the corpus beacons
  app       BeaconApp.handle: routing, validation, the spool row (orjson) and its ticket; a group
            commit every PIPELINE requests (the spool's write(2) to a temp directory is included)
  protocol  HttpProtocol.data_received on the raw request bytes: httptools parsing, the callbacks,
            the app, the rendered responses written to a fake transport
The corpus is bench/corpus.py's (seeded); the server's event loop is replaced by a list of callbacks.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import orjson  # noqa: E402

import corpus as corpus_mod  # noqa: E402
from ingestd.beacon import BeaconApp  # noqa: E402
from ingestd.events import Rejection, json_params, split_query, validate  # noqa: E402
from ingestd.http import HttpProtocol  # noqa: E402
from ingestd.metrics import Metrics  # noqa: E402
from ingestd.spool import Spool  # noqa: E402

FORMS = {
    "get": lambda r: r.method == "GET",
    "json": lambda r: r.content_type == "application/json",
    "text": lambda r: r.content_type.startswith("text/plain"),
}
PIPELINE = 64  # requests per simulated loop iteration (= wrk connections each with one request in flight)


class FakeLoop:
    """Just enough of an event loop for BeaconApp: call_soon queues, run() drains."""

    def __init__(self):
        self.callbacks = []

    def call_soon(self, callback, *args):
        self.callbacks.append((callback, args))

    def run(self):
        callbacks, self.callbacks = self.callbacks, []
        for callback, args in callbacks:
            callback(*args)


class FakeTransport:
    """Counts what the protocol writes."""

    def __init__(self):
        self.written = 0
        self.closed = False

    def write(self, data):
        self.written += len(data)

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self):
        return self.closed

    def close(self):
        self.closed = True

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


def raw_request(r: corpus_mod.Request) -> bytes:
    body = r.body.encode()
    head = [f"{r.method} {r.target} HTTP/1.1", "Host: 127.0.0.1:8080", f"User-Agent: {r.user_agent}"]
    if r.content_type:
        head.append(f"Content-Type: {r.content_type}")
    if body:
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class Bench:
    def __init__(self, requests: list[corpus_mod.Request]):
        self.requests = requests
        self.tmp = Path(tempfile.mkdtemp(prefix="ingestd-micro-"))
        self.spool = Spool(self.tmp, segment_max_bytes=8 << 20, max_bytes=1 << 50,
                           on_sealed=lambda path: path.unlink())
        self.loop = FakeLoop()
        self.app = BeaconApp(self.spool, Metrics(), self.loop)
        self.raw = [raw_request(r) for r in requests]
        self.parsed = []
        for r in requests:
            path, _, query = r.target.partition("?")
            self.parsed.append((r.method, path.encode(), query.encode(), r.content_type, r.body.encode()))

    def close(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- stages: each returns the number of beacons it handled -----------------------------------------
    def stage_validate(self) -> int:
        for method, _path, query, ctype, body in self.parsed:
            try:
                if method == "POST" and ctype == "application/json":
                    params, extra = split_query(query), json_params(orjson.loads(body))[0]
                elif method == "POST":
                    params, extra = split_query(query + b"&" + body), None
                else:
                    params, extra = split_query(query), None
                validate(params, extra, False)
            except (Rejection, orjson.JSONDecodeError):
                pass
        return len(self.parsed)

    def stage_protocol(self) -> int:
        conns = []
        for _ in range(PIPELINE):
            conn = HttpProtocol(self.app)
            conn.connection_made(FakeTransport())
            conns.append(conn)
        raw, loop = self.raw, self.loop
        for i in range(0, len(raw), PIPELINE):
            for conn, data in zip(conns, raw[i:i + PIPELINE]):
                conn.data_received(data)
            loop.run()  # the group commit, then the replies
        for conn in conns:
            conn.connection_lost(None)
        return len(raw)

    def stage_app(self) -> int:
        """The app without the protocol: requests prebuilt the way the protocol builds them."""
        conn = HttpProtocol(self.app)
        conn.connection_made(FakeTransport())
        requests = []
        for data in self.raw:  # capture the protocol's own request objects once
            captured = []
            real = self.app.handle
            self.app.handle = lambda request, captured=captured: captured.append(request) or real(request)
            conn.data_received(data)
            self.app.handle = real
            requests.append(captured[0])
        self.loop.run()
        handle, loop = self.app.handle, self.loop
        self._app_requests = requests
        for i in range(0, len(requests), PIPELINE):
            for request in requests[i:i + PIPELINE]:
                handle(request)
            loop.run()
        return len(requests)

    def stage_app_only(self) -> int:
        handle, loop, requests = self.app.handle, self.loop, self._app_requests
        for i in range(0, len(requests), PIPELINE):
            for request in requests[i:i + PIPELINE]:
                handle(request)
            loop.run()
        return len(requests)


def measure(fn, repeats: int) -> tuple[float, float]:
    """(best, median) ns per beacon over `repeats` passes."""
    times = []
    for _ in range(repeats):
        started = time.thread_time_ns()  # CPU time: other processes on a shared machine do not count
        n = fn()
        times.append((time.thread_time_ns() - started) / n)
    return min(times), statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--stages", default="validate,app,protocol")
    parser.add_argument("--profile", action="store_true", help="cProfile the protocol stage instead")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--form", choices=("all", "get", "json", "text"), default="all",
                        help="only the GET, the POST+JSON or the POST text/plain beacons of the corpus")
    args = parser.parse_args(argv)

    requests = corpus_mod.generate(args.requests, args.seed)
    if args.form != "all":
        requests = [r for r in requests if FORMS[args.form](r)]
    bench = Bench(requests)
    try:
        if args.profile:
            bench.stage_protocol()  # warm
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(args.repeats):
                bench.stage_protocol()
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(args.top)
            print(out.getvalue())
            return 0
        stages = args.stages.split(",")
        if "app" in stages:
            bench.stage_app()  # builds the request objects
        print(f"{len(bench.requests)} corpus requests, best/median of {args.repeats} passes, "
              f"group commit every {PIPELINE}")
        for stage in stages:
            fn = getattr(bench, "stage_app_only" if stage == "app" else f"stage_{stage}")
            fn()  # warm
            best, median = measure(fn, args.repeats)
            print(f"  {stage:<9} {best:8.0f} ns/op   (median {median:.0f})")
    finally:
        bench.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
