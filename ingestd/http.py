"""HTTP/1.x on httptools: keep-alive, pipelining, limits. Knows HTTP and nothing of events or storage.

The protocol hands each complete request to `app.handle(request)`, which returns either a
`Response` or a `Ticket` (a response decided later, e.g. after the spool's group commit).
Replies go out strictly in request order: a connection writes the longest resolved prefix.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque, namedtuple
from email.utils import formatdate

import httptools

# Bounds, each with its reason.
MAX_URL_BYTES = 8192  # request line: beacons are ~1 KiB; 8 KiB is what nginx and most CDNs allow
MAX_HEADER_BYTES = 8192  # all header lines together, same reason
MAX_BODY_BYTES = 64 * 1024  # a JSON beacon is ~2 KiB; anything far larger is not a beacon
MAX_PIPELINE = 64  # replies queued on one connection before we stop reading from it
HEADER_TIMEOUT = 10.0  # seconds to send a complete request head (slowloris)
IDLE_TIMEOUT = 30.0  # seconds a keep-alive connection may sit idle between requests
WRITE_HIGH_WATER = 256 * 1024  # transport buffer above which we stop reading (slow reader)
MAX_CONNECTIONS = 10000  # open beacon connections per process; each costs ~10 KiB and a descriptor
EVICT_BATCH = 32  # idle connections closed at once when the limit is reached (as nginx drains 32)
SLOW_REQUEST_EVICT = 1.0  # at the limit, a request still arriving after this long may be cut (slowloris)
LINGER_SECONDS = 2.0  # after an error reply, unread input is drained this long: the client gets the reply, not a reset
READ_BYTES = 256 * 1024  # the most one read hands over (uvloop reads into 250 KB, asyncio 256 KiB)

STATUS_TEXT = {
    200: b"OK", 204: b"No Content", 400: b"Bad Request", 403: b"Forbidden", 404: b"Not Found",
    405: b"Method Not Allowed", 408: b"Request Timeout", 413: b"Content Too Large",
    414: b"URI Too Long", 429: b"Too Many Requests", 431: b"Request Header Fields Too Large",
    500: b"Internal Server Error", 503: b"Service Unavailable",
}
_COMMON = b"access-control-allow-origin: *\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


_NOT_RENDERED = (None, None, None)


class Response:
    """A complete reply. `headers` is preformatted bytes (each line ending in CRLF).
    `cors` adds `access-control-allow-origin: *`: beacons need it, the admin listener must not have it."""

    __slots__ = ("status", "body", "content_type", "headers", "close", "cors", "wire")

    def __init__(self, status: int, body: bytes = b"", content_type: bytes = b"text/plain",
                 headers: bytes = b"", close: bool = False, cors: bool = True):
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers
        self.close = close
        self.cors = cors
        self.wire: tuple = _NOT_RENDERED  # render()'s cache: (date header, keep-alive bytes, close bytes)


class Ticket:
    """A reply decided later: `resolve(response)` is called once, then the connection writes it."""

    __slots__ = ("response", "waiters")

    def __init__(self):
        self.response: Response | None = None
        self.waiters: list[HttpProtocol] = []

    def resolve(self, response: Response) -> None:
        self.response = response
        waiters, self.waiters = self.waiters, []
        for conn in waiters:
            conn.write_ready()


class Request(namedtuple("Request", "method path query headers body peer received_at keep_alive")):
    """One parsed request: what the app needs and nothing more. `headers` holds the lower-cased
    names the app asked for. Built with _new_request (in C): a Python __init__ per request costs."""

    __slots__ = ()


_new_request = tuple.__new__


class Clock:
    """Wall-clock values that change once a second, rebuilt on a tick instead of per request."""

    def __init__(self):
        self.tick()

    def tick(self) -> None:
        now = time.time()
        self.seconds = int(now)
        self.date_header = b"date: " + formatdate(now, usegmt=True).encode() + b"\r\n"


CLOCK = Clock()


def render(response: Response, keep_alive: bool) -> bytes:
    """The bytes of one response; shared replies (the 200s) are rendered once per clock tick."""
    wire = response.wire
    if wire[0] is not CLOCK.date_header:
        wire = response.wire = (CLOCK.date_header, None, None)
    data = wire[1] if keep_alive else wire[2]
    if data is None:
        data = _render(response, keep_alive)
        response.wire = (wire[0], data, wire[2]) if keep_alive else (wire[0], wire[1], data)
    return data


def _render(response: Response, keep_alive: bool) -> bytes:
    close = response.close or not keep_alive
    status = response.status
    if status == 204:  # RFC 9110 §8.6: no Content-Length (nor a body) on a 204
        entity = body = b""
    else:
        body = response.body
        entity = b"content-type: %s\r\ncontent-length: %d\r\n" % (response.content_type, len(body))
    return b"".join((
        b"HTTP/1.1 %d %s\r\n" % (status, STATUS_TEXT.get(status, b"Unknown")),
        CLOCK.date_header,
        entity,
        _COMMON if response.cors else b"",
        response.headers,
        # keep-alive is explicit, as nginx does: an HTTP/1.0 client (ab -k) only reuses the
        # connection when told so; HTTP/1.1 clients ignore it
        b"connection: close\r\n\r\n" if close else b"connection: keep-alive\r\n\r\n",
        body,
    ))


class Limits:
    """The per-connection bounds; defaults are the named constants above."""

    __slots__ = ("max_url", "max_headers", "max_body", "header_timeout", "idle_timeout")

    def __init__(self, max_url=MAX_URL_BYTES, max_headers=MAX_HEADER_BYTES, max_body=MAX_BODY_BYTES,
                 header_timeout=HEADER_TIMEOUT, idle_timeout=IDLE_TIMEOUT):
        self.max_url = max_url
        self.max_headers = max_headers
        self.max_body = max_body
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout


class ConnectionGate:
    """Admission for one listener: at most `max_connections` open at once.

    At the limit, room is made instead of refusing: first the connections idle longest (keep-alive
    or never sent a byte) are closed, EVICT_BATCH at a time; if none is idle, the oldest request still
    trickling in after SLOW_REQUEST_EVICT seconds is cut with 408. Only when every open connection is
    busy is the newcomer answered 503 and closed. So idle floods and slowloris cannot lock out players.
    """

    def __init__(self, max_connections: int = MAX_CONNECTIONS, metrics=None):
        self.max_connections = max_connections
        self.open: dict[HttpProtocol, None] = {}  # insertion-ordered: oldest first
        self.metrics = metrics  # anything with connections_refused / connections_evicted counters

    def admit(self, conn: "HttpProtocol") -> bool:
        """Called by a new connection: True if it may proceed (possibly after closing others)."""
        if len(self.open) >= self.max_connections and not self._make_room():
            if self.metrics is not None:
                self.metrics.connections_refused += 1
            return False
        self.open[conn] = None
        return True

    def release(self, conn: "HttpProtocol") -> None:
        self.open.pop(conn, None)

    def _make_room(self) -> bool:
        """Close idle connections (longest idle first), else one slow request; True if room was made."""
        now = time.monotonic()
        idle = [c for c in self.open if c.is_idle()]
        if idle:
            batch = max(EVICT_BATCH, self.max_connections // 64)
            if len(idle) > batch:
                idle.sort(key=_last_activity)
                idle = idle[:batch]
            for conn in idle:
                self.open.pop(conn, None)
                conn.transport.close()
            if self.metrics is not None:
                self.metrics.connections_evicted += len(idle)
            return True
        for conn in self.open:  # oldest first
            if conn.in_request and not conn.outbox and now - conn.request_started > SLOW_REQUEST_EVICT:
                self.open.pop(conn, None)
                conn.time_out()
                if self.metrics is not None:
                    self.metrics.connections_evicted += 1
                return True
        return False


def _last_activity(conn: "HttpProtocol") -> float:
    return conn.last_activity


def close_after_error(transport) -> None:
    """Close after an error reply without losing it to a TCP reset (as nginx's lingering close).

    Closing a socket with unread input makes the kernel send RST, and the client may then drop the
    reply (a 413 to an upload still in flight). So: send FIN, keep discarding input, close later.
    """
    try:
        loop = asyncio.get_running_loop()
        can_linger = transport.can_write_eof()
    except (RuntimeError, AttributeError):  # no loop (tests with a fake transport) or no half-close
        can_linger = False
    if not can_linger:
        transport.close()
        return
    transport.resume_reading()  # reading may be paused by the pipeline cap: drain it
    transport.write_eof()
    loop.call_later(LINGER_SECONDS, transport.close)


_REFUSED = None  # the 503 for a connection over the limit, built after render() below


# The spellings clients send, lower-cased without a call (on_header runs for every header line).
_LOWER_CASE = {spelling: spelling.lower() for name in (
    b"Host", b"User-Agent", b"Content-Type", b"Content-Length", b"Accept", b"Accept-Encoding",
    b"Accept-Language", b"Connection", b"Origin", b"Referer", b"Expect", b"X-Forwarded-For", b"Forwarded",
    b"Authorization", b"Cookie", b"Cache-Control", b"Pragma", b"Priority", b"DNT", b"Sec-CH-UA",
    b"Sec-CH-UA-Mobile", b"Sec-CH-UA-Platform", b"Sec-Fetch-Site", b"Sec-Fetch-Mode", b"Sec-Fetch-Dest",
) for spelling in (name, name.lower())}
_SPELLINGS: dict[frozenset, dict[bytes, bytes]] = {}  # wanted_headers -> header_spellings() of it


def header_spellings(wanted: frozenset[bytes]) -> dict[bytes, bytes]:
    """The spellings clients send -> the lower-cased name if wanted, else b"" (one lookup per header line)."""
    spellings = _SPELLINGS.get(wanted)
    if spellings is None:
        spellings = _SPELLINGS[wanted] = {
            spelling: lower if lower in wanted else b"" for spelling, lower in _LOWER_CASE.items()
        }
    return spellings


class HttpError(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _StopReading(Exception):
    """Raised in a parser callback to stop parsing a closing connection's input."""


def error_response(status: int, reason: str, close: bool = True, cors: bool = True) -> Response:
    return Response(status, reason.encode("utf-8", "replace") + b"\n", close=close, cors=cors)


def _origin_form(url: bytes) -> bytes:
    """`http://host/path?query` as `/path?query`; anything else (`*`, garbage) as it is."""
    try:
        parsed = httptools.parse_url(url)
    except httptools.HttpParserInvalidURLError:
        return url
    if not parsed.schema:
        return url
    return (parsed.path or b"/") + (b"?" + parsed.query if parsed.query is not None else b"")


class HttpProtocol(asyncio.Protocol):
    """One connection. Created by the server per accepted socket."""

    __slots__ = (
        "app", "limits", "wanted_headers", "transport", "parser", "peer", "url", "headers",
        "header_bytes", "body", "outbox", "closing", "paused", "write_paused", "last_activity",
        "in_request", "request_started", "body_bytes", "gate", "failed", "header_names",
        "max_url", "max_headers", "max_body", "spanned", "max_span", "read_at",
    )

    def __init__(self, app, limits: Limits | None = None, gate: ConnectionGate | None = None):
        self.app = app
        self.limits = limits = limits or Limits()
        # the size limits, read per request: one attribute lookup instead of two
        self.max_url, self.max_headers, self.max_body = limits.max_url, limits.max_headers, limits.max_body
        # What a request may span in reads after the one it began in. httptools buffers a header line
        # until it ends, copying it once per read, and calls on_header only then: without this bound one
        # endless header line takes unbounded memory and quadratic CPU. Above any request within the
        # limits: a body in 1-byte chunks is 6 bytes a byte, and the last read may hold the next requests.
        self.max_span = limits.max_url + limits.max_headers + 8 * limits.max_body + READ_BYTES
        self.spanned = 0
        self.gate = gate
        self.wanted_headers: frozenset[bytes] = app.wanted_headers
        self.header_names = header_spellings(app.wanted_headers)
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = ""
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.header_bytes = 0
        self.body: list[bytes] | None = None  # chunks, once one arrives: most beacons are GETs
        self.body_bytes = 0  # running total: summing `body` per chunk is quadratic in the chunk count
        self.outbox: deque = deque()  # (Response | Ticket, keep_alive)
        self.closing = False
        self.paused = False
        self.write_paused = False
        # activity is a request begun or answered, not any read: bare CRLFs between requests (which
        # llhttp skips without a callback) must not keep a connection out of its timeouts
        self.last_activity = self.read_at = time.monotonic()
        self.in_request = False
        self.request_started = 0.0  # stays 0.0 until a request begins: the header timeout runs from the accept
        self.failed = False  # a protocol error was answered: what still arrives is discarded

    # -- asyncio callbacks ----------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else ""
        if self.gate is not None and not self.gate.admit(self):
            self.gate = None  # never admitted: nothing to release, and the app never saw it
            self.closing = True
            self.app = None
            transport.write(render(_REFUSED, False))
            close_after_error(transport)
            return
        self.app.connection_made(self)

    def connection_lost(self, exc) -> None:
        self.closing = True
        if self.gate is not None:
            self.gate.release(self)
        if self.app is not None:
            self.app.connection_lost(self)

    def data_received(self, data: bytes) -> None:
        self.read_at = time.monotonic()
        if self.in_request:  # the request began in an earlier read (see max_span)
            self.spanned += len(data)
            if self.spanned > self.max_span:
                if self.body is None:
                    self._fail(431, f"request head not complete after {self.spanned} bytes")
                else:
                    self._fail(413, f"request body not complete after {self.spanned} bytes")
                return
        if self.closing and not self.in_request:  # a request begun before shutdown() may finish
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrade is not supported")
        except httptools.HttpParserError as exc:
            if self.closing:  # data after a `Connection: close` request is ignored, not an error
                return
            cause = exc.__context__  # httptools wraps what a callback raised
            if isinstance(cause, HttpError):
                self._fail(cause.status, cause.reason)
            else:
                self._fail(400, f"malformed HTTP request: {str(exc) or type(exc).__name__}")

    def eof_received(self) -> bool:
        """Called when the client half-closes: answer what is already queued, then close."""
        self.closing = True
        if not self.outbox:
            return False  # nothing owed: let the transport close now
        return True  # keep the write side open; write_ready closes once the outbox is empty

    def pause_writing(self) -> None:
        self.write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._update_reading()

    # -- httptools callbacks (only those we need are defined) -----------------------------------
    def on_message_begin(self) -> None:
        if self.closing:  # pipelined behind the last request served before shutdown: not read
            raise _StopReading
        self.in_request = True
        self.request_started = self.read_at
        self.spanned = 0
        self.url = b""
        self.headers = {}
        self.header_bytes = 0
        self.body = None
        self.body_bytes = 0

    def on_url(self, url: bytes) -> None:
        if self.url:  # the request line came in more than one read
            url = self.url + url
        self.url = url
        if len(url) > self.max_url:
            raise HttpError(414, f"request target over {self.max_url} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        size = self.header_bytes + len(name) + len(value) + 4
        self.header_bytes = size
        if size > self.max_headers:
            raise HttpError(431, f"request headers over {self.max_headers} bytes")
        wanted = self.header_names.get(name)
        if wanted is None:  # a spelling not in _LOWER_CASE
            wanted = name.lower()
            if wanted not in self.wanted_headers:
                if wanted == b"upgrade":
                    # llhttp would hand the rest of the connection (a POST's body too) to the new
                    # protocol after the request: refused before the app sees it, one reply
                    raise HttpError(400, "protocol upgrade is not supported: send no Upgrade header")
                return
        elif not wanted:
            return
        headers = self.headers
        if wanted in headers:  # repeated header: join as RFC 9110 allows for lists
            headers[wanted] += b", " + value
        else:
            headers[wanted] = value
        # Content-Length and Expect act when they arrive: no on_headers_complete, a call per request
        if wanted == b"content-length":
            # llhttp has checked it is digits (with optional spaces around, which int() takes) and
            # refuses a second Content-Length
            if int(value) > self.max_body:
                raise HttpError(413, f"request body over {self.max_body} bytes")
        elif (wanted == b"expect" and not self.outbox and headers[wanted].lower() == b"100-continue"
              and self.parser.get_http_version() == "1.1"):  # RFC 9110 §10.1.1: ignored from HTTP/1.0
            # curl asks before sending a body over 1 KiB and would otherwise wait a second; an interim
            # reply may only go out when no earlier reply is still queued (replies stay in order). It
            # goes before the headers after it are read: a Content-Length over the limit after it
            # still gets its 413 (curl sends Expect last)
            self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        if self.body is None:
            self.body = [body]
        else:
            self.body.append(body)
        self.body_bytes += len(body)
        if self.body_bytes > self.max_body:
            raise HttpError(413, f"request body over {self.max_body} bytes")

    def on_message_complete(self) -> None:
        self.in_request = False
        self.last_activity = self.read_at
        parser = self.parser
        keep_alive = parser.should_keep_alive()
        url = self.url
        if url[0] != 47:  # not '/': the absolute form (RFC 9112 §3.2.2 says a server must accept it)
            url = _origin_form(url)
        path, _, query = url.partition(b"?")
        if 35 in query:  # '#' (an int: `b"#" in` costs ~85 ns more, it tries the needle as an int first)
            query = query.partition(b"#")[0]
        body = self.body
        if body is None:
            body = b""
        else:
            body = body[0] if len(body) == 1 else b"".join(body)
        request = _new_request(Request, (
            parser.get_method(), path, query, self.headers, body, self.peer, time.time(), keep_alive,
        ))
        try:
            reply = self.app.handle(request)
        except Exception as exc:  # the app must never take the connection down with it
            self.app.handle_error(request, exc)
            reply = error_response(500, "internal error", close=False)
        outbox = self.outbox
        outbox.append((reply, keep_alive))
        if not keep_alive:
            self.closing = True
        if type(reply) is Ticket and reply.response is None:
            reply.waiters.append(self)
            if len(outbox) >= MAX_PIPELINE:
                self._update_reading()
        else:
            self.write_ready()

    # -- replies ----------------------------------------------------------------------------------
    def write_ready(self) -> None:
        """Write every reply at the head of the outbox that is decided; close when done and asked to."""
        outbox = self.outbox
        if len(outbox) == 1 and not self.closing:  # the common case, one keep-alive reply: no list, no join
            reply, keep_alive = outbox[0]
            if type(reply) is Ticket:
                reply = reply.response
                if reply is None:
                    return
            if keep_alive and not reply.close:
                transport = self.transport  # set: a reply is owed, so connection_made() has run
                if transport.is_closing():
                    return
                outbox.clear()
                wire = reply.wire  # render()'s cache, read here to save a call per reply
                if wire[0] is CLOCK.date_header and wire[1] is not None:
                    transport.write(wire[1])
                else:
                    transport.write(render(reply, True))
                if self.paused:
                    self._update_reading()
                return
        chunks = []
        close = False
        while outbox:
            reply, keep_alive = outbox[0]
            if type(reply) is Ticket:
                if reply.response is None:
                    break
                reply = reply.response
            outbox.popleft()
            chunks.append(render(reply, keep_alive))
            if reply.close or not keep_alive:
                close = True
                outbox.clear()
                break
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if chunks:
            transport.write(b"".join(chunks) if len(chunks) > 1 else chunks[0])
        if close or (self.closing and not outbox):
            self.closing = True
            if self.failed:
                close_after_error(transport)
            else:
                transport.close()
        elif self.paused:
            self._update_reading()

    def _fail(self, status: int, reason: str) -> None:
        """A protocol error: answer after what is already queued, then close."""
        self.closing = True
        self.failed = True
        self.in_request = False
        self.app.protocol_error(self, status)
        self.outbox.append((error_response(status, reason), False))
        self.write_ready()

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        should_pause = self.write_paused or len(self.outbox) >= MAX_PIPELINE
        if should_pause and not self.paused:
            self.paused = True
            transport.pause_reading()
        elif not should_pause and self.paused:
            self.paused = False
            transport.resume_reading()

    def is_idle(self) -> bool:
        """True between requests (or before the first, or lingering after an error): nothing owed."""
        return not self.outbox and (self.failed or (not self.in_request and not self.closing))

    def check_timeout(self, now: float) -> bool:
        """Called by the server's sweep once a second: close a slow or idle connection. True if closed."""
        if self.transport is None or self.transport.is_closing() or self.outbox:
            return False
        if self.in_request and now - self.request_started > self.limits.header_timeout:
            self.time_out()
            return True
        # a connection that never began a request gets the header timeout, not the keep-alive one
        limit = self.limits.header_timeout if self.request_started == 0.0 else self.limits.idle_timeout
        if not self.in_request and now - self.last_activity > limit:
            self.transport.close()
            return True
        return False

    def time_out(self) -> None:
        """Answer 408 to a request that did not arrive in time, and close."""
        self.closing = True
        self.app.protocol_error(self, 408)
        self.transport.write(render(error_response(408, "request not completed in time"), False))
        self.transport.close()

    def shutdown(self) -> None:
        """Called by the server to commence a graceful shutdown: finish what is queued, then close."""
        self.closing = True
        if self.transport is not None and not self.outbox and not self.in_request:
            self.transport.close()


_REFUSED = Response(503, b"too many connections; retry later\n", headers=b"retry-after: 1\r\n", close=True)
