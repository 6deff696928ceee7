"""Token buckets: a bounded rate of some costly thing, per key, in bounded memory."""

from __future__ import annotations

import time
from collections.abc import Callable

import cachetools


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` (default: ``rate``) in hand; :meth:`take`
    spends one."""

    def __init__(
        self,
        rate: float,
        *,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = rate
        self._burst = rate if burst is None else burst
        self._clock = clock
        self._tokens = self._burst
        self._refilled = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._refilled) * self._rate)
        self._refilled = now

    def take(self) -> bool:
        self._refill()
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def wait(self) -> float:
        """Seconds until a token is in hand (0: one is now), spending nothing."""
        self._refill()
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self._rate


class KeyedBuckets:
    """One :class:`TokenBucket` per key; the least recently used are forgotten past ``size``."""

    def __init__(
        self,
        rate: float,
        *,
        burst: float | None = None,
        size: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._buckets: cachetools.LRUCache[str, TokenBucket] = cachetools.LRUCache(maxsize=size)

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(
                self._rate, burst=self._burst, clock=self._clock
            )
        return bucket.take()

    def wait(self, key: str) -> float:
        """Seconds until ``key`` has a token in hand (0 for a key never seen)."""
        bucket = self._buckets.get(key)
        return 0.0 if bucket is None else bucket.wait()
