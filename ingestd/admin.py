"""The admin listener: /healthz, /readyz, /metrics, /query (read-only SQL), /ship (hold or resume).

Never on the beacon port. /query runs on its own ClickHouse client in a worker thread, because the
embedded engine is single-process: while the server runs, this is how tools read its database.
"""
from __future__ import annotations

import hmac
import logging
import re
import threading
from urllib.parse import parse_qsl

from . import clickhouse
from .http import Response, Ticket, error_response

log = logging.getLogger("ingestd.admin")

READY_BACKLOG_SEGMENTS = 10  # more sealed segments than this waiting to ship = still replaying
QUERY_TIMEOUT = 60.0  # seconds one /query may run
# Statements /query refuses before ClickHouse sees them (readonly=1 refuses them again).
_WRITE_STATEMENT = re.compile(
    r"(INSERT|ALTER|DROP|CREATE|SYSTEM|TRUNCATE|DELETE|UPDATE|RENAME|OPTIMIZE|ATTACH|DETACH|GRANT|REVOKE|KILL"
    r"|SET|USE|BACKUP|RESTORE|UNDROP)\b",
    re.IGNORECASE,
)
# Read-only still lets chDB write a result file (readonly=1 does not cover it). Comments may sit
# between INTO and OUTFILE, but a keyword cannot be split or quoted: the word is refused anywhere,
# even inside a string or a name (a rare false positive).
_OUTFILE = re.compile(r"OUTFILE", re.IGNORECASE)
_TEXT = b"text/plain; charset=utf-8"
_FORM = b"application/x-www-form-urlencoded"
_OPEN_PATHS = (b"/healthz", b"/readyz")  # probes need no token: they reveal nothing
_HEAD_NOT_ALLOWED = Response(405, headers=b"allow: GET, POST\r\n", cors=False)
_SHUTTING_DOWN = Response(503, b"shutting down\n", close=True, cors=False)
_FORMAT_CLAUSE = re.compile(r"\s+FORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)


def split_format(sql: str, default: str) -> tuple[str, str]:
    """SQL without a trailing FORMAT clause, and the format it named (clickhouse-connect adds its own)."""
    match = _FORMAT_CLAUSE.search(sql)
    if match:
        return sql[: match.start()], match.group(1)
    return sql.rstrip().rstrip(";"), default


_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "0": "\0", "b": "\b", "f": "\f"}


def unescape_param(text: str) -> str | None:
    """A param_* value as ClickHouse's HTTP interface reads it: escaped text, \\N alone is NULL."""
    if text == "\\N":
        return None
    if "\\" not in text:
        return text
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), text, flags=re.DOTALL)


def skip_comments(sql: str) -> str:
    """`sql` from its first token: leading whitespace and comments skipped as ClickHouse's lexer
    does (`--` and `#` to the end of the line, `/* */` nested), so no comment hides a statement."""
    i, n = 0, len(sql)
    while i < n:
        if sql[i].isspace():
            i += 1
        elif sql.startswith(("--", "#"), i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif sql.startswith("/*", i):
            depth = 0
            while i < n:
                if sql.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif sql.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                    if depth == 0:
                        break
                else:
                    i += 1
        else:
            break
    return sql[i:]


def refuse_reason(sql: str) -> str | None:
    """Why /query refuses `sql`, or None when it may run (read-only statements only)."""
    if _OUTFILE.search(sql):
        return "read-only: OUTFILE is not allowed on /query (refused wherever the word appears)"
    stripped = skip_comments(sql)
    match = _WRITE_STATEMENT.match(stripped)
    if match:
        return f"read-only: {match.group(1).upper()} statements are not allowed on /query"
    if ";" in stripped.rstrip().rstrip(";"):
        return "read-only: one statement per query"
    return None


class QueryRunner:
    """A ClickHouse client of its own, used from one worker thread at a time."""

    def __init__(self, dsn: str):
        self.dsn = dsn
        self._client = None
        self._lock = threading.Lock()

    def run(self, sql: str, fmt: str, params: dict) -> bytes:
        with self._lock:
            if self._client is None:
                # a client-level setting: with readonly=1 a query may not change settings itself
                self._client = clickhouse.connect(self.dsn, settings={"max_execution_time": int(QUERY_TIMEOUT)})
            settings = {"readonly": 1}
            sql, fmt = split_format(sql, fmt)
            return self._client.raw_query(sql, parameters=params or None, settings=settings, fmt=fmt)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


class AdminApp:
    """Admin endpoints; `state` is the server object (spool, sink, metrics, hold event).

    Every response is built with cors=False: with `access-control-allow-origin: *` any web page could
    read /query results and /metrics from a browser on the operator's machine."""

    wanted_headers = frozenset({b"authorization", b"content-type"})

    def __init__(self, state, loop, token: str = ""):
        self.state = state
        self.loop = loop
        self.token = token.encode()
        self.runner = QueryRunner(state.settings.clickhouse)

    def connection_made(self, conn) -> None:
        pass

    def connection_lost(self, conn) -> None:
        pass

    def protocol_error(self, conn, status: int) -> None:
        pass

    def handle_error(self, request, exc) -> None:
        log.exception("admin error", exc_info=exc)

    def handle(self, request):
        if request.method == b"HEAD":  # a reply to HEAD carries no content (probes use GET)
            return _HEAD_NOT_ALLOWED
        if self.token and request.path not in _OPEN_PATHS:
            given = request.headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, b"Bearer " + self.token):
                return Response(401 if not given else 403, b"admin token required\n",
                                headers=b"www-authenticate: Bearer\r\n", cors=False)
        path = request.path
        if path == b"/healthz":
            return Response(200, b"ok\n", cors=False)
        if path == b"/readyz":
            problem = self.state.not_ready_reason()
            return (Response(503, problem.encode() + b"\n", cors=False) if problem
                    else Response(200, b"ready\n", cors=False))
        if path == b"/metrics":
            return Response(200, self.state.metrics.render().encode(), b"text/plain; version=0.0.4",
                            cors=False)
        if path == b"/query":
            return self._query(request)
        if path == b"/ship" and request.method == b"POST":
            return self._ship(request)
        return error_response(404, "not found: /healthz /readyz /metrics /query /ship", close=False,
                                  cors=False)

    def _ship(self, request) -> Response:
        args = dict(parse_qsl(request.query.decode("utf-8", "replace")))
        action = args.get("action", "resume")
        if action == "hold":
            self.state.hold.set()
        elif action == "resume":
            self.state.hold.clear()
            self.state.sink.wake.set()
        else:
            return error_response(400, "action must be hold or resume", close=False, cors=False)
        return Response(200, f"shipping {'held' if self.state.hold.is_set() else 'running'}\n".encode(),
                        cors=False)

    def _query(self, request):
        args = dict(parse_qsl(request.query.decode("utf-8", "replace"), keep_blank_values=True))
        content_type = request.headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
        body = request.body if request.method == b"POST" else b""
        if body and content_type == _FORM:
            # query, default_format and param_* as form fields: large parameters fit in a body
            args.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
            body = b""
        sql = args.pop("query", "")
        if body:
            body = body.decode("utf-8", "replace")
            sql = f"{sql}\n{body}" if sql else body
        if not sql.strip():
            return error_response(400, "query is missing: /query?query=SQL", close=False, cors=False)
        reason = refuse_reason(sql)
        if reason:
            return error_response(403, reason, close=False, cors=False)
        fmt = args.pop("default_format", "TabSeparated")
        params = {k[len("param_"):]: unescape_param(v) for k, v in args.items() if k.startswith("param_")}
        ticket = Ticket()

        def run():
            try:
                return Response(200, self.runner.run(sql, fmt, params), _TEXT, cors=False)
            except Exception as exc:  # noqa: BLE001 - ClickHouse's message goes back to the caller
                text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                status = 403 if "readonly" in text.lower() or "Code: 164" in text else 400
                return error_response(status, text[:2000], close=False, cors=False)

        future = self.loop.run_in_executor(None, run)
        future.add_done_callback(lambda f: ticket.resolve(
            _SHUTTING_DOWN if f.cancelled() else f.result()))  # cancelled: the executor shut down first
        return ticket


async def start(state, loop, sock, limits):
    """Serve the admin endpoints on an already-bound socket."""
    from .http import HttpProtocol

    app = AdminApp(state, loop, state.settings.admin_token)
    server = await loop.create_server(lambda: HttpProtocol(app, limits), sock=sock)
    return server, app
