"""The :class:`Database` the service runs on: the locality router, with two promises added.

**Every write transaction is bounded in time, on the server.** The change feed pages by
``(updated_at, id)`` and re-reads an *overlap* window behind the newest stamp it has seen.
``updated_at = now()`` is the transaction's start, so a slow transaction can become visible
after a faster one that started later; the overlap catches it only if no transaction
becomes visible more than the overlap after its start. The client's deadline does not
ensure that — a server keeps running a transaction whose client has gone — so each write
transaction (not the autocommit ones: migrations) carries its bound ``B`` to the server:

1. first statement: ``SET LOCAL statement_timeout`` and ``idle_in_transaction_session_timeout``
   to ``B``: a stuck statement is cancelled, and a client gone silent mid-transaction loses
   its session (rolled back), instead of holding locks for ever;
2. last statement before COMMIT: the time since the transaction began
   (``clock_timestamp() - transaction_timestamp()``, the server's clock, the clock that
   stamped ``updated_at``); past ``B`` the write is refused (:class:`DeadlineExceededError`)
   and rolled back. The same statement sets ``idle_in_transaction_session_timeout`` to what
   is left of ``B``: a COMMIT that has not arrived by ``T + B`` finds its session ended.

What is guaranteed, on PostgreSQL, for a transaction that began at ``T``, whatever its client
does (even if it dies): it is rolled back, or its commit record is written by ``T + B`` (plus
the COMMIT's own work and the flush of that record, which no timeout interrupts). Standbys
replay in WAL order, so on a standby a row stamped ``T`` is visible before any row whose
transaction committed after it: a feed reading a standby with an overlap above ``B`` plus a
poll misses nothing (the settings refuse a smaller overlap at start-up).

On the primary a COMMIT that waits for a synchronous standby is not visible until the wait
ends, and that wait is **not** bounded by the server: PostgreSQL disarms
``statement_timeout`` before the commit work begins (measured: a COMMIT under a 0.5 s
statement timeout, no standby acknowledging, waited until the client cancelled it at 5 s),
and PostgreSQL 15 has no transaction timeout. Waits end in WAL order unless one is cancelled;
a cancel (the client's, when its statement timeout fires: asyncpg sends one; or an
operator's ``pg_cancel_backend``) ends the wait and makes the row visible on the primary at
once, committed locally. So on the primary the order holds — and with it the overlap — as
long as every abandoned COMMIT is cancelled within the overlap minus ``B``: the router's
statement timeout does it when the client lives; a client that dies or drops its connection
mid-COMMIT leaves the backend waiting until a standby acknowledges or the backend is
cancelled (the router's clean-up of abandoned writes). Not covered at all: transactions
other clients run by hand (an ``UPDATE`` of ``access_tokens`` in psql), clock steps on the
primary, and a failover to a server whose clock differs (stamps then come from two clocks).

On CockroachDB the last statement's check runs (the write is refused past ``B``) but the
timeouts are not set: its COMMIT is bounded by the router's deadline only.

**Reads see the writes they must** (:mod:`service.core.consistency`). After each write the
position the writer has flushed (``pg_current_wal_flush_lsn()``, read once the COMMIT
returned, so past the write's commit record) is kept, for the instance and for the current
request, whose transport hands it out as a token. It is read in a statement of its own on
another of the writer's connections (one more round trip per write): the router's write path
returns the connection once COMMIT is done, and the position needs no more than the same
server — a failover in between yields the new primary's position on its newer timeline,
which holds everything the promotion kept. A read inside a request runs where the data is at or past
the later of the request's token and the instance's last write. Background pollers (the
change feed, the credential table) run outside any request and ask for nothing.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol, TypeVar

import asyncpg
import structlog

from service.core import consistency
from service.core.consistency import CommitPosition, later
from service.errors import DeadlineExceededError, InvalidConsistencyTokenError
from service.store.database import Operation

log = structlog.get_logger(__name__)

T = TypeVar("T")

_START: Final = (
    "SELECT set_config('statement_timeout', $1, true),"
    " set_config('idle_in_transaction_session_timeout', $1, true)"
)
# Elapsed seconds; the COMMIT must arrive within what is left (at least 1 ms: 0 disables).
_FINISH: Final = """
SELECT elapsed,
       set_config('idle_in_transaction_session_timeout',
                  greatest(1, ceil(($1::float8 - elapsed) * 1000))::int::text, true)
FROM (SELECT extract(epoch FROM clock_timestamp() - transaction_timestamp())::float8
             AS elapsed) AS e
"""
_ELAPSED: Final = "SELECT extract(epoch FROM clock_timestamp() - transaction_timestamp())::float8"
# Past every commit this server has acknowledged (flushed): the write's own included, since its
# COMMIT has returned. The timeline is the current WAL file's, as the probe reads it.
_POSITION: Final = """
SELECT (SELECT system_identifier::text FROM pg_control_system()) AS system_identifier,
       pg_walfile_name(pg_current_wal_lsn()) AS wal_file,
       pg_wal_lsn_diff(pg_current_wal_flush_lsn(), '0/0')::bigint AS lsn
"""


class Router(Protocol):
    """What this needs of the locality router."""

    async def read(
        self,
        op: Operation[T],
        *,
        timeout: float | None = None,
        max_data_age: float | None = None,
        min_position: CommitPosition | None = None,
        hedge: bool = True,
    ) -> T: ...

    async def read_with_age(
        self,
        op: Operation[T],
        *,
        timeout: float | None = None,
        max_data_age: float | None = None,
        min_position: CommitPosition | None = None,
        hedge: bool = True,
    ) -> tuple[T, float]: ...

    async def write(
        self,
        op: Operation[T],
        *,
        idempotent: bool,
        timeout: float | None = None,
        autocommit: bool = False,
    ) -> T: ...


def is_cockroach(conn: Any) -> bool:
    """Whether ``conn`` leads to CockroachDB (which reports ``crdb_version`` on connect)."""
    return getattr(conn.get_settings(), "crdb_version", None) is not None


class RoutedDatabase:
    """The router, with write transactions bounded by ``write_bound`` seconds and reads
    that see this instance's writes and the current request's token.

    >>> database = RoutedDatabase(router, write_bound=2.0)
    >>> records = PostgresKeyRecords(database)
    """

    def __init__(self, router: Router, *, write_bound: float) -> None:
        if not write_bound > 0:
            raise ValueError(f"the write transaction bound must be positive: {write_bound}")
        self._router = router
        self._bound = write_bound
        self._written: CommitPosition | None = None
        self._cockroach: bool | None = None

    def __repr__(self) -> str:
        return (
            f"<RoutedDatabase write_bound={self._bound}s written={self._written} "
            f"router={self._router!r}>"
        )

    @property
    def written(self) -> CommitPosition | None:
        """The newest position this instance's writes reached."""
        return self._written

    def required(self) -> CommitPosition | None:
        """What the current request's reads must see (``None`` outside a request)."""
        scope = consistency.current()
        if scope is None:
            return None
        return later(scope.required, self._written)

    async def read(
        self, op: Operation[T], *, timeout: float | None = None, hedge: bool = True
    ) -> T:
        result, _ = await self.read_with_age(op, timeout=timeout, hedge=hedge)
        return result

    async def read_with_age(
        self,
        op: Operation[T],
        *,
        timeout: float | None = None,
        max_data_age: float | None = None,
        hedge: bool = True,
    ) -> tuple[T, float]:
        wanted = self.required()
        try:
            return await self._router.read_with_age(
                op, timeout=timeout, max_data_age=max_data_age, min_position=wanted, hedge=hedge
            )
        except InvalidConsistencyTokenError:
            scope = consistency.current()
            if wanted is None or wanted != self._written or (scope and scope.required):
                raise  # the client's token: its mistake
            # This instance's own last write names a database the router no longer serves
            # (rebuilt under it): that history is gone, and so is the promise about it.
            log.warning("commit_position_forgotten", position=str(wanted))
            self._written = None
            return await self._router.read_with_age(
                op, timeout=timeout, max_data_age=max_data_age, hedge=hedge
            )

    async def write(
        self,
        op: Operation[T],
        *,
        idempotent: bool,
        timeout: float | None = None,
        autocommit: bool = False,
    ) -> T:
        if autocommit:
            return await self._router.write(
                op, idempotent=idempotent, timeout=timeout, autocommit=True
            )
        result = await self._router.write(self._bounded(op), idempotent=idempotent, timeout=timeout)
        await self._remember(timeout)
        return result

    def _bounded(self, op: Operation[T]) -> Callable[[Any], Awaitable[T]]:
        bound = self._bound

        async def bounded(conn: Any) -> T:
            cockroach = is_cockroach(conn)
            self._cockroach = cockroach
            if not cockroach:
                await conn.execute(_START, str(max(1, math.ceil(bound * 1000))))
            try:
                result = await op(conn)
            except asyncpg.QueryCanceledError as exc:  # the statement timeout: the bound
                raise DeadlineExceededError(
                    f"a statement of the write transaction outran its {bound:g} s bound; the "
                    "transaction was rolled back: retry it"
                ) from exc
            if cockroach:
                elapsed = await conn.fetchval(_ELAPSED)
            else:
                elapsed = (await conn.fetchrow(_FINISH, bound))["elapsed"]
            if elapsed > bound:
                log.warning("write_transaction_refused", seconds=round(elapsed, 3), bound=bound)
                raise DeadlineExceededError(
                    f"the write transaction ran {elapsed:.2f} s, longer than its {bound:g} s "
                    "bound, and was rolled back; retry it"
                )
            return result

        return bounded

    async def _remember(self, timeout: float | None) -> None:
        """Keep the position the writer reached, for this instance and this request; a
        write whose position cannot be read still succeeded, only without a token."""
        if self._cockroach:
            return  # reads are consistent there: nothing to remember
        try:
            position = await self._router.write(
                _read_position, idempotent=True, timeout=timeout, autocommit=True
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the write is done; only its token is lost
            log.warning("commit_position_unknown", error=type(exc).__name__)
            return
        if position is None:
            return
        mine = self._written
        if mine is not None and mine.system_identifier != position.system_identifier:
            mine = None  # another database now: the old position means nothing there
        self._written = later(mine, position)
        scope = consistency.current()
        if scope is not None:
            scope.written = later(scope.written, position)


async def _read_position(conn: Any) -> CommitPosition | None:
    if is_cockroach(conn):
        return None
    row = await conn.fetchrow(_POSITION)
    return CommitPosition(row["system_identifier"], int(row["wal_file"][:8], 16), row["lsn"])
