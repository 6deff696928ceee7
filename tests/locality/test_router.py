"""The locality router against the real topology with healthy_topology links: lifecycle, status,
errors, deadlines and metrics. (The fault scenarios are in ``test_faults.py``.)"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from harness import LocalTopology
from service.errors import DeadlineExceededError, NotFoundError, NoWritableRegionError
from service.locality.router import LocalityRouter
from service.locality.status import RouterStatus
from service.settings import RegionSettings, Settings
from tests.locality.rig import FAST, LOCAL, create_rows, make_router, new_table, reader, running
from tests.locality.traffic import Timeline, eventually


@pytest.fixture
async def router(healthy_topology: LocalTopology) -> AsyncIterator[LocalityRouter]:
    async with running(healthy_topology) as router:
        yield router


async def test_status_shows_every_region_its_role_and_who_serves(router: LocalityRouter) -> None:
    status = router.status()
    assert status.local_region == LOCAL
    assert status.read_region == LOCAL
    assert status.write_region == LOCAL
    by_name = {region.name: region for region in status.regions}
    assert set(by_name) == {"aws-us-east-1", "gcp-us-central1", "aws-eu-west-1"}
    assert all(region.state == "up" for region in status.regions)
    assert all(region.engine == "postgresql" for region in status.regions)
    assert [name for name, region in by_name.items() if region.writable] == [LOCAL]
    assert by_name["gcp-us-central1"].cloud == "gcp"
    for standby in ("gcp-us-central1", "aws-eu-west-1"):
        lag = by_name[standby].lag_seconds
        assert lag is not None
        assert lag < FAST.max_replica_lag
    assert all(region.rtt_ms is not None and region.rtt_ms > 0 for region in status.regions)
    assert router.can_read()
    assert router.can_write()


async def test_status_and_repr_carry_no_secret(
    router: LocalityRouter, healthy_topology: LocalTopology
) -> None:
    text = json.dumps(router.status().to_dict()) + repr(router)
    dsn = healthy_topology.region(LOCAL).dsn
    password = dsn.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    assert password not in text
    assert "postgresql://" not in text
    assert "reads=aws-us-east-1" in repr(router)
    assert "aws-us-east-1=up/rw" in repr(router)


async def test_reads_and_writes_round_trip(
    router: LocalityRouter, healthy_topology: LocalTopology
) -> None:
    table = new_table()
    await create_rows(router, healthy_topology, table, count=10)
    served = await reader(router, healthy_topology, table, count=10)()
    assert served == LOCAL
    assert await router.read(lambda conn: conn.fetchval(f"SELECT count(*) FROM {table}")) == 10


async def test_errors_of_the_operation_propagate_and_the_pool_does_not_leak(
    healthy_topology: LocalTopology,
) -> None:
    table = new_table()
    async with running(healthy_topology, pool_min_size=1, pool_max_size=2) as router:
        await create_rows(router, healthy_topology, table, count=1)

        async def duplicate(conn: Any) -> None:
            await conn.execute(f"INSERT INTO {table} (id, v) VALUES (0, 'again')")

        for _ in range(5):  # more than the pool holds: each connection must come back
            with pytest.raises(asyncpg.UniqueViolationError):
                await router.write(duplicate, idempotent=False)
            with pytest.raises(asyncpg.UndefinedTableError):
                await router.read(lambda conn: conn.fetchval("SELECT 1 FROM no_such_table"))
        assert await router.read(lambda conn: conn.fetchval(f"SELECT v FROM {table}")) == "row-0"
        assert all(region.in_flight == 0 for region in router.status().regions)


async def test_a_domain_error_raised_inside_a_write_rolls_it_back(
    router: LocalityRouter, healthy_topology: LocalTopology
) -> None:
    table = new_table()
    await create_rows(router, healthy_topology, table, count=1)

    async def insert_then_refuse(conn: Any) -> None:
        await conn.execute(f"INSERT INTO {table} (id, v) VALUES (99, 'x')")
        raise NotFoundError("no such environment")

    with pytest.raises(NotFoundError):
        await router.write(insert_then_refuse, idempotent=True)
    count = await router.read(lambda conn: conn.fetchval(f"SELECT count(*) FROM {table}"))
    assert count == 1


async def test_a_slow_read_ends_at_its_deadline_and_frees_its_connections(
    router: LocalityRouter,
) -> None:
    started = time.monotonic()
    with pytest.raises(DeadlineExceededError):
        await router.read(lambda conn: conn.execute("SELECT pg_sleep(5)"), timeout=0.4)
    elapsed = time.monotonic() - started
    assert 0.35 < elapsed < 0.9
    assert all(region.in_flight == 0 for region in router.status().regions)
    assert await router.read(lambda conn: conn.fetchval("SELECT 1")) == 1


async def test_a_slow_write_before_commit_ends_at_its_deadline_without_ambiguity(
    router: LocalityRouter,
) -> None:
    started = time.monotonic()
    with pytest.raises(DeadlineExceededError):
        await router.write(
            lambda conn: conn.execute("SELECT pg_sleep(5)"), idempotent=False, timeout=0.4
        )
    assert time.monotonic() - started < 0.9
    assert await router.write(lambda conn: conn.fetchval("SELECT 2"), idempotent=False) == 2


async def test_no_writable_region_fails_writes_fast_while_reads_go_on(
    healthy_topology: LocalTopology,
) -> None:
    settings = Settings.from_env(healthy_topology.env(LOCAL))
    standbys = [region for region in settings.regions if region.name != healthy_topology.primary]
    async with LocalityRouter(standbys, local_region=standbys[0].name, settings=FAST) as router:
        assert not router.can_write()
        started = time.monotonic()
        with pytest.raises(NoWritableRegionError, match="no writable region"):
            await router.write(lambda conn: conn.execute("SELECT 1"), idempotent=True)
        assert time.monotonic() - started < 0.2  # at once, not at the 2 s deadline
        assert await router.read(lambda conn: conn.fetchval("SELECT pg_is_in_recovery()"))
        assert router.status().write_region is None


async def test_a_region_refusing_writes_as_read_only_is_taken_off_writes_until_probed(
    router: LocalityRouter,
) -> None:
    async def refused(conn: Any) -> None:
        await conn.execute("SET TRANSACTION READ ONLY")
        await conn.execute("CREATE TABLE router_read_only_check (x int)")  # 25006

    with pytest.raises(NoWritableRegionError):
        await router.write(refused, idempotent=True)
    # The next probe finds the primary writable again.
    await eventually(router.can_write, timeout=2.0)


async def test_an_unreachable_region_fails_neither_start_nor_close(
    healthy_topology: LocalTopology, silent_port: int
) -> None:
    settings = Settings.from_env(healthy_topology.env(LOCAL))
    hidden_password = "s3cret-not-for-logs"
    regions = [
        *settings.regions,
        RegionSettings(
            "gcp-europe-west1",
            "gcp",
            f"postgresql://someone:{hidden_password}@127.0.0.1:{silent_port}/db",
        ),
    ]
    router = LocalityRouter(regions, local_region=LOCAL, settings=FAST)
    started = time.monotonic()
    await router.start()
    try:
        assert time.monotonic() - started < FAST.probe_timeout + 0.3
        status = router.status().region("gcp-europe-west1")
        assert status.state == "down"
        await eventually(
            lambda: router.status().region("gcp-europe-west1").last_error is not None,
            timeout=2.0,
        )
        last_error = router.status().region("gcp-europe-west1").last_error
        assert last_error is not None
        assert hidden_password not in last_error
        assert await router.read(lambda conn: conn.fetchval("SELECT 1")) == 1
    finally:
        closing = time.monotonic()
        await router.aclose()
        assert time.monotonic() - closing < 1.5


async def test_listeners_hear_state_changes_and_metrics_count_them(
    healthy_topology: LocalTopology,
) -> None:
    registry = CollectorRegistry()
    timeline = Timeline()
    async with running(healthy_topology, registry=registry) as router:
        router.add_listener(timeline)
        assert registry.get_sample_value("signing_keys_region_up", {"region": LOCAL}) == 1
        await router.read(lambda conn: conn.fetchval("SELECT 1"))
        count = registry.get_sample_value(
            "signing_keys_db_query_seconds_count",
            {"region": LOCAL, "kind": "read", "outcome": "ok"},
        )
        assert count is not None
        assert count >= 1

        proxy = healthy_topology.region("gcp-us-central1").proxy
        proxy.reset()
        await eventually(
            lambda: (
                timeline.first(lambda s: s.region("gcp-us-central1").state == "down") is not None
            ),
            timeout=3.0,
        )
        assert (
            registry.get_sample_value("signing_keys_region_up", {"region": "gcp-us-central1"}) == 0
        )
        proxy.pass_through()
        await eventually(
            lambda: router.status().region("gcp-us-central1").state == "up", timeout=3.0
        )
        assert isinstance(timeline.events[-1][1], RouterStatus)
        assert timeline.events[-1][1].region("gcp-us-central1").state == "up"


async def test_a_closed_router_refuses_work_and_closing_twice_is_harmless(
    healthy_topology: LocalTopology,
) -> None:
    router = make_router(healthy_topology)
    with pytest.raises(RuntimeError, match="not started"):
        await router.read(lambda conn: conn.fetchval("SELECT 1"))
    await router.start()
    await router.aclose()
    await router.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await router.write(lambda conn: conn.fetchval("SELECT 1"), idempotent=True)
    assert "closed" in repr(router)


async def test_a_standby_that_stops_replaying_is_skipped_for_reads_while_it_lags(
    healthy_topology: LocalTopology,
) -> None:
    """Replica lag measured from WAL positions: a local standby that stops replaying while
    the primary takes writes loses the reads once past the bound, and gets them back once
    it has caught up."""
    topo = healthy_topology
    standby = "aws-eu-west-1"
    table = new_table()
    async with running(topo, local=standby, max_replica_lag=0.5) as router:
        await create_rows(router, topo, table, count=1)
        await eventually(lambda: router.status().read_region == standby, timeout=5.0)
        stop = asyncio.Event()

        def insert(key: int) -> Any:
            return lambda conn: conn.execute(f"INSERT INTO {table} (id, v) VALUES ($1, 'w')", key)

        async def keep_writing() -> None:
            key = 1
            while not stop.is_set():
                await router.write(insert(key), idempotent=False)
                key += 1
                await asyncio.sleep(0.02)

        await asyncio.to_thread(topo.query, standby, "SELECT pg_wal_replay_pause()")
        writer = asyncio.create_task(keep_writing())
        try:
            await eventually(lambda: router.status().read_region != standby, timeout=5.0)
            lag = router.status().region(standby).lag_seconds
            assert lag is not None
            assert lag > 0.5
            # The region serving reads now has the rows the paused standby lacks.
            newest = await router.read(lambda conn: conn.fetchval(f"SELECT max(id) FROM {table}"))
            assert newest is not None
            assert newest >= 1
        finally:
            stop.set()
            await writer
            await asyncio.to_thread(topo.query, standby, "SELECT pg_wal_replay_resume()")
        await eventually(lambda: router.status().read_region == standby, timeout=5.0)
        lag = router.status().region(standby).lag_seconds
        assert lag is not None
        assert lag <= 0.5


async def test_a_cancelled_read_cancels_its_attempts_and_frees_their_connections(
    healthy_topology: LocalTopology,
) -> None:
    async with running(healthy_topology) as router:
        task = asyncio.create_task(router.read(lambda conn: conn.execute("SELECT pg_sleep(5)")))
        # The read hedges to every region after the hedge delays: wait for all three.
        await eventually(
            lambda: sum(region.in_flight for region in router.status().regions) == 3,
            timeout=2.0,
        )
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert all(region.in_flight == 0 for region in router.status().regions)
        assert await router.read(lambda conn: conn.fetchval("SELECT 1")) == 1


async def test_an_autocommit_write_must_be_idempotent(router: LocalityRouter) -> None:
    """Its statements commit one by one, so a retry after a failure may repeat some."""

    async def op(conn: Any) -> None:
        await conn.execute("SELECT 1")

    with pytest.raises(ValueError, match="idempotent"):
        await router.write(op, idempotent=False, autocommit=True)
    await router.write(op, idempotent=True, autocommit=True)
