"""Peak RSS while shipping a held backlog, A/B over insert settings: what `make bench`'s collector run
peaks on, without its load phase (run that once, keep the spool, ship copies of it).

    python bench/rss_ship.py backlog DIR [SECONDS]      # `ingestd serve --hold-shipping` + wrk, keep the spool
    python bench/rss_ship.py ship DIR [NAME=JSON ...]   # per variant: a fresh ingestd replays a copy of DIR

A variant is a name and a JSON object of insert settings laid over clickhouse.INSERT_SETTINGS
(`{}`: the settings as committed), optionally with "engine" (server settings for the embedded
engine, passed as chDB connection options), "sql" (statements run after the migrations), "env" (environment for the server process, e.g.
JE_MALLOC_CONF) and "args" (extra `serve` flags). Each variant's server is pinned to CPU 0 like the
collector run, starts on an empty embedded ClickHouse, replays the copy and is stopped once the spool
is empty. Prints per variant: VmHWM (the peak the issue counts), the highest RssAnon and RssFile seen
(sampled every 0.1 s), rows shipped, the insert seconds and rows/s (ingestd_insert_seconds_sum: the
sink's own time, not startup), the server's CPU seconds (start-up included; less sensitive than
rows/s to others using the machine), and analytics.events row count as a check.
Heavy: wrap it in `flock /tmp/ingestd-bench.lock`.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench  # noqa: E402  (the same process accounting, wrk runner and server wrapper)

# `ingestd serve` with the variant's insert settings laid over the committed ones
LAUNCH = ("import json, sys\n"
          "import clickhouse_connect\n"
          "from ingestd import cli, clickhouse\n"
          "variant = json.loads(sys.argv[1])\n"
          "engine = variant.pop('engine', None)\n"
          "if engine:  # server settings of the embedded engine, e.g. background_pool_size\n"
          "    get_client = clickhouse_connect.get_client\n"
          "    clickhouse_connect.get_client = lambda **kw: get_client(chdb_options=engine, **kw)\n"
          "statements = variant.pop('sql', [])\n"
          "if statements:  # run after the migrations, e.g. SYSTEM STOP MERGES (to see what merges cost)\n"
          "    migrate = clickhouse.migrate\n"
          "    def migrate_then(client, *a):\n"
          "        done = migrate(client, *a)\n"
          "        for sql in statements:\n"
          "            client.command(sql)\n"
          "        return done\n"
          "    clickhouse.migrate = migrate_then\n"
          "clickhouse.INSERT_SETTINGS.update(variant)\n"
          "sys.exit(cli.main(sys.argv[2:]))\n")


def make_backlog(out: Path, seconds: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="ingestd-rss-"))
    try:
        import corpus as corpus_mod

        corpus = work / "corpus.tsv"
        corpus.write_text("".join(r.line() + "\n" for r in corpus_mod.generate(bench.REQUESTS, bench.SEED)))
        server = bench.Ingestd(work / "collector", "--hold-shipping")
        try:
            server.wait_ready()
            load = bench.run_wrk(server.port, seconds, corpus, server.proc.pid)
            time.sleep(1.5)  # the open segment seals by age
        finally:
            server.proc.kill()  # no drain: the held spool stays as it is
            server.proc.wait()
        shutil.rmtree(out, ignore_errors=True)
        shutil.move(str(server.dir / "spool"), out)
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        print(f"backlog: {load.requests:,} requests in {seconds} s, {size / 2**20:.0f} MiB in {out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


TRACE = os.environ.get("RSS_TRACE")  # debugging: append "time anon-MiB file-MiB" every 0.1 s
SMAPS = os.environ.get("RSS_SMAPS")  # debugging: keep /proc/PID/smaps from the moment RssFile peaked


class Sampler(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.anon, self.file, self.stop_event = pid, 0.0, 0.0, threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(0.1):
            self.anon = max(self.anon, bench.status_kib([self.pid], "RssAnon") / 1024)
            file = bench.status_kib([self.pid], "RssFile") / 1024
            if file > self.file and SMAPS:  # where the file-backed pages are, at their highest
                try:
                    shutil.copyfile(f"/proc/{self.pid}/smaps", SMAPS)
                except OSError:
                    pass
            self.file = max(self.file, file)
            if TRACE:
                with open(TRACE, "a") as f:
                    f.write(f"{time.monotonic():.2f} {bench.status_kib([self.pid], 'RssAnon') // 1024} {file:.0f}\n")


def ship(backlog: Path, name: str, variant: dict) -> dict:
    env_extra = variant.pop("env", {})
    args = variant.pop("args", [])
    work = Path(tempfile.mkdtemp(prefix="ingestd-rss-"))
    try:
        shutil.copytree(backlog, work / "spool")
        port, admin = bench.free_port(), bench.free_port()
        cmd = ["taskset", "-c", bench.SERVER_CPU, sys.executable, "-c", LAUNCH, json.dumps(variant), "serve",
               "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}",
               "--clickhouse", f"chdb://{work / 'ch'}", "--spool", str(work / "spool"),
               "--spool-max-bytes", "32G", *args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTD_")}
        env.update(PYTHONPATH=str(bench.REPO), **env_extra)
        server = bench.Ingestd.__new__(bench.Ingestd)  # the wrapper's admin/metrics helpers, our own command
        server.dir, server.port, server.admin_port = work, port, admin
        server.log_path = work / "ingestd.log"
        server.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(server.log_path, "w"),
                                       env=env, cwd=work, start_new_session=True)
        sampler = Sampler(server.proc.pid)
        sampler.start()
        try:
            bench.wait_port(admin, 120, server.proc)
            started = time.monotonic()
            m = server.wait_metric(lambda m: m.get("ingestd_spool_segments", 1) == 0
                                   and m.get("ingestd_rows_shipped_total", 0) > 0, 600, "the backlog shipped")
            wall = time.monotonic() - started
            hwm = server.peak_rss_mib()
            cpu = bench.cpu_seconds([server.proc.pid])  # start-up included: the same for every variant
            events = int(server.query("SELECT count() AS n FROM analytics.events")[0]["n"])
        finally:
            sampler.stop_event.set()
            server.stop()
        rows, secs = m["ingestd_rows_shipped_total"], m["ingestd_insert_seconds_sum"]
        return dict(name=name, hwm=hwm, anon=sampler.anon, file=sampler.file, rows=int(rows), insert_s=secs,
                    rate=rows / secs, wall=wall, events=events, cpu=cpu)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "backlog":
        make_backlog(Path(argv[1]).resolve(), int(argv[2]) if len(argv) > 2 else 20)
        return 0
    if len(argv) >= 2 and argv[0] == "ship":
        backlog = Path(argv[1]).resolve()
        variants = [a.split("=", 1) for a in argv[2:]] or [["committed", "{}"]]
        print("| variant | peak RSS (VmHWM) MiB | max anon MiB | max file MiB | rows | insert s | rows/s | CPU s |")
        print("|---|---|---|---|---|---|---|---|")
        for name, text in variants:
            r = ship(backlog, name, json.loads(text))
            print(f"| {r['name']} | {r['hwm']:.0f} | {r['anon']:.0f} | {r['file']:.0f} | {r['rows']:,} "
                  f"(events {r['events']:,}) | {r['insert_s']:.1f} | {r['rate']:,.0f} | {r['cpu']:.1f} |", flush=True)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    raise SystemExit(main(sys.argv[1:]))
