"""Token buckets: a bounded rate of some costly thing, per key, in bounded memory."""

from __future__ import annotations

import time
from collections.abc import Callable

import cachetools


class TokenBucket:
    """``rate`` tokens a second, at most ``rate`` in hand; :meth:`take` spends one."""

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._clock = clock
        self._tokens = rate
        self._refilled = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._rate, self._tokens + (now - self._refilled) * self._rate)
        self._refilled = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class KeyedBuckets:
    """One :class:`TokenBucket` per key; the least recently used are forgotten past ``size``."""

    def __init__(
        self, rate: float, *, size: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate
        self._clock = clock
        self._buckets: cachetools.LRUCache[str, TokenBucket] = cachetools.LRUCache(maxsize=size)

    def take(self, key: str) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self._rate, clock=self._clock)
        return bucket.take()
