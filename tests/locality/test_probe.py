"""The prober against real servers: role, WAL positions, engine, and bounded failures."""

from __future__ import annotations

import asyncio
import socket
import time

import asyncpg
import pytest

from harness import LocalTopology
from service.locality.health import ProbeResult
from service.locality.probe import RegionProber, engine_of


async def _ignore(_result: ProbeResult) -> None:
    return None


def prober(dsn: str, *, timeout: float = 1.0) -> RegionProber:
    return RegionProber(
        name="test",
        dsn=dsn,
        interval=0.05,
        timeout=timeout,
        connect=asyncpg.connect,
        clock=time.monotonic,
        on_result=_ignore,
    )


def test_engine_is_told_by_the_version_string() -> None:
    assert engine_of("CockroachDB CCL v24.3.1 (x86_64-pc-linux-gnu, built 2024/12/05)") == (
        "cockroachdb"
    )
    assert engine_of("PostgreSQL 15.8 (Debian 15.8-0+deb12u1) on x86_64-pc-linux-gnu") == (
        "postgresql"
    )


async def test_a_primary_is_writable_and_reports_its_wal_position(
    healthy_topology: LocalTopology,
) -> None:
    probe = prober(healthy_topology.region(healthy_topology.primary).dsn)
    try:
        first = await probe.probe()
        second = await probe.probe()
    finally:
        probe.close()
    assert first.ok, first.error
    assert first.engine == "postgresql"
    assert first.writable
    assert first.lsn is not None
    assert second.lsn is not None
    assert second.lsn >= first.lsn
    assert second.rtt is not None
    assert 0 < second.rtt < 0.5


async def test_a_standby_is_read_only_and_reports_what_it_replayed(
    healthy_topology: LocalTopology,
) -> None:
    topo = healthy_topology
    standby = next(name for name in topo.region_names if name != topo.primary)
    probe = prober(topo.region(standby).dsn)
    try:
        result = await probe.probe()
    finally:
        probe.close()
    assert result.ok, result.error
    assert not result.writable
    assert result.lsn is not None
    assert result.receive_lsn is not None
    assert result.receive_lsn >= result.lsn


async def test_a_refused_connection_is_a_failed_probe_without_the_password() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once the socket is closed
    probe = prober(f"postgresql://someone:pr0be-secret@127.0.0.1:{port}/db")
    result = await probe.probe()
    assert not result.ok
    assert result.error is not None
    assert "pr0be-secret" not in result.error


async def test_a_silent_host_fails_the_probe_at_its_timeout(silent_port: int) -> None:
    probe = prober(f"postgresql://someone:x@127.0.0.1:{silent_port}/db", timeout=0.3)
    started = time.monotonic()
    result = await probe.probe()
    assert 0.25 < time.monotonic() - started < 0.8
    assert result.error is not None
    assert "TimeoutError" in result.error


async def test_a_trigger_probes_at_once_instead_of_after_the_interval(
    healthy_topology: LocalTopology,
) -> None:
    results: list[float] = []

    async def record(_result: ProbeResult) -> None:
        results.append(time.monotonic())

    probe = RegionProber(
        name="test",
        dsn=healthy_topology.region(healthy_topology.primary).dsn,
        interval=30.0,
        timeout=1.0,
        connect=asyncpg.connect,
        clock=time.monotonic,
        on_result=record,
    )
    task = asyncio.create_task(probe.run())
    try:
        await asyncio.wait_for(probe.first_round.wait(), 5.0)
        triggered = time.monotonic()
        probe.trigger()
        deadline = time.monotonic() + 5.0
        while len(results) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert len(results) == 2
        assert results[1] - triggered < 1.0  # not the 30 s interval
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
