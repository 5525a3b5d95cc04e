"""The client IP of a request: who sent it (trusted proxies resolved) and what of it is stored (--ip-mode).

Owns the privacy decision for addresses; knows HTTP headers only by name. The hot path is one dict
lookup: for a peer that is not a trusted proxy, the stored form depends on the peer alone and is
computed once per peer (per connection's address), not per request.

Modes: full (as received), truncate (IPv4 /24, IPv6 /48), hash (keyed BLAKE2b, 16 hex digits, with a
secret that rotates at 00:00 UTC; see DailyKey), drop (empty string).
"""
from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import re
import secrets
from pathlib import Path

from .http import CLOCK

log = logging.getLogger("ingestd.clientip")

MAX_CACHED_PEERS = 65536  # distinct peers whose stored form is kept; cleared when exceeded (bounded memory)
MAX_CACHED_HEADER_BYTES = 256  # proxy headers longer than this are resolved uncached: 64Ki keys stay < 20 MiB
MAX_FORWARDED_HOPS = 32  # entries of X-Forwarded-For/Forwarded looked at; longer chains are spoofing or loops
KEY_FILE_PREFIX = "ip-hash-key-"  # one file per UTC day in the key directory; older ones are deleted
SECONDS_PER_DAY = 86400

PROXY_HEADERS = frozenset({b"x-forwarded-for", b"forwarded"})


def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address from a peer or header token ('1.2.3.4', '[::1]:80', '1.2.3.4:5', '"[::1]"'), or None."""
    text = text.strip().strip('"')
    if text.startswith("["):  # [v6] or [v6]:port
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    text = text.partition("%")[0]  # zone id
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def forwarded_chain(xff: bytes | None, forwarded: bytes | None) -> list[str]:
    """Client addresses a proxy chain claims, leftmost (original client) first.

    X-Forwarded-For wins when present: it is what nginx, HAProxy, cloud load balancers and CDNs set;
    RFC 7239 `Forwarded` is read only when X-Forwarded-For is absent.
    """
    if xff:
        items = xff.decode("latin-1").split(",")
        return [item.strip() for item in items[-MAX_FORWARDED_HOPS:]]
    if forwarded:
        chain = []
        for element in forwarded.decode("latin-1").split(",")[-MAX_FORWARDED_HOPS:]:
            for pair in element.split(";"):
                name, _, value = pair.partition("=")
                if name.strip().lower() == "for":
                    chain.append(value.strip())
                    break
            else:
                chain.append("")  # an element without for=: an unknown hop
        return chain
    return []


class ClientIP:
    """Resolves and anonymises client addresses for one process. Built once from the settings."""

    def __init__(self, mode: str = "full", trusted: tuple = (), key_dir: Path | None = None):
        self.mode = mode
        self.trusted = tuple(trusted)
        self.trusted_v4 = tuple(n for n in self.trusted if n.version == 4)
        self.trusted_v6 = tuple(n for n in self.trusted if n.version == 6)
        self.key = DailyKey(key_dir) if mode == "hash" else None
        self._day = -1
        # peer -> stored form, for peers that are not trusted proxies, valid for the current UTC day:
        # the beacon app reads it directly (one dict lookup per request); tick() clears it daily
        self.by_peer: dict[str, str] = {}
        self._trusted_peer: dict[str, bool] = {}
        self._resolved: dict[tuple, str] = {}  # (peer, X-Forwarded-For, Forwarded) -> client address
        self._anonymised: dict[str, str] = {}  # client address behind a proxy -> stored form
        self.wanted_headers = PROXY_HEADERS if self.trusted else frozenset()

    # -- what the app calls, per request ------------------------------------------------------------
    def stored(self, request) -> str:
        """The client IP of `request` as it is stored (per --ip-mode)."""
        stored = self.by_peer.get(request.peer)
        if stored is not None and self._day == _today():
            return stored
        return self._slow_stored(request)

    def client(self, request) -> str:
        """The real client IP of `request` (trusted proxies resolved), e.g. for the rate limit."""
        peer = request.peer
        if self.trusted and self._is_trusted_peer(peer):
            return self._behind_proxy(request, peer)
        return peer

    # -- the rest ---------------------------------------------------------------------------------------
    def tick(self) -> None:
        """Called once a second: at a new UTC day, a new hash key, and yesterday's hashes are forgotten."""
        day = _today()
        if day != self._day:
            self._day = day
            self.by_peer.clear()
            self._anonymised.clear()
            if self.key is not None:
                self.key.rotate(day)

    def _slow_stored(self, request) -> str:
        self.tick()
        peer = request.peer
        if self.trusted and self._is_trusted_peer(peer):  # per request: the headers vary
            client = self._behind_proxy(request, peer)
            stored = self._anonymised.get(client)
            if stored is None:
                if len(self._anonymised) >= MAX_CACHED_PEERS:
                    self._anonymised.clear()
                stored = self._anonymised[client] = self.anonymise(client)
            return stored
        if len(self.by_peer) >= MAX_CACHED_PEERS:
            self.by_peer.clear()
        stored = self.by_peer[peer] = self.anonymise(peer)
        return stored

    def _is_trusted_peer(self, peer: str) -> bool:
        known = self._trusted_peer.get(peer)
        if known is None:
            if len(self._trusted_peer) >= MAX_CACHED_PEERS:
                self._trusted_peer.clear()
            ip = parse_ip(peer)
            known = self._trusted_peer[peer] = ip is not None and self.is_trusted(ip)
        return known

    def is_trusted(self, ip) -> bool:
        networks = self.trusted_v4 if ip.version == 4 else self.trusted_v6
        return any(ip in net for net in networks)

    def _behind_proxy(self, request, peer: str) -> str:
        """The client a trusted proxy forwarded for; the same header values are resolved once."""
        headers = request.headers
        xff, forwarded = headers.get(b"x-forwarded-for"), headers.get(b"forwarded")
        if len(xff or b"") + len(forwarded or b"") > MAX_CACHED_HEADER_BYTES:
            return self._from_headers(request, peer)  # long chains are not worth caching (memory)
        key = (peer, xff, forwarded)
        client = self._resolved.get(key)
        if client is None:
            if len(self._resolved) >= MAX_CACHED_PEERS:
                self._resolved.clear()
            client = self._resolved[key] = self._from_headers(request, peer)
        return client

    def _from_headers(self, request, peer: str) -> str:
        """The rightmost address in the chain that is not a trusted proxy; the peer if the chain is unusable."""
        chain = forwarded_chain(request.headers.get(b"x-forwarded-for"), request.headers.get(b"forwarded"))
        client = peer
        for token in reversed(chain):
            ip = parse_ip(token)
            if ip is None:
                break  # garbage or an obfuscated hop: believe nothing further left
            client = str(ip)
            if not self.is_trusted(ip):
                break
        return client

    def anonymise(self, address: str) -> str:
        """The stored form of one address under this mode (an unparsable address is kept as text in full mode)."""
        mode = self.mode
        if mode == "drop":
            return ""
        ip = parse_ip(address)
        if ip is None:
            return "" if mode != "full" else address[:64]
        if mode == "full":
            return str(ip)
        if mode == "truncate":
            prefix = 24 if ip.version == 4 else 48
            return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False).network_address)
        return hashlib.blake2b(ip.packed, key=self.key.current, digest_size=8).hexdigest()


def _today() -> int:
    return CLOCK.seconds // SECONDS_PER_DAY  # the once-a-second clock: no time call per request


class DailyKey:
    """The secret of --ip-mode hash: random, one per UTC day, shared by the workers of one spool.

    Kept in a 0600 file `ip-hash-key-<day>` so that workers and restarts within a day agree (a hashed
    IP still counts unique viewers per day); the previous days' files are deleted at rotation, after
    which nobody, including us, can link a hash back to an address or to another day's hash.
    Without a directory the key lives in memory only (rotates on restart too).
    """

    def __init__(self, directory: Path | None):
        self.directory = Path(directory) if directory else None
        self.day = -1
        self.current = secrets.token_bytes(32)

    def rotate(self, day: int) -> None:
        if day == self.day:
            return
        self.day = day
        if self.directory is None:
            self.current = secrets.token_bytes(32)
            return
        try:
            self.current = self._load_or_create(day)
        except OSError as exc:
            log.warning("ip hash key: %s; using an in-memory key for today", exc)
            self.current = secrets.token_bytes(32)

    def _load_or_create(self, day: int) -> bytes:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.directory / f"{KEY_FILE_PREFIX}{day}"
        if not path.exists():
            tmp = self.directory / f".{KEY_FILE_PREFIX}{day}.{os.getpid()}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, secrets.token_bytes(32))
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)  # atomic and fails if another worker won the race: then use theirs
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        key = path.read_bytes()
        for old in self.directory.glob(KEY_FILE_PREFIX + "*"):
            if old != path:
                old.unlink(missing_ok=True)
        if len(key) != 32:
            raise OSError(f"{path} is not a 32-byte key")
        return key


def key_directory(spool: Path) -> Path:
    """Where the hash keys live: in the spool (same disk, same owner, 0700). Workers spool into
    SPOOL/w<i> (ingestd.workers) and share SPOOL/ip-keys, so that their hashes agree."""
    spool = Path(spool)
    if re.fullmatch(r"w[0-9]+", spool.name):
        spool = spool.parent
    return spool / "ip-keys"


def from_settings(settings) -> ClientIP:
    """The resolver for one process."""
    return ClientIP(settings.ip_mode, settings.trust_proxy, key_directory(settings.spool))

