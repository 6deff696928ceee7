"""How much time one attempt may take, and how many retries the router may make.

Nothing here does I/O or reads a clock: every method takes ``now``, so the rules can be
tested with plain numbers.

*Attempt budget.* A write tries one writable region at a time. A region that hangs (a
blackholed network path, a gateway that cannot reach its data) would otherwise keep the
attempt until the request's deadline, leaving nothing for the next writable region. While
another writable region is left to try, an attempt gets at most ``cap`` seconds; the last
one gets all that remains (cutting it short would only turn a slow success into a failure).

*Retry budget* (after Envoy's ``retry_budget``): in a brownout, every failed request retried
elsewhere multiplies the load on regions that are already struggling. Retries in the last
``window`` seconds may number at most ``ratio`` of the requests begun in that window, plus a
floor of ``minimum_per_second`` (so that a quiet instance can still retry). A retry refused
by the budget fails its request with the error it had. What counts as a retry is the
router's business (see :mod:`service.locality.router`): a new attempt after one failed on
its own; not a hedge, and not a move away from a region the router has just seen go down.
"""

from __future__ import annotations

import collections
import math

BUCKETS = 10  # the window is kept as this many buckets: a retry ages out within window/10


def attempt_budget(remaining: float, *, cap: float, others_left: bool) -> float:
    """Seconds one write attempt may take, out of ``remaining`` until the deadline."""
    if not others_left:
        return remaining
    return min(remaining, cap)


class RetryBudget:
    """Allows a retry while retries stay within ``ratio`` of the requests plus a floor, per window.

    >>> budget = RetryBudget(ratio=0.2, minimum_per_second=1.0, window=10.0)
    >>> budget.request(now)          # every request, once, when it begins
    >>> if budget.try_retry(now): …  # before each retry: True, and counted; or False
    """

    def __init__(self, *, ratio: float, minimum_per_second: float, window: float) -> None:
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"the retry ratio must be within 0..1: {ratio}")
        if minimum_per_second < 0.0 or window <= 0.0:
            raise ValueError("the retry floor must be >= 0 and the window > 0")
        self._ratio = ratio
        self._floor = minimum_per_second * window
        self._width = window / BUCKETS
        # (bucket index, requests, retries), oldest first; at most BUCKETS of them.
        self._buckets: collections.deque[list[int]] = collections.deque()

    def request(self, now: float) -> None:
        """Count one request begun at ``now``."""
        self._bucket(now)[1] += 1

    def try_retry(self, now: float) -> bool:
        """Whether a retry may be made at ``now``; if so it is counted."""
        bucket = self._bucket(now)
        requests, retries = self.counts(now)
        if retries + 1 > self._ratio * requests + self._floor:
            return False
        bucket[2] += 1
        return True

    def counts(self, now: float) -> tuple[int, int]:
        """(requests, retries) in the window ending at ``now``."""
        self._expire(self._index(now))
        requests = sum(bucket[1] for bucket in self._buckets)
        retries = sum(bucket[2] for bucket in self._buckets)
        return requests, retries

    def _index(self, now: float) -> int:
        return math.floor(now / self._width)

    def _bucket(self, now: float) -> list[int]:
        index = self._index(now)
        self._expire(index)
        if not self._buckets or self._buckets[-1][0] < index:
            self._buckets.append([index, 0, 0])
        return self._buckets[-1]

    def _expire(self, index: int) -> None:
        while self._buckets and self._buckets[0][0] <= index - BUCKETS:
            self._buckets.popleft()
