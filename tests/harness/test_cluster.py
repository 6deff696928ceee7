"""The local topology: replication, kill, failover, rejoin and a clean stop, on real servers."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from harness import DEFAULT_REGIONS, LocalTopology, TopologyError
from harness.postgres import port_is_open
from service.settings import Settings

PRIMARY, GCP, EU = (spec.name for spec in DEFAULT_REGIONS)


def wait_for(check: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} still false after {timeout} s")
        time.sleep(0.01)


def streaming(topo: LocalTopology) -> set[str]:
    rows = topo.query(
        topo.primary, "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'"
    )
    return {row[0] for row in rows}


def pids_alive(pids: list[int]) -> list[int]:
    return [pid for pid in pids if Path(f"/proc/{pid}").exists()]


def processes_mentioning(text: str) -> list[int]:
    """Processes whose command line or working directory mentions ``text`` (zombies too)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes().decode(errors="replace")
            cwd = os.readlink(Path(entry.path, "cwd"))
        except OSError:
            continue
        if text in cmdline or text in cwd:
            found.append(int(entry.name))
    return found


# -- the shared topology (non-destructive) ----------------------------------------------------


async def test_regions_dsns_and_roles_are_ready_for_the_service(topology: LocalTopology) -> None:
    assert topology.region_names == (PRIMARY, GCP, EU)
    assert topology.primary == PRIMARY
    settings = Settings.from_env(topology.env(PRIMARY))  # the service accepts what env() gives
    assert [(r.name, r.cloud) for r in settings.regions] == [
        (spec.name, spec.cloud) for spec in DEFAULT_REGIONS
    ]
    assert settings.local_region == PRIMARY
    for region, configured in zip(topology.regions, settings.regions, strict=True):
        assert configured.dsn == region.dsn
        assert f":{region.proxy.port}/" in region.dsn  # the service goes through the proxy
        assert region.is_running
        password = region.dsn.split(":")[2].split("@")[0]
        assert password not in repr(region) and password not in repr(topology)

        conn = await asyncpg.connect(region.dsn, timeout=5.0)
        try:
            user, database, in_recovery, monitor = await conn.fetchrow(
                "SELECT current_user, current_database(), pg_is_in_recovery(),"
                " pg_has_role('pg_monitor', 'member')"
            )
            assert (user, database, monitor) == ("signing_keys", "signing_keys", True)
            assert in_recovery is (region.name != PRIMARY)
            if in_recovery:
                with pytest.raises(asyncpg.exceptions.ReadOnlySQLTransactionError):
                    await conn.execute("CREATE TABLE must_fail (x int)")
        finally:
            await conn.close()
    bad = topology.region(PRIMARY).dsn.replace(password, "wrong")
    with pytest.raises(asyncpg.exceptions.InvalidPasswordError):
        await asyncpg.connect(bad, timeout=5.0)


async def test_a_write_on_the_primary_is_readable_on_both_standbys(
    topology: LocalTopology, table: str
) -> None:
    marker = secrets.token_hex(8)
    conn = await asyncpg.connect(topology.region(PRIMARY).dsn)
    try:
        await conn.execute(f"INSERT INTO {table} VALUES ($1)", marker)
    finally:
        await conn.close()

    def seen_on(name: str) -> bool:
        rows = topology.query(name, f"SELECT 1 FROM {table} WHERE marker = $1", marker)
        return bool(rows)

    # remote_apply with ANY 1: the commit returned only once a standby had applied it.
    assert await asyncio.to_thread(lambda: seen_on(GCP) or seen_on(EU))
    await asyncio.to_thread(topology.wait_replayed)
    for standby in (GCP, EU):
        conn = await asyncpg.connect(topology.region(standby).dsn)
        try:
            assert await conn.fetchval(f"SELECT marker FROM {table}") == marker
        finally:
            await conn.close()


# -- destructive: fresh topologies ------------------------------------------------------------


@pytest.mark.fault
def test_kill_and_failover_promote_the_most_advanced_standby(
    fresh_topology: LocalTopology,
) -> None:
    topo = fresh_topology
    topo.execute(PRIMARY, "CREATE TABLE t (marker text PRIMARY KEY)")
    topo.wait_replayed()

    # Cut GCP off the primary's WAL stream: it stays up, readable, and falls behind.
    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))
        dead_port = dead.getsockname()[1]
        topo.query(GCP, f"ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port={dead_port}'")
        topo.query(GCP, "SELECT pg_reload_conf()")
        wait_for(lambda: GCP not in streaming(topo), what="GCP detached")
    topo.query(PRIMARY, "INSERT INTO t VALUES ('before-failover')")  # commits through EU alone

    server = topo.region(PRIMARY).server
    pids = server.process_ids()
    assert len(pids) > 3
    topo.kill(PRIMARY)
    assert not port_is_open(topo.region(PRIMARY).server_port)
    assert not topo.region(PRIMARY).is_running
    assert pids_alive(pids) == []  # postmaster and children gone, none left as a zombie

    started = time.monotonic()
    assert topo.failover() == EU  # EU had replayed more than GCP
    failover_seconds = time.monotonic() - started
    print(f"failover took {failover_seconds:.3f} s")
    assert topo.primary == EU
    assert topo.role(PRIMARY) == "fenced"
    assert streaming(topo) == {GCP}  # GCP now follows the new primary

    rows = topo.query(EU, "INSERT INTO t VALUES ('after-failover') RETURNING marker")
    assert rows == [("after-failover",)]
    topo.wait_replayed()
    assert topo.query(GCP, "SELECT marker FROM t ORDER BY marker") == [
        ("after-failover",),
        ("before-failover",),
    ]

    topo.rejoin(PRIMARY)
    assert topo.role(PRIMARY) == "standby"
    assert streaming(topo) == {GCP, PRIMARY}
    topo.query(EU, "INSERT INTO t VALUES ('after-rejoin')")
    topo.wait_replayed()
    for standby in (PRIMARY, GCP):
        assert topo.query(standby, "SELECT count(*) FROM t") == [(3,)]
        assert topo.query(standby, "SELECT pg_is_in_recovery()") == [(True,)]


@pytest.mark.fault
async def test_one_standby_down_lets_commits_through_both_down_makes_them_wait(
    fresh_topology: LocalTopology,
) -> None:
    topo = fresh_topology
    conn = await asyncpg.connect(topo.region(PRIMARY).dsn)
    try:
        await conn.execute("CREATE TABLE t (n int)")
        await asyncio.to_thread(topo.kill, GCP)
        await conn.execute("INSERT INTO t VALUES (1)", timeout=5.0)

        await asyncio.to_thread(topo.kill, EU)
        with pytest.raises(TimeoutError):  # synchronous commit waits for a standby
            await conn.execute("INSERT INTO t VALUES (2)", timeout=0.5)

        await asyncio.to_thread(topo.restart, EU)
        await conn.execute("INSERT INTO t VALUES (3)", timeout=5.0)
        await asyncio.to_thread(topo.restart, GCP)
        await asyncio.to_thread(topo.wait_replayed)
    finally:
        await conn.close()
    # Row 2 committed locally when its wait was cancelled; standbys got it after restarting.
    for name in topo.region_names:
        assert topo.query(name, "SELECT n FROM t ORDER BY n") == [(1,), (2,), (3,)]


@pytest.mark.fault
def test_promote_a_chosen_standby_and_restart_a_killed_primary_as_split_brain(
    fresh_topology: LocalTopology,
) -> None:
    topo = fresh_topology
    topo.promote(GCP)
    assert topo.primary == GCP
    assert not topo.region(PRIMARY).is_running  # fenced
    assert streaming(topo) == {EU}
    with pytest.raises(TopologyError):
        topo.promote(GCP)
    with pytest.raises(TopologyError):
        topo.rejoin(GCP)

    # The fenced old primary, started again as it was, is a primary nobody follows: its
    # synchronous commits can never complete (what a router must not mistake for healthy).
    topo.restart(PRIMARY)
    assert topo.role(PRIMARY) == "fenced"
    assert topo.query(PRIMARY, "SELECT pg_is_in_recovery()") == [(False,)]
    with pytest.raises(TimeoutError):
        topo.query(PRIMARY, "CREATE TABLE split_brain (x int)", timeout=0.5)

    topo.rejoin(PRIMARY)
    assert streaming(topo) == {EU, PRIMARY}
    assert topo.query(PRIMARY, "SELECT pg_is_in_recovery()") == [(True,)]


@pytest.mark.fault
def test_stop_leaves_no_process_and_no_directory_behind() -> None:
    topo = LocalTopology()
    topo.start()
    base = topo.base_dir
    assert base is not None and base.is_dir()
    pids = [pid for region in topo.regions for pid in region.server.process_ids()]
    assert len(pids) >= 3 * 4
    proxy_ports = [region.proxy.port for region in topo.regions]
    topo.stop()
    topo.stop()  # idempotent
    assert not base.exists()
    assert pids_alive(pids) == []
    assert processes_mentioning(str(base)) == []
    assert not any(port_is_open(port) for port in proxy_ports)
    with pytest.raises(TopologyError):
        topo.start()


@pytest.mark.fault
def test_a_start_that_fails_half_way_cleans_up(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fail(self: LocalTopology, names: list[str], timeout: float = 10.0) -> None:
        seen["base"] = self.base_dir
        seen["pids"] = [pid for s in self._servers.values() for pid in s.process_ids()]
        raise TopologyError("injected failure")

    monkeypatch.setattr(LocalTopology, "_wait_streaming", fail)
    with pytest.raises(TopologyError, match="injected"), LocalTopology():
        pass
    assert len(seen["pids"]) >= 3 * 4  # servers were running when it failed
    assert not seen["base"].exists()
    assert pids_alive(seen["pids"]) == []


@pytest.mark.fault
def test_the_shared_topology_guard_can_heal_a_failed_over_topology(
    fresh_topology: LocalTopology,
) -> None:
    from tests.conftest import _heal

    topo = fresh_topology
    topo.kill(PRIMARY)
    topo.failover()
    topo.kill(EU if topo.primary == GCP else GCP)
    _heal(topo, PRIMARY)
    assert topo.primary == PRIMARY
    assert all(region.is_running for region in topo.regions)
    assert [topo.role(name) for name in topo.region_names] == ["primary", "standby", "standby"]
    assert streaming(topo) == {GCP, EU}
    topo.query(PRIMARY, "CREATE TABLE healed (x int)")  # synchronous commits work again


# -- replication links, pauses and a rogue promotion -------------------------------------------


def receiver(topo: LocalTopology, name: str) -> tuple[Any, ...] | None:
    """A standby's walreceiver: (status, received timeline, seconds since it last heard)."""
    rows = topo.query(
        name,
        "SELECT status, received_tli, extract(epoch FROM now() - last_msg_receipt_time)::float8"
        " FROM pg_stat_wal_receiver",
    )
    return rows[0] if rows else None


def has_marker(topo: LocalTopology, name: str, table: str, marker: str) -> bool:
    return bool(topo.query(name, f"SELECT 1 FROM {table} WHERE marker = $1", marker))


async def test_a_standby_cut_off_its_replication_link_still_answers_the_service(
    topology: LocalTopology, table: str
) -> None:
    """The link is the standby's own proxy: cutting it (reset or blackhole) stops its WAL,
    not the service's path to it; pass-through lets it catch up."""
    eu = topology.region(EU)
    assert eu.replication_proxy.connection_count == 1  # its walreceiver goes through it
    assert f"port={eu.replication_proxy.port}" in topology.query(EU, "SHOW primary_conninfo")[0][0]
    for fault in ("reset", "blackhole"):
        getattr(eu.replication_proxy, fault)()
        marker = f"{fault}-{secrets.token_hex(4)}"
        # Commits still complete (GCP is a synchronous standby too).
        await asyncio.to_thread(topology.query, PRIMARY, f"INSERT INTO {table} VALUES ($1)", marker)
        await asyncio.to_thread(lambda: topology.wait_replayed(standbys=[GCP]))
        conn = await asyncpg.connect(eu.dsn, timeout=5.0)  # the service's path: unharmed
        try:
            assert (
                await conn.fetchval(f"SELECT count(*) FROM {table} WHERE marker = $1", marker) == 0
            )
        finally:
            await conn.close()
        eu.replication_proxy.pass_through()
        await asyncio.to_thread(topology.wait_replayed)
        assert has_marker(topology, EU, table, marker)


@pytest.mark.fault
def test_a_paused_walreceiver_freezes_a_standbys_data_while_it_keeps_answering(
    fresh_topology: LocalTopology,
) -> None:
    topo = fresh_topology
    topo.execute(PRIMARY, "CREATE TABLE t (marker text PRIMARY KEY)")
    topo.wait_replayed()
    topo.pause(GCP, "walreceiver")
    assert topo.region(GCP).paused == "walreceiver"
    assert "walreceiver paused" in repr(topo.region(GCP))
    with pytest.raises(TopologyError, match="already paused"):
        topo.pause(GCP)
    topo.query(PRIMARY, "INSERT INTO t VALUES ('while-paused')")  # EU acknowledges it
    # GCP answers at once, from data that no longer moves; its walreceiver looks fine.
    assert topo.query(GCP, "SELECT count(*) FROM t", timeout=2.0) == [(0,)]
    status = receiver(topo, GCP)
    assert status is not None and status[0] == "streaming"
    wait_for(lambda: (receiver(topo, GCP) or ("", 0, 0.0))[2] > 0.5, what="silence grows")
    assert topo.query(GCP, "SELECT count(*) FROM t") == [(0,)]
    topo.resume(GCP)
    assert topo.region(GCP).paused is None
    topo.wait_replayed()
    assert has_marker(topo, GCP, "t", "while-paused")


@pytest.mark.fault
async def test_a_paused_server_answers_nothing_until_resumed(
    fresh_topology: LocalTopology,
) -> None:
    topo = fresh_topology
    conn = await asyncpg.connect(topo.region(EU).dsn, timeout=5.0)
    try:
        await asyncio.to_thread(topo.pause, EU)
        with pytest.raises(TimeoutError):
            await conn.fetchval("SELECT 1", timeout=0.5)
        with pytest.raises(TimeoutError):
            await asyncpg.connect(topo.region(EU).dsn, timeout=0.5)
        await asyncio.to_thread(topo.resume, EU)
        await asyncio.to_thread(topo.resume, EU)  # harmless when nothing is paused
    finally:
        conn.terminate()
    conn = await asyncpg.connect(topo.region(EU).dsn, timeout=5.0)
    try:
        assert await conn.fetchval("SELECT 1", timeout=2.0) == 1
    finally:
        await conn.close()


@pytest.mark.fault
def test_a_paused_server_is_stopped_cleanly(fresh_topology: LocalTopology) -> None:
    topo = fresh_topology
    server = topo.region(EU).server
    pids = server.process_ids()
    topo.pause(EU)
    topo.restart(EU)  # stopping a frozen server wakes it first
    assert topo.region(EU).paused is None
    assert pids_alive(pids) == []
    assert topo.query(EU, "SELECT pg_is_in_recovery()") == [(True,)]
    topo.pause(GCP, "startup")
    topo.kill(GCP)
    assert not topo.region(GCP).is_running


def timeline(topo: LocalTopology, name: str) -> int:
    rows = topo.query(
        name,
        "SELECT CASE WHEN pg_is_in_recovery() THEN (SELECT received_tli FROM pg_stat_wal_receiver)"
        " ELSE ('x' || left(pg_walfile_name(pg_current_wal_lsn()), 8))::bit(32)::int END",
    )
    return int(rows[0][0])


@pytest.mark.fault
@pytest.mark.parametrize("old_primary_commits", [False, True])
def test_a_rogue_promotion_leaves_two_primaries_until_the_old_one_rejoins(
    fresh_topology: LocalTopology, old_primary_commits: bool
) -> None:
    topo = fresh_topology
    topo.execute(PRIMARY, "CREATE TABLE t (marker text PRIMARY KEY)")
    topo.wait_replayed()
    with pytest.raises(TopologyError, match="already the primary"):
        topo.rogue_promote(PRIMARY)

    called = time.monotonic()
    topo.rogue_promote(GCP, old_primary_commits=old_primary_commits)
    promoted_at = topo.last_promoted_at
    assert promoted_at is not None
    assert called <= promoted_at + 0.05 and promoted_at <= time.monotonic()
    assert topo.primary == GCP
    assert topo.role(PRIMARY) == "rogue"
    assert topo.region(PRIMARY).is_running  # not fenced: up, reachable, writable
    assert topo.query(PRIMARY, "SELECT pg_is_in_recovery()") == [(False,)]
    assert topo.query(GCP, "SELECT pg_is_in_recovery()") == [(False,)]
    assert timeline(topo, PRIMARY) == 1
    assert timeline(topo, GCP) == 2
    wait_for(lambda: (receiver(topo, EU) or ("", 0))[1] == 2, what="EU on timeline 2")
    assert streaming(topo) == {EU}

    topo.query(GCP, "INSERT INTO t VALUES ('new-timeline')")
    if old_primary_commits:
        topo.query(PRIMARY, "INSERT INTO t VALUES ('split-brain')", timeout=2.0)
        assert has_marker(topo, PRIMARY, "t", "split-brain")
    else:
        # Its synchronous standbys follow the new primary: its commits can never complete.
        with pytest.raises(TimeoutError):
            topo.query(PRIMARY, "INSERT INTO t VALUES ('split-brain')", timeout=0.5)
    topo.wait_replayed()
    assert has_marker(topo, EU, "t", "new-timeline")
    assert not has_marker(topo, EU, "t", "split-brain")

    topo.rejoin(PRIMARY)
    assert topo.role(PRIMARY) == "standby"
    assert streaming(topo) == {EU, PRIMARY}
    assert timeline(topo, PRIMARY) == 2
    # Rebuilt from the new primary: what only the old one had is gone.
    assert has_marker(topo, PRIMARY, "t", "new-timeline")
    assert not has_marker(topo, PRIMARY, "t", "split-brain")
    assert topo.region(PRIMARY).replication_proxy.connection_count == 1


@pytest.mark.fault
def test_a_fork_is_a_second_primary_on_the_same_timeline(fresh_topology: LocalTopology) -> None:
    topo = fresh_topology
    topo.execute(PRIMARY, "CREATE TABLE t (marker text PRIMARY KEY)")
    topo.wait_replayed()
    topo.fork(EU)
    assert topo.role(EU) == "rogue"
    assert topo.primary == PRIMARY
    assert timeline(topo, EU) == timeline(topo, PRIMARY) == 1
    identity = "SELECT system_identifier FROM pg_control_system()"
    assert topo.query(EU, identity) == topo.query(PRIMARY, identity)
    topo.query(EU, "INSERT INTO t VALUES ('forked')")
    topo.query(PRIMARY, "INSERT INTO t VALUES ('primary')", timeout=5.0)  # GCP acknowledges
    assert not has_marker(topo, PRIMARY, "t", "forked")
    topo.rejoin(EU)
    assert streaming(topo) == {GCP, EU}
    assert has_marker(topo, EU, "t", "primary")
    assert not has_marker(topo, EU, "t", "forked")
