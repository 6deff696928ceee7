"""Migrations apply once each, whether run twice in a row or twice at the same time."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path

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


# --- pods wait for the schema: `signing-keys migrate --check --wait N` ---------------------


async def run_check(dsn: str, wait: float) -> tuple[int, dict[str, list[str]]]:
    """The init container's command, as a process, against one region at ``dsn``."""
    env = {
        **os.environ,
        "SIGNING_KEYS_REGIONS": "aws-us-east-1:aws",
        "SIGNING_KEYS_LOCAL_REGION": "aws-us-east-1",
        "SIGNING_KEYS_DSN_AWS_US_EAST_1": dsn,
        "SIGNING_KEYS_LOG_LEVEL": "warning",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        "migrate",
        "--check",
        "--wait",
        str(wait),
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, json.loads(stdout.decode().strip().splitlines()[-1])


async def test_the_schema_check_fails_on_an_empty_database_and_passes_once_migrated(
    empty_database_dsn: str,
) -> None:
    versions = [migration.version for migration in load_migrations()]
    assert await run_check(empty_database_dsn, 0.5) == (1, {"pending": versions})

    region = RegionSettings(name="aws-us-east-1", cloud="aws", dsn=empty_database_dsn)
    router = LocalityRouter([region], local_region=region.name, settings=RouterSettings())
    async with router:
        assert await router.wait_ready(writable=True, timeout=10)
        # A pod started before the migrating release: it waits, then starts once migrated.
        waiting = asyncio.create_task(run_check(empty_database_dsn, 30))
        await asyncio.sleep(1.0)
        assert not waiting.done()
        await migrate(router)
        assert await waiting == (0, {"pending": []})
