"""The prober against real servers: role, WAL positions, engine, and bounded failures."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import asyncpg
import pytest

from harness import LocalTopology
from service.locality import probe as probe_module
from service.locality.health import ProbeResult
from service.locality.probe import (
    RegionProber,
    engine_of,
    standby_timeline,
    timeline_of_wal_file,
)
from tests.locality.rig import scratch_database


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


def on_database(dsn: str, database: str) -> str:
    return f"{dsn.rsplit('/', 1)[0]}/{database}"


async def probe_once(dsn: str) -> ProbeResult:
    probe = prober(dsn)
    try:
        return await probe.probe()
    finally:
        probe.close()


async def test_every_region_reports_one_system_identifier_and_timeline_one(
    healthy_topology: LocalTopology,
) -> None:
    topo = healthy_topology
    results = {name: await probe_once(topo.region(name).dsn) for name in topo.region_names}
    assert all(result.ok for result in results.values()), results
    systems = {result.system_identifier for result in results.values()}
    assert len(systems) == 1
    (system,) = systems
    assert system is not None and system.isdigit()
    assert {result.timeline for result in results.values()} == {1}
    standby = results["gcp-us-central1"]
    assert standby.receiver_status == "streaming"
    assert standby.receiver_silence is not None and 0 <= standby.receiver_silence < 5
    assert results[topo.primary].receiver_status is None


async def test_the_heartbeat_age_is_read_once_the_table_exists(
    healthy_topology: LocalTopology,
) -> None:
    """Before the migration the probe says the table is missing and falls back; after it,
    a standby's probe reads how old the replayed heartbeat is, growing while nobody writes."""
    topo = healthy_topology
    standby = "aws-eu-west-1"
    async with scratch_database(topo) as database:
        dsn = on_database(topo.region(standby).dsn, database)
        probe = prober(dsn)
        try:
            before = await probe.probe()
            assert before.ok, before.error
            assert (before.has_heartbeat, before.heartbeat_age) == (False, None)
            sql = (Path(__file__).parents[2] / "sql/migrations/0002_heartbeat.sql").read_text()
            conn = await asyncpg.connect(on_database(topo.region(topo.primary).dsn, database))
            try:
                await conn.execute(sql)
            finally:
                await conn.close()
            await asyncio.to_thread(topo.wait_replayed)
            found = await probe.probe()  # sees the table, not yet the row
            assert found.has_heartbeat
            first = await probe.probe()
            await asyncio.sleep(0.3)
            second = await probe.probe()
        finally:
            probe.close()
    assert first.heartbeat_age is not None and second.heartbeat_age is not None
    assert second.heartbeat_age >= first.heartbeat_age + 0.25  # nobody writes it here


async def test_a_cockroachdb_probe_reads_the_heartbeat_row_and_falls_back_before_it_exists(
    healthy_topology: LocalTopology, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CockroachDB path, run on PostgreSQL (its SQL is the same): a read of the
    heartbeat row, or ``SELECT 1`` while the table is missing, re-checked now and then."""
    monkeypatch.setattr(probe_module, "engine_of", lambda _version: "cockroachdb")
    monkeypatch.setattr(probe_module, "HEARTBEAT_RECHECK", 0.0)
    topo = healthy_topology
    async with scratch_database(topo) as database:
        probe = prober(on_database(topo.region(topo.primary).dsn, database))
        try:
            missing = await probe.probe()
            assert missing.ok, missing.error
            assert (missing.engine, missing.writable, missing.has_heartbeat) == (
                "cockroachdb",
                True,
                False,
            )
            assert missing.system_identifier is None and missing.timeline is None
            conn = await asyncpg.connect(on_database(topo.region(topo.primary).dsn, database))
            try:
                await conn.execute(
                    (Path(__file__).parents[2] / "sql/migrations/0002_heartbeat.sql").read_text()
                )
            finally:
                await conn.close()
            found = await probe.probe()
            assert found.ok, found.error
            assert found.has_heartbeat
        finally:
            probe.close()


def test_timelines_come_from_the_wal_file_name_or_what_a_standby_follows() -> None:
    assert timeline_of_wal_file("000000020000000000000005") == 2
    assert timeline_of_wal_file("0000001A0000000000000005") == 26
    assert standby_timeline(received=3, checkpoint=1, heartbeat=2) == 3
    assert standby_timeline(received=None, checkpoint=1, heartbeat=2) == 2
    assert standby_timeline(received=None, checkpoint=2, heartbeat=None) == 2
    assert standby_timeline(received=None, checkpoint=None, heartbeat=None) is None
