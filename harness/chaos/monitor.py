"""What the run observes besides its clients: each region's role, and each instance's size.

:class:`TopologyMonitor` asks every region's server directly (as the superuser, not through
its fault proxy) whether it is writable, on which timeline, whether a standby is
streaming, and how far its WAL has been replayed and flushed; it records a
:class:`~harness.chaos.history.RegionSample` whenever the answer changes (so while writes
flow, every sampling interval). This is the harness's own word on
roles and positions — what the checker uses to tell when two regions were writable at once,
which regions could serve, and which had replayed the position a consistency token names.

:class:`ProcessMonitor` samples each service process's open file descriptors and RSS.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import asyncpg
import structlog

from harness.chaos.history import History, ProcessSample, RegionSample
from harness.chaos.instances import ServiceInstance
from harness.cluster import LocalTopology
from service.lifecycle import cancel_and_wait

log = structlog.get_logger(__name__)

# One round trip: the role, the timeline (a primary's from its current WAL file, which
# follows a promotion at once; a standby's from its walreceiver, or while it has none from
# its last restartpoint) and the WAL positions, in bytes since 0/0 — a standby's replayed
# and flushed (received) positions, a primary's written and flushed ones.
ROLE_QUERY = """
SELECT pg_is_in_recovery() AS standby,
       receiver.status AS receiver,
       CASE WHEN pg_is_in_recovery() THEN NULL
            ELSE pg_walfile_name(pg_current_wal_lsn()) END AS walfile,
       CASE WHEN pg_is_in_recovery()
            THEN coalesce(receiver.received_tli,
                          (SELECT timeline_id FROM pg_control_checkpoint())) END
           AS standby_timeline,
       pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                            ELSE pg_current_wal_lsn() END, '0/0')::bigint AS replay_lsn,
       pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn()
                            ELSE pg_current_wal_flush_lsn() END, '0/0')::bigint AS flush_lsn
FROM (SELECT 1) AS one
LEFT JOIN (SELECT status, received_tli FROM pg_stat_wal_receiver LIMIT 1) AS receiver ON true
"""


# Whether the service's tables can be read now: the role query touches no table, so it
# answers even while a hot standby's queries wait on a lock that WAL replay holds (an
# AccessExclusiveLock replayed from the primary) — when no read of the service could run.
READ_QUERY = """
SELECT (SELECT 1 FROM heartbeat LIMIT 1), (SELECT 1 FROM signing_keys LIMIT 1),
       (SELECT 1 FROM access_tokens LIMIT 1)
"""
READ_TIMEOUT = 1.0  # seconds: a read slower than this counts as blocked


class TopologyMonitor:
    """Samples every region's server every ``interval`` seconds into the history.

    >>> async with TopologyMonitor(topology, history):
    ...     ...
    """

    def __init__(
        self, topology: LocalTopology, history: History, *, interval: float = 0.25
    ) -> None:
        self._topology = topology
        self._history = history
        self._interval = interval
        self._connections: dict[str, Any] = {}
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<TopologyMonitor every {self._interval}s connected={sorted(self._connections)}>"

    async def __aenter__(self) -> TopologyMonitor:
        self._task = asyncio.create_task(self._run(), name="topology-monitor")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        for conn in self._connections.values():
            conn.terminate()
        self._connections.clear()

    async def _run(self) -> None:
        while True:
            await asyncio.gather(*(self.sample(name) for name in self._topology.region_names))
            await asyncio.sleep(self._interval)

    async def sample(self, name: str) -> RegionSample:
        """Ask one region's server how it is, record the answer if it changed, return it."""
        t = self._history.now()
        try:
            async with asyncio.timeout(self._interval * 2):
                conn = await self._connection(name)
                row = await conn.fetchrow(ROLE_QUERY)
        except asyncio.CancelledError:
            raise
        except Exception:
            self._drop(name)
            sample = RegionSample(t=t, region=name, reachable=False)
        else:
            walfile = row["walfile"]
            sample = RegionSample(
                t=t,
                region=name,
                reachable=True,
                writable=not row["standby"],
                streaming=row["receiver"] == "streaming",
                timeline=int(walfile[:8], 16) if walfile else row["standby_timeline"],
                replay_lsn=row["replay_lsn"],
                flush_lsn=row["flush_lsn"],
                readable=await self._readable(name),
            )
        self._history.observe_region(sample)
        return sample

    async def _readable(self, name: str) -> bool | None:
        """Whether the service's tables answered within :data:`READ_TIMEOUT` (``None``: not
        known — no such table yet, or the connection failed otherwise)."""
        try:
            conn = await self._connection(name)
            await conn.fetchrow(READ_QUERY, timeout=READ_TIMEOUT)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            log.warning("chaos_region_reads_blocked", region=name, seconds=READ_TIMEOUT)
            return False
        except Exception:
            return None
        return True

    async def _connection(self, name: str) -> Any:
        conn = self._connections.get(name)
        if conn is not None and not conn.is_closed():
            return conn
        conn = await asyncpg.connect(
            self._topology.region(name).admin_dsn,
            timeout=self._interval * 2,
            server_settings={"application_name": "chaos-monitor"},
        )
        self._connections[name] = conn
        return conn

    def _drop(self, name: str) -> None:
        conn = self._connections.pop(name, None)
        if conn is not None:
            conn.terminate()


class ProcessMonitor:
    """Samples open files and RSS of every running service instance every ``interval`` s."""

    def __init__(
        self,
        instances: Mapping[str, ServiceInstance],
        history: History,
        *,
        interval: float = 1.0,
    ) -> None:
        self._instances = instances
        self._history = history
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ProcessMonitor:
        self._task = asyncio.create_task(self._run(), name="process-monitor")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    def sample(self) -> None:
        for name, instance in self._instances.items():
            pid, stats = instance.pid, instance.stats()
            if pid is not None and stats is not None:
                fds, rss = stats
                self._history.processes.append(
                    ProcessSample(t=self._history.now(), instance=name, pid=pid, fds=fds, rss=rss)
                )

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self._interval)
