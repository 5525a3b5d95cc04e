"""Kaltura sessions (`ks`): bearer credentials that are never stored raw.

What is not secret is decoded and kept (partner id, user id, expiry, privileges) with a SHA-256
digest for joining; the raw value is removed from everything that is stored.
KS v1 is base64 of `signature|partnerId;partnerPattern;expiry;type;random;userId;privileges;…`;
KS v2 is base64 of `v2|partnerId|<encrypted bytes>`. A KS that decodes to neither is stored as "undecodable".
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import re

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
MIN_SECRET_BYTES = 16  # shorter ks values are not searched for elsewhere (they would match innocent text)
# "ks": value in JSON-like text, also with \u-escaped letters; the value up to its closing quote
_JSON_KS = re.compile(rb'"(?:k|\\u006[bB])(?:s|\\u0073)"\s*:\s*(?:"(?:[^"\\]|\\.)*"?|[^,}\]\s]*)')


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
    # find() and int needles ('%', '+'): `bytes in bytes` first tries the needle as an int (~85 ns)
    if len(probe) == MIN_SECRET_BYTES and (out.find(probe) >= 0 or 37 in probe or 43 in probe):
        out = mask_values(out, [value])
    return out, value


def _mask_echoes(out: bytes, values: list[bytes]) -> bytes:
    """`out` with the ks values masked wherever else they appear."""
    # Echoes are rare: look for one only when a ks prefix recurs (or is escaped, so it cannot be probed).
    for value in values:
        probe = value[:MIN_SECRET_BYTES]
        if len(probe) == MIN_SECRET_BYTES and (probe in out or b"%" in probe or b"+" in probe):
            return mask_values(out, values)
    return out


def secret_forms(values: list[bytes]) -> list[bytes]:
    """The ways these raw ks values could be spelled elsewhere: as sent, decoded, decoded without padding."""
    forms = set()
    for raw in values:
        decoded = form_decode(raw).strip()
        for form in (raw, decoded, decoded.rstrip(b"=")):
            if len(form) >= MIN_SECRET_BYTES:
                forms.add(form)
    return sorted(forms, key=len, reverse=True)


def mask_values(text: bytes, values: list[bytes]) -> bytes:
    """`text` with every spelling of the given raw ks values replaced by the mask."""
    for form in secret_forms(values):
        if form in text:
            text = text.replace(form, MASK)
    return text


def redact(data: bytes) -> bytes:
    """A raw body as sent (form, JSON, or broken either way) with every ks value in it masked."""
    if b"k" not in data and b"%" not in data and b"\\u" not in data:
        return data  # no spelling of 'ks' can be in it
    data = strip_from_query(data, MASK)
    return _JSON_KS.sub(b'"ks":"' + MASK + b'"', data)
