"""The prober: one task per region that asks the database how it is, on a fixed interval.

Each probe runs over the prober's own connection (never a pool's: a busy pool must not look
like a dead region), is bounded by the probe timeout end to end — connect included — and
reports a :class:`~service.locality.health.ProbeResult`. A failed or timed-out probe
terminates its connection so that the next one starts clean.

On PostgreSQL one round trip tells the role, the WAL positions, the timeline, the
walreceiver's state and the age of the newest heartbeat the server holds; the system
identifier is read once per connection (it is fixed for a data directory). The timeline
is, on a primary, that of its current WAL file (``pg_control_checkpoint()`` would lag a
promotion until the next checkpoint); on a standby, the timeline its walreceiver is
receiving, or while it has none, the newest of its last restartpoint's timeline and the
timeline that wrote the newest heartbeat it replayed.

On a primary it also tells how many synchronous standbys stream now
(``pg_stat_replication``) against how many a COMMIT waits for (``synchronous_standby_names``
and ``synchronous_commit``): a primary short of them would hold every write in SyncRep, so
the router refuses writes there at once instead.

On CockroachDB the probe reads the heartbeat row of the GLOBAL heartbeat table: a gateway
that cannot reach its ranges still answers ``SELECT 1``, but not that read.

A probe that times out while this process's event loop was stalled for more than half the
timeout (``stall``, the router's :class:`~service.locality.stall.LoopLagMonitor`) is
*inconclusive*: the answer may have come and sat unread while the loop did not run, so it
says nothing about the region (under CPU starvation such timeouts took every healthy region
down at once). The result carries ``inconclusive`` — the health record neither fails nor
passes the region on it (:meth:`~service.locality.health.RegionHealth.record_inconclusive`,
which bounds how long that may last) — and the prober tries again at once instead of after
the interval. Only timeouts qualify: a refused connection or an error from the server is an
answer, however late it was read.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import asyncpg
import structlog

from service.locality.failures import describe_error
from service.locality.health import Engine, ProbeResult

log = structlog.get_logger(__name__)

ConnectFactory = Callable[..., Awaitable[Any]]

MIN_PROBE_GAP = 0.01  # seconds between probes even when requests keep asking for one
# A timeout is inconclusive when the loop was stalled for more than this share of the timeout
# during the probe: the region then had less than half its time to answer.
STALL_SHARE = 0.5

# How long the event loop was stalled during [start, end] (router clock).
StallGauge = Callable[[float, float], float]

# Positions are bytes since 0/0. The walreceiver's columns need pg_read_all_stats (the
# pg_monitor role); without it they read NULL and the timeline falls back as for a standby
# whose walreceiver is not running. {heartbeat} is one of the two fragments below. Ages are
# taken against clock_timestamp(), not the transaction's start (now()), and floored at zero
# when read (_age): the walreceiver may hear upstream after the statement began, which once
# read -0.0014 s. (SQL's greatest() would turn an unknown NULL age into 0.)
# sync_standbys counts the walsenders a COMMIT may count on now: streaming, and chosen as
# synchronous (sync_state 'sync' under FIRST, 'quorum' under ANY; 'potential' and 'async'
# ones acknowledge nothing). It is NULL when the role may not read the rows (no pg_monitor):
# unknown, never taken for zero.
_POSTGRES_PROBE = """
SELECT pg_is_in_recovery() AS in_recovery,
       CASE WHEN pg_is_in_recovery() THEN NULL
            ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint END AS current_lsn,
       CASE WHEN pg_is_in_recovery() THEN NULL
            ELSE pg_walfile_name(pg_current_wal_lsn()) END AS wal_file,
       pg_wal_lsn_diff(pg_last_wal_receive_lsn(), '0/0')::bigint AS receive_lsn,
       pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint AS replay_lsn,
       extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8
           AS replay_age,
       receiver.status AS receiver_status,
       receiver.received_tli AS received_timeline,
       extract(epoch FROM clock_timestamp() - receiver.last_msg_receipt_time)::float8
           AS receiver_silence,
       CASE WHEN pg_is_in_recovery() AND receiver.received_tli IS NULL
            THEN (SELECT timeline_id FROM pg_control_checkpoint()) END AS checkpoint_timeline,
       current_setting('synchronous_standby_names') AS sync_names,
       current_setting('synchronous_commit') AS sync_commit,
       CASE WHEN NOT pg_is_in_recovery() THEN (
            SELECT CASE WHEN bool_or(sync_state IS NULL) THEN NULL
                        ELSE count(*) FILTER (
                            WHERE state = 'streaming' AND sync_state IN ('sync', 'quorum'))
                   END::int
            FROM pg_stat_replication) END AS sync_standbys,
       {heartbeat}
FROM (SELECT 1) AS one LEFT JOIN pg_stat_wal_receiver AS receiver ON true
"""
_WITH_HEARTBEAT = """
       (SELECT extract(epoch FROM clock_timestamp() - at)::float8 FROM heartbeat WHERE id = 1)
           AS heartbeat_age,
       (SELECT timeline FROM heartbeat WHERE id = 1) AS heartbeat_timeline,
       true AS has_heartbeat"""
# Before the migration that creates it: the same facts, and whether it exists by now.
_WITHOUT_HEARTBEAT = """
       NULL::float8 AS heartbeat_age,
       NULL::bigint AS heartbeat_timeline,
       to_regclass('heartbeat') IS NOT NULL AS has_heartbeat"""
POSTGRES_PROBE = _POSTGRES_PROBE.format(heartbeat=_WITH_HEARTBEAT)
POSTGRES_PROBE_NO_HEARTBEAT = _POSTGRES_PROBE.format(heartbeat=_WITHOUT_HEARTBEAT)


# synchronous_standby_names: "FIRST 2 (a, b, c)", "ANY 1 (a, b)", "2 (a, b)" (FIRST), or a
# plain list "a, b" / "*" (FIRST 1).
_SYNC_COUNT = re.compile(r"^\s*(?:(?:FIRST|ANY)\s+)?(\d+)\s*\(", re.IGNORECASE)
# synchronous_commit levels at which a COMMIT does not wait for any standby.
_LOCAL_COMMIT = frozenset({"off", "local"})


def required_sync_standbys(names: str, commit: str) -> int:
    """How many synchronous standbys a COMMIT waits for on a primary with these settings
    (``synchronous_standby_names``, ``synchronous_commit``): 0 when it waits for none."""
    if commit.strip().lower() in _LOCAL_COMMIT or not names.strip():
        return 0
    match = _SYNC_COUNT.match(names)
    return int(match.group(1)) if match else 1


def _age(seconds: float | None) -> float | None:
    """An age read from the server, never below zero; None stays unknown."""
    return None if seconds is None else max(0.0, seconds)


POSTGRES_IDENTITY = "SELECT system_identifier::text FROM pg_control_system()"

# CockroachDB: every node takes writes and reads are consistent; the question is whether this
# gateway can still reach the data, which a read of a real GLOBAL table answers.
COCKROACH_PROBE = "SELECT at FROM heartbeat WHERE id = 1"
COCKROACH_PROBE_NO_HEARTBEAT = "SELECT 1"
# How long a CockroachDB prober trusts "no heartbeat table" before it looks again.
HEARTBEAT_RECHECK = 10.0


def engine_of(version: str) -> Engine:
    """The engine named by ``SELECT version()`` output."""
    return "cockroachdb" if version.lstrip().startswith("CockroachDB") else "postgresql"


def timeline_of_wal_file(name: str) -> int:
    """The timeline a WAL file name starts with: ``'000000020000000000000005'`` → 2."""
    return int(name[:8], 16)


def standby_timeline(
    *, received: int | None, checkpoint: int | None, heartbeat: int | None
) -> int | None:
    """The timeline a standby follows: what its walreceiver receives; while it has none, the
    newest of its restartpoint's timeline and the timeline that wrote its newest heartbeat
    (both lag behind, never ahead: a standby on the current timeline may look older, never
    newer)."""
    if received is not None:
        return received
    known = [timeline for timeline in (checkpoint, heartbeat) if timeline is not None]
    return max(known) if known else None


class RegionProber:
    """Probes one region every ``interval`` seconds, or at once after :meth:`trigger`.

    >>> prober = RegionProber(name="aws-us-east-1", dsn=dsn, interval=0.2, timeout=0.5,
    ...                       connect=asyncpg.connect, clock=time.monotonic, on_result=handle)
    >>> task = asyncio.create_task(prober.run())
    """

    def __init__(
        self,
        *,
        name: str,
        dsn: str,
        interval: float,
        timeout: float,
        connect: ConnectFactory,
        clock: Callable[[], float],
        on_result: Callable[[ProbeResult], Awaitable[None]],
        server_settings: Mapping[str, str] | None = None,
        stall: StallGauge | None = None,
    ) -> None:
        self.name = name
        self._stall = stall
        self._dsn = dsn
        self._interval = interval
        self._timeout = timeout
        self._connect = connect
        self._clock = clock
        self._on_result = on_result
        self._server_settings = dict(server_settings or {})
        self._wakeup = asyncio.Event()
        self._conn: Any = None
        self._engine: Engine | None = None
        self._system_identifier: str | None = None
        self._has_heartbeat = False
        self._heartbeat_checked_at: float | None = None
        self.first_round = asyncio.Event()

    def __repr__(self) -> str:
        return f"<RegionProber {self.name} every {self._interval}s timeout {self._timeout}s>"

    def trigger(self) -> None:
        """Probe as soon as the current probe (if any) is done."""
        self._wakeup.set()

    async def run(self) -> None:
        """Probe until cancelled."""
        try:
            while True:
                self._wakeup.clear()
                result = await self.probe()
                try:
                    await self._on_result(result)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("probe_result_handler_failed", region=self.name)
                if not result.inconclusive:
                    # A first round says something of the region: an inconclusive probe (the
                    # instance's own loop stalled) says nothing, and a start that took it for
                    # an answer would serve with every region still marked down.
                    self.first_round.set()
                if result.inconclusive:
                    # The loop was stalled, not the region: ask again now that it runs.
                    await asyncio.sleep(MIN_PROBE_GAP)
                    continue
                try:
                    async with asyncio.timeout(self._interval):
                        await self._wakeup.wait()
                    await asyncio.sleep(MIN_PROBE_GAP)
                except TimeoutError:
                    pass
        finally:
            self.close()

    async def probe(self) -> ProbeResult:
        """One probe, bounded by the probe timeout; never raises except on cancellation."""
        started = self._clock()
        try:
            async with asyncio.timeout(self._timeout):
                conn = await self._connection()
                if self._engine == "cockroachdb":
                    return await self._probe_cockroach(conn, started)
                t0 = self._clock()
                row = await self._fetch_postgres(conn)
                rtt = self._clock() - t0
        except asyncio.CancelledError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            return ProbeResult(
                started_at=started,
                error=describe_error(exc),
                inconclusive=self._stalled(exc, started),
            )
        in_recovery = bool(row["in_recovery"])
        if in_recovery:
            timeline = standby_timeline(
                received=row["received_timeline"],
                checkpoint=row["checkpoint_timeline"],
                heartbeat=row["heartbeat_timeline"],
            )
        else:
            timeline = timeline_of_wal_file(row["wal_file"])
        sync_names = str(row["sync_names"])
        self._has_heartbeat = bool(row["has_heartbeat"])
        return ProbeResult(
            started_at=started,
            rtt=rtt,
            engine="postgresql",
            writable=not in_recovery,
            lsn=row["replay_lsn"] if in_recovery else row["current_lsn"],
            receive_lsn=row["receive_lsn"],
            replay_age=_age(row["replay_age"]),
            system_identifier=self._system_identifier,
            timeline=timeline,
            has_heartbeat=self._has_heartbeat,
            heartbeat_age=_age(row["heartbeat_age"]),
            receiver_status=row["receiver_status"],
            receiver_silence=_age(row["receiver_silence"]),
            sync_required=(
                None if in_recovery else required_sync_standbys(sync_names, row["sync_commit"])
            ),
            sync_standbys=row["sync_standbys"],
            sync_names=None if in_recovery else sync_names,
        )

    def _stalled(self, exc: Exception, started: float) -> bool:
        """Whether a probe that failed with ``exc`` timed out because the loop was stalled."""
        if self._stall is None or not isinstance(exc, TimeoutError):
            return False
        return self._stall(started, self._clock()) > STALL_SHARE * self._timeout

    async def _fetch_postgres(self, conn: Any) -> Any:
        if not self._has_heartbeat:
            return await conn.fetchrow(POSTGRES_PROBE_NO_HEARTBEAT)
        try:
            return await conn.fetchrow(POSTGRES_PROBE)
        except asyncpg.UndefinedTableError:
            self._has_heartbeat = False  # dropped since: back to the probe that checks
            return await conn.fetchrow(POSTGRES_PROBE_NO_HEARTBEAT)

    async def _probe_cockroach(self, conn: Any, started: float) -> ProbeResult:
        now = self._clock()
        recheck = (
            self._heartbeat_checked_at is None
            or now - self._heartbeat_checked_at >= HEARTBEAT_RECHECK
        )
        t0 = self._clock()
        if self._has_heartbeat or recheck:
            try:
                await conn.fetchval(COCKROACH_PROBE)
                self._has_heartbeat = True
            except asyncpg.UndefinedTableError:
                # Not migrated yet: reachability is all that can be asked.
                self._has_heartbeat = False
                self._heartbeat_checked_at = now
                t0 = self._clock()
                await conn.fetchval(COCKROACH_PROBE_NO_HEARTBEAT)
        else:
            await conn.fetchval(COCKROACH_PROBE_NO_HEARTBEAT)
        return ProbeResult(
            started_at=started,
            rtt=self._clock() - t0,
            engine="cockroachdb",
            writable=True,
            has_heartbeat=self._has_heartbeat,
        )

    def close(self) -> None:
        """Drop the probe connection without waiting (it may lead to an unreachable host)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def _connection(self) -> Any:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        self._conn = None
        conn = await self._connect(
            self._dsn,
            timeout=self._timeout,
            command_timeout=self._timeout,
            server_settings=self._server_settings,
        )
        try:
            version = await conn.fetchval("SELECT version()")
            engine = engine_of(str(version))
            system_identifier = None
            if engine == "postgresql":
                system_identifier = await conn.fetchval(POSTGRES_IDENTITY)
        except BaseException:
            conn.terminate()
            raise
        self._engine = engine
        self._system_identifier = system_identifier
        self._conn = conn
        return conn
