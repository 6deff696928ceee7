"""Client traffic for the router's fault scenarios, and the figures that describe it.

:class:`Traffic` calls an async function at a fixed rate, open loop (a slow answer does not
slow the arrivals down, as with real clients), and records what every call saw. A
:class:`Timeline` records every status change the router reports.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from service.locality.status import RouterStatus


@dataclass(frozen=True, slots=True)
class Outcome:
    """One call: when it started (monotonic), how long it took, what served it or failed."""

    started: float
    latency: float
    region: str | None
    error: BaseException | None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def ended(self) -> float:
        return self.started + self.latency


@dataclass(frozen=True, slots=True)
class Summary:
    count: int
    failed: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    def __str__(self) -> str:
        return (
            f"{self.failed} failed of {self.count}, p50 {self.p50_ms:.1f} ms, "
            f"p99 {self.p99_ms:.1f} ms, max {self.max_ms:.1f} ms"
        )


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(0, math.ceil(fraction * len(ordered)) - 1)
    return ordered[rank]


def summarize(outcomes: Sequence[Outcome]) -> Summary:
    latencies = [outcome.latency for outcome in outcomes]
    return Summary(
        count=len(outcomes),
        failed=sum(not outcome.ok for outcome in outcomes),
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        max_ms=(max(latencies) * 1000) if latencies else math.nan,
    )


class Traffic:
    """Calls ``call`` ``rate`` times a second until the ``async with`` block ends.

    ``call`` returns the name of the region that served it (or anything, for writes).
    """

    def __init__(
        self, call: Callable[[], Awaitable[str | None]], *, rate: float, name: str = "reads"
    ) -> None:
        self._call = call
        self._period = 1.0 / rate
        self.name = name
        self.outcomes: list[Outcome] = []
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Traffic:
        self._task = asyncio.create_task(self._run(), name=f"traffic-{self.name}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=10.0)

    async def _run(self) -> None:
        next_at = time.monotonic()
        while True:
            task = asyncio.create_task(self._one())
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
            next_at += self._period
            delay = next_at - time.monotonic()
            if delay < -1.0:  # the loop was starved: do not send a burst to catch up
                next_at = time.monotonic()
            await asyncio.sleep(max(0.0, delay))

    async def _one(self) -> None:
        started = time.monotonic()
        try:
            region = await self._call()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.outcomes.append(Outcome(started, time.monotonic() - started, None, exc))
        else:
            self.outcomes.append(Outcome(started, time.monotonic() - started, region, None))

    def between(self, start: float = -math.inf, end: float = math.inf) -> list[Outcome]:
        """The calls that started in ``[start, end)``."""
        return [outcome for outcome in self.outcomes if start <= outcome.started < end]

    def failures(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if not outcome.ok]

    async def wait_count(self, count: int, timeout: float = 10.0) -> None:
        """Wait until at least ``count`` calls have finished."""
        await eventually(lambda: len(self.outcomes) >= count, timeout=timeout)


@dataclass
class Timeline:
    """Every status the router reported to its listeners, with the monotonic time."""

    events: list[tuple[float, RouterStatus]] = field(default_factory=list)

    def __call__(self, status: RouterStatus) -> None:
        self.events.append((time.monotonic(), status))

    def first(
        self, predicate: Callable[[RouterStatus], bool], *, after: float = -math.inf
    ) -> float | None:
        """The time of the first reported status after ``after`` that satisfies ``predicate``."""
        for at, status in self.events:
            if at >= after and predicate(status):
                return at
        return None

    def read_region_changes(self, *, after: float = -math.inf, before: float = math.inf) -> int:
        """How many times the region serving reads changed in ``[after, before)``."""
        changes = 0
        previous: str | None = None
        for at, status in self.events:
            if at >= before:
                break
            if at >= after and previous is not None and status.read_region != previous:
                changes += 1
            previous = status.read_region
        return changes


async def eventually(
    predicate: Callable[[], bool], *, timeout: float, interval: float = 0.01
) -> float:
    """Wait until ``predicate()`` is true; return the monotonic time it was seen true."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def until(moment: float) -> None:
    """Let traffic run until ``moment`` (monotonic): a window of the scenario, not a proof."""
    await asyncio.sleep(max(0.0, moment - time.monotonic()))
