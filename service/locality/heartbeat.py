"""The heartbeat writer: keeps the ``heartbeat`` row on the PostgreSQL primary fresh.

Every instance's router writes it, on the region it sends writes to, every probe interval;
every probe of a standby reads how old the newest heartbeat it has replayed is. That age
bounds how old the standby's data is — whoever wrote the heartbeat, and even when this
instance cannot see the primary at all — and it keeps growing when replication stops,
whatever the standby says about itself.

A heartbeat must never hold anything up: it runs on a connection of its own (never a
pool's), commits with ``synchronous_commit = local`` (it must not wait for a standby: the
standbys are what it measures), under a short statement and lock timeout, and skips the
update when another instance has written the row within the last half interval, so that the
row is written about twice an interval however many instances there are. A failed heartbeat
is logged and counted, never raised: the standbys' ages grow, which is the truth.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from service.locality.failures import describe_error
from service.locality.probe import ConnectFactory

log = structlog.get_logger(__name__)

# A script sent as one simple-query message: one round trip. Only numbers the router
# computes are formatted into it.
_HEARTBEAT = """
BEGIN;
SET LOCAL synchronous_commit = local;
SET LOCAL statement_timeout = {timeout_ms};
SET LOCAL lock_timeout = {timeout_ms};
INSERT INTO heartbeat AS beat (id, at, timeline)
VALUES (1, now(), ('x' || left(pg_walfile_name(pg_current_wal_lsn()), 8))::bit(32)::bigint)
ON CONFLICT (id) DO UPDATE SET at = excluded.at, timeline = excluded.timeline
WHERE beat.at < excluded.at - '{skip_ms} milliseconds'::interval;
COMMIT;
"""

Target = tuple[str, str]  # (region name, DSN)


def heartbeat_sql(*, interval: float, timeout: float) -> str:
    """The heartbeat statement for a writer every ``interval`` s, bounded by ``timeout`` s."""
    return _HEARTBEAT.format(
        timeout_ms=max(1, round(timeout * 1000)), skip_ms=max(0, round(interval * 500))
    )


class HeartbeatWriter:
    """Writes the heartbeat every ``interval`` seconds to the region ``target()`` names.

    ``target()`` is asked before every heartbeat (``None``: nowhere to write now); when it
    names another region the connection moves there. ``on_result(region, ok)`` is told how
    each heartbeat went.
    """

    def __init__(
        self,
        *,
        interval: float,
        timeout: float,
        connect: ConnectFactory,
        target: Callable[[], Target | None],
        on_result: Callable[[str, bool], None] | None = None,
        server_settings: Mapping[str, str] | None = None,
    ) -> None:
        self._interval = interval
        self._timeout = timeout
        self._connect = connect
        self._target = target
        self._on_result = on_result
        self._server_settings = dict(server_settings or {})
        self._sql = heartbeat_sql(interval=interval, timeout=timeout)
        self._conn: Any = None
        self._region: str | None = None
        self._failing = False

    def __repr__(self) -> str:
        return f"<HeartbeatWriter every {self._interval}s to {self._region or 'nowhere'}>"

    async def run(self) -> None:
        """Write heartbeats until cancelled."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                started = loop.time()
                try:
                    target = self._target()
                except Exception:
                    log.exception("heartbeat_target_failed")
                    target = None
                if target is None:
                    self.close()
                else:
                    await self.beat(target)
                await asyncio.sleep(max(0.0, started + self._interval - loop.time()))
        finally:
            self.close()

    async def beat(self, target: Target) -> bool:
        """One heartbeat on ``target``, bounded by the timeout; never raises but cancellation."""
        name, dsn = target
        if name != self._region:
            self.close()
            self._region = name
        try:
            async with asyncio.timeout(self._timeout):
                if self._conn is None or self._conn.is_closed():
                    self._conn = await self._connect(
                        dsn,
                        timeout=self._timeout,
                        command_timeout=self._timeout,
                        server_settings=self._server_settings,
                    )
                await self._conn.execute(self._sql)
        except asyncio.CancelledError:
            self.close()
            raise
        except Exception as exc:
            # The script may have stopped inside its transaction: never reuse the connection.
            self.close()
            if not self._failing:
                log.warning("heartbeat_failing", region=name, error=describe_error(exc))
            self._failing = True
            self._report(name, ok=False)
            return False
        if self._failing:
            log.info("heartbeat_resumed", region=name)
        self._failing = False
        self._report(name, ok=True)
        return True

    def close(self) -> None:
        """Drop the connection without waiting (it may lead to an unreachable host)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    def _report(self, region: str, *, ok: bool) -> None:
        if self._on_result is not None:
            self._on_result(region, ok)
