"""Probes that time out because this process's event loop stalled do not count against the
region (issue 10: CPU starvation took every healthy region down at once), and a region that
really died still goes down while the loop keeps stalling."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from harness import LocalTopology
from service.locality.health import MAX_INCONCLUSIVE, ProbeResult, RegionHealth
from service.locality.probe import RegionProber
from service.locality.stall import LoopLagMonitor
from service.locality.status import RouterStatus
from tests.locality.rig import FAST, LOCAL, report, running
from tests.locality.traffic import eventually

# -- the loop-lag monitor ---------------------------------------------------------------------


def test_the_monitor_sums_the_stalls_that_overlap_a_window() -> None:
    monitor = LoopLagMonitor(clock=lambda: 0.0, tick=0.025)
    monitor.woke(1.0, due=0.998)  # 2 ms late: scheduler jitter, not a stall
    monitor.woke(2.0, due=1.2)  # stalled over [1.2, 2.0]
    monitor.woke(3.0, due=2.9)  # stalled over [2.9, 3.0]
    assert monitor.stalled_during(0.0, 1.1) == 0.0
    assert monitor.stalled_during(1.5, 3.0) == pytest.approx(0.5 + 0.1)
    assert monitor.stalled_during(0.0, 5.0) == pytest.approx(0.8 + 0.1)


def test_the_monitor_forgets_stalls_older_than_its_window() -> None:
    monitor = LoopLagMonitor(clock=lambda: 0.0, window=5.0)
    monitor.woke(2.0, due=1.0)
    monitor.woke(10.0, due=9.99)
    assert monitor.stalled_during(0.0, 10.0) == pytest.approx(0.01)


async def test_the_monitor_counts_a_stall_still_going_on() -> None:
    """A probe's timeout may run in the same loop iteration as the monitor's late wake-up,
    before it: the monitor, overdue now, counts the stall as far as it has gone."""
    now = [0.0]
    monitor = LoopLagMonitor(clock=lambda: now[0], tick=0.05)
    task = asyncio.create_task(monitor.run())
    await asyncio.sleep(0)  # the monitor sleeps, due at 0.05
    now[0] = 0.85
    try:
        assert monitor.stalled_during(0.1, 0.85) == pytest.approx(0.75)
    finally:
        task.cancel()


async def test_the_monitor_measures_a_real_blocked_loop() -> None:
    monitor = LoopLagMonitor(clock=time.monotonic, tick=0.02)
    task = asyncio.create_task(monitor.run())
    try:
        await asyncio.sleep(0.05)
        start = time.monotonic()
        time.sleep(0.3)  # the point: this loop does not run
        await asyncio.sleep(0.05)
        stalled = monitor.stalled_during(start, time.monotonic())
    finally:
        task.cancel()
    assert 0.25 <= stalled <= 0.4, stalled


# -- the health record -------------------------------------------------------------------------


def up(fall: int = 2, rise: int = 2) -> RegionHealth:
    health = RegionHealth(fall=fall, rise=rise, now=0.0)
    health.record_success(0.0, rtt=0.001, writable=True, engine="postgresql", data_age=None)
    assert health.is_up
    return health


def test_inconclusive_probes_do_not_take_a_region_down() -> None:
    health = up()
    changes = [health.record_inconclusive(0.1 * i, "timeout") for i in range(MAX_INCONCLUSIVE)]
    assert changes == [False] * MAX_INCONCLUSIVE
    assert health.is_up
    assert health.failures == 0


def test_inconclusive_probes_neither_break_nor_extend_a_run_towards_fall_or_rise() -> None:
    health = up()
    health.record_failure(1.0, "timeout")
    health.record_inconclusive(1.1, "timeout")
    assert health.is_up
    assert health.record_failure(1.2, "timeout") is True  # the second failure in a row
    health.record_success(1.3, rtt=0.001, writable=True, engine="postgresql", data_age=None)
    health.record_inconclusive(1.4, "timeout")
    assert (
        health.record_success(1.5, rtt=0.001, writable=True, engine="postgresql", data_age=None)
        is True
    )


def test_timeouts_without_a_stall_still_take_a_region_down() -> None:
    health = up()
    assert [health.record_failure(t, "timeout") for t in (1.0, 1.1)] == [False, True]


def test_a_dead_region_under_a_sustained_stall_goes_down_within_the_bound() -> None:
    """Only MAX_INCONCLUSIVE in a row are excused; after them each counts as a failure."""
    health = up(fall=2)
    results = [health.record_inconclusive(0.5 * i, "timeout") for i in range(1, 20)]
    assert results.index(True) + 1 == MAX_INCONCLUSIVE + 2
    assert not health.is_up


def test_a_conclusive_result_starts_the_excused_run_over() -> None:
    health = up(fall=2)
    for i in range(MAX_INCONCLUSIVE):
        health.record_inconclusive(0.1 * i, "timeout")
    health.record_success(1.0, rtt=0.001, writable=True, engine="postgresql", data_age=None)
    for i in range(MAX_INCONCLUSIVE):
        assert health.record_inconclusive(2.0 + 0.1 * i, "timeout") is False
    assert health.is_up


# -- the prober ---------------------------------------------------------------------------------


async def _hang(*_args: Any, **_kwargs: Any) -> Any:
    await asyncio.Event().wait()  # a blackholed host: the connect never completes


async def _refuse(*_args: Any, **_kwargs: Any) -> Any:
    raise ConnectionRefusedError("refused")


def prober(
    connect: Any,
    stalled: float,
    *,
    interval: float = 0.05,
    results: list[ProbeResult] | None = None,
) -> RegionProber:
    async def collect(result: ProbeResult) -> None:
        if results is not None:
            results.append(result)

    return RegionProber(
        name="test",
        dsn="postgresql://nowhere/",
        interval=interval,
        timeout=0.1,
        connect=connect,
        clock=time.monotonic,
        on_result=collect,
        stall=lambda _start, _end: stalled,
    )


@pytest.mark.parametrize(
    ("stalled", "inconclusive"), [(0.06, True), (0.04, False), (0.0, False)], ids=str
)
async def test_a_timeout_is_inconclusive_only_when_the_loop_stalled_half_of_it(
    stalled: float, inconclusive: bool
) -> None:
    result = await prober(_hang, stalled).probe()
    assert not result.ok
    assert result.inconclusive is inconclusive


async def test_an_error_that_is_not_a_timeout_is_conclusive_however_stalled() -> None:
    result = await prober(_refuse, stalled=10.0).probe()
    assert not result.ok
    assert not result.inconclusive


async def test_an_inconclusive_probe_is_retried_at_once_not_after_the_interval() -> None:
    results: list[ProbeResult] = []
    task = asyncio.create_task(prober(_hang, 1.0, interval=30.0, results=results).run())
    try:
        await eventually(lambda: len(results) >= 3, timeout=5.0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert all(result.inconclusive for result in results)


async def test_an_inconclusive_probe_is_not_a_first_round() -> None:
    """A start waits for each region's first round: a probe the loop's stall made
    inconclusive must not end that wait, or the instance serves with every region down."""
    stalls = iter([1.0, 1.0])
    seen: list[tuple[bool, bool]] = []  # each result: inconclusive, first round already set

    def stalled(_start: float, _end: float) -> float:
        return next(stalls, 0.0)  # two stalled probes, then a loop that runs

    async def record(result: ProbeResult) -> None:
        seen.append((result.inconclusive, probe.first_round.is_set()))

    probe = RegionProber(
        name="test",
        dsn="postgresql://nowhere/",
        interval=30.0,
        timeout=0.1,
        connect=_hang,
        clock=time.monotonic,
        on_result=record,
        stall=stalled,
    )
    task = asyncio.create_task(probe.run())
    try:
        await asyncio.wait_for(probe.first_round.wait(), 5.0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert seen[:3] == [(True, False), (True, False), (False, False)]


# -- the router on the real topology -----------------------------------------------------------


def _inconclusive_total(registry: CollectorRegistry) -> float:
    return sum(
        sample.value
        for metric in registry.collect()
        if metric.name == "signing_keys_probe_inconclusive"
        for sample in metric.samples
        if sample.name.endswith("_total")
    )


async def test_a_stalled_loop_does_not_take_healthy_regions_down(
    healthy_topology: LocalTopology, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twice in a row the loop blocks for 0.8 s (the probe timeout is 0.3 s) just after a
    probe of the local region sent its query: on the old code that region failed fall (2)
    probes in a row and went down, though it had answered both within milliseconds."""
    stalls = [0.8, 0.8]
    original = RegionProber._fetch_postgres

    async def fetch_then_stall(self: RegionProber, conn: Any) -> Any:
        fetch = asyncio.ensure_future(original(self, conn))
        await asyncio.sleep(0)  # the query goes out
        if self.name == LOCAL and stalls:
            time.sleep(stalls.pop())  # this process starved of CPU, the answer unread
        return await fetch

    monkeypatch.setattr(RegionProber, "_fetch_postgres", fetch_then_stall)
    registry = CollectorRegistry()
    stalls_armed = list(stalls)
    stalls.clear()  # not while the router starts
    async with running(healthy_topology, registry=registry) as router:
        downs: list[str] = []

        def watch(status: RouterStatus) -> None:
            downs.extend(region.name for region in status.regions if region.state != "up")

        router.add_listener(watch)
        stalls.extend(stalls_armed)
        await eventually(lambda: not stalls, timeout=5.0)
        await asyncio.sleep(0.5)  # the second stalled probe reported, and a few more probes
        watch(router.status())
        assert downs == [], router.status()
        assert _inconclusive_total(registry) >= 2


async def test_a_dead_region_goes_down_while_the_loop_keeps_stalling(
    healthy_topology: LocalTopology,
) -> None:
    """The loop stalls for most of every probe window, so each probe of the blackholed
    region is inconclusive: it must still go down, after MAX_INCONCLUSIVE + fall probes."""
    topo = healthy_topology
    registry = CollectorRegistry()
    async with running(topo, registry=registry) as router:
        stop = asyncio.Event()

        async def starve() -> None:
            while not stop.is_set():
                time.sleep(FAST.probe_timeout * 0.7)  # more than half of every probe
                await asyncio.sleep(0.01)

        starver = asyncio.create_task(starve())
        try:
            topo.region(LOCAL).proxy.blackhole()
            started = time.monotonic()
            await eventually(lambda: router.status().region(LOCAL).state == "down", timeout=20.0)
            took = time.monotonic() - started
        finally:
            stop.set()
            await starver
            topo.region(LOCAL).proxy.pass_through()
    # Each probe lasts its timeout plus up to a stall on either side of it (measured here
    # on a quiet machine: down after 3.6-3.8 s); generous for a busy one.
    stall = FAST.probe_timeout * 0.7
    bound = (MAX_INCONCLUSIVE + FAST.fall) * (FAST.probe_timeout + 2 * stall)
    report("dead region under a sustained stall", down_after=f"{took:.2f}s", bound=f"{bound:.2f}s")
    assert took < 2.5 * bound, took
    # It went down through the bound, not because the stall went unnoticed.
    assert _inconclusive_total(registry) >= MAX_INCONCLUSIVE
