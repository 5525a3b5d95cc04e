"""Kaltura sessions (`ks`): bearer credentials that are never stored raw.

What is not secret is decoded and kept (partner id, user id, expiry, privileges) with a SHA-256
digest for joining; the raw value is removed from everything that is stored.
KS v1 is base64 of `signature|partnerId;partnerPattern;expiry;type;random;userId;privileges;…`;
KS v2 is base64 of `v2|partnerId|<encrypted bytes>`. A KS that decodes to neither is stored as "undecodable".
"""
from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
from urllib.parse import quote_from_bytes

import orjson

from .events import form_decode

_DIGITS = re.compile(r"-?[0-9]{1,18}")


def digest(ks: bytes) -> str:
    """A stable, non-reversible identity of a KS (it is a high-entropy token, so no key is needed)."""
    return hashlib.sha256(ks).hexdigest()[:32]


def describe(ks: bytes) -> dict[str, str]:
    """Decode a ks value (already form-decoded) into the non-secret fields stored in `ks_*` columns."""
    ks = ks.strip()
    info = {"hash": digest(ks), "status": "undecodable"}
    try:
        # '+' arrives as ' ' when a client did not escape it; '-'/'_' are the URL-safe alphabet
        padded = ks.replace(b" ", b"+").replace(b"-", b"+").replace(b"_", b"/")
        padded += b"=" * (-len(padded) % 4)
        plain = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        plain = b""
    for v2 in (plain, ks):  # KS v2 is base64 of `v2|partnerId|<encrypted bytes>`; seen unencoded too
        if v2.startswith(b"v2|"):
            partner = v2.split(b"|", 2)[1] if v2.count(b"|") >= 2 else b""
            if _DIGITS.fullmatch(partner.decode("ascii", "replace")):
                info.update(status="v2", partner_id=partner.decode())
            return info
    signature, sep, payload = plain.decode("utf-8", "replace").partition("|")
    fields = payload.split(";")
    if not sep or len(fields) < 7 or not _DIGITS.fullmatch(fields[0]) or not _DIGITS.fullmatch(fields[2]):
        return info
    info.update(
        status="v1", partner_id=fields[0], expiry=fields[2], user_id=fields[5], privileges=fields[6]
    )
    return info


MASK = b"<redacted>"
_UNRESERVED = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"  # never percent-encoded
_MASK_TEXT = MASK.decode()
_BASE64 = _UNRESERVED + b"+/="
ECHO_VALUES = 8  # distinct ks values (of each kind) whose echoes are searched for in one text
MIN_SECRET_BYTES = 16  # shorter ks values are not searched for elsewhere (they would match innocent text)
# "ks": value in JSON-like text, also with \u-escaped letters; the value up to its closing quote
_JSON_KS = re.compile(rb'"(?:k|\\u006[bB])(?:s|\\u0073)"\s*:\s*(?:"(?:[^"\\]|\\.)*"?|[^,}\]\s]*)')
_JSON_KS_VALUE = re.compile(rb'"(?:k|\\u006[bB])(?:s|\\u0073)"\s*:\s*"((?:[^"\\]|\\.)*)')  # a string value's content
# a multipart/form-data part named ks: its headers, a blank line, then the value up to the line's end
# Each quantifier before the value is bounded: unbounded ones retried the rest of the text from every
# 'name=ks' (b"name=ks\n" * 8192, a rejected 64 KiB body, took 5 s); a part whose headers do not fit is
# not read here, and then its name, left unmasked, masks the whole body (names_ks_unmasked)
_MULTIPART_KS = re.compile(
    rb'name\s{0,8}=\s{0,8}(?:"ks"|ks\b)[^\r\n]{0,200}\r?\n(?:[^\r\n]{1,200}\r?\n){0,4}\r?\n([^\r\n]*)',
    re.IGNORECASE)
# `ks` as a name in any syntax (a token, also escaped); each one left must be followed closely by the mask
# (searched for in the lower-cased text, its left edge checked by hand: a lookbehind tried at every position
# is ~3x slower)
_KS_NAME = re.compile(rb'(?:k|%6b|\\u006b)(?:s|%73|\\u0073)(?![a-z0-9_])')
_WORD = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789_")
_MASK_WITHIN = 200  # bytes between a name and its masked value: a multipart part's headers fit
# what may follow a name before its value, as sent or percent-encoded: quotes, spaces, then = : or >
_ENDS_NAME = re.compile(rb'(?:[\s"\'+\\]|%2[02]|%27|%5c|\\u0022){0,4}(?:[=:>]|%3[ade]|\\u003[ade])')


def _literal_ks_pairs(query: bytes) -> list[tuple[int, int]]:
    """(start, end) of every pair whose name is literally `ks`, found with find() (no split, no decoding)."""
    spans = []
    size = len(query)
    pos = query.find(b"ks")
    while pos >= 0:
        after = pos + 2
        if (pos == 0 or query[pos - 1] == 38) and (after == size or query[after] in (38, 61)):  # '&', '='
            end = query.find(b"&", after)
            spans.append((pos, size if end < 0 else end))
        pos = query.find(b"ks", after)
    return spans


def strip_from_query(query: bytes, mask: bytes = b"") -> bytes:
    """The query string without its ks parameter(s); with `mask`, their values replaced by it.

    Names are compared decoded (`%6Bs` is `ks`), and a ks value that also appears elsewhere in the
    query (a referrer URL that carried it, say) is masked there too.
    """
    # Fast path (~3x the pair loop below on a 700-byte beacon): with no '%6B'/'%6b'/'%73' escape
    # anywhere, only a literal `ks` name decodes to ks, and one such pair is cut out by slicing.
    if b"%6B" not in query and b"%6b" not in query and b"%73" not in query:
        spans = _literal_ks_pairs(query)
        if not spans:
            return query
        if len(spans) == 1:
            start, end = spans[0]
            value = query[start + 3:end]  # after 'ks=' ('' for a bare 'ks')
            if mask:
                out = query[:start] + b"ks=" + mask + query[end:]
            elif start == 0:
                out = query[end + 1:]
            else:
                out = query[:start - 1] + query[end:]
            return _mask_echoes(out, [value])
    pairs = query.split(b"&")
    kept = []
    values = []
    for pair in pairs:
        name, _, value = pair.partition(b"=")
        if name == b"ks" or ((b"%" in name or b"+" in name) and form_decode(name) == b"ks"):
            values.append(value)
            if mask:
                kept.append(name + b"=" + mask)
        else:
            kept.append(pair)
    if not values:
        return query
    return _mask_echoes(b"&".join(kept), values)


def cut_pair(query: bytes, parts: list[bytes], at: int) -> tuple[bytes, bytes]:
    """(the query without the pair whose value is parts[at], that value), given the query split into
    [name, value, name, value, …] with exactly one ks pair (events.check_query's fast path):
    the pair is found by its separators, with no search for escaped spellings of the name."""
    value = parts[at]
    if at == 1:  # the first pair: 'ks=' value '&'
        out = query[len(value) + 4:]
    else:  # '&ks=' is there once: no name or value holds '&' or '=', and ks is not repeated
        start = query.find(b"&ks=")
        out = query[:start] + query[start + 4 + len(value):]
    probe = value[:MIN_SECRET_BYTES]  # _mask_echoes() inlined: this runs for every beacon with a ks
    # find() and int needles ('%', '+', '/'): `bytes in bytes` first tries the needle as an int (~85 ns);
    # an echo may spell those three otherwise, so the probe would not find it
    if len(probe) == MIN_SECRET_BYTES and (out.find(probe) >= 0 or 37 in probe or 43 in probe or 47 in probe):
        out = mask_values(out, [value])
    return out, value


def _first_distinct(values) -> list:
    """The first ECHO_VALUES distinct values: a client sends one ks, two at most, and the echoes of each
    cost a scan of the text per spelling (a 64 KiB body holds 3,000 ks pairs)."""
    return list(dict.fromkeys(values))[:ECHO_VALUES]


def _mask_echoes(out: bytes, values: list[bytes]) -> bytes:
    """`out` with the ks values masked wherever else they appear."""
    # Echoes are rare: look for one only when a ks prefix recurs (or is escaped, so it cannot be probed).
    for value in _first_distinct(values):
        probe = value[:MIN_SECRET_BYTES]
        if len(probe) == MIN_SECRET_BYTES and (probe in out or b"%" in probe or b"+" in probe or b"/" in probe):
            return mask_values(out, values)
    return out


def _spellings(plain: bytes) -> tuple[bytes, ...]:
    """How a plain ks value is spelled inside another value: as it is, without its padding, and
    percent-encoded once or twice (a referrer URL that carried it, itself encoded as a parameter),
    with '/' escaped or kept as encodeURIComponent and Python's quote() write it."""
    core = plain.rstrip(b"=")  # a prefix of every padded spelling: masking it leaves only the padding
    if core.translate(None, _BASE64):  # not Base64: quote() in Python, byte by byte
        once = quote_from_bytes(core, safe=b"").encode()
        once_slash = quote_from_bytes(core, safe=b"/").encode()
    else:  # a Base64 ks (also URL-safe): only '+', '/' and '=' are escaped, as quote() does
        once_slash = core.replace(b"+", b"%2B").replace(b"=", b"%3D")
        once = once_slash.replace(b"/", b"%2F")
    return (plain, core, once, once_slash, once.replace(b"%", b"%25"), once_slash.replace(b"%", b"%25"))


def secret_forms(values: list[bytes], plain: list[bytes] = ()) -> list[bytes]:
    """The ways these ks values could be spelled elsewhere, longest first: `values` as sent in a query
    string or form body (raw, also with its escapes escaped again), `plain` as a JSON body holds them;
    each also decoded, without padding, and percent-encoded once and twice (see _spellings)."""
    forms = set()
    values = _first_distinct(values)
    for raw in values:
        forms.add(raw)
        if b"%" in raw:
            forms.add(raw.replace(b"%", b"%25"))  # the value as sent, encoded again inside another value
    # each decoded (a query string's) or as it is (a JSON body's)
    for value in [form_decode(raw) for raw in values] + _first_distinct(plain):
        value = value.strip()
        if len(value) >= MIN_SECRET_BYTES:
            forms.update(_spellings(value))
            if b" " in value:  # a '+' sent unescaped: decoded to ' ', echoed as '+' or '%2B'
                forms.update(_spellings(value.replace(b" ", b"+")))
    # '/' written as '\/' inside JSON text (PHP's json_encode does so by default): a body that fails to parse
    forms.update([form.replace(b"/", b"\\/") for form in forms if b"/" in form])
    return sorted((form for form in forms if len(form) >= MIN_SECRET_BYTES), key=len, reverse=True)


def mask_values(text: bytes, values: list[bytes], plain: list[bytes] = ()) -> bytes:
    """`text` with every spelling of the given ks values (see secret_forms) replaced by the mask."""
    return mask_forms(text, secret_forms(values, plain))


# a percent-escape with a lower-case hex digit: secret_forms() writes upper case (as quote() and
# encodeURIComponent do), .NET's UrlEncode and others lower case
_LOWER_ESCAPE = re.compile(rb"%(?:25)?(?:[0-9A-Fa-f][a-f]|[a-f][0-9A-F])")  # ("%252f" too)
_LOWER_ESCAPE_TEXT = re.compile(_LOWER_ESCAPE.pattern.decode())


@functools.lru_cache(maxsize=512)
def _any_case(form):
    """A pattern matching `form` (bytes or str) with the hex digits of its percent-escapes in either case."""
    text = type(form) is str
    percent = "%" if text else b"%"
    pieces = form.split(percent)
    out = [re.escape(pieces[0])]
    for piece in pieces[1:]:
        digits = 4 if piece[:2] in ("25", b"25") else 2  # '%252F': an escape escaped again holds the inner one's
        hexes = piece[:digits] if text else piece[:digits].decode("latin-1")
        escape = "".join(f"[{c.lower()}{c.upper()}]" if c in "abcdefABCDEF" else re.escape(c) for c in hexes)
        out.append(percent + (escape if text else escape.encode("latin-1")) + re.escape(piece[digits:]))
    return re.compile(percent[:0].join(out))


def mask_forms(text: bytes, forms: list[bytes]) -> bytes:
    """`text` with each of secret_forms() replaced by the mask, its escapes' hex digits in any case."""
    for form in forms:
        if form in text:
            text = text.replace(form, MASK)
    if forms and b"%" in text and _LOWER_ESCAPE.search(text) is not None:  # (only then can one differ by case)
        for form in forms:
            if b"%" in form:
                text = _any_case(form).sub(MASK, text)
    return text


def echoed(row: bytes, ks) -> bool:
    """Whether the ks may be echoed in `row` (spooled bytes from which the ks itself was removed).

    Called for every JSON beacon with a ks, so it is one find(): every spelling of a ks holds its first
    16 characters as they are when none of them is escaped by percent-encoding (letters, digits, '-._~':
    a KS v1 starts with a hex signature, a URL-safe KS v2 with 'djJ8')."""
    probe = ks[:MIN_SECRET_BYTES]
    if type(probe) is str:
        probe = probe.encode("utf-8", "surrogatepass")
    if len(probe) < MIN_SECRET_BYTES or row.find(probe) >= 0:
        return len(probe) >= MIN_SECRET_BYTES
    return not probe.isalnum() and len(probe.translate(None, _UNRESERVED)) > 0


def mask_tree(value, forms: list[str]):
    """A parsed JSON value with the given spellings masked in every string in it, keys included."""
    kind = type(value)
    if kind is str:
        for form in forms:
            if form in value:
                value = value.replace(form, _MASK_TEXT)
        if "%" in value and _LOWER_ESCAPE_TEXT.search(value) is not None:  # escapes in lower case (mask_forms)
            for form in forms:
                if "%" in form:
                    value = _any_case(form).sub(_MASK_TEXT, value)
        return value
    if kind is dict:
        return {mask_tree(k, forms): mask_tree(v, forms) for k, v in value.items()}
    if kind is list:
        return [mask_tree(v, forms) for v in value]
    return value


def mask_ks_keys(value, found: list[bytes]):
    """A parsed JSON value with the value of every "ks" key in it masked, at any depth, also inside JSON
    text (the general path stores a nested object as its text); string values are added to `found`."""
    kind = type(value)
    if kind is dict:
        out = {}
        for key, item in value.items():
            if key == "ks":
                if type(item) is str:
                    found.append(item.encode("utf-8", "surrogatepass"))
                item = _MASK_TEXT
            else:
                item = mask_ks_keys(item, found)
            out[key] = item
        return out
    if kind is list:
        return [mask_ks_keys(item, found) for item in value]
    if kind is str and '"' in value:
        raw = value.encode("utf-8", "surrogatepass")
        if _JSON_KS.search(raw) is not None:
            found += [p for p in (_json_text(m.group(1)) for m in _JSON_KS_VALUE.finditer(raw)) if p]
            return _JSON_KS.sub(b'"ks":"' + MASK + b'"', raw).decode("utf-8", "surrogatepass")
    return value


def text_forms(values: list[bytes], plain: list[bytes] = ()) -> list[str]:
    """secret_forms() as text, to mask parsed JSON with mask_tree()."""
    return [form.decode("utf-8", "replace") for form in secret_forms(values, plain)]


def query_values(query: bytes) -> list[bytes]:
    """The raw values of every ks parameter in a query string or form body (names compared decoded)."""
    values = []
    if b"ks" in query or b"%" in query:
        for pair in query.split(b"&"):
            name, _, value = pair.partition(b"=")
            if name == b"ks" or ((b"%" in name or b"+" in name) and form_decode(name) == b"ks"):
                values.append(value)
    return values


def _json_text(raw: bytes) -> bytes:
    """A JSON string's content (between its quotes) unescaped, or as it is if it does not parse."""
    try:
        text = orjson.loads(b'"' + raw + b'"')
    except orjson.JSONDecodeError:
        return raw
    return text.encode("utf-8", "surrogatepass") if type(text) is str else raw


def _may_name_ks(lowered: bytes) -> bool:
    """Whether a lower-cased text holds any spelling of the name ks (a few finds: most bodies do not;
    a one-byte needle is a memchr)."""
    return b"ks" in lowered or ((b"%" in lowered or b"\\" in lowered) and (
        b"%6b" in lowered or b"\\u006b" in lowered or b"k%73" in lowered or b"k\\u0073" in lowered))


def may_name_ks(data: bytes) -> bool:
    """Whether a text holds any spelling of the name ks: if not, body_secrets() finds nothing in it and
    redact() has nothing to do but mask the spellings of values found elsewhere (mask_forms)."""
    return _may_name_ks(data.lower())


def body_secrets(data: bytes) -> tuple[list[bytes], list[bytes]]:
    """The ks values in a raw body: (as sent in form syntax, plain: JSON strings and multipart parts)."""
    lowered = data.lower()
    if not _may_name_ks(lowered):
        return [], []
    plain = [_json_text(m.group(1)) for m in _JSON_KS_VALUE.finditer(data)] if b'"' in data else []
    if b"name" in lowered:
        plain += [m.group(1) for m in _MULTIPART_KS.finditer(data)]
    return query_values(data), [p for p in plain if p]


def redact(data: bytes, values: list[bytes] = (), plain: list[bytes] = (), forms: list[bytes] | None = None) -> bytes:
    """A raw body as sent (form, JSON, multipart, or broken any way) with every ks value in it masked,
    and every spelling of those values and of `values`/`plain` (ks values found elsewhere, as for
    secret_forms) wherever else it appears. A body that still names a ks in a syntax not understood
    here is replaced by the mask as a whole. `forms`: secret_forms() of all of them, if known."""
    lowered = data.lower()
    if not _may_name_ks(lowered):
        if forms is None:
            forms = secret_forms(values, plain) if values or plain else []
        return mask_forms(data, forms)
    if forms is None:
        found, found_plain = body_secrets(data)
        forms = secret_forms([*values, *found], [*plain, *found_plain])
    data = strip_from_query(data, MASK)
    if b'"' in data:
        data = _JSON_KS.sub(b'"ks":"' + MASK + b'"', data)
    if b"name" in lowered:
        data = _MULTIPART_KS.sub(lambda m: m.group()[:m.start(1) - m.start()] + MASK, data)
    data = mask_forms(data, forms)
    return MASK if names_ks_unmasked(data) else data  # nothing is kept of a syntax not parsed here


def names_ks_unmasked(data: bytes, as_name: bool = False) -> bool:
    """Whether `data`, already masked, still names a ks (in any syntax) not followed closely by the mask.

    `as_name`: only a ks followed by what ends a name (`=`, `:`, `>`, after quotes or spaces, also
    escaped): for a query string, which is form syntax throughout, so that a value that merely holds the
    word (a referrer's `/ks/` path, `eventType=ks`) does not cost the rejected row its whole query."""
    lowered = data.lower()  # (MASK is lower case)
    if not _may_name_ks(lowered):
        return False
    for mention in _KS_NAME.finditer(lowered):
        start, end = mention.span()
        # a name starts a token, also right after an escape (a URL encoded into a parameter: '%3fks%3d')
        edge = start == 0 or lowered[start - 1] not in _WORD or lowered[start - 3:start - 2] == b"%"
        if edge and (not as_name or _ENDS_NAME.match(lowered, end)) and MASK not in lowered[end:end + _MASK_WITHIN]:
            return True
    return False
