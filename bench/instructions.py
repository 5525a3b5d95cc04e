"""Instructions per beacon of micro.py's protocol stage, counted by valgrind: an A/B measure of hot-path
changes that other processes on a shared machine cannot disturb (wall and CPU time can move ±10 %).

    .venv/bin/python bench/instructions.py                    # the whole corpus mix, ~1 min
    .venv/bin/python bench/instructions.py --form get         # one part of it (get|json|text)

It runs the stage under `valgrind --tool=callgrind` twice, after one warm-up pass: with no measured
pass and with --passes of them; the difference divided by the beacons is the count per beacon. A count
compares two commits; it is not time (it sees no cache misses, nor how many instructions a cycle
retires), so confirm a change with micro.py or make bench. Needs valgrind (Debian package `valgrind`).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import micro  # noqa: E402


def run_stage(requests: int, seed: int, form: str, passes: int) -> None:
    """The child under valgrind: one warm-up pass, then `passes` more."""
    corpus = micro.corpus_mod.generate(requests, seed)
    if form != "all":
        corpus = [r for r in corpus if micro.FORMS[form](r)]
    bench = micro.Bench(corpus)
    try:
        bench.stage_protocol()
        for _ in range(passes):
            bench.stage_protocol()
    finally:
        bench.close()
    print(f"BEACONS {len(corpus)}")


def count(args, passes: int) -> tuple[int, int]:
    """(instructions, beacons per pass) of one valgrind run."""
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__,
           "--child", str(passes), "--requests", str(args.requests), "--seed", str(args.seed), "--form", args.form]
    # a fixed hash seed: with a random one, dict and set layouts (and so the counts) vary by ~0.5 %
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    instructions = int(re.search(r"Collected : (\d+)", done.stderr).group(1))
    beacons = int(re.search(r"BEACONS (\d+)", done.stdout).group(1))
    return instructions, beacons


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--form", choices=("all", *micro.FORMS), default="all")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        run_stage(args.requests, args.seed, args.form, args.child)
        return 0
    if shutil.which("valgrind") is None:
        print("instructions.py: valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    base, beacons = count(args, 0)
    total, _ = count(args, args.passes)
    per_beacon = (total - base) / (args.passes * beacons)
    print(f"{per_beacon:,.0f} instructions per beacon ({args.form}, {beacons} beacons × {args.passes} passes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
