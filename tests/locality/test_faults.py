"""The fault scenarios of the locality router (issue #3), on the real topology.

Each scenario runs a client that reads continuously — open loop, 250 lookups a second, a 2 s
deadline each — and asserts what that client saw. The figures (detection time, failed
requests, p50/p99 latency) are printed; run with ``pytest -s`` to see them.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from harness import LocalTopology
from service.errors import (
    AmbiguousCommitError,
    DependencyError,
    NoWritableRegionError,
    RegionUnavailableError,
)
from service.locality.status import RouterStatus
from tests.locality.rig import FAST, LOCAL, create_rows, new_table, reader, report, running
from tests.locality.traffic import Outcome, Timeline, Traffic, eventually, summarize, until

pytestmark = pytest.mark.fault

RATE = 250.0  # lookups per second
# The COMMIT of a router write on the wire (asyncpg's simple-query message, length 12): the
# heartbeat's own COMMIT, in one script with the rest of its transaction, never matches it.
ASYNCPG_COMMIT = b"Q\x00\x00\x00\x0cCOMMIT;\x00"
GCP = "gcp-us-central1"
AWS_EU = "aws-eu-west-1"


def ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.0f} ms"


def share(outcomes: list[Outcome], region: str) -> float:
    """The fraction of ``outcomes`` served by ``region``."""
    assert outcomes
    return sum(outcome.region == region for outcome in outcomes) / len(outcomes)


def region_down(name: str) -> Any:
    return lambda status: status.region(name).state == "down"


def region_up(name: str) -> Any:
    return lambda status: status.region(name).state == "up"


def reads_from(name: str | None) -> Any:
    return lambda status: status.read_region == name


def serving_elsewhere(status: RouterStatus, region: str) -> bool:
    """Whether another region could have served reads: up, not held down, fenced or lagging."""
    return any(
        other.name != region
        and other.state == "up"
        and not other.held_down
        and not other.fenced
        and (other.lag_seconds is None or other.lag_seconds <= FAST.max_replica_lag)
        for other in status.regions
    )


def failback(timeline: Timeline, region: str, *, after: float) -> float | None:
    """When reads came back to ``region`` after leaving it (``None``: they never left).

    Asserts that they came back only once ``region`` had been up and fast again for the
    whole hold-down period, unless no other region could serve at that moment (under heavy
    machine load the others' probes can time out too).
    """

    def healthy(status: RouterStatus) -> bool:
        return status.region(region).state == "up" and not status.region(region).slow

    left = False
    last_recovery: float | None = None
    previous: RouterStatus | None = None
    for at, status in timeline.events:
        if at >= after:
            if previous is not None and not healthy(previous) and healthy(status):
                last_recovery = at
            if status.read_region != region:
                left = True
            elif left:
                assert last_recovery is not None, "reads came back to a region never seen sick"
                if serving_elsewhere(status, region):
                    # With nowhere else to read, a held-down region is still the best choice.
                    assert at - last_recovery >= FAST.hold_down - 0.01, (at, last_recovery, status)
                return at
        previous = status
    return None


def insert_row(table: str, key: int) -> Any:
    async def op(conn: Any) -> None:
        await conn.execute(
            f"INSERT INTO {table} (id, v) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
            key,
            f"row-{key}",
        )

    return op


async def test_1_local_region_blackholed(healthy_topology: LocalTopology) -> None:
    """Zero failed reads; another region serves within 1 s; home again after the hold-down."""
    topo = healthy_topology
    table = new_table()
    timeline = Timeline()
    async with running(topo) as router:
        router.add_listener(timeline)
        await create_rows(router, topo, table)
        async with Traffic(reader(router, topo, table), rate=RATE) as reads:
            await reads.wait_count(100)
            fault_at = time.monotonic()
            topo.region(LOCAL).proxy.blackhole()
            moved_at = await eventually(lambda: router.status().read_region != LOCAL, timeout=5.0)
            await until(fault_at + 1.5)
            healed_at = time.monotonic()
            topo.region(LOCAL).proxy.pass_through()
            await eventually(lambda: router.status().read_region == LOCAL, timeout=10.0)
            await reads.wait_count(len(reads.outcomes) + 100)

    assert reads.failures() == []
    during = reads.between(fault_at, healed_at)
    after_first_second = reads.between(fault_at + 1.0, healed_at)
    assert after_first_second
    assert all(outcome.region != LOCAL for outcome in after_first_second)
    # Even the reads caught on the blackholed link were answered well within a second.
    assert max(outcome.latency for outcome in during) < 1.0
    detected = timeline.first(region_down(LOCAL), after=fault_at)
    home = failback(timeline, LOCAL, after=fault_at)
    assert home is not None
    # Most answers come from home again. Not nearly all: while its fresh connections are
    # slower than the hedge delay (a loaded machine), other regions win some hedged races —
    # one clean-clone run saw 60 % just after failback.
    assert share(reads.between(home + 0.05), LOCAL) >= 0.5
    report(
        "scenario 1 (local region blackholed)",
        detection=ms(detected - fault_at if detected else None),
        reads_moved=ms(moved_at - fault_at),
        back_home_after_heal=ms(home - healed_at),
        during_fault=summarize(during),
        overall=summarize(reads.outcomes),
    )


async def test_2_primary_killed_then_failover(fresh_topology: LocalTopology) -> None:
    """Zero failed reads; writes fail fast until a standby is promoted, then succeed within 1 s
    with no restart; every acknowledged write is readable afterwards."""
    topo = fresh_topology
    table = new_table()
    timeline = Timeline()
    acked: list[int] = []
    keys = itertools.count(10_000)

    async def write() -> None:
        key = next(keys)
        await router.write(insert_row(table, key), idempotent=True)
        acked.append(key)

    async with running(topo) as router:
        router.add_listener(timeline)
        await create_rows(router, topo, table)
        async with (
            Traffic(reader(router, topo, table), rate=RATE) as reads,
            Traffic(write, rate=50.0, name="writes") as writes,
        ):
            await writes.wait_count(20)
            kill_at = time.monotonic()
            await asyncio.to_thread(topo.kill, LOCAL)
            no_writer_at = await eventually(lambda: not router.can_write(), timeout=5.0)
            await until(no_writer_at + 0.5)
            failover_started = time.monotonic()
            new_primary = await asyncio.to_thread(topo.failover)
            promoted_at = time.monotonic()
            first_write_at = await eventually(
                lambda: any(o.ok and o.started >= promoted_at for o in writes.outcomes),
                timeout=5.0,
            )
            await reads.wait_count(len(reads.outcomes) + 100)
        acked_before_kill = len([o for o in writes.outcomes if o.ok and o.ended < kill_at])

    assert reads.failures() == []
    assert acked_before_kill >= 10
    first_ok = min(o.ended for o in writes.outcomes if o.ok and o.started >= promoted_at)
    assert first_ok - promoted_at < 1.0
    failed_writes = writes.failures()
    assert all(isinstance(o.error, DependencyError) for o in failed_writes), failed_writes
    refused = [o for o in failed_writes if isinstance(o.error, NoWritableRegionError)]
    assert refused, "writes between the kill and the promotion should have been refused"
    # Refused at once, not after the 2 s deadline (those refused before the promotion).
    refused_early = [o for o in refused if o.ended < failover_started]
    assert refused_early
    assert max(o.latency for o in refused_early) < 0.5
    written = topo.query(new_primary, f"SELECT id FROM {table} WHERE id >= 10000")
    assert {row[0] for row in written} >= set(acked)
    detected = timeline.first(region_down(LOCAL), after=kill_at)
    writes_found = timeline.first(lambda s: s.write_region == new_primary, after=kill_at)
    report(
        "scenario 2 (primary killed, failover)",
        detection=ms(detected - kill_at if detected else None),
        new_primary=new_primary,
        failover_took=ms(promoted_at - failover_started),
        writes_found_new_primary=ms(writes_found - promoted_at if writes_found else None),
        first_write_after_promotion=ms(first_write_at - promoted_at),
        reads=summarize(reads.outcomes),
        refused_writes=summarize(refused),
        writes=summarize(writes.outcomes),
        acknowledged=len(acked),
    )


async def test_3_whole_cloud_down(fresh_topology: LocalTopology) -> None:
    """Both AWS regions cut off: reads move to GCP; writes go to GCP once it is promoted;
    traffic comes home after the hold-down when AWS returns."""
    topo = fresh_topology
    table = new_table()
    timeline = Timeline()
    keys = itertools.count(20_000)
    async with running(topo) as router:
        router.add_listener(timeline)
        await create_rows(router, topo, table)
        async with Traffic(reader(router, topo, table), rate=RATE) as reads:
            await reads.wait_count(100)
            fault_at = time.monotonic()
            topo.region(LOCAL).proxy.blackhole()
            topo.region(AWS_EU).proxy.blackhole()
            on_gcp_at = await eventually(lambda: router.status().read_region == GCP, timeout=5.0)
            await eventually(lambda: not router.can_write(), timeout=5.0)
            with pytest.raises(NoWritableRegionError):
                await router.write(insert_row(table, next(keys)), idempotent=True)
            promote_started = time.monotonic()
            await asyncio.to_thread(topo.promote, GCP)
            promoted_at = time.monotonic()
            await eventually(lambda: router.status().write_region == GCP, timeout=5.0)
            await router.write(insert_row(table, next(keys)), idempotent=True)
            write_ok_at = time.monotonic()
            healed_at = time.monotonic()
            topo.region(LOCAL).proxy.pass_through()
            topo.region(AWS_EU).proxy.pass_through()
            await asyncio.to_thread(topo.rejoin, LOCAL)  # the fenced old primary, as a standby
            await eventually(lambda: router.status().read_region == LOCAL, timeout=15.0)
            await reads.wait_count(len(reads.outcomes) + 100)
            await router.write(insert_row(table, next(keys)), idempotent=True)

    assert reads.failures() == []
    assert all(o.region == GCP for o in reads.between(on_gcp_at + 0.2, healed_at))
    assert write_ok_at - promoted_at < 1.0
    home = failback(timeline, LOCAL, after=fault_at)
    assert home is not None
    assert home > healed_at
    # Most answers come from home again. Not nearly all: while its fresh connections are
    # slower than the hedge delay (a loaded machine), other regions win some hedged races —
    # one clean-clone run saw 60 % just after failback.
    assert share(reads.between(home + 0.05), LOCAL) >= 0.5
    detected = timeline.first(reads_from(GCP), after=fault_at)
    report(
        "scenario 3 (whole AWS cloud down)",
        detection=ms(detected - fault_at if detected else None),
        promotion_took=ms(promoted_at - promote_started),
        writes_on_gcp_after_promotion=ms(write_ok_at - promoted_at),
        back_home_after_heal=ms(home - healed_at),
        during_outage=summarize(reads.between(fault_at, healed_at)),
        overall=summarize(reads.outcomes),
    )


async def test_4_local_region_slow(healthy_topology: LocalTopology) -> None:
    """300 ms of added latency on the local region: no read fails, and once the router has
    seen it (a few probes) reads are served elsewhere. The latency figures are reported, not
    asserted: on a loaded machine they measure the machine."""
    topo = healthy_topology
    table = new_table()
    registry = CollectorRegistry()
    timeline = Timeline()
    async with running(topo, registry=registry) as router:
        router.add_listener(timeline)
        await create_rows(router, topo, table)
        async with Traffic(reader(router, topo, table), rate=RATE) as reads:
            await reads.wait_count(100)
            fault_at = time.monotonic()
            topo.region(LOCAL).proxy.delay(0.3)
            await eventually(lambda: router.status().read_region != LOCAL, timeout=5.0)
            await until(fault_at + 2.0)
            healed_at = time.monotonic()
            topo.region(LOCAL).proxy.pass_through()

    during = reads.between(fault_at, healed_at)
    summary = summarize(during)
    assert reads.failures() == []
    hedges = registry.get_sample_value("signing_keys_router_hedges_total", {"region": AWS_EU})
    detected = timeline.first(lambda s: s.read_region != LOCAL, after=fault_at)
    assert detected is not None
    moved = reads.between(detected + 0.2, healed_at)
    assert moved, "reads went on after the router moved them"
    assert share(moved, LOCAL) <= 0.05, summarize(moved)
    report(
        "scenario 4 (local region +300 ms)",
        detection=ms(detected - fault_at if detected else None),
        hedges=hedges,
        during_fault=summary,
    )


async def test_5_flapping_link(healthy_topology: LocalTopology) -> None:
    """A link cut and restored every 200 ms: no failed reads, and reads do not follow it."""
    topo = healthy_topology
    table = new_table()
    timeline = Timeline()
    proxy = topo.region(LOCAL).proxy
    flaps = 15  # 3 s
    async with running(topo) as router:
        router.add_listener(timeline)
        await create_rows(router, topo, table)
        async with Traffic(reader(router, topo, table), rate=RATE) as reads:
            await reads.wait_count(100)
            fault_at = time.monotonic()
            for flap in range(flaps):
                if flap % 2 == 0:
                    proxy.blackhole()
                else:
                    proxy.pass_through()
                await asyncio.sleep(0.2)  # the fault's rhythm, not a wait for a result
            proxy.pass_through()
            healed_at = time.monotonic()
            await eventually(lambda: router.status().read_region == LOCAL, timeout=10.0)
            await reads.wait_count(len(reads.outcomes) + 50)

    during = reads.between(fault_at, healed_at)
    assert reads.failures() == []
    assert failback(timeline, LOCAL, after=fault_at) is not None
    changes = timeline.read_region_changes(after=fault_at, before=healed_at)
    state_changes = sum(
        1
        for (_, before), (_, after) in itertools.pairwise(timeline.events)
        if before.region(LOCAL).state != after.region(LOCAL).state
    )
    # Reads leave the flapping region and stay away while it flaps: every failure during its
    # hold-down starts the hold-down over, so it is never preferred again until quiet.
    # (Unless no other region could serve at that moment: when the others are held down too
    # — back from losing hedged races on a loaded machine — the local region is the choice.)
    returns = [
        (at, after)
        for (_, before), (at, after) in itertools.pairwise(timeline.events)
        if fault_at <= at < healed_at
        and before.read_region != LOCAL == after.read_region
        and serving_elsewhere(after, LOCAL)
    ]
    assert returns == []
    choices = [(at, serving_elsewhere(status, LOCAL)) for at, status in timeline.events]

    def had_a_choice(outcome: Outcome) -> bool:
        """Whether, when ``outcome`` started, the router's last report showed another region
        able to serve."""
        last = [choice for at, choice in choices if at <= outcome.started]
        return not last or last[-1]

    steady = [o for o in reads.between(fault_at + 1.0, healed_at) if had_a_choice(o)]
    assert share(steady, LOCAL) <= 0.01
    report(
        "scenario 5 (link flapping every 200 ms)",
        read_region_changes=changes,
        local_state_changes=state_changes,
        during_fault=summarize(during),
    )


@pytest.mark.parametrize("fault", ["reset", "blackhole"])
async def test_6_every_region_down(healthy_topology: LocalTopology, fault: str) -> None:
    """Requests fail fast with clear errors — with refused links and with silent ones — and
    the router recovers by itself when the regions return."""
    topo = healthy_topology
    table = new_table()
    async with running(topo) as router:
        await create_rows(router, topo, table)
        async with Traffic(reader(router, topo, table), rate=RATE) as reads:
            await reads.wait_count(50)
            fault_at = time.monotonic()
            for name in topo.region_names:
                getattr(topo.region(name).proxy, fault)()
            all_down_at = await eventually(lambda: not router.can_read(), timeout=5.0)
            await until(all_down_at + 0.5)
            write_started = time.monotonic()
            with pytest.raises(NoWritableRegionError):
                await router.write(lambda conn: conn.execute("SELECT 1"), idempotent=True)
            write_refused_in = time.monotonic() - write_started
            healed_at = time.monotonic()
            for name in topo.region_names:
                topo.region(name).proxy.pass_through()
            recovered_at = await eventually(router.can_read, timeout=5.0)
            await eventually(lambda: len(reads.between(recovered_at + 0.2)) >= 50, timeout=5.0)

    failures = reads.failures()
    assert failures
    assert all(isinstance(o.error, RegionUnavailableError | TimeoutError) for o in failures)
    assert all(str(o.error) for o in failures)  # a message that says what happened
    assert max(o.latency for o in reads.between(fault_at)) < FAST.request_deadline + 0.3
    after_detection = reads.between(all_down_at + 0.05, healed_at)
    assert after_detection
    assert all(isinstance(o.error, RegionUnavailableError) for o in after_detection)
    fast = summarize(after_detection)
    assert fast.p99_ms < 200.0, fast  # immediate, against a 2 s deadline
    assert write_refused_in < 0.2
    settled = reads.between(recovered_at + 0.2)
    assert all(o.ok for o in settled)
    report(
        f"scenario 6 (every region down: {fault})",
        detection=ms(all_down_at - fault_at),
        recovery_after_heal=ms(recovered_at - healed_at),
        failed_reads=len(failures),
        after_detection=fast,
        write_refused_in=ms(write_refused_in),
    )


async def test_8_ambiguous_commit_resolved_by_reading_back(
    healthy_topology: LocalTopology,
) -> None:
    """The link is cut right after a create's COMMIT left the client: one clear answer, and
    the row exists exactly once."""
    topo = healthy_topology
    table = new_table()
    proxy = topo.region(topo.primary).proxy
    async with running(topo) as router:
        await router.write(
            lambda conn: conn.execute(
                f"CREATE TABLE {table} (id text PRIMARY KEY, v text NOT NULL)"
            ),
            idempotent=False,
        )

        def create(key: str) -> Any:
            async def op(conn: Any) -> tuple[str, str]:
                inserted = await conn.fetchval(
                    f"INSERT INTO {table} (id, v) VALUES ($1, 'created') "
                    "ON CONFLICT (id) DO NOTHING RETURNING id",
                    key,
                )
                value = await conn.fetchval(f"SELECT v FROM {table} WHERE id = $1", key)
                return ("created" if inserted else "found", value)

            return op

        hits = proxy.hits
        started = time.monotonic()
        proxy.reset_on(ASYNCPG_COMMIT, forward=True)
        answer = await router.write(create("idem-forwarded"), idempotent=True)
        resolved_in = time.monotonic() - started
        assert proxy.hits == hits + 1
        # The cut COMMIT reached the server; the retry found the row instead of making another.
        assert answer == ("found", "created")

        proxy.reset_on(ASYNCPG_COMMIT, forward=False)
        assert await router.write(create("idem-dropped"), idempotent=True) == (
            "created",
            "created",
        )
        assert proxy.hits == hits + 2

        proxy.reset_on(ASYNCPG_COMMIT, forward=True)
        with pytest.raises(AmbiguousCommitError, match="idempotency key"):
            await router.write(create("not-idempotent"), idempotent=False)
        assert proxy.hits == hits + 3

        # The caller repeats the ambiguous one: it finds the row.
        assert await router.write(create("not-idempotent"), idempotent=True) == (
            "found",
            "created",
        )

    for key in ("idem-forwarded", "idem-dropped", "not-idempotent"):
        rows = topo.query(topo.primary, f"SELECT count(*) FROM {table} WHERE id = $1", key)
        assert rows == [(1,)], key
    report("scenario 8 (ambiguous commit)", resolved_in=ms(resolved_in), answer=answer)


async def test_9_serialization_failures_are_retried(healthy_topology: LocalTopology) -> None:
    """Concurrent conflicting SERIALIZABLE writes raise real 40001s; every write is retried
    until it applies exactly once."""
    topo = healthy_topology
    table = new_table()
    registry = CollectorRegistry()
    writers, per_writer = 8, 12
    # Generous probes: a busy 2-core machine must not take the primary down mid-test.
    async with running(topo, registry=registry, probe_timeout=1.0, fall=3) as router:
        await router.write(
            lambda conn: conn.execute(
                f"CREATE TABLE {table} (id int PRIMARY KEY, n int NOT NULL);"
                f"CREATE TABLE {table}_log (writer int, seq int, PRIMARY KEY (writer, seq));"
                f"INSERT INTO {table} VALUES (1, 0);"
            ),
            idempotent=False,
        )
        latencies: list[Outcome] = []

        async def bump(writer: int, seq: int) -> None:
            async def op(conn: Any) -> None:
                n = await conn.fetchval(f"SELECT n FROM {table} WHERE id = 1")
                await conn.execute(f"UPDATE {table} SET n = $1 WHERE id = 1", n + 1)
                await conn.execute(f"INSERT INTO {table}_log VALUES ($1, $2)", writer, seq)

            started = time.monotonic()
            await router.write(op, idempotent=False, timeout=5.0)
            latencies.append(Outcome(started, time.monotonic() - started, None, None))

        async def run(writer: int) -> None:
            for seq in range(per_writer):
                await bump(writer, seq)

        started = time.monotonic()
        await asyncio.gather(*(run(writer) for writer in range(writers)))
        took = time.monotonic() - started
        total = await router.read(lambda conn: conn.fetchval(f"SELECT n FROM {table}"))
        logged = await router.read(lambda conn: conn.fetchval(f"SELECT count(*) FROM {table}_log"))

    retries = registry.get_sample_value(
        "signing_keys_router_retries_total", {"kind": "write", "reason": "serialization"}
    )
    assert total == writers * per_writer
    assert logged == writers * per_writer
    assert retries is not None
    assert retries > 0
    report(
        "scenario 9 (serialization failures)",
        writes=writers * per_writer,
        serialization_retries=int(retries),
        took=ms(took),
        latency=summarize(latencies),
    )
