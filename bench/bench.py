"""`make bench`: ingestd against nginx, measured in the same run, under the same pinning and load.

Runs (server pinned to SERVER_CPU, wrk to WRK_CPU, one wrk thread, the corpus of bench/corpus.py):
  nginx        1 worker, `return 200`: the reference ceiling
  nginx-log    the same writing a buffered access log: the log-file collector people use instead
  collector    ingestd, validation + durable spool, shipping held during the load, then shipped and
               counted: rows in analytics.events must equal the 200s wrk counted
  nginx-again  nginx `return 200` once more, right after the collector: how far the reference drifted
               during the run (the ratios stay to the first nginx run, see reference_rate())
  e2e          ingestd with the embedded ClickHouse sink running during the load; freshness by SQL
  rss          (RSS_SECONDS, default 60; 0 skips) e2e for that long: RSS in the last 10 s within 10 % of RSS at
               10-20 s (medians of the 0.5 s samples: merges make single samples swing)
Before each run: the counted access log deleted and `sync` (see settle()).
Prints one table and appends it, with date and git commit, to bench/RESULTS.md.

Knobs (environment): DURATION (20 s), CONNECTIONS (64), WARMUP (3 s), RSS_SECONDS (60), SERVER_ARGS, REQUESTS
(corpus size, 20000), SEED (1), TAIL (1 s of preflights closing each run, see corpus.lua),
ONLY (comma list of runs, e.g. ONLY=nginx,collector), FORMS (get, json or text: one part of the corpus),
RESULTS (file to append to; '-' for none),
NOTE (a line written under the table, e.g. that the machine was shared).
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LUA = HERE / "corpus.lua"
SERVER_CPU = "0"
WRK_CPU = "1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
RSS_LIMIT_MIB = 512
P99_LIMIT_MS = 5.0
RATIO_TARGET = 0.5


def knob(name: str, default, kind=int):
    value = os.environ.get(name)
    return kind(value) if value not in (None, "") else default


DURATION = knob("DURATION", 20)
CONNECTIONS = knob("CONNECTIONS", 64)
WARMUP = knob("WARMUP", 3)
RSS_SECONDS = knob("RSS_SECONDS", 60)
REQUESTS = knob("REQUESTS", 20000)
SEED = knob("SEED", 1)
TAIL = knob("TAIL", 1.0, float)
ONLY = [s for s in os.environ.get("ONLY", "nginx,nginx-log,collector,nginx-again,e2e,rss").split(",") if s]
RESULTS = os.environ.get("RESULTS", str(HERE / "RESULTS.md"))
NOTE = os.environ.get("NOTE", "")
SERVER_ARGS = os.environ.get("SERVER_ARGS", "").split()  # extra `ingestd serve` flags, for A/B of settings
FORMS = os.environ.get("FORMS", "all")  # all, or get / json / text: one part of the corpus (see micro.py)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port} after {timeout}s")


# -- process accounting (/proc) --------------------------------------------------------------------

def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (nginx: master and worker)."""
    pids, i = [pid], 0
    while i < len(pids):
        try:
            with open(f"/proc/{pids[i]}/task/{pids[i]}/children") as f:
                pids += [int(p) for p in f.read().split()]
        except OSError:
            pass
        i += 1
    return pids


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (all threads)
        except OSError:
            pass
    return total / CLK_TCK


def status_kib(pids: list[int], key: str) -> int:
    """Sum of a /proc/PID/status field (VmRSS, VmHWM) in KiB."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


class RssSampler(threading.Thread):
    """RSS of a process tree twice a second: (seconds since start, MiB) samples and the peak."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self.stop_event = threading.Event()
        self.started_at = time.monotonic()

    def run(self) -> None:
        while not self.stop_event.wait(0.5):
            mib = status_kib(process_tree(self.pid), "VmRSS") / 1024
            self.samples.append((time.monotonic() - self.started_at, mib))

    def level(self, start: float, end: float) -> float:
        """The median RSS over [start, end): the level, not the transient merge peaks around it."""
        window = sorted(mib for t, mib in self.samples if start <= t < end)
        return window[len(window) // 2]

    def stop(self) -> None:
        self.stop_event.set()
        self.join()

    def windows(self, seconds: float) -> str:
        """min/median/max of the samples in each `seconds` window: transient peaks vs the level."""
        out, start = [], 0.0
        while True:
            window = sorted(mib for t, mib in self.samples if start <= t < start + seconds)
            if not window:
                return ", ".join(out)
            out.append(f"{start:.0f}-{start + seconds:.0f} s {window[0]:.0f}/{window[len(window) // 2]:.0f}/{window[-1]:.0f}")
            start += seconds


# -- wrk -------------------------------------------------------------------------------------------

@dataclass
class Load:
    """What one wrk run measured."""

    seconds: float
    requests: int
    status: dict[int, int]
    sent_valid: int
    sent_invalid: int
    latency_us: dict[str, float]
    errors: dict[str, int]
    wrk_cpu: float  # share of its CPU wrk used
    server_cpu: float = 0.0  # share of its CPU the server used
    server_cpu_s: float = 0.0

    @property
    def beacons(self) -> int:
        return self.sent_valid + self.sent_invalid

    @property
    def rate(self) -> float:
        """Beacons answered per second; the closing preflights are not counted."""
        return self.beacons / (self.seconds - TAIL)

    def add(self, other: "Load") -> None:
        for code, k in other.status.items():
            self.status[code] = self.status.get(code, 0) + k


def run_wrk(port: int, seconds: int, corpus: Path, server_pid: int | None = None) -> Load:
    cmd = ["taskset", "-c", WRK_CPU, "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "10s",
           "-s", str(LUA), f"http://127.0.0.1:{port}", "--", str(corpus), str(seconds), str(TAIL)]
    pids = process_tree(server_pid) if server_pid else []
    cpu0 = cpu_seconds(pids)
    # the server's CPU time is read when the closing preflights start: it is the beacons' cost
    at_tail: list[float] = []
    tail_timer = threading.Timer(seconds - TAIL, lambda: at_tail.append(cpu_seconds(pids)))
    with tempfile.TemporaryFile("w+") as out:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
        tail_timer.start()
        _, status, usage = os.wait4(proc.pid, 0)  # wait4: wrk's own CPU time (taskset execs it)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - started
        tail_timer.join()
        server_cpu_s = (at_tail[0] if at_tail else cpu_seconds(pids)) - cpu0
        out.seek(0)
        text = out.read()
    line = next((ln for ln in text.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{text}")
    data = json.loads(line[len("BENCH_JSON "):])
    return Load(
        seconds=seconds, requests=data["requests"], status={int(k): v for k, v in data["status"].items()},
        sent_valid=data["sent_valid"], sent_invalid=data["sent_invalid"], latency_us=data["latency_us"],
        errors=data["errors"], wrk_cpu=(usage.ru_utime + usage.ru_stime) / wall,
        server_cpu=server_cpu_s / (seconds - TAIL), server_cpu_s=server_cpu_s,
    )


# -- results -----------------------------------------------------------------------------------------

@dataclass
class Row:
    name: str
    load: Load
    rss_peak_mib: float = 0.0
    landed: str = "-"
    non2xx: int = 0
    notes: list[str] = field(default_factory=list)
    ok: bool = True


def ms(us: float) -> str:
    return f"{us / 1000:.2f}"


def reference_rate(rows: list[Row]) -> float | None:
    """The rate of the first nginx `return 200` run, taken on a settled machine before any ingestd run.
    nginx-again is not averaged in: it ran slower than the first run in 7 of 10 runs with the collector
    just before it, so it could be what the collector left behind, and an average would flatter ingestd."""
    return next((r.load.rate for r in rows if r.name == "nginx"), None)


def table(rows: list[Row]) -> str:
    ref = reference_rate(rows)
    head = ("| run | req/s | × nginx | p50 ms | p99 ms | p99.9 ms | non-2xx (valid) | events landed | peak RSS MiB "
            "| server CPU | CPU µs/req | wrk CPU |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        load = r.load
        ratio = f"{load.rate / ref:.2f}" if ref else "-"
        lines.append(
            f"| {r.name} | {load.rate:,.0f} | {ratio} | {ms(load.latency_us['p50'])} | {ms(load.latency_us['p99'])} "
            f"| {ms(load.latency_us['p999'])} | {r.non2xx} | {r.landed} | {r.rss_peak_mib:.0f} "
            f"| {100 * load.server_cpu:.0f} % | {1e6 * load.server_cpu_s / max(1, load.beacons):.1f} "
            f"| {100 * load.wrk_cpu:.0f} % |"
        )
    return "\n".join(lines)


def git_commit() -> str:
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    # the results file itself does not make the code dirty: a second run would say so of the first's table
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/RESULTS.md")
    return commit + ("+dirty" if changed else "")


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} × {model}"


# -- nginx ---------------------------------------------------------------------------------------------

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 4096; }}
http {{
  {access_log}
  keepalive_requests 1000000;
  keepalive_timeout 60s;
  server {{
    listen 127.0.0.1:{port};
    location / {{ return 200; }}
  }}
}}
"""


def run_nginx(name: str, corpus: Path, work: Path, log_to_file: bool) -> Row:
    settle()
    d = work / name
    d.mkdir()
    port = free_port()
    access_log = (f"access_log {d}/access.log combined buffer=64k flush=1s;" if log_to_file else "access_log off;")
    (d / "nginx.conf").write_text(NGINX_CONF.format(dir=d, port=port, access_log=access_log))
    proc = subprocess.Popen(["taskset", "-c", SERVER_CPU, "nginx", "-c", str(d / "nginx.conf"), "-p", str(d)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_port(port, 10, proc)
        if WARMUP:
            run_wrk(port, WARMUP, corpus, proc.pid)
        sampler = RssSampler(proc.pid)
        sampler.start()
        load = run_wrk(port, DURATION, corpus, proc.pid)
        sampler.stop()
        peak = status_kib(process_tree(proc.pid), "VmHWM") / 1024
    finally:
        proc.send_signal(signal.SIGQUIT)  # graceful: flushes the access log buffer
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    row = Row(name, load, rss_peak_mib=peak, non2xx=sum(k for c, k in load.status.items() if not 200 <= c < 300))
    if log_to_file:
        log_file = d / "access.log"
        lines = sum(1 for _ in open(log_file, "rb")) if log_file.exists() else 0
        row.landed = f"{lines:,} log lines"
        row.notes.append(f"{name}: access log {log_file.stat().st_size / 2**20:.0f} MiB, {lines:,} lines "
                         "(warm-up included; query strings only: POST bodies are not logged)")
        log_file.unlink(missing_ok=True)  # counted: its GB of dirty pages must not be written back in the next run
    return row


def settle() -> None:
    """Called as each run starts: write back what the previous runs left dirty (an access log, a spool, the engine's
    parts). Else the kernel flushes it ~30 s later, in the next run's timed window, taking CPU from it."""
    started = time.monotonic()
    os.sync()
    log(f"settled: sync took {time.monotonic() - started:.1f} s")


# -- ingestd --------------------------------------------------------------------------------------------

class Ingestd:
    """`ingestd serve` pinned to SERVER_CPU with a fresh embedded ClickHouse under `directory`."""

    def __init__(self, directory: Path, *extra: str):
        self.dir = directory
        self.dir.mkdir()
        self.port, self.admin_port = free_port(), free_port()
        cmd = ["taskset", "-c", SERVER_CPU, sys.executable, "-m", "ingestd", "serve",
               "--listen", f"127.0.0.1:{self.port}", "--admin", f"127.0.0.1:{self.admin_port}",
               "--clickhouse", f"chdb://{self.dir / 'ch'}", "--spool", str(self.dir / "spool"),
               # the held collector run spools ~1 GB per 20 s: keep the 503 backpressure out of the way
               "--spool-max-bytes", "32G", *extra, *SERVER_ARGS]
        env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTD_")}
        env["PYTHONPATH"] = str(REPO)
        self.log_path = self.dir / "ingestd.log"
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(self.log_path, "w"),
                                     env=env, cwd=self.dir, start_new_session=True)

    def wait_ready(self) -> None:
        wait_port(self.port, 60, self.proc)
        self.wait_metric(lambda m: m.get("ingestd_clickhouse_connected", 0) >= 1, 120, "ClickHouse connected")

    def admin(self, path: str, method: str = "GET") -> bytes:
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}{path}", method=method,
                                     data=b"" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=120) as response:
            return response.read()

    def metrics(self) -> dict[str, float]:
        out = {}
        for line in self.admin("/metrics").decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def wait_metric(self, predicate, timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ingestd exited ({self.proc.returncode}):\n{self.log_path.read_text()[-3000:]}")
            m = self.metrics()
            if predicate(m):
                return m
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.2)

    def wait_shipped(self, timeout: float = 300) -> float:
        """Wait until the spool is empty (the open segment seals within a second); return the seconds taken."""
        started = time.monotonic()
        time.sleep(0.3)
        self.wait_metric(lambda m: m.get("ingestd_spool_bytes", 1) == 0 and m.get("ingestd_spool_segments", 1) == 0,
                         timeout, "the spool to be shipped")
        return time.monotonic() - started

    def query(self, sql: str) -> list[dict]:
        q = urllib.parse.urlencode({"query": sql, "default_format": "JSONEachRow"})
        return [json.loads(line) for line in self.admin("/query?" + q).decode().splitlines() if line.strip()]

    def peak_rss_mib(self) -> float:
        return status_kib([self.proc.pid], "VmHWM") / 1024

    def rss_note(self) -> str:
        """How today's RSS splits: anonymous memory vs file-backed pages (mostly chDB's mapped code)."""
        anon, file = (status_kib([self.proc.pid], key) / 1024 for key in ("RssAnon", "RssFile"))
        return f"RSS now {anon + file:.0f} MiB: {anon:.0f} anonymous + {file:.0f} file-backed (the engine's code)"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def check_landed(server: Ingestd, total: Load, row: Row) -> None:
    """Every 200 counted by wrk is a row in analytics.events; every 400 one in analytics.rejected_events."""
    events = int(server.query("SELECT count() AS n FROM analytics.events")[0]["n"])
    rejected = int(server.query("SELECT count() AS n FROM analytics.rejected_events")[0]["n"])
    ok200, bad400 = total.status.get(200, 0), total.status.get(400, 0)
    row.landed = f"{events:,} = {ok200:,} 200s" if events == ok200 else f"{events:,} ≠ {ok200:,} 200s"
    row.ok = events == ok200 and rejected == bad400
    row.notes.append(
        f"{row.name}: analytics.events {events:,} rows, 200s counted {ok200:,} ({'equal' if events == ok200 else 'DIFFERENT'}); "
        f"analytics.rejected_events {rejected:,} rows, 400s counted {bad400:,} ({'equal' if rejected == bad400 else 'DIFFERENT'}) "
        "(warm-up included)"
    )


def beacon_checks(row: Row, load: Load) -> None:
    """Valid beacons must all get 2xx; invalid ones 400 (the corpus knows which is which)."""
    ok2xx = sum(k for c, k in load.status.items() if 200 <= c < 300 and c != 204)  # 204: the closing preflights
    row.non2xx = load.sent_valid - min(load.sent_valid, ok2xx)
    others = {c: k for c, k in load.status.items() if c not in (200, 204, 400)}
    if others or load.status.get(400, 0) != load.sent_invalid or row.non2xx:
        row.ok = False
    row.notes.append(f"{row.name}: sent {load.sent_valid:,} valid + {load.sent_invalid:,} invalid beacons; "
                     f"statuses {dict(sorted(load.status.items()))}; wrk errors {load.errors}")


def run_collector(corpus: Path, work: Path) -> Row:
    settle()
    server = Ingestd(work / "collector", "--hold-shipping")
    try:
        server.wait_ready()
        warm = run_wrk(server.port, WARMUP, corpus, server.proc.pid) if WARMUP else None
        sampler = RssSampler(server.proc.pid)
        sampler.start()
        load = run_wrk(server.port, DURATION, corpus, server.proc.pid)
        sampler.stop()
        metrics = server.metrics()
        spooled = metrics.get("ingestd_spool_bytes", 0)
        commits = metrics.get("ingestd_spool_commits_total", 0)
        server.admin("/ship?action=resume", "POST")
        ship_s = server.wait_shipped()
        row = Row("ingestd collector", load)
        beacon_checks(row, load)
        total = Load(0, 0, dict(load.status), 0, 0, {}, {}, 0)
        if warm:
            total.add(warm)
        check_landed(server, total, row)
        rows = sum(total.status.get(c, 0) for c in (200, 400))
        row.notes.append(f"{row.name}: shipping held during the load ({spooled / 2**20:.0f} MiB spooled), then "
                         f"{rows:,} rows shipped into the embedded ClickHouse in {ship_s:.1f} s "
                         f"({rows / ship_s:,.0f} rows/s)")
        if commits:  # the group commit's batch: what the per-iteration costs are shared by
            row.notes.append(f"{row.name}: {rows / commits:.1f} rows per spool write "
                             f"(one write(2) per loop iteration; warm-up included)")
        row.rss_peak_mib = server.peak_rss_mib()
        row.notes.append(f"{row.name}: {server.rss_note()}")
        row.notes.append(f"{row.name}: RSS during the load {sampler.samples[0][1]:.0f} → {max(s for _, s in sampler.samples):.0f} MiB; "
                         f"peak {row.rss_peak_mib:.0f} MiB includes shipping")
        return row
    finally:
        server.stop()


def run_e2e(corpus: Path, work: Path, seconds: int, name: str) -> tuple[Row, RssSampler]:
    settle()
    server = Ingestd(work / name.replace(" ", "-"))
    try:
        server.wait_ready()
        warm = run_wrk(server.port, WARMUP, corpus, server.proc.pid) if WARMUP else None
        started_ms = int(time.time() * 1000)
        sampler = RssSampler(server.proc.pid)
        sampler.start()
        load = run_wrk(server.port, seconds, corpus, server.proc.pid)
        sampler.stop()
        backlog = server.metrics().get("ingestd_spool_bytes", 0)
        drain_s = server.wait_shipped()
        row = Row(name, load)
        beacon_checks(row, load)
        total = Load(0, 0, dict(load.status), 0, 0, {}, {}, 0)
        if warm:
            total.add(warm)
        check_landed(server, total, row)
        fresh = server.query(
            "SELECT quantiles(0.5, 0.99)(toUnixTimestamp64Milli(inserted_at) - toUnixTimestamp64Milli(received_at)) AS q,"
            " max(toUnixTimestamp64Milli(inserted_at) - toUnixTimestamp64Milli(received_at)) AS mx, count() AS n"
            f" FROM analytics.events WHERE received_at >= fromUnixTimestamp64Milli({started_ms})"
        )[0]
        p50, p99 = fresh["q"]
        row.freshness = (p50, p99, fresh["mx"])  # type: ignore[attr-defined]
        row.notes.append(f"{name}: freshness (inserted_at - received_at) over {int(fresh['n']):,} rows of the timed "
                         f"window: p50 {p50 / 1000:.2f} s, p99 {p99 / 1000:.2f} s, max {fresh['mx'] / 1000:.2f} s; "
                         f"spool backlog at the end of the load {backlog / 2**20:.1f} MiB, drained in {drain_s:.1f} s")
        row.rss_peak_mib = server.peak_rss_mib()
        row.notes.append(f"{name}: {server.rss_note()}")
        return row, sampler
    finally:
        server.stop()


# -- main --------------------------------------------------------------------------------------------------

def main() -> int:
    for tool in ("wrk", "nginx", "taskset"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} not found (bench/run.sh installs it)", file=sys.stderr)
            return 2
    load_before = os.getloadavg()
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="ingestd-bench-"))
    rows: list[Row] = []
    extra: list[str] = []
    try:
        corpus = work / "corpus.tsv"
        sys.path.insert(0, str(HERE))
        import corpus as corpus_mod

        requests = corpus_mod.generate(REQUESTS, SEED)
        if FORMS != "all":
            from micro import FORMS as FORM_FILTERS

            requests = [r for r in requests if FORM_FILTERS[FORMS](r)]
        corpus.write_text("".join(r.line() + "\n" for r in requests), encoding="utf-8")
        log(corpus_mod.summary(requests).splitlines()[0])
        if "nginx" in ONLY:
            log("nginx return 200")
            rows.append(run_nginx("nginx", corpus, work, log_to_file=False))
        if "nginx-log" in ONLY:
            log("nginx with a buffered access log")
            rows.append(run_nginx("nginx-log", corpus, work, log_to_file=True))
        if "collector" in ONLY:
            log("ingestd collector (shipping held)")
            rows.append(run_collector(corpus, work))
        if "nginx-again" in ONLY:
            log("nginx return 200 again (the reference after the collector)")
            rows.append(run_nginx("nginx-again", corpus, work, log_to_file=False))
        if "e2e" in ONLY:
            log("ingestd end to end")
            row, _ = run_e2e(corpus, work, DURATION, "ingestd end to end")
            rows.append(row)
        if "rss" in ONLY and RSS_SECONDS:
            log(f"ingestd end to end for {RSS_SECONDS} s (RSS growth)")
            row, sampler = run_e2e(corpus, work, RSS_SECONDS, f"ingestd e2e {RSS_SECONDS}s")
            # medians of 10 s: single samples swing ±50 MiB with the engine's background merges
            at20 = sampler.level(10, 20)
            end = sampler.level(RSS_SECONDS - 10, RSS_SECONDS)
            growth_ok = end <= at20 * 1.10
            row.ok = row.ok and growth_ok
            extra.append(f"RSS growth over {RSS_SECONDS} s of end-to-end load (median of 10 s): {at20:.0f} MiB at 10-20 s, "
                         f"{end:.0f} MiB in the last 10 s ({100 * (end / at20 - 1):+.1f} %; limit +10 %): "
                         f"{'ok' if growth_ok else 'GROWING'}")
            row.notes.append(f"{row.name}: RSS per 10 s window (min/median/max MiB): " + sampler.windows(10))
            rows.append(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    by_name = {r.name: r for r in rows}
    summary = []
    ref = reference_rate(rows)
    coll = by_name.get("ingestd collector")
    e2e = by_name.get("ingestd end to end")
    if ref and coll:
        ratio = coll.load.rate / ref
        p99 = coll.load.latency_us["p99"] / 1000
        summary.append(f"collector: {ratio:.2f}× nginx return 200 (target ≥ {RATIO_TARGET}), p99 {p99:.2f} ms "
                       f"(limit {P99_LIMIT_MS}): {'ok' if ratio >= RATIO_TARGET and p99 <= P99_LIMIT_MS else 'MISSED'}")
        again = by_name.get("nginx-again")
        if again:
            summary.append(f"the reference drifted: nginx again after the collector {again.load.rate:,.0f} req/s, "
                           f"{again.load.rate / ref:.2f}× the first run")
    if coll and e2e:
        summary.append(f"end to end keeps {100 * e2e.load.rate / coll.load.rate:.0f} % of the collector rate "
                       "(the embedded ClickHouse shares the server's CPU)")
    if e2e and hasattr(e2e, "freshness"):
        p50, p99, _ = e2e.freshness
        summary.append(f"freshness p50 {p50 / 1000:.2f} s, p99 {p99 / 1000:.2f} s (limit 2 s): "
                       f"{'ok' if p99 <= 2000 else 'MISSED'}")
    peak = max((r.rss_peak_mib for r in rows if r.name.startswith("ingestd")), default=0)
    if peak:
        summary.append(f"ingestd peak RSS {peak:.0f} MiB incl. the embedded engine (limit {RSS_LIMIT_MIB}): "
                       f"{'ok' if peak <= RSS_LIMIT_MIB else 'OVER'}")
    summary += extra
    failed = [r.name for r in rows if not r.ok]
    summary.append("count and status checks: " + ("all ok" if not failed else "FAILED for " + ", ".join(failed)))

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_after = os.getloadavg()
    text = [
        f"## {now} · commit {git_commit()}",
        "",
        f"`make bench` DURATION={DURATION} CONNECTIONS={CONNECTIONS} WARMUP={WARMUP} corpus {REQUESTS} requests "
        f"seed {SEED}{'' if FORMS == 'all' else f' (FORMS={FORMS} only)'}; server on CPU {SERVER_CPU}, wrk (1 thread) on CPU {WRK_CPU}; {machine()}; "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; {time.monotonic() - started:.0f} s",
        "",
        table(rows),
        "",
        *[f"- {s}" for s in summary],
        *[f"- {n}" for r in rows for n in r.notes],
    ]
    if NOTE:
        text += ["", NOTE]
    text += ["", "req/s counts beacons answered (valid and invalid), not the closing preflights; × nginx is to the first "
             "nginx `return 200` run; latency is wrk's, "
             "over every request; server CPU is the share of its one pinned CPU and CPU µs/req the server's CPU time per beacon, both "
             "over the beacon part of the run (up to the closing preflights); wrk CPU near 100 % means the load generator, not the server, set the pace.", ""]
    report = "\n".join(text)
    print(report)
    if RESULTS != "-":
        with open(RESULTS, "a", encoding="utf-8") as f:
            f.write("\n" + report)
        log(f"appended to {RESULTS}")
    return 0 if not failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
