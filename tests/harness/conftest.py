"""Fixtures shared by the topology's tests."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest

from harness import LocalTopology


@pytest.fixture
async def table(topology: LocalTopology) -> AsyncIterator[str]:
    """A scratch table owned by the service's role (as the service's own tables are)."""
    name = f"topology_test_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(topology.region(topology.primary).direct_dsn)
    try:
        await conn.execute(f"CREATE TABLE {name} (marker text PRIMARY KEY)")
        yield name
        await conn.execute(f"DROP TABLE {name}")
    finally:
        await conn.close()
