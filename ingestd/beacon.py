"""The beacon application: routes a parsed request, validates it, spools it, and decides its reply.

Given to http.HttpProtocol as its app. Owns the group commit: rows appended while the loop
processes one batch of reads are written by one `Spool.commit()` scheduled with call_soon, and
only then are the replies of those requests resolved (200 if written, 503 if not).
"""
from __future__ import annotations

import logging
import re

import orjson

from . import ks as ks_codec
from .events import TOO_DEEP, Rejection, check_json, check_query, form_decode, json_params, split_query, validate
from .http import CLOCK, Response, Ticket, error_response

log = logging.getLogger("ingestd.beacon")

API_PATH = b"/api_v3/index.php"  # the document's path: service=analytics&action=trackEvent is checked
BEACON_PATHS = (API_PATH, b"/collect")
RETRY_AFTER_SECONDS = 5
KS_CACHE_ENTRIES = 10_000  # decoded ks values kept (~1 KiB each); cleared when full
# a real ks is a few hundred bytes; a longer one (up to a 64 KiB body) is decoded each time, never kept,
# so the cache holds at most ~KS_CACHE_ENTRIES KiB whatever is sent
KS_CACHE_VALUE_BYTES = 1024

_CORS_PREFLIGHT = Response(
    204,
    headers=b"access-control-allow-methods: GET, POST, OPTIONS\r\n"
    b"access-control-allow-headers: Content-Type\r\n"
    b"access-control-max-age: 86400\r\n",
)
_NOT_FOUND = error_response(404, "not found: beacons go to /api_v3/index.php or /collect", close=False)
_NOT_ALLOWED = Response(405, b"method not allowed: use GET or POST\n", headers=b"allow: GET, POST, OPTIONS\r\n")
# a reply to HEAD carries no content (RFC 9110 §9.3.2): a keep-alive client would read the body as the next reply
_NOT_ALLOWED_HEAD = Response(405, headers=b"allow: GET, POST, OPTIONS\r\n")
_OVER_CAP = Response(
    503, b"spool full: ClickHouse is behind; retry later\n", headers=b"retry-after: %d\r\n" % RETRY_AFTER_SECONDS
)
_WRITE_FAILED = Response(
    503, b"event not stored: spool write failed; retry later\n",
    headers=b"retry-after: %d\r\n" % RETRY_AFTER_SECONDS,
)
_SHUTTING_DOWN = Response(
    503, b"shutting down; retry later\n", headers=b"retry-after: %d\r\n" % RETRY_AFTER_SECONDS, close=True
)
_JSON = b"application/json"
_NO_BODY: dict = {}  # shared by every row without a JSON body: never mutated
_NO_KS: dict = {}
_SAME_IP: dict = {}  # no ClientIP: nothing known, every address is stored as it is
_NUMBER_TEXT = re.compile(r" *[-+]?[0-9]{1,20} *")  # a partnerId or eventType sent as a string
# Bodies read as a query string; no Content-Type at all is read the same way.
_TEXT_TYPES = frozenset({b"", b"text/plain", b"application/x-www-form-urlencoded"})


class BeaconApp:
    """The beacon endpoints of one process."""

    wanted_headers = frozenset({b"content-type", b"content-length", b"user-agent", b"expect"})

    def __init__(self, spool, metrics, loop, *, strict: bool = False, client_ip=None, rate_limit=None):
        self.spool = spool
        self._pending_rows = spool.pending  # Spool.append without the call
        self.metrics = metrics
        self._accepted = metrics.events_accepted  # per event type, counted per request
        self.loop = loop
        self.strict = strict
        # client_ip: a clientip.ClientIP, or None to store the peer address as it is
        self.ips = client_ip
        self.client_ip = client_ip.stored if client_ip is not None else (lambda request: request.peer)
        self._ip_by_peer = client_ip.by_peer if client_ip is not None else _SAME_IP
        self.rate_limit = rate_limit  # None, or request -> None (allowed) | the 429 Response (ingestd.ratelimit)
        self.connections: set = set()
        self.accepting = True
        self._tickets: dict[int, Ticket] = {}  # shared replies of this iteration, by variant
        self._single: list[tuple[Ticket, Response]] = []  # per-request replies of this iteration
        self._commit_scheduled = False
        self._ks_seen: dict[bytes | str, dict] = {}  # ks as sent -> ks_codec.describe() of it (never mutated)
        self.refresh()

    # -- replies that change once a second ----------------------------------------------------------
    def refresh(self) -> None:
        """Called on the clock tick: rebuild the 200 replies, whose body is the server's Unix time."""
        if self.ips is not None:
            self.ips.tick()
        now = CLOCK.seconds
        self._ok = (
            Response(200, b"%d" % now),
            Response(200, b'{"time":%d,"viewEventsEnabled":true}' % now, _JSON),
            Response(200, b'{"time":%d,"viewEventsEnabled":false}' % now, _JSON),
        )

    # -- connection bookkeeping (called by the protocol) ------------------------------------------------
    def connection_made(self, conn) -> None:
        self.connections.add(conn)
        self.metrics.connections_open += 1
        self.metrics.connections_total += 1

    def connection_lost(self, conn) -> None:
        self.connections.discard(conn)
        self.metrics.connections_open -= 1

    def protocol_error(self, conn, status: int) -> None:
        self.metrics.protocol_errors[status] += 1
        self.metrics.responses[status] += 1

    def handle_error(self, request, exc: Exception) -> None:
        log.exception("unhandled error for %s", request.path[:100], exc_info=exc)
        self.metrics.responses[500] += 1

    # -- requests -------------------------------------------------------------------------------------
    def handle(self, request):
        if self.rate_limit is not None:
            refused = self.rate_limit(request)
            if refused is not None:
                self.metrics.rate_limited += 1
                self.metrics.responses[429] += 1
                return refused
        path = request.path
        if path not in BEACON_PATHS:
            self.metrics.responses[404] += 1
            return _NOT_FOUND
        method = request.method
        if method == b"GET":
            return self._beacon(request, request.query, None, 0)
        if method == b"POST":
            return self._post(request)
        if method == b"OPTIONS":
            self.metrics.responses[204] += 1
            return _CORS_PREFLIGHT
        self.metrics.responses[405] += 1
        return _NOT_ALLOWED_HEAD if method == b"HEAD" else _NOT_ALLOWED

    def _post(self, request):
        content_type = request.headers.get(b"content-type", b"")
        if content_type != _JSON:  # the player's exact spelling needs no parsing
            content_type = content_type.split(b";", 1)[0].strip().lower()
        body = request.body
        # sendBeacon and some players post JSON as text/plain (no preflight): a query string never
        # starts with '{', so the body decides.
        if content_type == _JSON or (content_type in _TEXT_TYPES and body.lstrip()[:1] == b"{"):
            try:
                obj = orjson.loads(body)  # JSON's own whitespace around it is fine
            except orjson.JSONDecodeError:
                body = body.strip()  # bytes.strip() also takes \v and \f, which JSON does not
                try:
                    obj = orjson.loads(body) if body else {}
                except orjson.JSONDecodeError as exc:
                    return self._reject(request, request.query, Rejection("bad_request", f"body is not JSON: {exc}"))
            if type(obj) is not dict:
                return self._reject(request, request.query, Rejection("bad_request", "body is not a JSON object"))
            return self._beacon(request, request.query, obj, 1)
        body = body.strip()
        if content_type not in _TEXT_TYPES:
            shown = content_type.decode("latin-1")[:60]
            return self._reject(request, request.query, Rejection(
                "bad_request", f"Content-Type {shown!r} is not supported: send JSON, text/plain or form-encoded"))
        # navigator.sendBeacon: a query string as text/plain or form-encoded body
        query = request.query
        if body:
            query = query + b"&" + body if query else body
        return self._beacon(request, query, None, 0)

    def _beacon(self, request, query: bytes, json_body: dict | None, variant: int):
        """Validate and spool one beacon; `variant` 0 answers with plain time, 1 with the JSON object."""
        if self.spool.over_cap or not self.accepting:
            self.metrics.responses[503] += 1
            return _OVER_CAP if self.accepting else _SHUTTING_DOWN
        api = request.path == API_PATH
        if json_body is None:
            fast = check_query(query, api, self.strict)
            body_map = _NO_BODY
        else:
            fast = check_json(json_body, query, api, self.strict)
            body_map = json_body  # stored as parsed: ClickHouse reads its numbers as text
        secrets = None  # a JSON beacon's ks values (query, body) when there may be more than one
        if fast is not None:
            if json_body is None:
                event_type, missing, ks_at, parts = fast
                raw_ks = None
                if ks_at is not None:
                    query, raw_ks = ks_codec.cut_pair(query, parts, ks_at)
            else:
                event_type, missing, raw_ks = fast
                if raw_ks is not None:
                    del body_map["ks"]
        else:  # anything unusual: the general path, which is the definition of the rules
            params = split_query(query)
            try:
                body, body_map = json_params(json_body) if json_body else (None, {})
                if api:
                    self._check_service(params, body)
                checked = validate(params, body, self.strict)
            except Rejection as rejection:
                return self._reject(request, query, rejection, json_body, params)
            event_type, missing, raw_ks = checked.event_type, checked.missing, None
            if b"ks" in params or "ks" in body_map:
                raw_ks = params[b"ks"] if b"ks" in params else body_map["ks"]
                if json_body is not None:  # every ks sent, in the query string and the body: each is masked
                    secrets = (ks_codec.query_values(query),
                               [body_map["ks"].encode("utf-8", "surrogatepass")] if "ks" in body_map else [])
                query = ks_codec.strip_from_query(query)
                body_map.pop("ks", None)
        ks_info = _NO_KS
        if raw_ks is not None:  # as sent: bytes from a query string (encoded), str from JSON
            # a session sends the same ks with each of its beacons: decode and hash it once
            ks_info = self._ks_seen.get(raw_ks)
            if ks_info is None:
                plain = form_decode(raw_ks) if type(raw_ks) is bytes else raw_ks.encode()
                ks_info = ks_codec.describe(plain)
                if len(raw_ks) <= KS_CACHE_VALUE_BYTES:
                    if len(self._ks_seen) >= KS_CACHE_ENTRIES:
                        self._ks_seen.clear()
                    self._ks_seen[raw_ks] = ks_info
        ip = self._ip_by_peer.get(request.peer)  # ClientIP.stored() without the call, for a known peer
        if ip is None:
            ip = self.client_ip(request)
        row = (
            "e", int(request.received_at * 1000), ip,
            request.headers.get(b"user-agent", b"").decode("utf-8", "replace"),
            query.decode("utf-8", "replace"), body_map, missing, ks_info, "", "", "",
        )
        # orjson.loads() refuses lone surrogates, so every text in the row can be encoded; but it reads
        # JSON nested 1024 levels deep and writes only 254 (a try costs nothing in 3.11 until it raises)
        try:
            data = orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE)
        except orjson.JSONEncodeError:
            # the fast path may have taken the ks out of the parsed body: keep the body as it was sent
            return self._reject(request, request.query, Rejection("bad_request", TOO_DEEP))
        if json_body is not None:
            # a "ks" key nested in the body (a '{' past the first, found by memrchr: most bodies have no
            # nested object, and a find of '"ks' in every row cost 4 % of a JSON beacon), or a JSON value
            # or the query string that repeats a ks
            nested = request.body.rfind(b"{") > 0 and b'"ks' in data
            if nested or (raw_ks is not None and (secrets is not None or ks_codec.echoed(data, raw_ks))):
                data = self._mask_json_row(row, data, raw_ks, secrets, nested)
        self._pending_rows.append(data)
        self._accepted[event_type.id] += 1
        if variant == 1 and self.spool.over_soft_cap:
            variant = 2  # shed load: JSON players stop their 10-second VIEW beacons
            self.metrics.view_events_disabled += 1
        ticket = self._tickets.get(variant)
        if ticket is None:
            ticket = self._tickets[variant] = Ticket()
            self._schedule_commit()
        return ticket

    @staticmethod
    def _mask_json_row(row: tuple, data: bytes, raw_ks, secrets, nested: bool) -> bytes:
        """The spooled row of a JSON beacon with the values of "ks" keys nested in its body masked, and
        every spelling of its ks values (query string, body, nested) masked in its query and body."""
        if secrets is not None:
            values, plain = secrets
        elif raw_ks is None:
            values, plain = [], []
        else:
            values, plain = ([raw_ks], []) if type(raw_ks) is bytes else ([], [raw_ks.encode("utf-8", "surrogatepass")])
        masked = False
        if nested:
            found: list[bytes] = []
            body = ks_codec.mask_ks_keys(row[5], found)
            if body != row[5]:
                row = (*row[:5], body, *row[6:])
                plain = [*plain, *found]
                masked = True
        if masked or any(ks_codec.echoed(data, value) for value in (*values, *plain)):
            values_plain = (values, plain)
            query = ks_codec.mask_values(row[4].encode("utf-8", "surrogatepass"), *values_plain)
            body = ks_codec.mask_tree(row[5], ks_codec.text_forms(*values_plain))
            row = (*row[:4], query.decode("utf-8", "replace"), body, *row[6:])
            return orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE)
        return data

    @staticmethod
    def _check_service(params, body) -> None:
        if params.get(b"service") == b"analytics" and params.get(b"action") == b"trackEvent":
            return  # what every player sends, checked without decoding
        for name, expected in ((b"service", b"analytics"), (b"action", b"trackEvent")):
            raw = params.get(name)
            if raw is None and body:
                raw = body.get(name)
            value = form_decode(raw) if raw is not None else b""
            if value.lower() != expected.lower():
                shown = value.decode("utf-8", "replace")[:40]
                raise Rejection("unsupported_service", f"{name.decode()} {shown!r} is not supported: use "
                                                       "service=analytics&action=trackEvent")

    def _reject(self, request, query: bytes, rejection: Rejection, json_body=None, params=None):
        """Keep what was sent (ks masked) in the rejected stream and answer 400 with the reason."""
        if self.spool.over_cap or not self.accepting:  # the cap holds for rejected rows too
            self.metrics.responses[503] += 1
            return _OVER_CAP if self.accepting else _SHUTTING_DOWN
        self.metrics.events_rejected[rejection.reason] += 1
        ks_info = {}
        if params is None:  # (the general path passes the split it validated)
            params = split_query(query)
        # every ks value sent, as sent in the query string or a form body (encoded) and in a JSON or
        # multipart body (plain): each is masked in its own place and, in all its spellings, wherever
        # else it appears (a referrer that carried it)
        raw_body = request.body if request.method == b"POST" else b""
        values = ks_codec.query_values(query) if raw_body and b"ks" in params else []
        if b"ks" in params:
            ks_info = {"hash": ks_codec.digest(form_decode(params[b"ks"]).strip())}
            query = ks_codec.strip_from_query(query, mask=ks_codec.MASK)
        if raw_body:  # (a GET's query string alone is masked by strip_from_query, echoes included)
            plain = []
            if json_body and "ks" in json_body:
                secret = json_body["ks"]
                if type(secret) is str:
                    plain.append(secret.encode("utf-8", "surrogatepass"))
                try:
                    raw_body = orjson.dumps({**json_body, "ks": ks_codec.MASK.decode()})
                except orjson.JSONEncodeError:  # nested too deeply to write: mask the body as it was sent
                    pass
            named = ks_codec.may_name_ks(raw_body)  # (most bodies do not: then they are only searched for echoes)
            body_values, body_plain = ks_codec.body_secrets(raw_body) if named else ((), ())
            plain += body_plain
            forms = ks_codec.secret_forms([*values, *body_values], plain) if values or body_values or plain else []
            raw_body = ks_codec.redact(raw_body, forms=forms) if named else ks_codec.mask_forms(raw_body, forms)
            if body_values or plain:  # a ks from the body echoed in the query string
                query = ks_codec.mask_forms(query, forms)
        # a ks named in a syntax not parsed here (a value holding '<ks>…</ks>', a text body's 'ks: …') masks
        # the query string as a whole, a GET's too (a JSON body's query string was masked with its forms)
        if not json_body and ks_codec.names_ks_unmasked(query, as_name=True):
            query = ks_codec.MASK
        # a JSON body's partner and type, as text, so that the rejection is filed under them (the view
        # reads them from the query string, or from this map when the query string lacks them). Only
        # numbers are kept: any other text could hold a ks, and is in the masked raw body anyway
        filed = {name: str(value) for name in ("partnerId", "eventType")
                 if type(value := json_body.get(name)) is int
                 or (type(value) is str and _NUMBER_TEXT.fullmatch(value))} if json_body else {}
        self.spool.append(orjson.dumps((
            "r", int(request.received_at * 1000), self.client_ip(request),
            request.headers.get(b"user-agent", b"").decode("utf-8", "replace"),
            query.decode("utf-8", "replace"), filed, [], ks_info, rejection.reason, rejection.message,
            raw_body.decode("utf-8", "replace"),
        )) + b"\n")
        ticket = Ticket()
        self._single.append((ticket, error_response(400, rejection.message, close=False)))
        self._schedule_commit()
        return ticket

    # -- group commit -----------------------------------------------------------------------------------
    def _schedule_commit(self) -> None:
        if not self._commit_scheduled:
            self._commit_scheduled = True
            self.loop.call_soon(self.commit)

    def commit(self) -> None:
        """Write this iteration's rows with one write(2), then resolve their replies."""
        self._commit_scheduled = False
        ok = self.spool.commit()
        responses = self.metrics.responses
        if ok:
            self.metrics.spool_commits += 1
        else:
            self.metrics.spool_write_errors += 1
        tickets, self._tickets = self._tickets, {}
        single, self._single = self._single, []
        for variant, ticket in tickets.items():
            response = self._ok[variant] if ok else _WRITE_FAILED
            responses[response.status] += len(ticket.waiters)
            ticket.resolve(response)
        for ticket, response in single:
            if not ok:
                response = _WRITE_FAILED
            responses[response.status] += 1
            ticket.resolve(response)
