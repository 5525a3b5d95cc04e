"""The event registry and beacon validation: parameters in, a spool row or a Rejection out.

Pure: no I/O, no clock, no ClickHouse. The hot path does only what the acknowledgement needs
(split on '&'/'=', check the few typed fields); decoding every value into typed columns is done
by ClickHouse in the materialized view `analytics.events_mv` (schema/001_events.sql).
"""
from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Iterable
from urllib.parse import unquote_to_bytes

import orjson

# ---------------------------------------------------------------------------------------------
# Field catalogue: parameter name -> (column name, type). Types: "int", "float", "str".

_DOCUMENT_FIELDS = {
    "eventType": ("event_type", "int"),
    "partnerId": ("partner_id", "int"),
    "entryId": ("entry_id", "str"),
    "flavourId": ("flavour_id", "str"),
    "sessionId": ("session_id", "str"),
    "eventIndex": ("event_index", "int"),
    "bufferTime": ("buffer_time", "float"),
    "actualBitrate": ("actual_bitrate", "float"),
    "preferredBitrate": ("preferred_bitrate", "float"),
    "referrer": ("referrer", "str"),
    "deliveryType": ("delivery_type", "str"),
    "playbackType": ("playback_type", "str"),
    "kalsig": ("kalsig", "str"),
    "sessionStartTime": ("session_start_time", "int"),
    "uiConfId": ("ui_conf_id", "int"),
    "clientVer": ("client_ver", "str"),
    "clientTag": ("client_tag", "str"),
    "position": ("position", "float"),
    "playbackContext": ("playback_context", "str"),
    "customVar1": ("custom_var1", "str"),
    "customVar2": ("custom_var2", "str"),
    "customVar3": ("custom_var3", "str"),
    "socialNetwork": ("social_network", "str"),
    "reportType": ("report_type", "str"),
    "targetPosition": ("target_position", "float"),
    "caption": ("caption", "str"),
    "playbackSpeed": ("playback_speed", "float"),
    # ks is a credential: it is never stored raw (see ingestd.ks), so it has no column here.
    "ks": (None, "str"),
}

# Parameters the Kaltura player's KAVA plugin sends beyond the document.
_KAVA_FIELDS = {
    "userId": ("user_id", "str"),
    "applicationVer": ("application_ver", "str"),
    "playlistId": ("playlist_id", "str"),
    "bufferTimeSum": ("buffer_time_sum", "float"),
    "playTimeSum": ("play_time_sum", "float"),
    "averageBitrate": ("average_bitrate", "float"),
    "joinTime": ("join_time", "float"),
    "canPlay": ("can_play", "float"),
    "playerJSLoadTime": ("player_js_load_time", "float"),
    "audioLanguage": ("audio_language", "str"),
    "captionsLanguage": ("captions_language", "str"),
    "soundMode": ("sound_mode", "int"),
    "tabMode": ("tab_mode", "int"),
    "forwardBufferHealth": ("forward_buffer_health", "float"),
    "manifestDownloadTime": ("manifest_download_time", "float"),
    "segmentDownloadTime": ("segment_download_time", "float"),
    "bandwidth": ("bandwidth", "float"),
    "droppedFramesRatio": ("dropped_frames_ratio", "float"),
    "targetBuffer": ("target_buffer", "float"),
    "networkConnectionType": ("network_connection_type", "str"),
    "networkConnectionOverhead": ("network_connection_overhead", "float"),
    "flavorParamsId": ("flavor_params_id", "int"),
    "language": ("language", "str"),
    "errorCode": ("error_code", "str"),
    "errorDetails": ("error_details", "str"),
    "errorPosition": ("error_position", "int"),
    "playerSkin": ("player_skin", "str"),
    "virtualEventId": ("virtual_event_id", "int"),
    "persistentSessionId": ("persistent_session_id", "str"),
    "application": ("application", "str"),
    "kalturaApplication": ("kaltura_application", "str"),
    "kalturaApplicationVer": ("kaltura_application_ver", "str"),
    "buttonName": ("button_name", "str"),
    "buttonType": ("button_type", "str"),
    "buttonValue": ("button_value", "str"),
    "buttonInfo": ("button_info", "str"),
    "pageName": ("page_name", "str"),
    "pageType": ("page_type", "str"),
    "pageLoadType": ("page_load_type", "str"),
}

FIELDS: dict[str, tuple[str | None, str]] = {**_DOCUMENT_FIELDS, **_KAVA_FIELDS}
COLUMNS: dict[str, str] = {name: col for name, (col, _) in FIELDS.items() if col}

# ---------------------------------------------------------------------------------------------
# Event types: the document's 25, then KAVA's and the application events.

_BASE = ("eventType", "partnerId", "entryId", "flavourId", "sessionId", "eventIndex")
_PLAYBACK = _BASE + ("bufferTime", "actualBitrate", "preferredBitrate")
_APP_BASE = ("eventType", "partnerId", "sessionId", "eventIndex")

# type id -> (name, required parameters, from the document?)
_TYPES: dict[int, tuple[str, tuple[str, ...], bool]] = {
    1: ("Player Impression", _BASE, True),
    2: ("Play Requested", _BASE, True),
    3: ("Play", _PLAYBACK, True),
    4: ("Resume", _PLAYBACK, True),
    11: ("Play reached 25%", _BASE, True),
    12: ("Play reached 50%", _BASE, True),
    13: ("Play reached 75%", _BASE, True),
    14: ("Play reached 100%", _BASE, True),
    21: ("Share Clicked", _BASE, True),
    22: ("Shared", _BASE + ("socialNetwork",), True),
    23: ("Download clicked", _BASE, True),
    24: ("Report clicked", _BASE, True),
    25: ("Report submitted", _BASE + ("reportType",), True),
    31: ("Enter fullscreen", _BASE, True),
    32: ("Exit fullscreen", _BASE, True),
    33: ("Pause clicked", _BASE, True),
    34: ("Replay clicked", _BASE, True),
    35: ("Seek", _BASE + ("targetPosition",), True),
    36: ("relatedClicked", _BASE, True),
    37: ("relatedSelected", _BASE, True),
    38: ("captions", _BASE + ("caption",), True),
    39: ("sourceSelected", _BASE, True),
    40: ("info", _BASE, True),
    41: ("speed", _BASE + ("playbackSpeed",), True),
    99: ("View", _PLAYBACK, True),
    # KAVA beyond the document
    15: ("Play reached 90%", _BASE, False),
    42: ("Audio selected", _BASE + ("language",), False),
    43: ("Flavor switch", _BASE + ("actualBitrate",), False),  # what KAVA sends with it (kava-event-model)
    45: ("Buffer start", _BASE, False),
    46: ("Buffer end", _BASE, False),
    98: ("Error", _BASE + ("errorCode",), False),
    10002: ("Button clicked", _APP_BASE + ("buttonName", "buttonType"), False),
    10003: ("Page load", _APP_BASE + ("pageName", "pageType"), False),
}

APPLICATION_EVENT_TYPES = frozenset({10002, 10003})


@dataclass(frozen=True, slots=True)
class EventType:
    id: int
    name: str
    required: frozenset[str]
    optional: frozenset[str]
    in_document: bool

    @property
    def label(self) -> str:
        return f"eventType {self.id} ({self.name})"


def _build_registry() -> dict[int, EventType]:
    registry = {}
    for type_id, (name, required, in_document) in _TYPES.items():
        # every known parameter is optional where not required: players send the type-specific
        # ones (playbackSpeed, caption, …) on other events too, and each has its column
        optional = frozenset(FIELDS)
        registry[type_id] = EventType(
            type_id, name, frozenset(required), optional - frozenset(required), in_document
        )
    return registry


REGISTRY: dict[int, EventType] = _build_registry()
# bytes keys for the hot path, which never decodes a parameter name unless it is escaped
_REGISTRY_BY_RAW: dict[bytes, EventType] = {str(k).encode(): v for k, v in REGISTRY.items()}
# numeric fields checked generically; eventType and partnerId have their own rules in validate()
_NUMERIC_RAW = {n.encode(): (n, t) for n, (_, t) in FIELDS.items()
                if t != "str" and n not in ("eventType", "partnerId")}
_REQUIRED_RAW = {t.id: tuple((n, n.encode()) for n in sorted(t.required)) for t in REGISTRY.values()}
# every name validate() reads is a registry field (required names included)
_FIELDS_RAW = frozenset(n.encode() for n in FIELDS)
assert all(raw in _FIELDS_RAW for names in _REQUIRED_RAW.values() for _, raw in names)

# ---------------------------------------------------------------------------------------------
# Rejections: a small fixed set of reasons (metric labels) with a specific one-line message.

REASONS = (
    "missing_event_type", "unknown_event_type", "missing_partner_id", "bad_partner_id",
    "missing_entry_id", "bad_number", "missing_required", "unsupported_service", "bad_request",
)


class Rejection(Exception):
    """A beacon that fails validation: `reason` is one of REASONS, `message` is for the client."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


# Numbers exactly as ClickHouse's toInt64OrNull / toFloat64OrNull read them back (checked against
# chDB in tests/integration/test_beacon.py): an optional sign, no spaces, no hex, no '_'.
_INT_RE = re.compile(rb"[-+]?[0-9]+")
_FLOAT_RE = re.compile(rb"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
# Plain digits this short are always a valid Int64 and a finite Float64: no decoding, no regex.
_SHORT_DIGITS = 18


def number_error(value: bytes, kind: str) -> str | None:
    """Why a decoded value is not a storable number of `kind` ("int" or "float"), or None if it is."""
    if kind == "int":
        if not _INT_RE.fullmatch(value):
            return "is not an integer"
        # leading zeros are fine; more than 19 significant digits never fit (and int() of a huge
        # string raises ValueError past 4300 digits)
        if len(value.lstrip(b"+-").lstrip(b"0")) > 19 or not _INT64_MIN <= int(value) <= _INT64_MAX:
            return "is out of the 64-bit integer range"
        return None
    if not _FLOAT_RE.fullmatch(value):  # also refuses nan/inf spelled out, which ClickHouse would take
        return "is not a number"
    if not math.isfinite(float(value)):  # 1e400 overflows to inf in ClickHouse too
        return "is not a finite number"
    return None


_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_FORM_TOKEN = re.compile(rb"\+|%[0-9A-Fa-f]{2}|%.{0,2}", re.DOTALL)


def _form_token(match: re.Match) -> bytes:
    token = match.group()
    if token == b"+":
        return b" "
    if len(token) == 3 and _BAD_ESCAPE.match(token) is None:
        return bytes((int(token[1:], 16),))
    return token  # a bad escape: '%' and the two characters after it, verbatim


def form_decode(raw: bytes) -> bytes:
    """Decode one application/x-www-form-urlencoded component ('+' is a space); never raises.

    Byte for byte what ClickHouse's decodeURLFormComponent makes of it (the view stores that):
    a bad escape such as '%zz' or a trailing '%' is kept together with the two characters after
    it. The result may be invalid UTF-8 (the view makes it valid, see 001_events.sql).
    """
    if b"%" not in raw:
        return raw.replace(b"+", b" ") if b"+" in raw else raw
    if _BAD_ESCAPE.search(raw) is None:  # the common case: every escape is well formed
        return unquote_to_bytes(raw.replace(b"+", b" ") if b"+" in raw else raw)
    return _FORM_TOKEN.sub(_form_token, raw)


def split_query(query: bytes) -> dict[bytes, bytes]:
    """Split a query string into {name: raw value}; the first of repeated names wins.

    Values stay percent-encoded: most need no decoding to be validated, and ClickHouse decodes
    them at insert time. Names are decoded only when they contain an escape.
    """
    # Fast path, ~2x the loop below: partition every pair in one comprehension and let dict() keep
    # the first of repeated names (pairs reversed); then one scan of the joined names for escapes.
    pairs = query.split(b"&")
    pairs.reverse()
    params = dict([pair.partition(b"=")[::2] for pair in pairs])
    names = b"&".join(params)
    if b"%" not in names and b"+" not in names:
        params.pop(b"", None)
        return params
    params = {}
    for pair in query.split(b"&"):
        name, _, value = pair.partition(b"=")
        if b"%" in name or b"+" in name:
            name = form_decode(name)
        if name and name not in params:
            params[name] = value
    return params


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _check_number(name: str, kind: str, value: bytes, label: str, encoded: bool) -> None:
    if len(value) <= _SHORT_DIGITS and value.isdigit():  # the common case
        return
    if encoded:
        value = form_decode(value)
    problem = number_error(value, kind)
    if problem:
        raise Rejection("bad_number", f"{label}: {name} {_shorten(value)!r} {problem}")


def _shorten(value: bytes, limit: int = 40) -> str:
    text = _text(value)
    return text if len(text) <= limit else text[:limit] + "…"


def body_params(obj: dict) -> dict[bytes, bytes]:
    """A JSON object body as raw parameters (values JSON-decoded, so already plain text)."""
    return json_params(obj)[0]


def json_params(obj: dict) -> tuple[dict[bytes, bytes], dict[str, str]]:
    """A JSON object body as raw parameters to validate and as the text map the row stores.

    One pass builds both (the hot path for JSON players): each value's text is made once.
    """
    raw_params: dict[bytes, bytes] = {}
    texts: dict[str, str] = {}
    key_bytes = _JSON_KEY_BYTES
    for key, value in obj.items():
        if not key:  # as split_query skips nameless pairs
            continue
        raw_key = key_bytes.get(key)  # players send the same ~30 names every time: encode them once
        if raw_key is None:
            raw_key = key.encode("utf-8", "surrogatepass")
            if len(raw_key) <= CACHED_NAME_BYTES:  # a name is a few words: a long one is not kept
                if len(key_bytes) >= JSON_KEY_CACHE_ENTRIES:
                    key_bytes.clear()
                key_bytes[key] = raw_key
        kind = type(value)  # exact types first: most values are str or int (bool is not int here)
        if kind is str:
            texts[key] = value
            raw_params[raw_key] = value.encode("utf-8", "surrogatepass")
            continue
        if kind is int:
            text = "%d" % value
        elif value is None:
            text = ""
        elif kind is bool:
            text = "true" if value else "false"
        else:
            try:
                text = orjson.dumps(value).decode()
            except orjson.JSONEncodeError:  # orjson reads 1024 levels but writes 254
                raise Rejection("bad_request", TOO_DEEP) from None
        texts[key] = text
        raw_params[raw_key] = text.encode()
    return raw_params, texts


TOO_DEEP = "body is JSON nested too deeply to be stored (orjson writes at most 254 levels)"
JSON_KEY_CACHE_ENTRIES = 4096  # distinct JSON names kept encoded; cleared when full
CACHED_NAME_BYTES = 64  # longer names (the longest field name has 25) are encoded each time, never kept
_JSON_KEY_BYTES: dict[str, bytes] = {}


@dataclass(frozen=True, slots=True)
class Validated:
    """What the spool needs of a valid beacon besides its raw parameters."""

    event_type: EventType
    missing: list[str]


def validate(query: dict[bytes, bytes], body: dict[bytes, bytes] | None, strict: bool) -> Validated:
    """Check one beacon. `query` values are still form-encoded; `body` values (JSON) are plain.

    Raises Rejection with a one-line reason; returns the event type and the names of required
    fields that are missing or empty (accepted in default mode, rejected in strict mode).
    """
    if body:
        if query.keys().isdisjoint(_FIELDS_RAW):
            # the common JSON beacon: only service/action in the query string, nothing it could
            # override that is checked here, so the body is read as it is (no decode, no copy)
            merged = body
        else:
            decoded = {k: form_decode(v) for k, v in query.items()}
            merged = {**body, **decoded}  # the query string wins over the body
        encoded = False
    else:
        merged = query
        encoded = True
    raw_type = merged.get(b"eventType")
    if not raw_type:
        raise Rejection("missing_event_type", "eventType is missing")
    event_type = _REGISTRY_BY_RAW.get(raw_type)
    if event_type is None:
        plain_type = form_decode(raw_type) if encoded else raw_type
        # spaces only, as the view's trimBoth: bytes.strip() also takes \t\n\r\v\f, which the
        # view keeps (toUInt16OrZero then stores event_type 0)
        plain_type = plain_type.strip(b" ")
        if plain_type.isdigit():  # leading zeros (03): the view reads the number, so does this
            plain_type = plain_type.lstrip(b"0") or b"0"
        event_type = _REGISTRY_BY_RAW.get(plain_type)
        if event_type is None:
            raise Rejection("unknown_event_type", f"eventType {_shorten(plain_type)!r} is not a known event type")
    partner = merged.get(b"partnerId")
    if not partner:
        raise Rejection("missing_partner_id", f"{event_type.label}: partnerId is missing")
    if not (len(partner) <= _SHORT_DIGITS and partner.isdigit()):
        plain = form_decode(partner) if encoded else partner
        problem = number_error(plain, "int")
        if problem:
            raise Rejection("bad_partner_id", f"{event_type.label}: partnerId {_shorten(plain)!r} {problem}")
    if event_type.id not in APPLICATION_EVENT_TYPES and not merged.get(b"entryId"):
        raise Rejection("missing_entry_id", f"{event_type.label}: entryId is missing or empty")
    for raw_name in _NUMERIC_RAW.keys() & merged.keys():
        raw = merged[raw_name]
        # Fast path, checked inline (a call, a decode and a regex cost ~0.5 us per field): empty (a
        # missing field, not a bad number), plain digits, or a plain decimal such as 0.125 or -1,
        # also as the legacy player escapes it (0%2E125). Anything else goes to _check_number.
        if not raw or (len(raw) <= _SHORT_DIGITS and raw.isdigit()):
            continue
        name, kind = _NUMERIC_RAW[raw_name]
        if kind == "float" and len(raw) <= _SHORT_DIGITS:
            plain = raw.replace(b"%2E", b".").replace(b"%2D", b"-") if encoded and b"%" in raw else raw
            if plain.removeprefix(b"-").replace(b".", b"", 1).isdigit():
                continue
        _check_number(name, kind, raw, event_type.label, encoded)
    missing = [name for name, raw_name in _REQUIRED_RAW[event_type.id] if not merged.get(raw_name)]
    if missing and strict:
        raise Rejection("missing_required", f"{event_type.label}: missing {', '.join(missing)}")
    return Validated(event_type, missing)


def describe(types: Iterable[int] | None = None) -> list[str]:
    """One line per event type, for `ingestd events` and docs."""
    rows = []
    for type_id in sorted(types or REGISTRY):
        t = REGISTRY[type_id]
        rows.append(f"{t.id:>6}  {t.name:<20} required: {', '.join(sorted(t.required))}")
    return rows


# ---------------------------------------------------------------------------------------------
# Fast paths. A player build sends the same parameter names in the same order with every beacon,
# so what depends only on the names and the event type (which values must be numbers, which are
# required, where the ks is) is worked out once and cached as a Rule; a beacon then costs a split,
# a tuple of the checked values and one C-level check (a regex over them joined, for a query
# string) instead of a dict and Python steps per parameter. A fast path only ever answers "valid":
# anything unusual returns None and goes through validate(), which stays the one definition of the
# rules (tests/unit/test_fastpaths.py holds the two equal).

RULE_CACHE_ENTRIES = 4096  # (shape, type) rules kept: a few per player build; cleared when full
# What one cached shape may hold: a player sends ~25-40 names of up to ~25 bytes (bench corpus: 37 names,
# 21 bytes). The entry count alone does not bound memory: the sender chooses how many names a shape has
# (a 64 KiB form body holds ~6,000), so a larger shape is not cached and goes to validate() each time.
SHAPE_NAMES = 64
SHAPE_BYTES = 1024  # the names joined
_SEPARATORS_ONLY = bytes(b for b in range(256) if b not in b"&=")  # translate() deletes these
_ALTERNATING = b"=&" * 4096  # the separators of well-formed pairs: = & = & … =
_INT_FIELDS = frozenset(n for n, t in _NUMERIC_RAW.values() if t == "int")
_FLOAT_FIELDS = frozenset(n for n, t in _NUMERIC_RAW.values() if t == "float")
# Values as a player writes them. Numbers short enough to be in range and finite; the legacy
# player escapes '.' and '-' (0%2E125). An empty optional number is a missing field, not a bad one.
# Digit runs are possessive ({m,n}+): what follows them is never a digit, so backtracking into them
# cannot match, and not keeping the states to try saves ~15 % of the match.
_DIGITS = rb"[0-9]{1,18}+"
_DECIMAL = rb"(?:-|%2[Dd])?(?:[0-9]{1,18}+(?:(?:\.|%2[Ee])[0-9]{0,18}+)?|(?:\.|%2[Ee])[0-9]{1,18}+)"
_API_QUERY = b"service=analytics&action=trackEvent"  # the query string of a JSON player's beacon


def _picker(keys: list):
    """A function returning the items at `keys` as a tuple (itemgetter returns a bare item for one)."""
    if not keys:
        return lambda seq: ()
    if len(keys) == 1:
        key = keys[0]
        return lambda seq: (seq[key],)
    return operator.itemgetter(*keys)


def _plan(names) -> dict[str, object] | None:
    """Field name -> where its value is: the index in check_query()'s parts of its first occurrence
    (query), or the key (JSON); None if validate() must decide."""
    at: dict = {}
    for index, name in enumerate(names):
        if type(name) is bytes:
            if b"%" in name or b"+" in name:
                return None  # an escaped name: validate() decodes it
            name = name.decode("latin-1")
            index = 2 * index + 1  # where its value is in check_query()'s parts
        else:
            index = name
            if not name:
                return None  # a nameless JSON field is dropped, as split_query drops a nameless pair
        if name == "ks" and "ks" in at:
            return None  # a repeated ks: every copy must be stripped (ks.strip_from_query)
        at.setdefault(name, index)
    return at


_NUMERIC_FIELDS = _INT_FIELDS | _FLOAT_FIELDS


def _required_texts(at: dict, event_type: EventType) -> tuple[list[str], tuple[str, ...]] | None:
    """(required non-numeric names present, which must not be empty; required names absent) for a
    shape and type; None when the shape cannot be valid fast (no partnerId, or no entryId where needed)."""
    if "partnerId" not in at:
        return None
    required = event_type.required
    texts = (required & at.keys()) - _NUMERIC_FIELDS - {"eventType", "partnerId"}
    if event_type.id not in APPLICATION_EVENT_TYPES:
        if "entryId" not in at:
            return None
        texts.add("entryId")
    return sorted(texts), tuple(name for name in sorted(required) if name not in at)


def _query_rule(at: dict, event_type: EventType, api: bool) -> tuple | None:
    """(event type, checked, pattern, missing, ks value's index) for query strings of this shape and type.

    `checked` picks the values the pattern checks, joined with '&' (a value never holds '&' or '=':
    check_query() split on them): the numbers, and the required texts, which must not be empty."""
    texts = _required_texts(at, event_type)
    if texts is None or (api and ("service" not in at or "action" not in at)):
        return None
    texts, missing = texts
    required = event_type.required
    checks = [("partnerId", _DIGITS)]
    if api:
        checks += [("service", b"analytics"), ("action", b"trackEvent")]
    for name in sorted(_NUMERIC_FIELDS & at.keys()):
        number = _DIGITS if name in _INT_FIELDS else _DECIMAL
        # an empty required field is missing, which validate() reports (in order): not fast
        checks.append((name, number if name in required else b"(?:" + number + b")?"))
    checks += [(name, rb"[^&]++") for name in texts]
    return (
        event_type,
        _picker([at[name] for name, _ in checks]),
        re.compile(b"&".join(check for _, check in checks)),
        missing,
        at.get("ks"),
    )


def _json_rule(at: dict, event_type: EventType) -> tuple | None:
    """(event type, checked, ints, numbers, kinds seen, missing, has ks) for JSON bodies of this shape
    and type. `checked` picks the values that must be integers (the first `ints`), then numbers (up to
    `numbers`), then non-empty strings; `kinds seen` holds their type tuples found valid so far."""
    texts = _required_texts(at, event_type)
    if texts is None:
        return None
    texts, missing = texts
    ints = ["partnerId"] + sorted(_INT_FIELDS & at.keys())
    numbers = ints + sorted(_FLOAT_FIELDS & at.keys())
    return (event_type, _picker(numbers + texts), len(ints), len(numbers), set(), missing, "ks" in at)


KINDS_PER_RULE = 64  # type tuples remembered per JSON rule: a number field may come as int or float


def _valid_kinds(kinds: tuple, ints: int, numbers: int) -> bool:
    """Integers (not bool), then numbers, then strings: see _json_rule()."""
    return (all(kind is int for kind in kinds[:ints])
            and all(kind is int or kind is float for kind in kinds[ints:numbers])  # orjson: finite
            and all(kind is str for kind in kinds[numbers:]))


class _Shape:
    """The query strings with one list of names: where eventType is, and a rule per type seen."""

    __slots__ = ("at", "event_type", "rules")

    def __init__(self, at: dict):
        self.at = at
        self.event_type = at["eventType"]
        self.rules: dict[bytes, tuple | None] = {}  # raw eventType -> _query_rule()


_SHAPES: tuple[dict, dict] = ({}, {})  # [api] names joined with '&' -> _Shape, or None (validate() decides)
_JSON_RULES: dict[tuple, tuple | None] = {}  # (keys, eventType) -> _json_rule()
# What the entries hold beyond themselves, counted so that it is bounded too (a shape keeps a rule, with
# its compiled pattern, per event type sent with it; a JSON rule up to KINDS_PER_RULE type tuples):
# rules in _SHAPES[False], in _SHAPES[True], type tuples in _JSON_RULES. Past the bound, that cache is cleared.
_KEPT = [0, 0, 0]
KINDS_KEPT = 4 * RULE_CACHE_ENTRIES


def _cache(cache: dict, key, value, slot: int):
    if len(cache) >= RULE_CACHE_ENTRIES:
        cache.clear()
        _KEPT[slot] = 0
    cache[key] = value
    return value


def _keep(slot: int, cache: dict, bound: int) -> None:
    """Count one more thing held by `cache`'s entries (see _KEPT); past `bound`, empty the cache first."""
    if _KEPT[slot] >= bound:
        cache.clear()
        _KEPT[slot] = 0
    _KEPT[slot] += 1


def _shape(names: list[bytes]) -> _Shape | None:
    at = _plan(names)
    return _Shape(at) if at is not None and "eventType" in at else None


def check_query(query: bytes, api: bool, strict: bool) -> tuple[EventType, tuple, int | None, list] | None:
    """(event type, missing required names, where the ks value is in the parts or None, the parts) of
    a valid form-encoded beacon, or None when the fast path cannot tell (then validate() decides).
    The parts are the query split into [name, value, name, value, …] (see ks.cut_pair)."""
    parts = query.replace(b"&", b"=").split(b"=")
    count = len(parts)
    # every pair must be name=value with one '=': then names and values alternate in `parts`
    # (an odd count is a last pair without '='; the separators are always count - 1)
    if count & 1 or not _ALTERNATING.startswith(query.translate(None, _SEPARATORS_ONLY)):
        return None
    names = parts[::2]
    key = b"&".join(names)
    shapes = _SHAPES[api]
    shape = shapes.get(key, False)
    if shape is False:
        if len(names) > SHAPE_NAMES or len(key) > SHAPE_BYTES:
            return None  # not cached: see SHAPE_NAMES
        shape = _cache(shapes, key, _shape(names), api)
    if shape is None:
        return None
    raw_type = parts[shape.event_type]
    rule = shape.rules.get(raw_type, False)
    if rule is False:
        event_type = _REGISTRY_BY_RAW.get(raw_type)
        if event_type is None:
            return None  # not cached: any bytes could come here
        _keep(api, shapes, RULE_CACHE_ENTRIES)  # (this shape's rule is still made, for this request)
        rule = shape.rules[raw_type] = _query_rule(shape.at, event_type, api)
    if rule is None:
        return None
    event_type, checked, pattern, missing, ks = rule
    if pattern.fullmatch(b"&".join(checked(parts))) is None or (missing and strict):
        return None
    return event_type, missing, ks, parts


def check_json(obj: dict, query: bytes, api: bool, strict: bool) -> tuple[EventType, list[str], str | None] | None:
    """check_query() for a JSON body whose query string is service=analytics&action=trackEvent as the
    player sends it (or empty, off the API path): (event type, missing, the ks or None), or None.
    `obj` is as orjson.loads() makes it: integers from -2**63 up (past 64 bits it gives floats)."""
    if query != _API_QUERY and (api or query):
        return None
    raw_type = obj.get("eventType")
    if type(raw_type) is not int:
        return None
    key = (tuple(obj), raw_type)
    rule = _JSON_RULES.get(key, False)
    if rule is False:
        event_type = REGISTRY.get(raw_type)
        if event_type is None:
            return None  # not cached: any number could come here
        if len(key[0]) > SHAPE_NAMES or sum(map(len, key[0])) > SHAPE_BYTES - SHAPE_NAMES:
            return None  # not cached: see SHAPE_NAMES (the names' characters, without the '&' a query has)
        at = _plan(key[0])
        rule = _cache(_JSON_RULES, key, _json_rule(at, event_type) if at is not None else None, 2)
    if rule is None:
        return None
    event_type, checked, ints, numbers, kinds_seen, missing, has_ks = rule
    values = checked(obj)
    # one tuple of types, usually one of the few this shape always sends; anything else (a bool, a
    # string or null where a number goes, an empty optional number, a required text that is not a
    # string) goes to validate(), which tells what is wrong
    kinds = tuple(map(type, values))
    if kinds not in kinds_seen:
        if not _valid_kinds(kinds, ints, numbers):
            return None
        if len(kinds_seen) < KINDS_PER_RULE:
            _keep(2, _JSON_RULES, KINDS_KEPT)  # (this rule is still used, for this request)
            kinds_seen.add(kinds)
    if max(values[:ints]) > _INT64_MAX or "" in values[numbers:]:
        return None  # an integer past Int64, or a required text that is empty
    if missing and strict:
        return None
    if not has_ks:
        return event_type, missing, None
    ks = obj["ks"]
    return (event_type, missing, ks) if type(ks) is str else None
