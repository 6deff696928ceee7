"""The locality router: every database read and write of the service goes through it.

It owns one asyncpg pool and one prober per region, keeps each region's health, fences the
PostgreSQL regions it must not trust (:mod:`service.locality.fencing`), writes the heartbeat
that measures the standbys' data age (:mod:`service.locality.heartbeat`), picks for every
operation an ordered list of regions (:mod:`service.locality.choice`) and runs the operation
there within the caller's deadline: a read moves on (or hedges) when a region is unreachable
or slow; a write moves on only when it provably did not commit, or when the caller says it
is idempotent. A PostgreSQL primary with too few synchronous standbys streaming takes no
writes (they are refused at once, not left to hang in SyncRep), and the server backend of a
write the router gives up on is terminated from another connection. A read may ask for data
no older than a bound (:meth:`LocalityRouter.read`'s ``max_data_age``) and learn how old what
it read was (:meth:`LocalityRouter.read_with_age`); it may also ask to see a commit position
(``min_position``: read your writes, :mod:`service.locality.positions`).

Connections are returned to their pool without asyncpg's reset query (a round trip per
operation): operations must not leave session state behind — no plain ``SET`` (use
``SET LOCAL``), advisory locks, ``LISTEN`` or cursors outside a transaction. An open
transaction is still rolled back.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Literal, NoReturn, TypeVar

import asyncpg
import structlog
from prometheus_client import CollectorRegistry

from service.core.consistency import CommitPosition
from service.errors import (
    AmbiguousCommitError,
    DeadlineExceededError,
    DependencyError,
    NoWritableRegionError,
    RegionUnavailableError,
)
from service.lifecycle import AsyncResource
from service.locality.budget import RetryBudget, attempt_budget
from service.locality.choice import (
    ChoicePolicy,
    RegionView,
    bounded_data_age,
    data_age,
    is_held_down,
    read_order,
    write_order,
)
from service.locality.failures import Failure, classify_failure, describe_error
from service.locality.fencing import READ_FENCES, FenceReason, Fencing, Identity, Lineage, decide
from service.locality.health import DataAge, ProbeResult, RegionHealth, ReplicationTracker
from service.locality.heartbeat import HeartbeatWriter, Target
from service.locality.metrics import RegionMetrics, RouterMetrics
from service.locality.positions import REPLAY_POSITION, check_cluster, replay_of
from service.locality.probe import ConnectFactory, RegionProber
from service.locality.stall import LoopLagMonitor
from service.locality.status import RegionStatus, RouterStatus
from service.settings import RegionSettings, RouterSettings

log = structlog.get_logger(__name__)

T = TypeVar("T")
Operation = Callable[[Any], Awaitable[T]]
Listener = Callable[[RouterStatus], None]
Kind = Literal["read", "write"]

APPLICATION_NAME = "signing-keys"
HEARTBEAT_APPLICATION_NAME = "signing-keys heartbeat"
ENDER_APPLICATION_NAME = "signing-keys backend-ender"
# Ends backends of this role that the router gave up on (never the caller's own): each
# pid was read from the abandoned connection, and its backend_start with it, so that a pid
# the server has since given to another backend (the abandoned one ended by itself, a new
# one took its number) never matches. No row: the backend had ended already.
END_BACKENDS_SQL = """
SELECT a.pid, pg_terminate_backend(a.pid)
FROM pg_stat_activity AS a
JOIN unnest($1::int[], $2::timestamptz[]) AS abandoned(pid, started)
  ON a.pid = abandoned.pid AND a.backend_start = abandoned.started
WHERE a.usename = current_user AND a.pid <> pg_backend_pid()
"""
# When this connection's backend started: read once per connection, at its first write.
BACKEND_START_SQL = "SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
END_BACKEND_PATIENCE = 60.0  # seconds to keep trying to reach the region to end a backend
END_BACKEND_RETRY_CAP = 1.0
END_BACKEND_DRAIN = 1.0  # seconds a closing router waits for backends still being ended
DEFAULT_SLOW_MARGIN = 0.1  # seconds of extra RTT that demote a region when hedging is off
DEFAULT_CLOSE_TIMEOUT = 1.0
MAX_INACTIVE_CONNECTION_LIFETIME = 60.0
BACKOFF_BASE = 0.005
BACKOFF_CAP = 0.2
LAG_WINDOW_MIN = 30.0
RETRY_BUDGET_WINDOW = 10.0  # seconds of requests and retries the retry budget looks at
# Retries after these failures draw from the retry budget: the ones a brownout produces.
# A serialization failure is the database asking for a retry of a write that did nothing
# and a read-only region is a role change to correct: neither multiplies load.
_BUDGETED = frozenset({Failure.CONNECTION, Failure.TIMEOUT, Failure.AMBIGUOUS})
_Lifecycle = Literal["new", "starting", "running", "closing", "closed"]


class _AttemptFailed(Exception):
    """One attempt on one region failed in a way the router can act on."""

    def __init__(
        self,
        region: str,
        failure: Failure,
        cause: BaseException,
        *,
        maybe_committed: bool,
        aborted: bool = False,
    ) -> None:
        super().__init__(f"{region}: {failure.value}: {describe_error(cause)}")
        self.region = region
        self.failure = failure
        self.cause = cause
        self.maybe_committed = maybe_committed
        self.aborted = aborted  # cut short by the router: its region went down or was fenced

    @property
    def budgeted(self) -> bool:
        """Whether trying again draws from the retry budget: a failure of the attempt's own
        (a region the router had just seen go down is left, not retried)."""
        return self.failure in _BUDGETED and not self.aborted


class _RetryRefused(Exception):
    """The retry budget is spent: the request ends with the failure it had."""

    def __init__(self, failed: _AttemptFailed) -> None:
        super().__init__(str(failed))
        self.failed = failed


class _InFlight:
    """One running attempt, so that it can be cut short when its region goes down."""

    __slots__ = ("aborted", "backend_start", "kind", "phase", "pid", "timeout")

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self.timeout: asyncio.Timeout | None = None
        self.phase: Literal["acquire", "run", "commit"] = "acquire"
        self.aborted = False
        self.pid: int | None = None  # the server backend of a write, once it has one
        self.backend_start: datetime | None = None  # when that backend started

    def abort(self) -> None:
        """End the attempt now with a timeout, unless its COMMIT is already on the wire."""
        if self.phase != "commit":
            self._cut()

    def abandon(self) -> None:
        """End the attempt now, even with its COMMIT on the wire: its region cannot
        acknowledge it (no synchronous standby). A cut COMMIT is ambiguous, never a success."""
        self._cut()

    def _cut(self) -> None:
        if self.timeout is None or self.timeout.expired():
            return
        try:
            self.timeout.reschedule(asyncio.get_running_loop().time())
        except RuntimeError:
            return  # the attempt has just left its timeout block: nothing left to cut
        self.aborted = True


def _raise_if_aborted(attempt: _InFlight) -> None:
    """An abort reschedules the attempt's timeout to fire on the next loop turn; until it
    fires, the attempt could still send its COMMIT. Stop here instead: nothing committed."""
    if attempt.aborted:
        raise TimeoutError("the attempt was cut short before its commit")


class _Region:
    """One region's live parts: its settings, health, pool and prober."""

    def __init__(self, settings: RegionSettings, health: RegionHealth) -> None:
        self.settings = settings
        self.health = health
        self.pool: Any = None
        self.prober: RegionProber | None = None
        self.task: asyncio.Task[None] | None = None
        self.warming: asyncio.Task[None] | None = None
        self.attempts: set[_InFlight] = set()
        self.metrics: RegionMetrics | None = None
        self.fence: FenceReason | None = None
        self.lsn: int | None = None  # the last probe's replay (standby) or write position
        # Backends of abandoned writes still to be ended: (pid, backend_start).
        self.abandoned: set[tuple[int, datetime]] = set()
        self.ender: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def in_flight(self) -> int:
        return len(self.attempts)

    def facts(self) -> tuple[str, bool, FenceReason | None]:
        return (self.health.state, self.health.writable, self.fence)

    def identity(self) -> Identity | None:
        """What fencing needs of a PostgreSQL region that has answered at least once."""
        health = self.health
        if health.engine != "postgresql" or health.system_identifier is None:
            return None
        return Identity(
            name=self.name,
            writable=health.writable,
            system_identifier=health.system_identifier,
            timeline=health.timeline,
        )


async def _keep_session(_conn: Any) -> None:
    """Pool reset that costs no round trip (asyncpg still rolls back an open transaction)."""


class LocalityRouter(AsyncResource):
    """Runs database operations in the best region that can serve them.

    >>> async with LocalityRouter(settings.regions, local_region=settings.local_region,
    ...                           settings=settings.router) as router:
    ...     row = await router.read(lambda conn: conn.fetchrow("SELECT …"))
    ...     await router.write(insert_key, idempotent=True)
    """

    def __init__(
        self,
        regions: Sequence[RegionSettings],
        *,
        local_region: str,
        settings: RouterSettings,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        connect: ConnectFactory | None = None,
    ) -> None:
        if not regions:
            raise ValueError("the locality router needs at least one region")
        names = [region.name for region in regions]
        if len(set(names)) != len(names):
            raise ValueError(f"regions are listed twice: {names}")
        if local_region not in names:
            raise ValueError(f"local region {local_region!r} is not one of {names}")
        self._settings = settings
        self._local_region = local_region
        self._clock = clock
        self._connect = connect
        # Each pooled connection's backend_start, read at its first write (see END_BACKENDS_SQL).
        self._backend_starts: weakref.WeakKeyDictionary[Any, datetime] = weakref.WeakKeyDictionary()
        self._metrics = RouterMetrics(registry)
        now = clock()
        self._regions = {
            region.name: _Region(
                region,
                RegionHealth(
                    fall=settings.fall, rise=settings.rise, hold_down=settings.hold_down, now=now
                ),
            )
            for region in regions
        }
        self._policy = ChoicePolicy(
            local_region=local_region,
            hold_down=settings.hold_down,
            max_replica_lag=settings.max_replica_lag,
            slow_margin=(
                settings.hedge_delay if settings.hedge_delay is not None else DEFAULT_SLOW_MARGIN
            ),
        )
        self._replication = ReplicationTracker(
            window=max(LAG_WINDOW_MIN, 4 * settings.max_replica_lag)
        )
        self._lineage = Lineage()
        self._split_brain: tuple[str, ...] = ()
        self._heartbeat: HeartbeatWriter | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        # Tells the probers how long this process's own loop stalled (see probe.py).
        self._loop_lag = LoopLagMonitor(clock=clock)
        self._loop_lag_task: asyncio.Task[None] | None = None
        self._retry_budget = RetryBudget(
            ratio=settings.retry_budget_ratio,
            minimum_per_second=settings.retry_budget_min_per_second,
            window=RETRY_BUDGET_WINDOW,
        )
        self._listeners: list[Listener] = []
        self._serving: tuple[str | None, str | None] | None = None
        self._lifecycle: _Lifecycle = "new"
        for region in self._regions.values():
            self._metrics.region_up.labels(region.name).set(0)
            self._metrics.region_writable.labels(region.name).set(0)
            self._metrics.region_fenced.labels(region.name).set(0)
            self._metrics.in_flight.labels(region.name).set(0)
            region.metrics = self._metrics.region(region.name)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Create the pools (connecting lazily) and the probers; wait for a first probe round.

        A region that is down now does not fail the start: it is probed until it returns.
        """
        if self._lifecycle != "new":
            raise RuntimeError(f"locality router cannot start: it is {self._lifecycle}")
        self._lifecycle = "starting"
        try:
            self._loop_lag_task = asyncio.create_task(self._loop_lag.run(), name="loop-lag")
            for region in self._regions.values():
                region.pool = await self._create_pool(region.settings)
                region.prober = RegionProber(
                    name=region.name,
                    dsn=region.settings.dsn,
                    interval=self._settings.probe_interval,
                    timeout=self._settings.probe_timeout,
                    connect=self._connect or asyncpg.connect,
                    clock=self._clock,
                    on_result=self._probe_handler(region),
                    server_settings={"application_name": APPLICATION_NAME},
                    stall=self._loop_lag.stalled_during,
                )
                region.task = asyncio.create_task(region.prober.run(), name=f"probe-{region.name}")
            self._heartbeat = HeartbeatWriter(
                interval=self._settings.probe_interval,
                timeout=self._settings.probe_timeout,
                connect=self._connect or asyncpg.connect,
                target=self._heartbeat_target,
                on_result=self._heartbeat_written,
                server_settings={"application_name": HEARTBEAT_APPLICATION_NAME},
            )
            self._heartbeat_task = asyncio.create_task(self._heartbeat.run(), name="heartbeat")
            await self._first_probe_round()
        except BaseException:
            await self.aclose()
            raise
        self._lifecycle = "running"
        self._serving = None
        self._reevaluate()
        for region in self._regions.values():
            self._maybe_warm(region)
        log.info("router_started", router=repr(self))

    async def _first_probe_round(self) -> None:
        waiters = [
            asyncio.create_task(region.prober.first_round.wait())
            for region in self._regions.values()
            if region.prober is not None
        ]
        try:
            # One probe's time, and one retry's after a probe the loop's stall made
            # inconclusive (the start itself may stall the loop).
            await asyncio.wait(waiters, timeout=2 * self._settings.probe_timeout + 0.1)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def aclose(self) -> None:
        """Stop the probers and close the pools, bounded in time; idempotent."""
        if self._lifecycle in ("closing", "closed"):
            return
        self._lifecycle = "closing"
        try:
            await asyncio.shield(self._shutdown())
        except asyncio.CancelledError:
            self._terminate_all()
            raise
        finally:
            self._lifecycle = "closed"

    async def _create_pool(self, region: RegionSettings) -> Any:
        kwargs: dict[str, Any] = {
            # No connection at creation (a region down at start must not fail it); the
            # configured minimum is kept warm by _warm() once the region is up.
            "min_size": 0,
            "max_size": self._settings.pool_max_size,
            "max_inactive_connection_lifetime": MAX_INACTIVE_CONNECTION_LIFETIME,
            "reset": _keep_session,
            "timeout": self._settings.connect_timeout,
            "command_timeout": self._settings.statement_timeout,
            "server_settings": {"application_name": APPLICATION_NAME},
        }
        if self._connect is not None:
            kwargs["connect"] = self._connect
        return await asyncpg.create_pool(region.dsn, **kwargs)

    async def _shutdown(self) -> None:
        enders = {region.ender for region in self._regions.values() if region.ender}
        if enders:
            # Backends of writes given up on just before the close: end them if it is quick.
            await asyncio.wait(enders, timeout=END_BACKEND_DRAIN)
        tasks = [
            task
            for region in self._regions.values()
            for task in (region.task, region.warming, region.ender)
            if task is not None
        ]
        if self._heartbeat_task is not None:
            tasks.append(self._heartbeat_task)
        if self._loop_lag_task is not None:
            tasks.append(self._loop_lag_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(
            *(self._close_pool(region) for region in self._regions.values() if region.pool)
        )
        log.info("router_closed")

    async def _close_pool(self, region: _Region) -> None:
        if not region.health.is_up:
            region.pool.terminate()  # a graceful close would wait on an unreachable host
            return
        try:
            async with asyncio.timeout(DEFAULT_CLOSE_TIMEOUT):
                await region.pool.close()
        except Exception as exc:
            log.warning("pool_close_forced", region=region.name, error=describe_error(exc))
            region.pool.terminate()

    def _terminate_all(self) -> None:
        if self._loop_lag_task is not None:
            self._loop_lag_task.cancel()
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
        if self._heartbeat is not None:
            self._heartbeat.close()
        for region in self._regions.values():
            for task in (region.task, region.warming, region.ender):
                if task is not None:
                    task.cancel()
            if region.prober is not None:
                region.prober.close()
            if region.pool is not None:
                region.pool.terminate()

    def _check_running(self) -> None:
        if self._lifecycle != "running":
            state = "closed" if self._lifecycle in ("closing", "closed") else "not started"
            raise RuntimeError(f"locality router is {state}")

    # -- reads -----------------------------------------------------------------------------

    async def read(
        self,
        op: Operation[T],
        *,
        timeout: float | None = None,
        max_data_age: float | None = None,
        min_position: CommitPosition | None = None,
        hedge: bool = True,
    ) -> T:
        """Run the read-only ``op`` where it is best served, within ``timeout`` seconds.

        With ``max_data_age`` (seconds), only a region whose data is known to be at most
        that old serves it — the writer, or a standby whose heartbeat age says so — and the
        read moves to a fresher region (or the writer) otherwise. Without it, a standby older
        than the router's ``max_replica_lag`` serves only when nothing fresher is up.

        With ``min_position``, only a region that has replayed that commit position serves
        it (the writer always has): one the probes have seen reach it, or one that says so
        when asked just before the read. A position of another database raises
        :class:`~service.errors.InvalidConsistencyTokenError`; on CockroachDB it changes
        nothing.

        ``hedge``: whether a second region may start the same read when the first has not
        answered within the hedge delay. Right for point reads (cheap, and latency is what
        matters); pass ``False`` for page scans, which take longer than the delay anyway
        and would then run twice — a slow or hung region then gets half of what remains.

        Raises :class:`RegionUnavailableError` when no region can serve reads (within
        ``max_data_age``, when given) or the retry budget is spent, and
        :class:`DeadlineExceededError` when time runs out; errors of ``op`` itself (bad
        SQL, domain errors) propagate unchanged.
        """
        result, _ = await self.read_with_age(
            op,
            timeout=timeout,
            max_data_age=max_data_age,
            min_position=min_position,
            hedge=hedge,
        )
        return result

    async def read_with_age(
        self,
        op: Operation[T],
        *,
        timeout: float | None = None,
        max_data_age: float | None = None,
        min_position: CommitPosition | None = None,
        hedge: bool = True,
    ) -> tuple[T, float]:
        """:meth:`read`, and how old the data it read may be: ``(result, age)``.

        ``age`` (seconds) bounds the age of what ``op`` saw when the read began: it saw
        everything committed more than ``age`` seconds before the read started. It is 0 on
        the writer, a standby's measured heartbeat age plus the time since that measurement,
        and ``math.inf`` where no bound is known (a standby measured only by WAL positions,
        before the heartbeat table exists; a region in a split brain). With ``max_data_age``
        it is never above that.
        """
        self._check_running()
        if max_data_age is not None and not max_data_age >= 0:
            raise ValueError(f"max_data_age must be a number of seconds >= 0: {max_data_age}")
        budget = self._settings.request_deadline if timeout is None else timeout
        if min_position is not None:
            check_cluster(min_position, self._lineage.system_identifier)
        self._retry_budget.request(self._clock())
        try:
            return await self._read(op, budget, max_data_age, min_position, hedge=hedge)
        except DependencyError as exc:
            self._metrics.failures.labels("read", exc.type).inc()
            raise

    async def _read(
        self,
        op: Operation[T],
        budget: float,
        max_data_age: float | None,
        min_position: CommitPosition | None = None,
        *,
        hedge: bool = True,
    ) -> tuple[T, float]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        last: _AttemptFailed | None = None
        round_number = 0
        while True:
            views, now = self._views()
            order = read_order(views, self._policy, now, max_data_age=max_data_age)
            unsure: frozenset[str] = frozenset()
            if min_position is not None:
                order, unsure = self._replayed_order(order, min_position)
            if not order:
                raise self._no_read_region(max_data_age, min_position) from (
                    last.cause if last else None
                )
            try:
                return await self._race(
                    order,
                    {view.name: view for view in views},
                    op,
                    deadline,
                    budget,
                    max_data_age=max_data_age,
                    check=(min_position, unsure) if unsure and min_position else None,
                    hedge=hedge,
                )
            except _RetryRefused as refused:
                raise self._retries_spent("read", refused.failed) from refused.failed.cause
            except _AttemptFailed as failed:
                last = failed
            if not self._may_retry(last):
                raise self._retries_spent("read", last) from last.cause
            self._metrics.retries.labels("read", last.failure.value).inc()
            delay = _backoff(round_number)
            round_number += 1
            if loop.time() + delay >= deadline:
                raise DeadlineExceededError(
                    f"the read did not finish within {budget:.2f} s"
                ) from last.cause
            await asyncio.sleep(delay)

    def _replayed_order(
        self, order: tuple[str, ...], position: CommitPosition
    ) -> tuple[tuple[str, ...], frozenset[str]]:
        """``order`` without the regions that can never hold ``position``, and which of the
        rest must be asked first (the probes have not seen them reach it yet)."""
        kept: list[str] = []
        unsure: set[str] = set()
        for name in order:
            region = self._regions[name]
            health = region.health
            replay = replay_of(
                position,
                engine=health.engine,
                is_writer=health.writable and region.fence is None and not self._split_brain,
                timeline=health.timeline,
                lsn=region.lsn,
            )
            if replay == "never":
                continue
            kept.append(name)
            if replay == "unknown":
                unsure.add(name)
        return tuple(kept), frozenset(unsure)

    @staticmethod
    def _when_replayed(name: str, op: Operation[T], position: CommitPosition) -> Operation[T]:
        """``op``, run only once the server says it has replayed ``position``."""

        async def checked(conn: Any) -> T:
            replayed = await conn.fetchval(REPLAY_POSITION)
            if replayed is None or replayed < position.lsn:
                behind = RegionUnavailableError(f"{name} has not replayed the position yet")
                raise _AttemptFailed(name, Failure.BEHIND, behind, maybe_committed=False)
            return await op(conn)

        return checked

    def _no_read_region(
        self, max_data_age: float | None, min_position: CommitPosition | None = None
    ) -> RegionUnavailableError:
        if min_position is not None and self.can_read():
            return RegionUnavailableError(
                "no region that holds the write this read must see can serve now; retry shortly"
            )
        if max_data_age is not None and self.can_read():
            return RegionUnavailableError(
                f"no region can serve data younger than {max_data_age:g} s now; retry shortly"
            )
        return RegionUnavailableError("no region can serve reads now; retry shortly")

    async def _race(
        self,
        order: tuple[str, ...],
        views: dict[str, RegionView],
        op: Operation[T],
        deadline: float,
        budget: float,
        *,
        max_data_age: float | None,
        check: tuple[CommitPosition, frozenset[str]] | None = None,
        hedge: bool,
    ) -> tuple[T, float]:
        """Try ``order`` in turn; raise the last failure if all fail.

        A candidate that fails moves the read to the next one at once. A candidate that has
        not answered within the hedge delay gets company: the next candidate starts too, and
        so on down the list, and the first answer wins. (A read slower than the hedge delay
        everywhere thus costs one attempt per region; point reads are far faster than that.)
        Each attempt's data age is taken when it starts; with ``max_data_age`` a candidate
        whose data has grown too old by then is passed over. With ``check``, the regions it
        names are first asked whether they have replayed its position (and passed over,
        as a failed attempt, when not). Moving on after a failure is a retry, and draws from
        the retry budget (:class:`_RetryRefused` when it is spent); a hedge does not (at most
        one per region, and only for reads that ask for it).
        """
        loop = asyncio.get_running_loop()
        hedge_delay = self._settings.hedge_delay if hedge else None
        pending = list(order)
        running: dict[asyncio.Task[T], str] = {}  # in launch order
        ages: dict[asyncio.Task[T], float] = {}
        last: _AttemptFailed | None = None
        hedge_at = loop.time()

        def launch() -> str | None:
            nonlocal hedge_at
            while True:
                if not pending:
                    return None
                name = pending.pop(0)
                age = bounded_data_age(views[name], self._clock())
                if max_data_age is None or (age is not None and age <= max_data_age):
                    break
            remaining = deadline - loop.time()
            share = remaining if hedge_delay is not None or not pending else remaining / 2
            run = op
            if check is not None and name in check[1]:
                run = self._when_replayed(name, op, check[0])
            task = asyncio.create_task(
                self._attempt(self._regions[name], run, kind="read", budget=share)
            )
            running[task] = name
            ages[task] = math.inf if age is None else age
            hedge_at = loop.time() + (hedge_delay or 0.0)
            return name

        if launch() is None:
            raise self._no_read_region(max_data_age)
        try:
            while running:
                now = loop.time()
                remaining = deadline - now
                if remaining <= 0:
                    raise DeadlineExceededError(f"read did not finish within {budget:.2f} s")
                may_hedge = hedge_delay is not None and bool(pending)
                wait = min(remaining, max(0.0, hedge_at - now)) if may_hedge else remaining
                done, _ = await asyncio.wait(
                    running, timeout=wait, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    if may_hedge and loop.time() >= hedge_at:
                        hedged = launch()
                        if hedged is not None:
                            self._metrics.hedges.labels(hedged).inc()
                    continue
                winner = next((task for task in done if task.exception() is None), None)
                if winner is not None:
                    launched = list(running)
                    for loser in launched[: launched.index(winner)]:
                        if loser not in done:
                            self._lost_race(self._regions[running[loser]])
                    running.pop(winner)
                    return winner.result(), ages[winner]
                for task in done:
                    running.pop(task)
                    exc = task.exception()
                    if not isinstance(exc, _AttemptFailed):
                        raise exc  # type: ignore[misc]
                    last = exc
                if not running and pending:
                    assert last is not None
                    if not self._may_retry(last):
                        raise _RetryRefused(last)
                    launch()
            assert last is not None
            raise last
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.wait(running)

    # -- writes ----------------------------------------------------------------------------

    async def write(
        self,
        op: Operation[T],
        *,
        idempotent: bool,
        timeout: float | None = None,
        autocommit: bool = False,
    ) -> T:
        """Run ``op`` in a SERIALIZABLE transaction on a writable region.

        With ``autocommit``, ``op`` runs outside an explicit transaction (each statement
        commits on its own: schema changes CockroachDB refuses inside one), so any failure
        while it runs may have committed part of it.

        Retried elsewhere when it provably did not commit; after an ambiguous commit only
        when ``idempotent`` (else :class:`AmbiguousCommitError`). Serialization failures are
        retried with jittered backoff within the deadline. Raises
        :class:`NoWritableRegionError` at once when no region takes writes.
        """
        self._check_running()
        if autocommit and not idempotent:
            raise ValueError("an autocommit write may commit in part: it must be idempotent")
        budget = self._settings.request_deadline if timeout is None else timeout
        self._retry_budget.request(self._clock())
        try:
            return await self._write(
                op, idempotent=idempotent, budget=budget, autocommit=autocommit
            )
        except DependencyError as exc:
            self._metrics.failures.labels("write", exc.type).inc()
            raise

    async def _write(
        self, op: Operation[T], *, idempotent: bool, budget: float, autocommit: bool
    ) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        maybe_committed = False
        last: _AttemptFailed | None = None
        failed_regions: set[str] = set()
        attempt = 0
        while True:
            order = self._write_order()
            if not order and maybe_committed:
                raise AmbiguousCommitError(
                    "the write may have committed before its region failed, and no writable "
                    "region is reachable to finish it; repeat it with the same idempotency key"
                ) from (last.cause if last else None)
            if not order:
                refused = self._writes_refused()
                raise NoWritableRegionError(
                    f"no writable region: {refused}"
                    if refused
                    else "no writable region is reachable; key writes are refused until one is"
                ) from (last.cause if last else None)
            remaining = deadline - loop.time()
            if remaining <= 0:
                self._raise_write_deadline(budget, maybe_committed, last)
            name = next((name for name in order if name not in failed_regions), order[0])
            region = self._regions[name]
            share = attempt_budget(
                remaining,
                cap=self._settings.write_attempt_timeout,
                others_left=any(other not in failed_regions for other in order if other != name),
            )
            try:
                return await self._attempt(
                    region, op, kind="write", budget=share, autocommit=autocommit
                )
            except _AttemptFailed as failed:
                last = failed
            if last.maybe_committed:
                if not idempotent:
                    log.warning("write_ambiguous", region=name, error=describe_error(last.cause))
                    raise AmbiguousCommitError(
                        "the write may or may not have committed; repeat it with the same "
                        "idempotency key"
                    ) from last.cause
                maybe_committed = True
            if last.failure is Failure.READ_ONLY:
                await self._found_read_only(region)
            elif last.failure in (Failure.CONNECTION, Failure.TIMEOUT):
                failed_regions.add(name)
            if not self._may_retry(last):
                if maybe_committed:
                    raise AmbiguousCommitError(
                        "the write may have committed before its region failed, and the retry "
                        "budget is spent; repeat it with the same idempotency key"
                    ) from last.cause
                raise self._retries_spent("write", last) from last.cause
            self._metrics.retries.labels("write", last.failure.value).inc()
            # Serialization failures are routine under contention: metrics count them.
            (log.debug if last.failure is Failure.SERIALIZATION else log.info)(
                "write_retry",
                region=name,
                reason=last.failure.value,
                attempt=attempt + 1,
                error=describe_error(last.cause),
            )
            delay = 0.0 if last.failure is Failure.READ_ONLY else _backoff(attempt)
            attempt += 1
            if loop.time() + delay >= deadline:
                self._raise_write_deadline(budget, maybe_committed, last)
            await asyncio.sleep(delay)

    def _may_retry(self, failed: _AttemptFailed) -> bool:
        """Whether the retry budget allows trying again after ``failed`` (counted if so)."""
        return not failed.budgeted or self._retry_budget.try_retry(self._clock())

    def _retries_spent(self, kind: Kind, failed: _AttemptFailed) -> RegionUnavailableError:
        self._metrics.retries_refused.labels(kind).inc()
        log.warning(
            "retry_budget_spent",
            kind=kind,
            region=failed.region,
            reason=failed.failure.value,
            error=describe_error(failed.cause),
        )
        percent = round(self._settings.retry_budget_ratio * 100)
        return RegionUnavailableError(
            f"the {kind} failed in {failed.region} ({failed.failure.value}) and is not retried: "
            f"regions are failing for many requests, and retries are limited to {percent}% of "
            "them; retry later"
        )

    @staticmethod
    def _raise_write_deadline(
        budget: float, maybe_committed: bool, last: _AttemptFailed | None
    ) -> NoReturn:
        cause = last.cause if last else None
        if maybe_committed:
            raise AmbiguousCommitError(
                f"the write did not finish within {budget:.2f} s and may have committed; "
                "repeat it with the same idempotency key"
            ) from cause
        raise DeadlineExceededError(f"the write did not finish within {budget:.2f} s") from cause

    # -- one attempt on one region ---------------------------------------------------------

    async def _attempt(
        self,
        region: _Region,
        op: Operation[T],
        *,
        kind: Kind,
        budget: float,
        autocommit: bool = False,
    ) -> T:
        """Run ``op`` once in ``region`` within ``budget`` seconds.

        Raises :class:`_AttemptFailed` for failures the router acts on, and the operation's
        own errors unchanged. The connection goes back to the pool only when it is known to
        be clean; otherwise it is terminated (never left hanging or half-used in the pool).
        """
        pool = region.pool
        loop = asyncio.get_running_loop()
        started = loop.time()
        attempt = _InFlight(kind)
        region.attempts.add(attempt)
        metrics = region.metrics
        assert metrics is not None
        metrics.in_flight.inc()
        conn: Any = None
        tx: Any = None
        tx_open = False
        outcome = "error"
        try:
            try:
                async with asyncio.timeout(budget) as attempt.timeout:
                    conn = await pool.acquire(timeout=min(self._settings.acquire_timeout, budget))
                    if kind == "write":
                        # Known before anything is sent, so that a backend this attempt
                        # abandons can be ended from another connection — that backend
                        # and no other that later gets its pid.
                        attempt.pid = conn.get_server_pid()
                        attempt.backend_start = await self._backend_start(region, conn)
                    attempt.phase = "run"
                    if kind == "read":
                        result = await op(conn)
                    elif autocommit:
                        _raise_if_aborted(attempt)
                        attempt.phase = "commit"  # every statement commits as it runs
                        result = await op(conn)
                    else:
                        tx = conn.transaction(isolation="serializable")
                        await tx.start()
                        tx_open = True
                        result = await op(conn)
                        _ensure_open_before_commit(conn)
                        _raise_if_aborted(attempt)
                        attempt.phase = "commit"
                        tx_open = False
                        await tx.commit()
            except asyncio.CancelledError:
                _terminate(conn)
                self._end_abandoned(region, attempt, gave_up=True)
                outcome = "cancelled"
                raise
            except Exception as exc:
                phase = attempt.phase
                failure = classify_failure(exc)
                if phase == "acquire" and failure is None:
                    failure = Failure.CONNECTION  # no connection at all: e.g. auth refused
                if failure in (Failure.CONNECTION, Failure.TIMEOUT):
                    _terminate(conn)
                    self._end_abandoned(region, attempt, gave_up=failure is Failure.TIMEOUT)
                elif conn is not None:
                    begin_failed = phase == "run" and tx is not None and not tx_open
                    await self._settle(region, conn, tx, tx_open=tx_open, clean=not begin_failed)
                if failure is None:
                    raise
                if attempt.aborted:
                    outcome = "aborted"
                elif failure is Failure.CONNECTION or (
                    failure is Failure.TIMEOUT and phase == "acquire" and not _saturated(pool)
                ):
                    await self._request_failed(region, exc)
                elif failure is Failure.TIMEOUT and region.prober is not None:
                    # A slow statement is not proof of an unreachable region (a lock wait, a
                    # commit waiting for a standby); ask the prober rather than count it.
                    region.prober.trigger()
                # In autocommit mode every statement commits as it runs, so any failure may
                # follow a partial commit; in a transaction, only a lost COMMIT may.
                maybe_committed = phase == "commit" and (
                    autocommit
                    or failure in (Failure.CONNECTION, Failure.TIMEOUT, Failure.AMBIGUOUS)
                )
                raise _AttemptFailed(
                    region.name,
                    failure,
                    exc,
                    maybe_committed=maybe_committed,
                    aborted=attempt.aborted,
                ) from exc
            await self._release(region, conn)
            outcome = "ok"
            if kind == "read":
                self._answered(region, loop.time() - started)
            return result
        finally:
            region.attempts.discard(attempt)
            metrics.in_flight.dec()
            metrics.observe(kind, outcome, loop.time() - started)

    async def _backend_start(self, region: _Region, conn: Any) -> datetime | None:
        """When ``conn``'s server backend started (PostgreSQL only), read once per connection:
        with the pid it names that backend for good, where the pid alone may be reused."""
        if region.health.engine != "postgresql":
            return None
        # A pool hands out a new proxy per acquire: remember the connection behind it.
        raw = getattr(conn, "_con", None) or conn
        started = self._backend_starts.get(raw)
        if started is None:
            started = await conn.fetchval(BACKEND_START_SQL)
            if started is not None:
                self._backend_starts[raw] = started
        return started

    def _end_abandoned(self, region: _Region, attempt: _InFlight, *, gave_up: bool) -> None:
        """A write given up on with its connection dropped: its server backend may live on —
        a COMMIT waiting in SyncRep ignores its client's departure and keeps its locks and
        its connection slot — so end it from a connection of our own, in the background.

        ``gave_up``: the router ended the attempt (deadline, abort, cancellation); else the
        connection failed under it, which leaves a backend behind only if its COMMIT was
        already sent (a server that died took its backends with it).
        """
        if attempt.kind != "write" or attempt.pid is None or attempt.phase == "acquire":
            return
        if attempt.backend_start is None:
            return  # not known which backend holds that pid now: never end a stranger
        if not gave_up and attempt.phase != "commit":
            return
        if region.health.engine != "postgresql":
            return  # CockroachDB ends a session's transaction when its connection closes
        region.abandoned.add((attempt.pid, attempt.backend_start))
        attempt.pid = None
        if region.ender is None or region.ender.done():
            region.ender = asyncio.create_task(
                self._end_backends(region), name=f"end-backends-{region.name}"
            )

    async def _end_backends(self, region: _Region) -> None:
        """``pg_terminate_backend`` for every pid in ``region.abandoned``, one connection for
        all of them, retried while the region is out of reach for at most
        :data:`END_BACKEND_PATIENCE` seconds. Termination, not a cancel: a cancelled SyncRep
        wait reports the COMMIT as done, and the caller must learn nothing but "ambiguous"
        (its connection is dropped anyway)."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + END_BACKEND_PATIENCE
        timeout = max(self._settings.probe_timeout, self._settings.connect_timeout)
        tries = 0
        while region.abandoned:
            backends = sorted(region.abandoned)
            pids = [pid for pid, _ in backends]
            rows = await self._terminate_backends(region, backends, timeout)
            if rows is None:
                tries += 1
                if loop.time() >= give_up_at:
                    region.abandoned.difference_update(backends)
                    self._metrics.backends_ended.labels(region.name, "failed").inc(len(pids))
                    log.warning(
                        "abandoned_backends_not_ended", region=region.name, pids=pids, tries=tries
                    )
                    return
                await asyncio.sleep(
                    min(END_BACKEND_RETRY_CAP, self._settings.probe_interval * tries)
                )
                continue
            region.abandoned.difference_update(backends)
            ended = [row[0] for row in rows if row[1]]
            # Gone after a failed try: most likely that try ended it and its answer was lost
            # (the timeout covers connect and query alike); else it had ended by itself.
            gone = len(pids) - len(ended)
            self._metrics.backends_ended.labels(region.name, "ended").inc(
                len(ended) + (gone if tries else 0)
            )
            if not tries:
                self._metrics.backends_ended.labels(region.name, "gone").inc(gone)
            if ended:
                log.warning("abandoned_backends_ended", region=region.name, pids=ended)
            tries = 0
            give_up_at = loop.time() + END_BACKEND_PATIENCE

    async def _terminate_backends(
        self, region: _Region, backends: list[tuple[int, datetime]], timeout: float
    ) -> list[Any] | None:
        """One try at ending ``backends`` (pid, backend_start) in ``region``: (pid, ended)
        rows, or None if it failed."""
        connect = self._connect or asyncpg.connect
        conn: Any = None
        try:
            async with asyncio.timeout(timeout):
                conn = await connect(
                    region.settings.dsn,
                    timeout=timeout,
                    command_timeout=timeout,
                    server_settings={"application_name": ENDER_APPLICATION_NAME},
                )
                return list(
                    await conn.fetch(
                        END_BACKENDS_SQL,
                        [pid for pid, _ in backends],
                        [started for _, started in backends],
                    )
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug(
                "abandoned_backends_unreachable", region=region.name, error=describe_error(exc)
            )
            return None
        finally:
            _terminate(conn)

    async def _settle(
        self, region: _Region, conn: Any, tx: Any, *, tx_open: bool, clean: bool
    ) -> None:
        """After a server-side error: roll back what is open, then return the connection.

        A connection whose state is not known to be clean is terminated instead.
        """
        try:
            if tx_open:
                async with asyncio.timeout(self._settings.acquire_timeout):
                    await tx.rollback()
            elif not clean:
                _terminate(conn)  # BEGIN itself failed: do not guess what is left open
                return
            elif conn.is_in_transaction():
                async with asyncio.timeout(self._settings.acquire_timeout):
                    await conn.execute("ROLLBACK")
        except asyncio.CancelledError:
            _terminate(conn)
            raise
        except Exception:
            _terminate(conn)
            return
        await self._release(region, conn)

    async def _release(self, region: _Region, conn: Any) -> None:
        try:
            await region.pool.release(conn)
        except asyncio.CancelledError:
            _terminate(conn)
            raise
        except Exception:
            _terminate(conn)

    # -- health ----------------------------------------------------------------------------

    def _probe_handler(self, region: _Region) -> Callable[[ProbeResult], Awaitable[None]]:
        async def handle(result: ProbeResult) -> None:
            await self._probed(region, result)

        return handle

    async def _probed(self, region: _Region, result: ProbeResult) -> None:
        before = region.facts()
        was_short = region.health.sync_short
        now = self._clock()
        if result.ok:
            region.lsn = result.lsn
            age = None if result.writable else self._standby_age(region, result)
            region.health.record_success(
                now,
                rtt=result.rtt,
                writable=result.writable,
                engine=result.engine,
                data_age=age,
                probe=result,
            )
            if result.rtt is not None:
                self._answered(region, result.rtt)
            self._maybe_warm(region)
        elif result.inconclusive:
            self._inconclusive(region, result, now)
        else:
            region.health.record_failure(now, result.error or "probe failed")
        self._update_gauges(region)
        if result.ok and region.health.sync_short != was_short:
            self._sync_changed(region)
        await self._health_changed(region, before, cause=result.error)
        if result.ok and result.writable and result.lsn is not None and region.fence is None:
            self._replication.observe_primary(result.started_at, result.lsn)

    def _inconclusive(self, region: _Region, result: ProbeResult, now: float) -> None:
        """A probe timed out while this process's loop was stalled: not the region's fault,
        unless too many in a row (RegionHealth.record_inconclusive bounds it)."""
        error = result.error or "probe timed out"
        region.health.record_inconclusive(now, error)
        self._metrics.probe_inconclusive.labels(region.name).inc()
        log.debug(
            "probe_inconclusive",
            region=region.name,
            error=error,
            stalled=round(self._loop_lag.stalled_during(result.started_at, now), 3),
            in_a_row=region.health.inconclusive,
        )

    def _standby_age(self, region: _Region, result: ProbeResult) -> DataAge | None:
        """How old a standby's data was when probed: from the newest heartbeat it replayed,
        or, before the heartbeat table exists, estimated from WAL positions."""
        if result.heartbeat_age is not None:
            # Both clocks are the database servers' (the standby's now() minus the primary's
            # at write time); a negative age is clock skew between them.
            return DataAge(max(0.0, result.heartbeat_age), result.started_at, "heartbeat")
        lag = self._replication.standby_lag(
            result.started_at,
            replay_lsn=result.lsn,
            receive_lsn=result.receive_lsn,
            replay_age=result.replay_age,
            primary_known=self._has_writable(other_than=region.name),
        )
        return None if lag is None else DataAge(lag, result.started_at, "wal")

    def _sync_changed(self, region: _Region) -> None:
        """The region's synchronous standbys went below what a COMMIT needs, or came back."""
        health = region.health
        if not health.sync_short:
            log.warning(
                "region_sync_restored",
                region=region.name,
                sync_standbys=health.sync_standbys,
                sync_required=health.sync_required,
            )
            self._reevaluate(force_notify=True)
            return
        log.error(
            "region_sync_short",
            region=region.name,
            sync_standbys=health.sync_standbys,
            sync_required=health.sync_required,
            synchronous_standby_names=health.sync_names,
            detail="writes are refused until enough synchronous standbys stream again",
        )
        # Writes under way there would wait in SyncRep until their deadline: end them now.
        # One whose COMMIT is on the wire ends ambiguous (it committed locally, perhaps), and
        # its backend is terminated so that it holds no locks or connection slot meanwhile.
        for attempt in list(region.attempts):
            if attempt.kind == "write":
                attempt.abandon()
        self._reevaluate(force_notify=True)

    def _refence(self) -> bool:
        """Decide again which regions are fenced; log, count and act on every change.

        Returns whether any region's fence changed.
        """
        identities = [identity for r in self._regions.values() if (identity := r.identity())]
        verdict = decide(identities, self._lineage)
        learned = self._learn(verdict)
        changed = False
        for region in self._regions.values():
            reason = verdict.reason(region.name)
            if reason == region.fence:
                continue
            previous, region.fence = region.fence, reason
            changed = True
            self._metrics.region_fenced.labels(region.name).set(0 if reason is None else 1)
            if reason is None:
                log.warning(
                    "region_unfenced",
                    region=region.name,
                    previous=previous,
                    timeline=region.health.timeline,
                    writable=region.health.writable,
                )
                continue
            (log.warning if reason == "follows_old_timeline" else log.error)(
                "region_fenced",
                region=region.name,
                reason=reason,
                timeline=region.health.timeline,
                cluster_timeline=verdict.lineage.timeline,
                writable=region.health.writable,
                system_identifier=region.health.system_identifier,
            )
            # Attempts under way there end now (none whose COMMIT has been sent): a split
            # brain stops writes only, any other fence reads too.
            for attempt in list(region.attempts):
                if reason in READ_FENCES or attempt.kind == "write":
                    attempt.abort()
        split = verdict.split_brain()
        if split != self._split_brain:
            if split:
                log.error(
                    "split_brain",
                    regions=list(split),
                    timeline=verdict.lineage.timeline,
                    detail="writes are refused until only one of them is writable",
                )
            else:
                log.warning("split_brain_resolved", regions=list(self._split_brain))
            self._split_brain = split
        if learned or changed:
            # Whoever has not been probed since may have changed too (the new primary, when
            # a standby following it told of the new timeline): ask everyone now rather than
            # leave writes with nowhere to go for a probe interval.
            for region in self._regions.values():
                if region.prober is not None:
                    region.prober.trigger()
        return changed

    def _learn(self, verdict: Fencing) -> bool:
        """Keep what the verdict learned of the cluster (whether it is news); a new timeline
        or system makes the old WAL positions meaningless."""
        lineage = verdict.lineage
        if lineage == self._lineage:
            return False
        previous, self._lineage = self._lineage, lineage
        self._replication.forget()
        if previous.system_identifier not in (None, lineage.system_identifier):
            log.error(
                "cluster_system_changed",
                system_identifier=lineage.system_identifier,
                previous=previous.system_identifier,
            )
        elif previous.system_identifier is not None:
            log.warning(
                "cluster_timeline_advanced", timeline=lineage.timeline, previous=previous.timeline
            )
        return True

    def _lost_race(self, region: _Region) -> None:
        if region.health.record_lost_race(self._clock()):
            log.warning("region_slow", region=region.name, lost_races=region.health.lost_races)
            # Reads still waiting on it move on now instead of each waiting out its hedge
            # delay (a read is never ambiguous: the worst case is one more attempt).
            for attempt in list(region.attempts):
                if attempt.kind == "read":
                    attempt.abort()
            self._reevaluate(force_notify=True)

    def _answered(self, region: _Region, seconds: float) -> None:
        hedge_delay = self._settings.hedge_delay
        fast = hedge_delay is not None and seconds < hedge_delay
        if region.health.record_answer(self._clock(), fast=fast):
            log.info("region_fast_again", region=region.name, seconds=round(seconds, 4))
            self._reevaluate(force_notify=True)

    def _maybe_warm(self, region: _Region) -> None:
        """Keep ``pool_min_size`` connections open in a region that is up."""
        wanted = self._settings.pool_min_size
        if (
            wanted == 0
            or region.warming is not None
            or self._lifecycle != "running"
            or not region.health.is_up
            or region.pool.get_size() >= wanted
        ):
            return
        region.warming = asyncio.create_task(self._warm(region, wanted))

    async def _warm(self, region: _Region, wanted: int) -> None:
        conns: list[Any] = []
        try:
            for _ in range(wanted):
                conns.append(await region.pool.acquire(timeout=self._settings.connect_timeout))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("pool_warm_failed", region=region.name, error=describe_error(exc))
        finally:
            region.warming = None
            for conn in conns:
                await self._release(region, conn)

    async def _request_failed(self, region: _Region, exc: BaseException) -> None:
        before = region.facts()
        region.health.record_failure(self._clock(), describe_error(exc), passive=True)
        if region.prober is not None:
            region.prober.trigger()
        self._update_gauges(region)
        await self._health_changed(region, before, cause=describe_error(exc))

    async def _found_read_only(self, region: _Region) -> None:
        before = region.facts()
        region.health.mark_read_only()
        if region.prober is not None:
            region.prober.trigger()
        self._update_gauges(region)
        await self._health_changed(region, before, cause="write refused: read-only")

    async def _health_changed(
        self, region: _Region, before: tuple[str, bool, FenceReason | None], *, cause: str | None
    ) -> None:
        fences_changed = self._refence()
        state, writable, _ = region.facts()
        if (state, writable) != before[:2]:
            if state != before[0]:
                log.warning(
                    "region_state_changed",
                    region=region.name,
                    cloud=region.settings.cloud,
                    state=state,
                    previous=before[0],
                    **({"error": cause} if state == "down" else {}),
                )
            if writable != before[1]:
                log.warning(
                    "region_role_changed",
                    region=region.name,
                    writable=writable,
                    engine=region.health.engine,
                )
            if state == "up" and (before[0] == "down" or writable != before[1]):
                # Connections made before an outage or a promotion may be broken or stale.
                await region.pool.expire_connections()
            if state == "down" or (before[1] and not writable):
                # Attempts stuck on a region that just failed move on now rather than at their
                # deadline; none whose COMMIT has been sent is touched.
                for attempt in list(region.attempts):
                    if state == "down" or attempt.kind == "write":
                        attempt.abort()
        self._reevaluate(force_notify=fences_changed or (state, writable) != before[:2])

    def _reevaluate(self, *, force_notify: bool = False) -> None:
        """Recompute which regions serve reads and writes; log and count any change."""
        views, now = self._views()
        reads = read_order(views, self._policy, now)
        writes = write_order(views, self._policy, now)
        serving = (reads[0] if reads else None, writes[0] if writes else None)
        previous = self._serving
        self._serving = serving
        changed = previous is not None and serving != previous
        if changed and previous is not None and self._lifecycle == "running":
            for kind, old, new in (
                ("read", previous[0], serving[0]),
                ("write", previous[1], serving[1]),
            ):
                if old != new:
                    self._metrics.failovers.labels(kind).inc()
                    log.warning(
                        "router_failover",
                        kind=kind,
                        from_region=old,
                        to_region=new,
                        back_home=new == self._local_region,
                    )
        if (changed or force_notify) and self._lifecycle == "running":
            self._notify()

    def _notify(self) -> None:
        if not self._listeners:
            return
        status = self.status()
        for listener in list(self._listeners):
            try:
                listener(status)
            except Exception:
                log.exception("router_listener_failed", listener=repr(listener))

    def _update_gauges(self, region: _Region) -> None:
        health = region.health
        self._metrics.region_up.labels(region.name).set(1 if health.is_up else 0)
        self._metrics.region_writable.labels(region.name).set(1 if health.writable else 0)
        self._metrics.region_sync_short.labels(region.name).set(1 if health.sync_short else 0)
        if health.rtt is not None:
            self._metrics.region_rtt.labels(region.name).set(health.rtt)
        if health.data_age is not None:
            self._metrics.region_lag.labels(region.name).set(health.data_age.seconds)

    def _has_writable(self, *, other_than: str) -> bool:
        return any(
            region.health.is_up and region.health.writable and region.fence is None
            for region in self._regions.values()
            if region.name != other_than
        )

    # -- heartbeat -------------------------------------------------------------------------

    def _heartbeat_target(self) -> Target | None:
        """Where this instance writes the heartbeat: the PostgreSQL region writes go to,
        once the heartbeat table exists there."""
        if self._lifecycle not in ("starting", "running"):
            return None
        # The heartbeat commits locally (synchronous_commit = local), so a primary whose
        # synchronous standbys are gone still takes it: a standby streaming asynchronously
        # keeps a measured age.
        views, now = self._views()
        order = write_order(views, self._policy, now, durable=False)
        if not order:
            return None
        region = self._regions[order[0]]
        if region.health.engine != "postgresql" or not region.health.has_heartbeat:
            return None
        return region.name, region.settings.dsn

    def _heartbeat_written(self, region: str, ok: bool) -> None:
        self._metrics.heartbeats.labels(region, "ok" if ok else "error").inc()

    # -- choice and status -----------------------------------------------------------------

    def _views(self) -> tuple[list[RegionView], float]:
        views = [self._view(region) for region in self._regions.values()]
        return views, self._clock()

    @staticmethod
    def _view(region: _Region) -> RegionView:
        health = region.health
        age = health.data_age
        return RegionView(
            name=region.name,
            cloud=region.settings.cloud,
            priority=region.settings.priority,
            up=health.is_up,
            writable=health.writable,
            rtt=health.rtt,
            data_age=None if age is None else age.seconds,
            data_age_at=None if age is None else age.at,
            age_is_bound=age is not None and age.is_bound,
            recovered_at=health.recovered_at,
            recovered_from=health.recovered_from,
            slow=health.slow,
            fenced=region.fence is not None and region.fence in READ_FENCES,
            split_brain=region.fence == "split_brain",
            sync_short=health.is_up and health.sync_short,
        )

    def _read_order(self) -> tuple[str, ...]:
        views, now = self._views()
        return read_order(views, self._policy, now)

    def _write_order(self) -> tuple[str, ...]:
        views, now = self._views()
        return write_order(views, self._policy, now)

    async def wait_ready(self, *, writable: bool = False, timeout: float) -> bool:
        """Wait until a region serves reads (and writes, when asked); False at the timeout.

        For one-shot commands (``migrate``, ``token create``) that start the router and
        write at once, before the first probe round may have found the primary.
        """
        check = self.can_write if writable else self.can_read
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not check():
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(min(0.02, self._settings.probe_interval))
        return True

    def can_read(self) -> bool:
        """Whether some region can serve reads now."""
        return bool(self._read_order())

    def can_write(self) -> bool:
        """Whether some region takes writes now."""
        return bool(self._write_order())

    def add_listener(self, callback: Listener) -> None:
        """Call ``callback(status)`` on every change of a region's state or role, and of the
        region serving reads or writes. Callbacks run on the event loop and must not block."""
        self._listeners.append(callback)

    def status(self) -> RouterStatus:
        """A frozen snapshot of every region and of the regions serving reads and writes."""
        views, now = self._views()
        reads = read_order(views, self._policy, now)
        writes = write_order(views, self._policy, now)
        wall = time.time()
        regions = tuple(
            RegionStatus(
                name=region.name,
                cloud=region.settings.cloud,
                state=region.health.state,
                writable=region.health.writable,
                engine=region.health.engine,
                rtt_ms=None if region.health.rtt is None else region.health.rtt * 1000.0,
                lag_seconds=data_age(view, now),
                in_flight=region.in_flight,
                last_error=region.health.last_error,
                since=wall - (now - region.health.since),
                slow=view.slow,
                held_down=is_held_down(view, self._policy, now),
                fenced=region.fence is not None,
                fence_reason=region.fence,
                system_identifier=region.health.system_identifier,
                timeline=region.health.timeline,
                data_age_source=(
                    None
                    if region.health.writable or region.health.data_age is None
                    else region.health.data_age.source
                ),
                receiver=region.health.receiver_status,
                receiver_silence_seconds=region.health.receiver_silence,
                sync_standbys=region.health.sync_standbys,
                sync_required=region.health.sync_required,
            )
            for region, view in zip(self._regions.values(), views, strict=True)
        )
        return RouterStatus(
            regions=regions,
            read_region=reads[0] if reads else None,
            write_region=writes[0] if writes else None,
            local_region=self._local_region,
            system_identifier=self._lineage.system_identifier,
            timeline=self._lineage.timeline or None,
            writes_refused=None if writes else self._writes_refused(),
        )

    def _writes_refused(self) -> str | None:
        """Why no region takes writes though one says it could, if that is the case."""
        if self._split_brain:
            return (
                f"split brain: {' and '.join(self._split_brain)} are all writable on timeline "
                f"{self._lineage.timeline}; writes are refused until only one of them is"
            )
        fenced = [
            region.name
            for region in self._regions.values()
            if region.fence == "old_timeline" and region.health.is_up
        ]
        if fenced:
            return (
                f"{' and '.join(fenced)} writable on a timeline older than "
                f"{self._lineage.timeline}: fenced until rejoined as a standby"
            )
        foreign = [
            region.name
            for region in self._regions.values()
            if region.fence == "foreign_system" and region.health.is_up and region.health.writable
        ]
        if foreign:
            return (
                f"{' and '.join(foreign)} writable but another database (system identifier "
                f"not {self._lineage.system_identifier}): never used"
            )
        short = [
            region
            for region in self._regions.values()
            if region.health.is_up and region.health.sync_short and region.fence is None
        ]
        if short:
            return "; ".join(
                f"{region.name} cannot acknowledge a write durably: "
                f"{region.health.sync_standbys} synchronous standby(s) streaming, "
                f"{region.health.sync_required} needed (synchronous_standby_names = "
                f"{region.health.sync_names!r}); writes are refused until enough are back"
                for region in short
            )
        return None

    def __repr__(self) -> str:
        status = self.status()
        regions = ", ".join(
            f"{region.name}={region.state}/{'rw' if region.writable else 'ro'}"
            + (f"/fenced:{region.fence_reason}" if region.fenced else "")
            + (f"/{region.rtt_ms:.1f}ms" if region.rtt_ms is not None else "")
            for region in status.regions
        )
        return (
            f"<LocalityRouter {self._lifecycle} local={self._local_region} "
            f"reads={status.read_region} writes={status.write_region} [{regions}]>"
        )


def _terminate(conn: Any) -> None:
    """Drop a connection without waiting; the pool replaces it on the next acquire."""
    if conn is None:
        return
    with contextlib.suppress(Exception):  # already released or closed: nothing to drop
        conn.terminate()


def _ensure_open_before_commit(conn: Any) -> None:
    # Called with no await before COMMIT is sent: a closed connection here proves the COMMIT
    # never left, so the write did not commit and may go elsewhere.
    if conn.is_closed():
        raise asyncpg.ConnectionDoesNotExistError("connection closed before COMMIT")


def _saturated(pool: Any) -> bool:
    """Every connection of ``pool`` is in use: waiting for one says nothing of the region."""
    return bool(pool.get_size() >= pool.get_max_size() and pool.get_idle_size() == 0)


def _backoff(attempt: int) -> float:
    """Jittered exponential backoff: about 5 ms, 10 ms, 20 ms, … capped at 200 ms."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * (2**attempt))
    return random.uniform(ceiling / 2, ceiling)
