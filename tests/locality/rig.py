"""Building blocks of the router tests on the real topology: a router with short, test-sized
timeouts, a table of rows to read, and calls that report which region served them."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

from prometheus_client import CollectorRegistry

from harness import LocalTopology
from service.locality.router import LocalityRouter
from service.settings import RegionSettings, RouterSettings, Settings
from service.store.migrations import migrate

LOCAL = "aws-us-east-1"
ROWS = 200

# Sub-second detection, a short hold-down, and the 2 s client deadline of the issue.
FAST = RouterSettings(
    connect_timeout=0.5,
    acquire_timeout=0.5,
    statement_timeout=2.0,
    request_deadline=2.0,
    probe_interval=0.05,
    probe_timeout=0.3,
    fall=2,
    rise=2,
    hold_down=1.0,
    max_replica_lag=5.0,
    hedge_delay=0.1,
    pool_min_size=4,  # warm enough that a burst of hedges does not wait on connects
    pool_max_size=10,
)


def make_router(
    topology: LocalTopology,
    *,
    local: str = LOCAL,
    registry: CollectorRegistry | None = None,
    database: str | None = None,
    direct: bool = False,
    regions: Sequence[str] | None = None,
    **overrides: Any,
) -> LocalityRouter:
    """A router on ``topology`` (or only its ``regions``) through the service's proxies — or,
    ``direct``, straight to the servers: another instance, on another network path — on its
    ``database`` (default: the topology's own)."""
    settings = Settings.from_env(topology.env(local))
    configured = [
        RegionSettings(
            region.name,
            region.cloud,
            _on_database(
                topology.region(region.name).direct_dsn if direct else region.dsn, database
            ),
            region.priority,
        )
        for region in settings.regions
        if regions is None or region.name in regions
    ]
    return LocalityRouter(
        configured,
        local_region=local,
        settings=replace(FAST, **overrides),
        registry=registry,
    )


def _on_database(dsn: str, database: str | None) -> str:
    return dsn if database is None else f"{dsn.rsplit('/', 1)[0]}/{database}"


@contextlib.asynccontextmanager
async def scratch_database(topology: LocalTopology) -> AsyncIterator[str]:
    """A database of this test's own on the topology (replicated like any other), so that
    tests that need the heartbeat table — or need it absent — share nothing; dropped after."""
    name = f"router_{secrets.token_hex(4)}"
    await asyncio.to_thread(
        topology.query, topology.primary, f'CREATE DATABASE "{name}" OWNER signing_keys'
    )
    try:
        await asyncio.to_thread(topology.wait_replayed)
        yield name
    finally:
        await asyncio.to_thread(
            topology.query, topology.primary, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
        )


async def migrated(router: LocalityRouter, topology: LocalTopology) -> None:
    """Apply the migrations (the heartbeat table among them) and wait for every standby."""
    await migrate(router)
    await asyncio.to_thread(topology.wait_replayed)


async def heartbeat_measured(router: LocalityRouter, *regions: str, timeout: float = 10.0) -> None:
    """Wait until the router measures the data age of ``regions`` from a fresh heartbeat."""

    def measured() -> bool:
        status = router.status()
        return all(
            status.region(name).data_age_source == "heartbeat"
            and (status.region(name).lag_seconds or 0.0) < 0.5
            for name in regions
        )

    deadline = time.monotonic() + timeout
    while not measured():
        if time.monotonic() > deadline:
            raise AssertionError(f"no heartbeat age for {regions} after {timeout} s: {router!r}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(
    topology: LocalTopology, *, timeout: float = 10.0, **options: Any
) -> AsyncIterator[LocalityRouter]:
    """A started router whose regions have all been seen up (a busy machine may delay the
    first probes past ``start()``) and, when it has a writer to stamp the heartbeat on, whose
    standbys have been seen fresh (the heartbeat they hold may be as old as the last router
    that wrote one), closed afterwards."""
    max_lag = float(options.get("max_replica_lag", FAST.max_replica_lag))
    async with make_router(topology, **options) as router:

        def settled() -> bool:
            status = router.status()
            if not all(region.state == "up" for region in status.regions):
                return False
            return status.write_region is None or all(
                region.lag_seconds is None or region.lag_seconds <= max_lag
                for region in status.regions
            )

        deadline = time.monotonic() + timeout
        while not settled():
            if time.monotonic() > deadline:
                raise AssertionError(f"regions not all up and fresh after {timeout} s: {router!r}")
            await asyncio.sleep(0.01)
        yield router


def new_table() -> str:
    return f"router_probe_rows_{secrets.token_hex(4)}"


async def create_rows(
    router: LocalityRouter, topology: LocalTopology, table: str, count: int = ROWS
) -> None:
    """Create ``table`` with ``count`` rows through the router; wait for every standby."""

    async def create(conn: Any) -> None:
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table} (id integer PRIMARY KEY, v text NOT NULL)"
        )
        await conn.executemany(
            f"INSERT INTO {table} (id, v) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
            [(i, f"row-{i}") for i in range(count)],
        )

    await router.write(create, idempotent=True, timeout=10.0)
    await asyncio.to_thread(topology.wait_replayed)


def region_by_port(topology: LocalTopology) -> dict[int, str]:
    return {topology.region(name).server_port: name for name in topology.region_names}


def reader(
    router: LocalityRouter,
    topology: LocalTopology,
    table: str,
    *,
    count: int = ROWS,
    deadline: float = 2.0,
) -> Callable[[], Awaitable[str | None]]:
    """A lookup of a random row; answers the region that served it, fails if the row is gone."""
    ports = region_by_port(topology)
    query = f"SELECT v, inet_server_port() AS port FROM {table} WHERE id = $1"

    async def call() -> str | None:
        key = secrets.randbelow(count)

        async def op(conn: Any) -> str | None:
            row = await conn.fetchrow(query, key)
            if row is None or row["v"] != f"row-{key}":
                raise AssertionError(f"row {key} missing or wrong: {row!r}")
            return ports.get(row["port"])

        return await router.read(op, timeout=deadline)

    return call


def report(scenario: str, **figures: object) -> None:
    """Print one scenario's figures (visible with ``pytest -s``)."""
    details = ", ".join(f"{key}={value}" for key, value in figures.items())
    print(f"\n[locality] {scenario}: {details}")
