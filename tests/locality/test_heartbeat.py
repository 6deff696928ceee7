"""The heartbeat writer on the real primary: it writes, skips what another instance just
wrote, never waits for a standby or a lock, and never raises."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from harness import LocalTopology
from service.locality.heartbeat import HeartbeatWriter, Target, heartbeat_sql
from tests.locality.rig import scratch_database

MIGRATION = Path(__file__).parents[2] / "sql" / "migrations" / "0002_heartbeat.sql"


def on_database(dsn: str, database: str) -> str:
    return f"{dsn.rsplit('/', 1)[0]}/{database}"


@pytest.fixture
async def primary_dsn(healthy_topology: LocalTopology) -> AsyncIterator[str]:
    """The primary (through its proxy) of a scratch database holding the heartbeat table."""
    topo = healthy_topology
    async with scratch_database(topo) as database:
        dsn = on_database(topo.region(topo.primary).dsn, database)
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(MIGRATION.read_text())
        finally:
            await conn.close()
        yield dsn


def writer(
    target: Target | None, *, interval: float = 0.05, timeout: float = 0.3
) -> tuple[HeartbeatWriter, list[bool]]:
    results: list[bool] = []
    return (
        HeartbeatWriter(
            interval=interval,
            timeout=timeout,
            connect=asyncpg.connect,
            target=lambda: target,
            on_result=lambda _region, ok: results.append(ok),
        ),
        results,
    )


async def heartbeat_row(dsn: str) -> tuple[float, int | None]:
    """(seconds since the row was written, by the primary's clock; the timeline it names)."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT extract(epoch FROM now() - at)::float8 AS age, timeline"
            " FROM heartbeat WHERE id = 1"
        )
    finally:
        await conn.close()
    return row["age"], row["timeline"]


def test_the_statement_carries_only_the_numbers_it_is_built_from() -> None:
    sql = heartbeat_sql(interval=0.2, timeout=0.5)
    assert "SET LOCAL synchronous_commit = local;" in sql
    assert "SET LOCAL statement_timeout = 500;" in sql
    assert "SET LOCAL lock_timeout = 500;" in sql
    assert "'100 milliseconds'" in sql  # skipped when written within half an interval


async def test_a_heartbeat_stamps_the_row_with_the_primarys_time_and_timeline(
    primary_dsn: str,
) -> None:
    beat, results = writer(("primary", primary_dsn))
    await asyncio.sleep(0.1)  # the migration's row is older than half an interval
    try:
        assert await beat.beat(("primary", primary_dsn)) is True
    finally:
        beat.close()
    age, timeline = await heartbeat_row(primary_dsn)
    assert 0 <= age < 0.5
    assert timeline == 1
    assert results == [True]


async def test_a_row_another_instance_just_wrote_is_left_alone(primary_dsn: str) -> None:
    first, _ = writer(("primary", primary_dsn), interval=1.0)
    second, results = writer(("primary", primary_dsn), interval=1.0)
    try:
        await asyncio.sleep(0.6)  # older than half the interval: written
        assert await first.beat(("primary", primary_dsn))
        written, _ = await heartbeat_row(primary_dsn)
        await asyncio.sleep(0.2)
        assert await second.beat(("primary", primary_dsn))  # succeeds, and skips
        age, _ = await heartbeat_row(primary_dsn)
    finally:
        first.close()
        second.close()
    assert age >= written + 0.2  # the row is still the first writer's
    assert results == [True]


async def test_a_heartbeat_never_waits_for_a_standby(
    healthy_topology: LocalTopology, primary_dsn: str
) -> None:
    """With every standby's replication blackholed, a synchronous commit hangs; the
    heartbeat commits at once (``synchronous_commit = local``)."""
    topo = healthy_topology
    links = [topo.region(name).replication_proxy for name in topo.region_names]
    beat, _ = writer(("primary", primary_dsn), timeout=1.0)
    try:
        for link in links:
            link.blackhole()
        conn = await asyncpg.connect(primary_dsn)
        try:
            with pytest.raises(TimeoutError):
                await conn.execute("CREATE TABLE stuck (x int)", timeout=0.5)
        finally:
            conn.terminate()
        await asyncio.sleep(0.1)
        started = time.monotonic()
        assert await beat.beat(("primary", primary_dsn)) is True
        assert time.monotonic() - started < 0.5
        age, _ = await heartbeat_row(primary_dsn)
        assert age < 0.5
    finally:
        beat.close()
        for link in links:  # before the scratch database is dropped (a synchronous commit)
            link.pass_through()


async def test_a_heartbeat_blocked_on_the_row_gives_up_at_its_timeout(primary_dsn: str) -> None:
    holder = await asyncpg.connect(primary_dsn)
    beat, results = writer(("primary", primary_dsn), timeout=0.3)
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute("SELECT * FROM heartbeat WHERE id = 1 FOR UPDATE")
        await asyncio.sleep(0.1)
        started = time.monotonic()
        assert await beat.beat(("primary", primary_dsn)) is False
        assert time.monotonic() - started < 0.6
        await tx.rollback()
        assert await beat.beat(("primary", primary_dsn)) is True  # a new connection
    finally:
        beat.close()
        await holder.close()
    assert results == [False, True]


async def test_an_unreachable_target_fails_quietly(silent_port: int) -> None:
    target = ("nowhere", f"postgresql://someone:x@127.0.0.1:{silent_port}/db")
    beat, results = writer(target, timeout=0.2)
    task = asyncio.create_task(beat.run())
    try:
        deadline = time.monotonic() + 5.0
        while len(results) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert results[:2] == [False, False]


async def test_no_target_writes_nothing(primary_dsn: str) -> None:
    beat, results = writer(None)
    task = asyncio.create_task(beat.run())
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert results == []
    assert "nowhere" in repr(beat)
