"""The prober: one task per region that asks the database how it is, on a fixed interval.

Each probe runs over the prober's own connection (never a pool's: a busy pool must not look
like a dead region), is bounded by the probe timeout end to end — connect included — and
reports a :class:`~service.locality.health.ProbeResult`. A failed or timed-out probe
terminates its connection so that the next one starts clean.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog

from service.locality.failures import describe_error
from service.locality.health import Engine, ProbeResult

log = structlog.get_logger(__name__)

ConnectFactory = Callable[..., Awaitable[Any]]

MIN_PROBE_GAP = 0.01  # seconds between probes even when requests keep asking for one

# One round trip tells role and WAL positions; positions are bytes since 0/0.
POSTGRES_PROBE = """
SELECT pg_is_in_recovery() AS in_recovery,
       CASE WHEN pg_is_in_recovery() THEN NULL
            ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint END AS current_lsn,
       pg_wal_lsn_diff(pg_last_wal_receive_lsn(), '0/0')::bigint AS receive_lsn,
       pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint AS replay_lsn,
       extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 AS replay_age
"""
# CockroachDB: every node takes writes and reads are consistent; reachability is the question.
COCKROACH_PROBE = "SELECT 1"


def engine_of(version: str) -> Engine:
    """The engine named by ``SELECT version()`` output."""
    return "cockroachdb" if version.lstrip().startswith("CockroachDB") else "postgresql"


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
    ) -> None:
        self.name = name
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
                self.first_round.set()
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
                    t0 = self._clock()
                    await conn.fetchval(COCKROACH_PROBE)
                    rtt = self._clock() - t0
                    return ProbeResult(
                        started_at=started, rtt=rtt, engine="cockroachdb", writable=True
                    )
                t0 = self._clock()
                row = await conn.fetchrow(POSTGRES_PROBE)
                rtt = self._clock() - t0
        except asyncio.CancelledError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            return ProbeResult(started_at=started, error=describe_error(exc))
        in_recovery = bool(row["in_recovery"])
        return ProbeResult(
            started_at=started,
            rtt=rtt,
            engine="postgresql",
            writable=not in_recovery,
            lsn=row["replay_lsn"] if in_recovery else row["current_lsn"],
            receive_lsn=row["receive_lsn"],
            replay_age=row["replay_age"],
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
        except BaseException:
            conn.terminate()
            raise
        self._engine = engine_of(str(version))
        self._conn = conn
        return conn
