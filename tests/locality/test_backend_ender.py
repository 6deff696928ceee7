"""Ending abandoned backends never ends a stranger: the router names each backend by its pid
and its ``backend_start``, so a pid the server has since handed to another backend (the
abandoned one ended by itself, a new connection got its number) does not match."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import asyncpg
import pytest

from harness import LocalTopology
from service.locality.router import BACKEND_START_SQL, END_BACKENDS_SQL


@pytest.mark.fault
async def test_a_backend_is_ended_only_when_its_pid_and_start_both_match(
    healthy_topology: LocalTopology,
) -> None:
    dsn = healthy_topology.region(healthy_topology.primary).direct_dsn
    victim = await asyncpg.connect(dsn)
    ender = await asyncpg.connect(dsn)
    try:
        pid = victim.get_server_pid()
        started = await victim.fetchval(BACKEND_START_SQL)
        assert started is not None
        # The same pid, but a backend that started at another time: what a reused pid looks
        # like from the router's record of the abandoned one.
        other = started - timedelta(seconds=1)
        assert await ender.fetch(END_BACKENDS_SQL, [pid], [other]) == []
        assert await victim.fetchval("SELECT 1") == 1, "the stranger lives on"

        rows = await ender.fetch(END_BACKENDS_SQL, [pid], [started])
        assert [(row[0], row[1]) for row in rows] == [(pid, True)]
        alive = "SELECT count(*) FROM pg_stat_activity WHERE pid = $1"
        async with asyncio.timeout(10):
            while await ender.fetchval(alive, pid):
                await asyncio.sleep(0.02)
    finally:
        victim.terminate()
        await ender.close()
