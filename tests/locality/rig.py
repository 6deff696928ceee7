"""Building blocks of the router tests on the real topology: a router with short, test-sized
timeouts, a table of rows to read, and calls that report which region served them."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

from prometheus_client import CollectorRegistry

from harness import LocalTopology
from service.locality.router import LocalityRouter
from service.settings import RouterSettings, Settings

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
    **overrides: Any,
) -> LocalityRouter:
    settings = Settings.from_env(topology.env(local))
    return LocalityRouter(
        settings.regions,
        local_region=local,
        settings=replace(FAST, **overrides),
        registry=registry,
    )


@contextlib.asynccontextmanager
async def running(
    topology: LocalTopology, *, timeout: float = 10.0, **options: Any
) -> AsyncIterator[LocalityRouter]:
    """A started router whose regions have all been seen up (a busy machine may delay the
    first probes past ``start()``), closed afterwards."""
    async with make_router(topology, **options) as router:
        deadline = time.monotonic() + timeout
        while not all(region.state == "up" for region in router.status().regions):
            if time.monotonic() > deadline:
                raise AssertionError(f"regions not all up after {timeout} s: {router!r}")
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
