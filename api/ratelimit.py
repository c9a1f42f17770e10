"""Request rate limits per key: a token bucket per key in each API process (`RLAD_RATE_LIMIT_PER_S` tokens a
second, up to `RLAD_RATE_LIMIT_BURST` saved up). The edge guard takes a token for every authenticated /v1
request and answers 429 with Retry-After when there is none; the poll fast path answers only with a token, and
otherwise leaves the request to the guard. With N API processes a key can reach N times the rate (the buckets
are per process: no shared store on the hot path)."""

from __future__ import annotations

import math
import threading
import time
from functools import lru_cache

MAX_TRACKED = 100_000  # keys remembered per process; beyond it the buckets start over (full)


class TokenBuckets:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = float(rate), int(burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # ident -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, ident: str, now: float | None = None) -> float:
        """0.0 when `ident` may send a request now (a token is taken), else the seconds until it may."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        with self._lock:
            if len(self._buckets) > MAX_TRACKED:
                self._buckets.clear()
            tokens, at = self._buckets.get(ident, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            if tokens >= 1.0:
                self._buckets[ident] = (tokens - 1.0, now)
                return 0.0
            self._buckets[ident] = (tokens, now)
            return (1.0 - tokens) / self.rate


@lru_cache(maxsize=4)
def buckets(rate: float, burst: int) -> TokenBuckets:
    """The process's buckets for these settings (new settings, e.g. in tests: new buckets)."""
    return TokenBuckets(rate, burst)


def retry_after(wait_s: float) -> str:
    return str(max(1, math.ceil(wait_s)))
