"""Attempt budgets, the retry budget and hedging (issue #10): the rules with plain numbers,
then what the router does with them on the real topology."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from harness import LocalTopology
from harness.cluster import ROLE
from service.errors import RegionUnavailableError
from service.locality.budget import RetryBudget, attempt_budget
from service.locality.router import LocalityRouter
from service.settings import RegionSettings, RouterSettings, Settings, SettingsError
from tests.locality.rig import FAST, LOCAL, report, running
from tests.locality.traffic import eventually

GCP = "gcp-us-central1"

# -- the rules, with plain numbers ----------------------------------------------------------------


def test_an_attempt_leaves_time_for_the_next_region_only_while_there_is_one() -> None:
    assert attempt_budget(2.0, cap=0.8, others_left=True) == 0.8
    assert attempt_budget(0.5, cap=0.8, others_left=True) == 0.5  # the deadline comes first
    assert attempt_budget(2.0, cap=0.8, others_left=False) == 2.0  # the last one gets it all


def test_retries_stay_within_the_ratio_of_recent_requests() -> None:
    budget = RetryBudget(ratio=0.2, minimum_per_second=0.0, window=10.0)
    for _ in range(100):
        budget.request(1.0)
    allowed = sum(budget.try_retry(1.5) for _ in range(50))
    assert allowed == 20
    assert budget.counts(1.5) == (100, 20)


def test_the_floor_lets_a_quiet_instance_retry() -> None:
    budget = RetryBudget(ratio=0.2, minimum_per_second=1.0, window=10.0)
    assert sum(budget.try_retry(0.0) for _ in range(15)) == 10  # 1/s over 10 s


def test_requests_and_retries_age_out_of_the_window() -> None:
    budget = RetryBudget(ratio=0.5, minimum_per_second=0.0, window=10.0)
    for _ in range(10):
        budget.request(0.0)
    assert sum(budget.try_retry(0.0) for _ in range(10)) == 5
    assert not budget.try_retry(9.9)  # still the same window
    assert budget.counts(10.5) == (0, 0)  # everything from t=0 has aged out
    assert not budget.try_retry(10.5)  # and no request since: nothing to retry against
    budget.request(10.5)
    budget.request(10.5)
    assert budget.try_retry(10.6)


def test_a_brownout_does_not_multiply_the_load() -> None:
    """1000 requests a second for a minute, every first attempt failing: the retries add at
    most the ratio plus the floor, not a second attempt per request."""
    budget = RetryBudget(ratio=0.2, minimum_per_second=10.0, window=10.0)
    attempts = requests = 0
    for tick in range(60_000):  # one request a millisecond
        now = tick / 1000
        budget.request(now)
        requests += 1
        attempts += 1 + budget.try_retry(now)
    assert attempts / requests < 1.2 + 10 / 1000 + 0.01


def test_the_budget_checks_its_numbers() -> None:
    with pytest.raises(ValueError, match="ratio"):
        RetryBudget(ratio=1.5, minimum_per_second=0.0, window=10.0)
    with pytest.raises(SettingsError, match="RETRY_BUDGET_RATIO"):
        RouterSettings(retry_budget_ratio=-0.1)


def test_settings_read_the_budgets_from_the_environment() -> None:
    env = {
        "SIGNING_KEYS_REGIONS": "a:aws",
        "SIGNING_KEYS_DSN_A": "postgresql://u@h/d",
        "SIGNING_KEYS_LOCAL_REGION": "a",
    }
    defaults = Settings.from_env(env).router
    assert (
        defaults.write_attempt_timeout,
        defaults.retry_budget_ratio,
        defaults.retry_budget_min_per_second,
    ) == (0.8, 0.2, 10.0)
    router = Settings.from_env(
        {
            **env,
            "SIGNING_KEYS_WRITE_ATTEMPT_TIMEOUT": "0.5",
            "SIGNING_KEYS_RETRY_BUDGET_RATIO": "0.1",
            "SIGNING_KEYS_RETRY_BUDGET_MIN_PER_SECOND": "0",
        }
    ).router
    assert (router.write_attempt_timeout, router.retry_budget_ratio) == (0.5, 0.1)
    assert router.retry_budget_min_per_second == 0.0


# -- the router on the real topology --------------------------------------------------------------


def fails_once() -> Any:
    """A read that fails with a dropped connection the first time it runs, then answers."""
    calls: list[int] = []

    async def op(conn: Any) -> int:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionResetError("connection reset by peer")
        return int(await conn.fetchval("SELECT 1"))

    return op


async def test_a_failed_read_is_retried_within_the_budget_and_not_beyond(
    healthy_topology: LocalTopology,
) -> None:
    registry = CollectorRegistry()
    async with running(healthy_topology, registry=registry) as router:
        assert await router.read(fails_once()) == 1  # the floor allows a retry
    spent = CollectorRegistry()
    async with running(
        healthy_topology, registry=spent, retry_budget_ratio=0.0, retry_budget_min_per_second=0.0
    ) as router:
        with pytest.raises(RegionUnavailableError, match="retries are limited to 0%"):
            await router.read(fails_once())
        assert spent.get_sample_value(
            "signing_keys_router_retries_refused_total", {"kind": "read"}
        ) == (1.0)


async def test_only_reads_that_ask_for_it_are_hedged(healthy_topology: LocalTopology) -> None:
    """A read slower than the hedge delay everywhere: a point read starts a second region
    (and takes the first answer), a page scan (``hedge=False``) runs once."""

    async def slow(conn: Any) -> int:
        return int(await conn.fetchval("SELECT 1 FROM pg_sleep(0.3)"))

    def hedges(registry: CollectorRegistry) -> float:
        return sum(
            registry.get_sample_value("signing_keys_router_hedges_total", {"region": name}) or 0.0
            for name in healthy_topology.region_names
        )

    registry = CollectorRegistry()
    async with running(healthy_topology, registry=registry) as router:
        await router.read(slow, hedge=False)
        assert hedges(registry) == 0
        await router.read(slow)
        assert hedges(registry) >= 1


# -- a hung writable region -----------------------------------------------------------------------


class _Lookalike(asyncpg.Connection):  # type: ignore[misc]  # asyncpg has no types
    """A PostgreSQL connection that calls itself CockroachDB, so that two regions of the
    router can both take writes (both lead to the one primary, by two network paths): what
    a multi-region CockroachDB offers, which the local topology cannot run."""

    async def fetchval(self, query: str, *args: Any, **kwargs: Any) -> Any:
        if query == "SELECT version()":
            return "CockroachDB CCL v24.3.1 (a PostgreSQL server in disguise)"
        return await super().fetchval(query, *args, **kwargs)


async def _connect_lookalike(*args: Any, **kwargs: Any) -> Any:
    kwargs["connection_class"] = _Lookalike
    return await asyncpg.connect(*args, **kwargs)


def two_writable_regions(topo: LocalTopology, **overrides: Any) -> LocalityRouter:
    """The local region through its fault proxy, and a second writable one straight to the
    same server. Failure detection is slowed (probe timeout 3 s, fall 3) so that only the
    attempt budget can move a write off a hung region within its 2 s deadline."""
    primary = topo.region(topo.primary)
    settings = Settings.from_env(topo.env(LOCAL))
    local = next(region for region in settings.regions if region.name == LOCAL)
    regions = [
        RegionSettings(LOCAL, local.cloud, primary.dsn),
        RegionSettings(GCP, "gcp", primary.direct_dsn),
    ]
    router_settings = replace(FAST, probe_timeout=3.0, fall=3, **overrides)
    return LocalityRouter(
        regions,
        local_region=LOCAL,
        settings=router_settings,
        registry=CollectorRegistry(),
        connect=_connect_lookalike,
    )


@pytest.mark.fault
async def test_a_write_leaves_a_hung_writable_region_for_the_next_within_its_deadline(
    healthy_topology: LocalTopology,
) -> None:
    """Two writable regions; the preferred one blackholed (statements hang, and its prober
    has not yet noticed): the write's first attempt gives up at the attempt budget and the
    write lands in the other region, within the deadline. (It used to take the whole
    deadline on the hung region and fail.)"""
    topo = healthy_topology
    table = f"budget_rows_{int(time.time() * 1000)}"
    topo.execute(
        topo.primary,
        f"CREATE TABLE {table} (id int PRIMARY KEY, region text); GRANT ALL ON {table} TO {ROLE}",
    )
    try:
        # One pooled connection, opened by a first write: the hung write reuses it, so its
        # statement hangs (a connect that hangs is already cut by ACQUIRE_TIMEOUT).
        async with two_writable_regions(topo, write_attempt_timeout=0.5, pool_min_size=0) as router:
            await eventually(lambda: router.status().write_region == LOCAL, timeout=5.0)
            assert [r.engine for r in router.status().regions] == ["cockroachdb"] * 2

            async def insert(key: int) -> Any:
                async def op(conn: Any) -> None:
                    await conn.execute(f"INSERT INTO {table} VALUES ($1, 'x')", key)

                return op

            await router.write(await insert(0), idempotent=True)
            await asyncio.to_thread(topo.region(topo.primary).proxy.blackhole)
            started = time.monotonic()
            await router.write(await insert(1), idempotent=True)
            took = time.monotonic() - started
            assert router.status().region(LOCAL).state == "up"  # not detected: the budget moved it
        rows = topo.query(topo.primary, f"SELECT id FROM {table} ORDER BY id")
        assert rows == [(0,), (1,)]
        assert took < FAST.request_deadline, f"took {took:.2f} s"
        assert took >= 0.45  # it did try the hung region first
    finally:
        await asyncio.to_thread(topo.region(topo.primary).proxy.pass_through)
        topo.query(topo.primary, f"DROP TABLE IF EXISTS {table}")
    report("hung writable region", moved_after=f"{took * 1000:.0f} ms")
