"""Profile the ingestd collector under the benchmark's load with py-spy: top functions by own time.

    .venv/bin/pip install py-spy
    .venv/bin/python bench/pyspy_top.py [SECONDS]      # default 10; CONNECTIONS as in bench.py

Starts ingestd (shipping held) pinned like `make bench`, drives it with wrk and the corpus, samples it
with py-spy (idle threads excluded) and prints the functions where the samples landed ("self") and the
ones they passed through ("total"), as shares of all samples.
"""
from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench  # noqa: E402
import corpus as corpus_mod  # noqa: E402


def main() -> int:
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    work = Path(tempfile.mkdtemp(prefix="ingestd-profile-"))
    server = None
    try:
        corpus = work / "corpus.tsv"
        corpus.write_text("".join(r.line() + "\n" for r in corpus_mod.generate(bench.REQUESTS, bench.SEED)))
        server = bench.Ingestd(work / "ingestd", "--hold-shipping")
        server.wait_ready()
        bench.run_wrk(server.port, 2, corpus, server.proc.pid)  # warm up
        raw = work / "profile.txt"
        load = threading.Thread(target=lambda: bench.run_wrk(server.port, seconds + 2, corpus, server.proc.pid))
        load.start()
        subprocess.run([py_spy, "record", "--pid", str(server.proc.pid), "--duration", str(seconds),
                        "--rate", "250", "--format", "raw", "--output", str(raw), "--nonblocking"],
                       check=True, capture_output=True)
        load.join()
        own, through, total = collections.Counter(), collections.Counter(), 0
        for line in raw.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")"
                      if " (" in f else f for f in stack.split(";")]
            n = int(count)
            total += n
            own[frames[-1]] += n
            for frame in set(frames):
                through[frame] += n
        print(f"{total} samples over {seconds} s")
        print("self:")
        for frame, n in own.most_common(15):
            print(f"  {100 * n / total:5.1f} %  {frame}")
        print("total:")
        for frame, n in through.most_common(25):
            print(f"  {100 * n / total:5.1f} %  {frame}")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("WARMUP", "2")
    raise SystemExit(main())
