"""Migrations apply once each, whether run twice in a row or twice at the same time."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest

from harness import LocalTopology
from service.locality.router import LocalityRouter
from service.settings import RegionSettings, RouterSettings
from service.store.migrations import load_migrations, migrate


@pytest.fixture
async def empty_database_dsn(migrated_topology: LocalTopology) -> AsyncIterator[str]:
    topology = migrated_topology
    name = "migrations_" + secrets.token_hex(4)
    await asyncio.to_thread(
        topology.query, topology.primary, f'CREATE DATABASE "{name}" OWNER signing_keys'
    )
    dsn = topology.region(topology.primary).dsn
    yield dsn.rsplit("/", 1)[0] + "/" + name
    await asyncio.to_thread(
        topology.query, topology.primary, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
    )


async def test_migrations_run_twice_at_the_same_time_apply_each_once(
    empty_database_dsn: str,
) -> None:
    versions = [migration.version for migration in load_migrations()]
    region = RegionSettings(name="aws-us-east-1", cloud="aws", dsn=empty_database_dsn)
    first, second = (
        LocalityRouter([region], local_region=region.name, settings=RouterSettings())
        for _ in range(2)
    )
    await first.start()
    await second.start()
    try:
        results = await asyncio.gather(migrate(first), migrate(second))
        assert sorted(results, key=len) == [[], versions], "one run applies, the other waits"
        assert await migrate(first) == [], "a third run finds nothing to do"

        async def applied(conn: object) -> list[str]:
            rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")  # type: ignore[attr-defined]
            return [row["version"] for row in rows]

        assert await first.read(applied) == versions
    finally:
        await first.aclose()
        await second.aclose()
