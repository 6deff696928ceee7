"""Durable acknowledgements (issue #10) on the real topology: a primary with no synchronous
standby refuses writes at once instead of holding them in SyncRep; a write the router gives
up on leaves no server backend behind; a promotion never loses an acknowledged write.

The topology replicates with ``synchronous_commit = remote_apply`` and ``ANY 1`` of the
standbys, so a standby that acknowledged a write has applied it: what it holds is exactly
what it acknowledged.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from harness import DEFAULT_REGIONS, LocalTopology
from harness.cluster import ROLE, PromotionRefusedError, promotion_quorum
from service.errors import (
    AmbiguousCommitError,
    DeadlineExceededError,
    DependencyError,
    NoWritableRegionError,
)
from service.locality.choice import ChoicePolicy, RegionView, write_order
from service.locality.health import ProbeResult
from service.locality.probe import RegionProber, required_sync_standbys
from service.locality.router import LocalityRouter
from tests.locality.rig import LOCAL, create_rows, new_table, report, running
from tests.locality.traffic import eventually, until

GCP = "gcp-us-central1"
AWS_EU = "aws-eu-west-1"
STANDBYS = (GCP, AWS_EU)
REFUSE_WITHIN = 1.5  # seconds: generous, for a loaded machine (measured: tens of ms)
WRITERS = 4

SYNC_WAITERS_SQL = (
    "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND wait_event = 'SyncRep'"
)


@dataclass(frozen=True, slots=True)
class Write:
    key: int
    started: float
    ended: float
    outcome: str  # ok, refused, ambiguous, deadline, other


def insert_row(table: str, key: int) -> Any:
    async def op(conn: Any) -> None:
        await conn.execute(f"INSERT INTO {table} (id, v) VALUES ($1, $2)", key, f"row-{key}")

    return op


def outcome_of(exc: BaseException | None) -> str:
    if exc is None:
        return "ok"
    if isinstance(exc, NoWritableRegionError):
        return "refused"
    if isinstance(exc, AmbiguousCommitError):
        return "ambiguous"
    if isinstance(exc, DeadlineExceededError):
        return "deadline"
    return f"other: {exc!r}"


async def write_once(router: LocalityRouter, table: str, key: int) -> Write:
    started = time.monotonic()
    error: BaseException | None = None
    try:
        await router.write(insert_row(table, key), idempotent=False)
    except DependencyError as exc:
        error = exc
    return Write(key, started, time.monotonic(), outcome_of(error))


def sync_waiters(topo: LocalTopology) -> int:
    return int(topo.query(topo.primary, SYNC_WAITERS_SQL, ROLE)[0][0])


def keys_on(topo: LocalTopology, region: str, table: str) -> set[int]:
    return {row[0] for row in topo.query(region, f"SELECT id FROM {table}")}


# -- what a COMMIT waits for, with plain values ---------------------------------------------------


@pytest.mark.parametrize(
    ("names", "commit", "needed"),
    [
        ("", "remote_apply", 0),  # no synchronous standby named: commits are local
        ('ANY 1 ("gcp-us-central1", "aws-eu-west-1")', "remote_apply", 1),
        ("any 2 (a, b, c)", "on", 2),
        ("FIRST 2 (a, b, c)", "remote_write", 2),
        ("3 (a, b, c)", "on", 3),  # the old syntax: FIRST 3
        ("a, b", "on", 1),  # a plain list: FIRST 1
        ("*", "on", 1),
        ("ANY 1 (a, b)", "local", 0),  # synchronous_commit = local waits for nobody
        ("ANY 1 (a, b)", "off", 0),
    ],
)
def test_required_sync_standbys_reads_both_settings(names: str, commit: str, needed: int) -> None:
    assert required_sync_standbys(names, commit) == needed


def test_a_primary_is_short_only_when_the_count_is_known_and_below_what_it_needs() -> None:
    def probe(required: int | None, streaming: int | None, *, writable: bool = True) -> bool:
        return ProbeResult(
            started_at=0.0, writable=writable, sync_required=required, sync_standbys=streaming
        ).sync_short

    assert probe(1, 0)
    assert probe(2, 1)
    assert not probe(1, 1)
    assert not probe(0, 0)  # asynchronous by configuration: nothing to wait for
    assert not probe(1, None)  # the role cannot read pg_stat_replication: unknown, not zero
    assert not probe(1, 0, writable=False)


def test_a_primary_short_of_synchronous_standbys_takes_no_durable_write() -> None:
    policy = ChoicePolicy(local_region="a", hold_down=1.0, max_replica_lag=5.0, slow_margin=0.1)
    short = RegionView(name="a", cloud="aws", up=True, writable=True, sync_short=True)
    other = RegionView(name="b", cloud="gcp", up=True, writable=True)
    assert write_order([short], policy, 0.0) == ()
    assert write_order([short], policy, 0.0, durable=False) == ("a",)  # the heartbeat
    assert write_order([short, other], policy, 0.0) == ("b",)


async def test_the_probe_counts_the_synchronous_standbys_streaming(
    healthy_topology: LocalTopology,
) -> None:
    topo = healthy_topology
    probe = RegionProber(
        name="test",
        dsn=topo.region(topo.primary).dsn,
        interval=0.05,
        timeout=2.0,
        connect=asyncpg.connect,
        clock=time.monotonic,
        on_result=_ignore,
    )
    try:
        result = await probe.probe()
    finally:
        probe.close()
    assert result.ok, result.error
    assert (result.sync_required, result.sync_standbys) == (1, 2)
    assert result.sync_names is not None
    assert "ANY 1" in result.sync_names


@pytest.mark.parametrize(
    ("listed", "count", "reachable", "quorum"),
    [
        (["b", "c"], 1, ["b", "c"], ["b", "c"]),  # ANY 1 of 2: both needed
        (["b", "c", "d"], 2, ["c", "d"], ["c", "d"]),  # ANY 2 of 3: any 2
        (["b", "c", "d"], 2, ["b", "c", "d", "e"], ["b", "c", "d"]),  # e acknowledged nothing
        (["b", "c", "d"], 3, ["d"], ["d"]),  # ANY 3 of 3: each holds everything
    ],
)
def test_promotion_chooses_among_a_quorum_that_meets_every_acknowledgement(
    listed: list[str], count: int, reachable: list[str], quorum: list[str]
) -> None:
    assert promotion_quorum(listed, count, reachable) == quorum


@pytest.mark.parametrize(
    ("listed", "count", "reachable"),
    [
        (["b", "c"], 1, ["c"]),  # b may hold the only copy of a write
        (["b", "c", "d"], 1, ["b", "c", "e"]),
        (["b", "c", "d"], 2, ["d"]),
        ([], 1, ["b"]),  # asynchronous: nobody is known to hold anything
    ],
)
def test_promotion_is_refused_without_that_quorum(
    listed: list[str], count: int, reachable: list[str]
) -> None:
    with pytest.raises(PromotionRefusedError, match="refusing to promote"):
        promotion_quorum(listed, count, reachable)


async def _ignore(_result: ProbeResult) -> None:
    return None


# -- on the real topology -------------------------------------------------------------------------


@pytest.mark.fault
async def test_no_synchronous_standby_refuses_writes_fast_and_leaves_no_syncrep_waiter(
    fresh_topology: LocalTopology,
) -> None:
    """Both replication links cut under a steady stream of writes: every write that starts
    after the cut ends within 1.5 s — refused (503-class), or ambiguous if its COMMIT was on
    the wire — none is acknowledged that no standby holds, no backend of the service is left
    waiting on SyncRep, and writes come back with the standbys."""
    topo = fresh_topology
    table = new_table()
    async with running(topo) as router:
        await create_rows(router, topo, table, count=1)
        writes: list[Write] = []
        stop = asyncio.Event()
        keys = itertools.count(1000)

        async def writer() -> None:
            while not stop.is_set():
                done = await write_once(router, table, next(keys))
                writes.append(done)
                if done.outcome != "ok":
                    await asyncio.sleep(0.01)  # a refused write comes back at once: no spin

        tasks = [asyncio.create_task(writer()) for _ in range(WRITERS)]
        try:
            await eventually(lambda: sum(w.outcome == "ok" for w in writes) >= 20, timeout=10.0)
            cut = time.monotonic()
            for name in STANDBYS:
                await asyncio.to_thread(topo.region(name).replication_proxy.reset)
            await until(cut + 2.5)  # longer than the request deadline (2 s)
        finally:
            stop.set()
            await asyncio.gather(*tasks)

        after = [w for w in writes if w.started >= cut]
        refused = [w for w in after if w.outcome == "refused"]
        slowest = max(w.ended - w.started for w in after)
        first_refusal = min(w.ended for w in refused) - cut if refused else None
        # Acknowledged writes are on a standby: with the links cut, nothing more arrives.
        acknowledged = {w.key for w in writes if w.outcome == "ok"}
        held = keys_on(topo, GCP, table) | keys_on(topo, AWS_EU, table)
        assert acknowledged <= held, f"acknowledged but on no standby: {acknowledged - held}"
        assert refused, f"no write refused after the cut: {after[:5]}"
        assert first_refusal is not None
        assert first_refusal < REFUSE_WITHIN
        assert slowest < REFUSE_WITHIN, f"a write took {slowest:.2f} s after the cut"
        assert {w.outcome for w in after} <= {"ok", "refused", "ambiguous"}, after
        status = router.status()
        assert status.write_region is None
        assert status.writes_refused is not None
        assert "synchronous" in status.writes_refused
        await eventually(lambda: sync_waiters(topo) == 0, timeout=5.0)

        for name in STANDBYS:
            await asyncio.to_thread(topo.region(name).replication_proxy.pass_through)
        await eventually(router.can_write, timeout=10.0)
        back = await write_once(router, table, next(keys))
        assert back.outcome == "ok", back
    report(
        "no synchronous standby",
        first_refusal=f"{(first_refusal or 0) * 1000:.0f} ms",
        slowest_after_cut=f"{slowest * 1000:.0f} ms",
        refused=len(refused),
        ambiguous=sum(w.outcome == "ambiguous" for w in after),
        median_refusal=f"{statistics.median(w.ended - w.started for w in refused) * 1000:.1f} ms",
    )


@pytest.mark.fault
async def test_writes_given_up_in_syncrep_leave_no_backend_behind(
    fresh_topology: LocalTopology,
) -> None:
    """Both replication links blackholed: the primary still lists its walsenders as streaming
    (until wal_sender_timeout), so COMMITs wait in SyncRep and the router gives up on them at
    their deadline. Each ends ambiguous — never acknowledged — and its server backend is
    terminated at once, rather than left waiting with its locks and connection slot."""
    topo = fresh_topology
    table = new_table()
    registry = CollectorRegistry()
    async with running(topo, registry=registry) as router:
        await create_rows(router, topo, table, count=1)
        for name in STANDBYS:
            await asyncio.to_thread(topo.region(name).replication_proxy.blackhole)
        cut = time.monotonic()
        done = await asyncio.gather(*(write_once(router, table, 500 + n) for n in range(5)))
        assert {w.outcome for w in done} == {"ambiguous"}, done
        # Well before wal_sender_timeout (10 s) could release anything by itself.
        cleared = await eventually(lambda: sync_waiters(topo) == 0, timeout=4.0)

        def ended() -> float | None:
            return registry.get_sample_value(
                "signing_keys_router_abandoned_backends_total",
                {"region": LOCAL, "outcome": "ended"},
            )

        await eventually(lambda: ended() == 5, timeout=2.0)
    report(
        "writes given up in SyncRep",
        ended_after=f"{max(w.ended for w in done) - cut:.2f} s",
        backends_gone_after=f"{cleared - cut:.2f} s",
    )


@pytest.mark.fault
async def test_the_acknowledging_standby_down_at_promotion_loses_no_acknowledged_write(
    fresh_topology: LocalTopology,
) -> None:
    """ANY 1 of two standbys, and only GCP receiving WAL: GCP alone acknowledges. With GCP
    down too when the primary dies, promoting the most advanced *running* standby (EU) would
    lose every one of those writes: the promotion is refused, loudly, and leaves the topology
    as it was. With GCP back, the promotion picks it, and no acknowledged write is lost."""
    topo = fresh_topology
    table = new_table()
    async with running(topo) as router:
        await create_rows(router, topo, table, count=1)
        await asyncio.to_thread(topo.region(AWS_EU).replication_proxy.blackhole)
        acknowledged = list(range(100, 120))
        for key in acknowledged:
            await router.write(insert_row(table, key), idempotent=False)
    assert set(acknowledged) <= keys_on(topo, GCP, table)
    assert not set(acknowledged) & keys_on(topo, AWS_EU, table)

    await asyncio.to_thread(topo.kill, GCP)
    await asyncio.to_thread(topo.kill, LOCAL)
    with pytest.raises(PromotionRefusedError, match=f"only {AWS_EU} is"):
        await asyncio.to_thread(topo.failover)
    assert topo.primary == LOCAL
    assert topo.role(AWS_EU) == "standby"  # nothing was promoted
    assert topo.query(AWS_EU, "SELECT pg_is_in_recovery()") == [(True,)]

    await asyncio.to_thread(topo.restart, GCP)
    await asyncio.to_thread(topo.region(AWS_EU).replication_proxy.pass_through)
    promoted = await asyncio.to_thread(topo.failover)
    assert promoted == GCP
    assert set(acknowledged) <= keys_on(topo, promoted, table)
    # The other standby follows the new primary and so catches up on them as well.
    await asyncio.to_thread(topo.wait_replayed)
    assert set(acknowledged) <= keys_on(topo, AWS_EU, table)


@pytest.mark.fault
def test_with_no_standby_left_the_primary_stays_synchronous() -> None:
    """Two regions: after a failover the new primary has no standby. It must not acknowledge
    writes alone (synchronous_standby_names '' would, and the next failover would lose them):
    it names the old primary, so a COMMIT waits until that rejoins."""
    with LocalTopology(regions=DEFAULT_REGIONS[:2]) as topo:
        topo.kill(LOCAL)
        assert topo.failover() == GCP
        names = topo.query(GCP, "SHOW synchronous_standby_names")[0][0]
        assert LOCAL in names
        with pytest.raises(TimeoutError):
            topo.query(GCP, "CREATE TABLE alone (x int)", timeout=0.5)
        topo.rejoin(LOCAL)
        topo.query(GCP, "CREATE TABLE together (x int)", timeout=10.0)
