"""How long this process's event loop was stalled: the router's witness for its own probes.

A probe that times out says "no answer within the timeout" — but on a CPU-starved machine
the answer may have arrived and sat unread while this process's event loop did not run (a
load of 10 to 17 on two cores took all three healthy regions down within 0.3 s of each other).
Such a timeout tells nothing about the region, so the prober must be able to ask how much of
the probe's window the loop spent stalled.

:class:`LoopLagMonitor` is one task that sleeps a short ``tick`` and records how late it woke
(``lag``): the loop could not run anything during ``[woke - lag, woke]``. It keeps those
intervals for a short ``window`` on the router's monotonic clock, and
:meth:`~LoopLagMonitor.stalled_during` sums their overlap with a probe's ``[start, end]`` —
including a stall still going on (the monitor overdue now: the probe's timeout may run
before the monitor's wake-up in the same loop iteration). Lags below ``tick`` granularity are
noise and are not recorded.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable

DEFAULT_TICK = 0.025  # seconds: short against a probe timeout (0.5 s), cheap (40 wakes/s)
DEFAULT_WINDOW = 10.0  # seconds of history: longer than any probe
MIN_LAG = 0.005  # a wake-up later than this counts as a stall (scheduler jitter is below it)


class LoopLagMonitor:
    """Measures the event loop's stalls; :meth:`run` as a task, :meth:`stalled_during` to ask.

    >>> monitor = LoopLagMonitor(clock=time.monotonic)
    >>> task = asyncio.create_task(monitor.run())
    >>> monitor.stalled_during(started, time.monotonic())  # seconds the loop did not run
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        tick: float = DEFAULT_TICK,
        window: float = DEFAULT_WINDOW,
    ) -> None:
        self._clock = clock
        self._tick = tick
        self._window = window
        # (stall start, stall end) on the clock, oldest first.
        self._stalls: collections.deque[tuple[float, float]] = collections.deque()
        self._due: float | None = None  # when the running sleep should end

    def __repr__(self) -> str:
        return f"<LoopLagMonitor tick {self._tick}s, {len(self._stalls)} stalls held>"

    async def run(self) -> None:
        """Tick until cancelled."""
        try:
            while True:
                self._due = self._clock() + self._tick
                await asyncio.sleep(self._tick)
                self.woke(self._clock(), due=self._due)
        finally:
            self._due = None

    def woke(self, now: float, *, due: float) -> None:
        """Record a wake-up at ``now`` of a sleep that should have ended at ``due``."""
        if now - due >= MIN_LAG:
            self._stalls.append((due, now))
        while self._stalls and self._stalls[0][1] < now - self._window:
            self._stalls.popleft()

    def stalled_during(self, start: float, end: float) -> float:
        """Seconds of ``[start, end]`` during which the loop was stalled, as far as known."""
        stalled = sum(_overlap(stall, start, end) for stall in self._stalls)
        if self._due is not None and end - self._due >= MIN_LAG:
            stalled += _overlap((self._due, end), start, end)  # still overdue: stalled now
        return stalled


def _overlap(interval: tuple[float, float], start: float, end: float) -> float:
    return max(0.0, min(interval[1], end) - max(interval[0], start))
