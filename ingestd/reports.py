"""`ingestd report`: load schema/reports/*.sql, run one with bound parameters, render table/csv/json.

A report is one SQL file whose first line is `-- NAME: one-line description` and whose second is
`-- params: …` (the parameters it binds, from PARAMS below). User input reaches ClickHouse only as
server-side bound parameters ({partner:Nullable(Int64)} …), never by string formatting. The SQL
runs on a running server through its admin listener (--admin URL, read-only /query) or on a
database this process opens itself (--clickhouse DSN, the server must not hold it).
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import fcntl
import io
import math
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import orjson

from . import clickhouse, config

REPORTS_DIR = clickhouse.SCHEMA_DIR / "reports"
FORMATS = ("table", "csv", "json")
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
ENTRY_MAX_CHARS = 4096  # far beyond any Kaltura entry id; bounds what a typo can send
LIMIT_MAX = 100_000
ADMIN_TIMEOUT = 120.0  # seconds; the admin listener bounds a query at 60 s itself
# Defaults when --from/--to are absent: everything ClickHouse's DateTime can hold.
FROM_DEFAULT = dt.date(1970, 1, 1)
TO_DEFAULT = dt.date(2105, 12, 31)
# parameter -> the flag that sets it
PARAMS = {"partner": "--partner", "entry": "--entry", "from": "--from", "to": "--to",
          "limit": "--limit", "interval": "--interval"}


@dataclass(frozen=True)
class Report:
    name: str
    description: str
    params: tuple[str, ...]
    sql: str
    vertical: bool = False  # `-- layout: vertical`: one row of many metrics, shown one per line


def parse_report(path: Path) -> Report:
    """A report file: `-- NAME: description`, `-- params: a b c`, optionally `-- layout: vertical`,
    a comment header, one SELECT."""
    text = path.read_text()
    lines = text.splitlines()
    first = lines[0].removeprefix("--").strip() if lines else ""
    name, sep, description = first.partition(":")
    if not sep or name.strip() != path.stem:
        raise ValueError(f"{path}: first line must be '-- {path.stem}: description'")
    params: tuple[str, ...] = ()
    if len(lines) > 1 and lines[1].removeprefix("--").strip().startswith("params:"):
        params = tuple(lines[1].split(":", 1)[1].split())
    unknown = set(params) - PARAMS.keys()
    if unknown:
        raise ValueError(f"{path}: unknown params {sorted(unknown)}")
    vertical = len(lines) > 2 and lines[2].removeprefix("--").strip() == "layout: vertical"
    return Report(path.stem, description.strip(), params, text, vertical)


def available(directory: Path = REPORTS_DIR) -> dict[str, Report]:
    return {p.stem: parse_report(p) for p in sorted(directory.glob("*.sql"))}


# -- arguments ---------------------------------------------------------------------------------------
def _partner(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"partner {text[:40]!r} is not an integer") from None
    if not INT64_MIN <= value <= INT64_MAX:
        raise argparse.ArgumentTypeError("partner is out of the 64-bit integer range")
    return value


def _date(text: str) -> dt.date:
    try:
        value = dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a date (YYYY-MM-DD)") from None
    if not FROM_DEFAULT <= value <= TO_DEFAULT:
        raise argparse.ArgumentTypeError(f"dates must be within {FROM_DEFAULT} … {TO_DEFAULT}")
    return value


def _entry(text: str) -> str:
    if len(text) > ENTRY_MAX_CHARS:
        raise argparse.ArgumentTypeError(f"entry id longer than {ENTRY_MAX_CHARS} characters")
    return text


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"limit {text[:40]!r} is not an integer") from None
    if not 1 <= value <= LIMIT_MAX:
        raise argparse.ArgumentTypeError(f"limit must be within 1 … {LIMIT_MAX}")
    return value


def add_parser(sub) -> None:
    """Register `ingestd report` on the CLI's subparsers."""
    p = sub.add_parser("report", help="run a report (ingestd report --list)",
                       description="Run a report from schema/reports/ with bound parameters "
                                   "(`ingestd report --list` shows them and the flags each takes).")
    p.add_argument("name", nargs="?", help="report name (see --list)")
    p.add_argument("--list", action="store_true", help="list the reports, one line each")
    p.add_argument("--partner", type=_partner, metavar="ID", help="partner id (default: all partners)")
    p.add_argument("--entry", type=_entry, metavar="ID", help="entry id (reports per entry only)")
    p.add_argument("--from", dest="from_", type=_date, metavar="DATE", help="first day, YYYY-MM-DD UTC (default: all)")
    p.add_argument("--to", type=_date, metavar="DATE", help="last day, inclusive, YYYY-MM-DD UTC (default: all)")
    p.add_argument("--interval", choices=("hour", "day"), help="timeline buckets (default day)")
    p.add_argument("--limit", type=_limit, metavar="N", help="rows of ranked reports (default 20)")
    p.add_argument("--format", choices=FORMATS, default="table", help="output format (default table)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--admin", metavar="URL", help="a running server's admin URL, e.g. http://127.0.0.1:9100")
    g.add_argument("--clickhouse", metavar="DSN", help="open this DSN directly (the server must not hold it)")
    p.add_argument("--admin-token", default=None, metavar="TOKEN", help="bearer token for --admin (env INGESTD_ADMIN_TOKEN)")
    p.set_defaults(func=main)


def bind_values(report: Report, args) -> dict:
    """The report's parameters from the flags; a flag the report does not take is an error."""
    given = {"partner": args.partner, "entry": args.entry, "from": args.from_, "to": args.to,
             "limit": args.limit, "interval": args.interval}
    for name, value in given.items():
        if value is not None and name not in report.params:
            raise SystemExit(f"ingestd: report {report.name} does not take {PARAMS[name]} "
                             f"(it takes: {', '.join(PARAMS[p] for p in report.params) or 'nothing'})")
    defaults = {"from": FROM_DEFAULT, "to": TO_DEFAULT, "limit": 20, "interval": "day"}
    values = {name: given[name] if given[name] is not None else defaults.get(name) for name in report.params}
    if values.get("from") and values.get("to") and values["from"] > values["to"]:
        raise SystemExit("ingestd: --from is after --to")
    return values


# -- running -------------------------------------------------------------------------------------------
def escape_param(value) -> str:
    """A parameter as ClickHouse's HTTP interface expects it: escaped text, NULL as \\N."""
    if value is None:
        return "\\N"
    text = str(value)
    for char, escaped in (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r")):
        text = text.replace(char, escaped)
    return text


def run_admin(admin_url: str, sql: str, params: dict, token: str = "") -> dict:
    """Run through a running server's admin /query; the result as parsed JSONCompact."""
    return orjson.loads(admin_request(admin_url, sql, params, "JSONCompact", token))


def admin_request(admin_url: str, sql: str, params: dict, fmt: str, token: str = "") -> bytes:
    """The body of a running server's admin /query in `fmt`. A form-encoded POST, not a GET: SQL and
    parameters of any size fit (a GET's request line stops at 8 KiB); parameters as param_* fields."""
    if "://" not in admin_url:  # --admin 127.0.0.1:9100, as --admin is given to `serve`
        admin_url = "http://" + admin_url
    form = {"query": sql, "default_format": fmt}
    for key, value in params.items():
        form[f"param_{key}"] = escape_param(value)
    request = urllib.request.Request(admin_url.rstrip("/") + "/query", data=urllib.parse.urlencode(form).encode(),
                                     method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=ADMIN_TIMEOUT) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        raise SystemExit(f"ingestd: {exc.code}: {exc.read().decode('utf-8', 'replace').strip()}") from None
    except urllib.error.URLError as exc:
        raise SystemExit(f"ingestd: cannot reach the admin listener at {admin_url}: {exc.reason}") from None


class DatabaseInUse(Exception):
    """The embedded database is held by a running server."""


def held_by_server(dsn: str) -> bool:
    """True when a running process holds the embedded database (its status file is flock'ed)."""
    path = clickhouse.chdb_path(dsn)
    if path is None or not (path / "status").exists():
        return False
    fd = os.open(path / "status", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def run_direct(dsn: str, sql: str, params: dict) -> dict:
    """Run on a database this process opens itself, read-only."""
    if held_by_server(dsn):  # checked first: chDB would print its own error to stderr
        raise DatabaseInUse(dsn)
    try:
        client = clickhouse.connect(dsn)
    except Exception as exc:  # noqa: BLE001 - reported as one line
        text = str(exc)
        raise SystemExit(f"ingestd: cannot open ClickHouse: {text.strip().splitlines()[0] if text.strip() else exc}") \
            from None
    try:
        out = client.raw_query(sql, parameters=params, fmt="JSONCompact", settings={"readonly": 1})
    except Exception as exc:  # noqa: BLE001
        raise SystemExit(f"ingestd: {str(exc).strip().splitlines()[0]}") from None
    finally:
        client.close()
    return orjson.loads(out)


def typed_rows(result: dict) -> tuple[list[str], list[list]]:
    """Column names and rows, with 64-bit integers (quoted in ClickHouse JSON) turned back into ints."""
    names = [col["name"] for col in result["meta"]]
    integer = [col["type"].removeprefix("Nullable(").startswith(("Int", "UInt")) for col in result["meta"]]
    rows = [[int(v) if is_int and v is not None else v for v, is_int in zip(row, integer)]
            for row in result["data"]]
    return names, rows


# -- rendering -----------------------------------------------------------------------------------------
def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):  # the SQL rounds; at most 4 decimals, no trailing zeros
        return f"{value:.4f}".rstrip("0").rstrip(".") if math.isfinite(value) else str(value)
    return str(value)


def render_table(names: list[str], rows: list[list], vertical: bool = False) -> str:
    """Columns aligned for a terminal: numbers right, text left, NULL as '-'; decimals aligned.

    `vertical` (one row of many metrics, like summary) prints one `metric  value` line each.
    """
    if vertical and len(rows) == 1:
        width = max(map(len, names))
        return "".join(f"{name.ljust(width)}  {_cell(value)}\n" for name, value in zip(names, rows[0]))
    cells = [[_cell(v) for v in row] for row in rows]
    numeric = [all(isinstance(row[i], (int, float)) or row[i] is None for row in rows) and rows != []
               for i in range(len(names))]
    for i, is_number in enumerate(numeric):  # pad decimals so the points line up
        if not is_number:
            continue
        decimals = max((len(c[i].partition(".")[2]) for c in cells), default=0)
        for c in cells:
            if c[i] != "-":
                whole, _, frac = c[i].partition(".")
                c[i] = whole + ("." + frac.ljust(decimals, "0") if decimals else "")
    widths = [max([len(n)] + [len(c[i]) for c in cells]) for i, n in enumerate(names)]

    def line(values):
        return "  ".join(v.rjust(w) if numeric[i] else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths))).rstrip()

    out = [line(names), "  ".join("-" * w for w in widths)]
    out += [line(c) for c in cells]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out) + "\n"


def render(names: list[str], rows: list[list], fmt: str, vertical: bool = False) -> str:
    if fmt == "json":
        return orjson.dumps([dict(zip(names, row)) for row in rows], option=orjson.OPT_INDENT_2).decode() + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(names)
        writer.writerows(["" if v is None else v for v in row] for row in rows)
        return buffer.getvalue()
    return render_table(names, rows, vertical)


# -- the command -----------------------------------------------------------------------------------------
def main(args) -> int:
    reports = available()
    if args.list or not args.name:
        width = max(len(n) for n in reports)
        for report in reports.values():
            flags = " ".join(PARAMS[p] for p in report.params)
            print(f"{report.name.ljust(width)}  {report.description}  [{flags}]")
        return 0
    report = reports.get(args.name)
    if report is None:
        raise SystemExit(f"ingestd: no report {args.name!r}: one of {', '.join(reports)}")
    params = bind_values(report, args)
    result = execute(report.sql, params, args)
    names, rows = typed_rows(result)
    sys.stdout.write(render(names, rows, args.format, report.vertical))
    return 0


def execute(sql: str, params: dict, args) -> dict:
    """Through --admin, or --clickhouse; with neither, the configured database, or the running server
    holding it (through the configured admin listener)."""
    token = args.admin_token
    if args.admin:
        return run_admin(args.admin, sql, params, token or _configured().admin_token)
    if args.clickhouse:
        try:
            return run_direct(args.clickhouse, sql, params)
        except DatabaseInUse:
            raise SystemExit("ingestd: the embedded database is in use by a running server: "
                             "use --admin URL to report through it") from None
    settings = _configured()
    try:
        return run_direct(settings.clickhouse, sql, params)
    except DatabaseInUse:
        url = f"http://{settings.admin}"
        print(f"ingestd: the database is held by a running server; asking it at {url}", file=sys.stderr)
        return run_admin(url, sql, params, token or settings.admin_token)


def _configured() -> config.Settings:
    try:
        return config.load({})
    except config.ConfigError as exc:
        raise SystemExit(f"ingestd: invalid configuration: {exc}") from None
