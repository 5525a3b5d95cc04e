"""Per-client request rate limit (--rate-limit N/s): a token bucket per client address.

Owns only the buckets; the app asks `allow(address)` before doing any work for a request and answers
429 with the returned Retry-After when refused. IPv6 clients are limited per /64, the block one
subscriber gets, so rotating addresses inside it buys nothing.
"""
from __future__ import annotations

import ipaddress
import math
import time

BURST_SECONDS = 2.0  # a bucket holds 2 s of tokens: a player's burst (page load, seek) passes untouched
MAX_BUCKETS = 200_000  # distinct clients tracked; beyond it full (idle) buckets are dropped, then all


class RateLimiter:
    """Token buckets keyed by client address: `rate` requests/s each, bursts up to `rate * BURST_SECONDS`."""

    __slots__ = ("rate", "capacity", "buckets", "clock")

    def __init__(self, rate: float, clock=time.monotonic):
        self.rate = float(rate)
        self.capacity = max(1.0, self.rate * BURST_SECONDS)
        self.buckets: dict[str, list[float]] = {}  # key -> [tokens, last refill time]
        self.clock = clock

    def allow(self, address: str) -> int:
        """0 if a request from `address` may proceed (and spend a token), else the seconds to wait."""
        key = address
        if ":" in address:  # IPv6: the /64 (first four groups of the exploded form)
            key = _v6_prefix(address)
        now = self.clock()
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= MAX_BUCKETS:
                self._evict(now)
            self.buckets[key] = [self.capacity - 1.0, now]
            return 0
        tokens = bucket[0] + (now - bucket[1]) * self.rate
        if tokens > self.capacity:
            tokens = self.capacity
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0
        bucket[0] = tokens
        return max(1, math.ceil((1.0 - tokens) / self.rate))

    def _evict(self, now: float) -> None:
        """Drop buckets that have refilled (their client is idle); if none, forget everyone (fail open)."""
        full_after = self.capacity / self.rate
        idle = [k for k, (_, last) in self.buckets.items() if now - last >= full_after]
        for key in idle:
            del self.buckets[key]
        if len(self.buckets) >= MAX_BUCKETS:
            self.buckets.clear()


def _v6_prefix(address: str) -> str:
    try:
        ip = ipaddress.IPv6Address(address.partition("%")[0])
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:  # an IPv4 client on a dual-stack listener: its own address, not ::ffff:0:0/64
        return str(ip.ipv4_mapped)
    return ip.exploded[:19]  # 'xxxx:xxxx:xxxx:xxxx'


def request_guard(rate: float, client_of):
    """The app's rate-limit hook: `check(request)` is None when allowed, else the 429 to answer."""
    from .http import Response  # the HTTP shape of a refusal; the buckets above know nothing of HTTP

    limiter = RateLimiter(rate)
    refusals: dict[int, Response] = {}

    def check(request):
        wait = limiter.allow(client_of(request))
        if not wait:
            return None
        refusal = refusals.get(wait)
        if refusal is None:
            refusal = refusals[wait] = Response(
                429, b"rate limit: over %g requests/s from this address; retry later\n" % rate,
                headers=b"retry-after: %d\r\n" % wait)
        return refusal

    check.limiter = limiter  # type: ignore[attr-defined]
    return check
