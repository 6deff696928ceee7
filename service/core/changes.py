"""The change feed: a portable poller over ``updated_at`` that keeps every instance current.

LISTEN/NOTIFY does not exist on CockroachDB and is not delivered on standbys, so each
instance polls its nearest readable region every ``poll_interval`` for keys updated since its
*watermark* minus an ``overlap`` window. The watermark is the newest ``updated_at`` the feed
has read — data written by the primary's clock, not the answering region's clock — so a
lagging standby cannot make it skip anything: what a standby has not replayed yet committed
after everything it has, and its ``updated_at`` (a transaction's start) is at most one write
duration earlier. The overlap must therefore exceed the longest write (its deadline); the
settings insist on it. Changes are applied to the :class:`~service.core.keycache.KeyCache`
(which never goes backwards) and fanned out to ``WatchSigningKeys`` streams.

Every read is paged (``page_size`` keys, keyset on ``(updated_at, id)``) and each page is
applied before the next is read, and the feed remembers at most ``recent_size`` changes (by
default the cache's capacity), so its memory follows the cache's bound, not the table's:
the first load of a million keys holds a page and the cache. When more keys change within
two overlaps than it remembers (an import, a restore), what it dropped is applied and
delivered again if an overlap re-reads it (at-least-once, as below), never skipped, and a
watcher of the environment concerned completes its snapshot by reading those changes again
rather than from memory.

The overlap is re-read only while it may still hold rows not yet visible. Were the watermark
the only guide, every key written at one instant (an import, a restore) would be read again
by every poll until a newer write moved it, costing the database and the instance a full
read of them five times a second, and the feed the freshness the key reads rely on. So each
poll also keeps a *horizon*: every row stamped earlier than its data's time, less the
overlap, was visible to it and needs no second read. That time is this host's clock at the
poll's start less the data's age, so the horizon also allows :data:`CLOCK_ALLOWANCE` for
this host's clock running ahead of the primary's; a clock further ahead than that could skip
a slow writer's row.

Positions handed to watchers are ``"<updated_at µs>.<key id>"``; resuming from one replays
every change of the environment from ``overlap`` before it, so delivery is at-least-once
(dedupe on key id and ``updated_at``).

Positions do not expire. A resume is read from the keys table, not from the feed's memory
(which keeps two overlaps of changes, at most ``recent_size`` of them, for de-duplication
and watchers' merges only), and that table keeps every
key's latest state for ever: a revocation or an expiry updates the row, nothing deletes one.
So a position of any age replays the latest state of every key changed since it — as costly
as a snapshot when it is old, and intermediate states of one key coalesce, but nothing is
missed. (Deleting rows would break this: positions older than the deletion would then have
to be refused.) A position only means something against the database that handed it out.

A live stream that sees no change of its environment for ``progress_interval`` gets a
``progress`` event carrying the feed's current position, so an idle watcher still learns how
far it is and resumes from there rather than from its last change. A stream that has been
live for ``max_stream_age`` (less up to a tenth, so that streams opened together do not all
come back together) gets a last ``progress`` event and is ended with
:class:`~service.errors.WatchMaxAgeError` (``UNAVAILABLE``): the caller resumes from that
position, on any instance — which spreads long-lived streams over new instances.

Watching is bounded per instance and per caller (access token) by :class:`WatchLimits`: one
caller's streams are capped (``RESOURCE_EXHAUSTED`` / 429 past the cap); only a few of its
snapshots (or replays) run at once, reading and sending, while the rest wait their turn; and
every page a snapshot reads from the database holds one of a few instance-wide read slots
while it is read. So a flood of snapshots leaves the database pools to every other query
and the event loop to every other request, and one caller's flood leaves room for others.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import math
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

import structlog

from service.core.keycache import KeyCache, is_later
from service.core.metrics import CoreMetrics
from service.core.models import Principal, Scope, SigningKey
from service.core.polling import Poller
from service.core.ports import DEFAULT_PAGE_SIZE, Changes, ChangeSource
from service.core.requests import WatchRequest
from service.errors import (
    DependencyError,
    InvalidRequestError,
    RegionUnavailableError,
    SlowConsumerError,
    TooManyRequestsError,
    TooManyWatchersError,
    WatchMaxAgeError,
)

log = structlog.get_logger(__name__)

DEFAULT_WATCH_QUEUE: Final = 1024
# Polls of slack before fresh data counts as stale: one in progress, one late, one spare.
FRESH_POLLS: Final = 3
# Events a watcher is handed between two turns it gives the event loop's other tasks.
# Encoding and sending an event is CPU work that seldom waits (about a millisecond with
# betterproto on a busy machine): without turns, a snapshot of thousands of keys would hold
# the loop from probes and every other request for seconds.
YIELD_EVERY: Final = 1
# How far this host's clock may run ahead of the primary's before the horizon (above) could
# skip a slow writer's row; NTP keeps clocks within milliseconds.
CLOCK_ALLOWANCE: Final = 30.0

# A stream's maximum age is shortened by up to this share, at random, so that the streams
# opened together (after a deploy, say) do not all end, and come back, together.
MAX_AGE_JITTER: Final = 0.1
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchLimits:
    """How much watching an instance, and one caller (access token), may do; ``None``: no
    limit. Each watcher may hold a full queue, so the stream caps bound memory too.

    ``streams``: open watch streams on this instance (past it: ``UNAVAILABLE``, try another
    instance); ``streams_per_caller``: one caller's open streams (past it:
    ``RESOURCE_EXHAUSTED``); ``snapshots_per_caller``: one caller's snapshots (or replays) in
    progress, reading and sending (more wait); ``snapshot_reads``: snapshot pages read from
    the database at once on this instance, by all callers (more wait).

    A caller whose consumer stops reading mid-snapshot holds one of its own snapshot slots
    until its stream ends, never one of the instance's read slots.
    """

    streams: int | None = None
    streams_per_caller: int | None = None
    snapshots_per_caller: int | None = None
    snapshot_reads: int | None = None


@dataclass(eq=False)
class _CallerSnapshots:
    """One caller's snapshot slots, and how many of its streams hold or wait for one."""

    slots: asyncio.Semaphore
    users: int = 0


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One event of a watch stream: ``snapshot`` (an existing key), ``synced`` (the snapshot
    or replay is complete; no key), ``changed`` (a key was created, revoked or updated), or
    ``progress`` (no key: nothing of this environment changed up to ``position``)."""

    kind: Literal["snapshot", "synced", "changed", "progress"]
    key: SigningKey | None
    position: str


async def _each(keys: list[SigningKey]) -> AsyncIterator[SigningKey]:
    for key in keys:
        yield key


def position_of(moment: datetime, key_id: str = "") -> str:
    micros = (moment - _EPOCH) // timedelta(microseconds=1)
    return f"{micros}.{key_id}"


def parse_position(position: str) -> datetime:
    micros, dot, _ = position.partition(".")
    if not dot or not micros.isdigit() or len(micros) > 20:
        raise InvalidRequestError("position is not one this service handed out")
    try:
        return _EPOCH + timedelta(microseconds=int(micros))
    except OverflowError:
        raise InvalidRequestError("position is not one this service handed out") from None


@dataclass(eq=False)
class _Watcher:
    environment_id: str
    queue: asyncio.Queue[WatchEvent] = field(
        default_factory=lambda: asyncio.Queue(DEFAULT_WATCH_QUEUE)
    )
    overflowed: bool = False
    # Set whenever an event is delivered: an idle stream waits on it, with a timeout, for
    # its next event without taking it off the queue.
    delivered: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_for_event(self, within: float) -> bool:
        """Whether an event is queued within ``within`` seconds (it stays queued)."""
        if not self.queue.empty():
            return True
        self.delivered.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(None if math.isinf(within) else within):
                await self.delivered.wait()
        return not self.queue.empty()


class ChangeFeed(Poller):
    """Polls for key changes, applies them to the cache and streams them to watchers.

    >>> async with ChangeFeed(records, cache, poll_interval=0.2, overlap=5.0) as feed:
    ...     async for event in feed.watch(principal, WatchRequest(environment_id="env-1")):
    ...         ...
    """

    def __init__(
        self,
        source: ChangeSource,
        cache: KeyCache,
        *,
        poll_interval: float,
        overlap: float,
        max_data_age: float | None = None,
        limits: WatchLimits | None = None,
        metrics: CoreMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        read_staleness: float | None = None,
        progress_interval: float | None = None,
        max_stream_age: float | None = None,
        recent_size: int | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> None:
        """``max_data_age``: read changes only where the data is at most this old (the
        revocation bound); ``None`` reads wherever the source serves reads. ``wall``: Unix
        seconds, for the horizon. ``read_staleness``: see :meth:`answers_reads`.
        ``progress_interval``: a live stream idle this long gets a ``progress`` event;
        ``max_stream_age``: a stream live this long (less up to :data:`MAX_AGE_JITTER`) is
        ended with :class:`~service.errors.WatchMaxAgeError`. ``None``: never.
        ``recent_size``: the most changes the feed remembers for de-duplication and
        watchers' merges (by default the cache's capacity); ``page_size``: keys per read."""
        self._read_staleness = read_staleness
        self._source = source
        self._max_data_age = max_data_age
        self._metrics = metrics if metrics is not None else CoreMetrics()
        super().__init__(
            interval=poll_interval,
            name="change_poll",
            serving_from="last_known_good_keys",
            failed=self._metrics.polls_failed,
        )
        self._limits = limits if limits is not None else WatchLimits()
        self._streams = 0
        self._streams_by_caller: collections.Counter[str] = collections.Counter()
        self._caller_snapshots: dict[str, _CallerSnapshots] = {}
        self._snapshot_reads = (
            None
            if self._limits.snapshot_reads is None
            else asyncio.Semaphore(self._limits.snapshot_reads)
        )
        self._cache = cache
        self._overlap = timedelta(seconds=overlap)
        self._clock = clock
        self._wall = wall
        self._watermark: datetime | None = None  # the newest updated_at read so far
        # Unix seconds: every row stamped before it was visible to a poll that read it.
        self._horizon = -math.inf
        self._loaded = False  # a poll has succeeded
        # On the feed's clock: every change committed before this instant has been seen.
        self._data_as_of = -math.inf
        # The latest record of every key changed within two overlaps of the watermark: for
        # de-duplicating the overlap's re-reads, and for watchers to merge after a snapshot.
        # Least recently applied first, and bounded: see _remember.
        self._recent: collections.OrderedDict[str, SigningKey] = collections.OrderedDict()
        self._recent_size = max(1, cache.capacity if recent_size is None else recent_size)
        # By environment: the newest updated_at of a change dropped from _recent for room
        # while still within its two overlaps (see _remember).
        self._forgotten: dict[str, datetime] = {}
        self._forgotten_until: datetime | None = None  # the newest of them
        self._page_size = page_size
        self._watchers: set[_Watcher] = set()
        self._progress_interval = progress_interval
        self._max_stream_age = max_stream_age

    def __repr__(self) -> str:
        return (
            f"<ChangeFeed watermark={self._watermark} staleness={self.staleness():.3f}s "
            f"recent={len(self._recent)}/{self._recent_size} watchers={len(self._watchers)} "
            f"streams={self._streams} {self._cache!r}>"
        )

    @property
    def remembered(self) -> int:
        """Recent changes held in memory (at most ``recent_size``)."""
        return len(self._recent)

    @property
    def open_streams(self) -> int:
        """Watch streams open on this instance."""
        return self._streams

    def staleness(self) -> float:
        """How old the newest data the feed has seen is, in seconds: the time since its last
        successful poll began, plus the age of the data that poll read (a standby's lag). A
        poll that succeeds against stale data does not make the feed fresh (infinite before
        the first poll)."""
        return self._clock() - self._data_as_of

    def is_fresh(self) -> bool:
        """Whether the feed's data is within the revocation bound: the age it may read
        (``max_data_age``) plus a few polls of slack."""
        return self.staleness() <= (self._max_data_age or 0.0) + FRESH_POLLS * self._interval

    def answers_reads(self) -> bool:
        """Whether the cache may answer key reads (a key, a JWK Set) in the database's
        place: while the feed is fresh, or its data is no older than ``read_staleness`` —
        the age a database read without a consistency token may have itself (the router
        prefers regions within its replica lag). The second keeps a loop that is saturated
        for a moment, which delays the polls, from sending every read to the database just
        when it can least afford them."""
        if self.is_fresh():
            return True
        return self._read_staleness is not None and self.staleness() <= self._read_staleness

    async def poll_once(self) -> int:
        """One poll: apply what changed; return how many changed keys were new to us."""
        # The first successful poll loads what exists and tells no watcher; every later one
        # notifies, even when the first found nothing (an empty store: a new deployment).
        first = not self._loaded
        since = self._since()
        started, wall_started = self._clock(), self._wall()
        try:
            fresh, newest, data_age = await self._read(since, self._max_data_age, notify=not first)
        except RegionUnavailableError:
            if self._max_data_age is None or first:
                raise
            await self._salvage(since)
            raise
        seen_until = wall_started - data_age - self._overlap.total_seconds()
        if math.isfinite(seen_until):
            self._horizon = max(self._horizon, seen_until - CLOCK_ALLOWANCE)
        if newest is not None:
            self._watermark = newest if self._watermark is None else max(self._watermark, newest)
        if first:
            # Everything fitted (no eviction marked it otherwise): a miss now proves "unknown".
            self._cache.complete = len(self._cache) < self._cache.capacity
        self._loaded = True
        self._data_as_of = max(self._data_as_of, started - data_age)
        self._metrics.polls_ok.inc()
        self._prune()
        return fresh

    async def _read(
        self, since: datetime | None, max_data_age: float | None, *, notify: bool
    ) -> tuple[int, datetime | None, float]:
        """Read and apply the changes since ``since`` one page at a time, so that a large
        change (the first load of a large table, an import) is never held whole: how many
        were new, the newest ``updated_at`` read, and the oldest page's data age. A read
        that fails half-way has applied its first pages: knowledge only added, never taken
        back (:meth:`_apply`), and read again by the next poll from the same point."""
        fresh, newest, data_age = 0, None, 0.0
        async with contextlib.aclosing(self._change_pages(since, max_data_age)) as pages:
            async for changes in pages:
                fresh += self._apply(changes.keys, notify=notify)
                data_age = max(data_age, changes.data_age)
                if changes.keys:
                    last = changes.keys[-1].updated_at
                    newest = last if newest is None else max(newest, last)
        return fresh, newest, data_age

    async def _change_pages(
        self, since: datetime | None, max_data_age: float | None, *, slotted: bool = False
    ) -> AsyncGenerator[Changes, None]:
        """The changes since ``since``, a page of ``page_size`` at a time (keyset on
        ``(updated_at, id)``), with a turn for requests between two pages of a long read;
        ``slotted``: each page read while holding one of the instance's snapshot read
        slots."""
        after: tuple[datetime, str] | None = None
        while True:
            async with self._read_slot() if slotted else contextlib.nullcontext():
                changes = await self._source.changes(
                    since=since, after=after, limit=self._page_size, max_data_age=max_data_age
                )
            yield changes
            if len(changes.keys) < self._page_size:
                return
            after = (changes.keys[-1].updated_at, changes.keys[-1].id)
            await asyncio.sleep(0)

    def _read_slot(self) -> contextlib.AbstractAsyncContextManager[object]:
        """One of the instance's snapshot read slots (none to wait for when unlimited)."""
        if self._snapshot_reads is None:
            return contextlib.nullcontext()
        return self._snapshot_reads

    def _prune(self) -> None:
        """Forget what no re-read and no merge needs any more: changes older than two
        overlaps behind the watermark. Oldest first, so the walk stops at the first one
        still needed (a late row applied after newer ones waits for its turn)."""
        if self._watermark is None:
            return
        horizon = self._watermark - 2 * self._overlap
        while self._recent:
            key_id, key = next(iter(self._recent.items()))
            if key.updated_at >= horizon:
                break
            del self._recent[key_id]
        for environment_id, until in list(self._forgotten.items()):
            if until < horizon:
                del self._forgotten[environment_id]
        if not self._forgotten:
            self._forgotten_until = None

    async def _salvage(self, since: datetime | None) -> None:
        """When no region's data is young enough (no writer: a crash, a partition of its
        cloud), still read the freshest region's changes and apply them — a revocation
        acknowledged just before the writer went is on a synchronous standby — without
        moving the watermark, the horizon or the freshness: the next bounded poll reads
        from the same point, so nothing is skipped, and the feed stays stale (last known
        good, then fail closed) as before. Only adds knowledge: an older version of a key
        never replaces a newer one (:meth:`_apply`)."""
        try:
            applied, _, data_age = await self._read(since, None, notify=True)
        except DependencyError:
            return
        if applied:
            log.info("changes_salvaged", keys=applied, data_age=round(data_age, 3))

    def _since(self) -> datetime | None:
        """Where the next poll starts reading: the overlap before the watermark, or the
        horizon when that is later."""
        if self._watermark is None:
            return None
        since = self._watermark - self._overlap
        if self._horizon > since.timestamp():
            with contextlib.suppress(OverflowError, ValueError, OSError):
                return datetime.fromtimestamp(self._horizon, UTC)
        return since

    def _apply(self, keys: list[SigningKey], *, notify: bool) -> int:
        fresh = 0
        for key in keys:
            known = self._recent.get(key.id)
            if known is not None and not is_later(key, known):
                continue  # the overlap's re-read, or an older version from a lagging region
            fresh += 1
            if known is None and self._was_forgotten(key):
                # Perhaps a re-read of a change dropped for room (perhaps a late commit):
                # applied again, but not into a full cache that is incomplete already, where
                # it would push out a key in use for one that may never be. A miss of an
                # incomplete cache is read from the database, which has it.
                self._mark_forgotten(key)  # a watcher of its environment reads it again
                cache = self._cache
                if cache.peek(key.id) is not None or cache.complete or not cache.is_full():
                    cache.put(key)
                else:
                    cache.forget_unknown(key.id)
            else:
                self._remember(key)
                self._cache.put(key)  # also clears a negative entry: a new key verifies at once
            if not notify:
                continue
            event = WatchEvent("changed", key, position_of(key.updated_at, key.id))
            for watcher in list(self._watchers):
                if watcher.environment_id == key.environment_id:
                    self._deliver(watcher, event)
        return fresh

    def _remember(self, key: SigningKey) -> None:
        """Keep ``key`` as the latest change of its id, within the bound: past it, the
        change applied longest ago is dropped, and its environment marked. So the feed holds
        at most ``recent_size`` records beyond the cache's (the same ones, unless the cache
        evicted them), however many keys one instant changes — an import, a restore, the
        first load of a large table. What dropping costs: a re-read of a dropped change is
        applied and delivered again (at-least-once, as watchers are told to expect), and a
        watcher of a marked environment completes its snapshot with one more read instead
        of from memory (:meth:`_catch_up`)."""
        self._recent.pop(key.id, None)
        self._recent[key.id] = key
        while len(self._recent) > self._recent_size:
            _, dropped = self._recent.popitem(last=False)
            self._mark_forgotten(dropped)

    def _mark_forgotten(self, key: SigningKey) -> None:
        environment_id, updated_at = key.environment_id, key.updated_at
        marked = self._forgotten.get(environment_id)
        if marked is None or marked < updated_at:
            self._forgotten[environment_id] = updated_at
        if self._forgotten_until is None or self._forgotten_until < updated_at:
            self._forgotten_until = updated_at

    def _was_forgotten(self, key: SigningKey) -> bool:
        """Whether ``key`` may be a change that was dropped from memory for room."""
        until = self._forgotten_until
        return until is not None and key.updated_at <= until

    async def _catch_up(
        self, environment_id: str, sent: dict[str, datetime]
    ) -> AsyncGenerator[SigningKey, None]:
        """The environment's changes the feed dropped from memory for room (if any), as the
        feed reads them: from where the data is no older than the feed accepts, since two
        overlaps before its watermark (what :meth:`_prune` would have kept), a page at a
        time, each while holding a read slot. Only those newer than the snapshot sent."""
        if environment_id not in self._forgotten or self._watermark is None:
            return
        since = self._watermark - 2 * self._overlap
        pages = self._change_pages(since, self._max_data_age, slotted=True)
        async with contextlib.aclosing(pages):
            async for changes in pages:
                for key in changes.keys:
                    if key.environment_id == environment_id and key.updated_at > sent.get(
                        key.id, _EPOCH
                    ):
                        yield key

    def _deliver(self, watcher: _Watcher, event: WatchEvent) -> None:
        try:
            watcher.queue.put_nowait(event)
        except asyncio.QueueFull:
            watcher.overflowed = True
            self._watchers.discard(watcher)
        watcher.delivered.set()

    async def watch(
        self, principal: Principal, request: WatchRequest
    ) -> AsyncGenerator[WatchEvent, None]:
        """Stream an environment's keys: a snapshot (or a replay from ``after``), then changes."""
        environment_id = principal.default_environment(request.environment_id)
        principal.require(Scope.READ, environment_id)
        after = request.after
        since = None if after is None else parse_position(after) - self._overlap
        caller = principal.token_id
        self._admit(caller)
        self._streams += 1
        self._streams_by_caller[caller] += 1
        watcher = _Watcher(environment_id)
        self._watchers.add(watcher)  # subscribe first, so nothing falls between query and live
        try:
            kind: Literal["snapshot", "changed"] = "snapshot" if after is None else "changed"
            last = after or position_of(self._watermark or _EPOCH)
            # What the snapshot sent, for the merge below: only what a merge may bring
            # again (changes the feed still remembers, or reads again: none older than two
            # overlaps behind the watermark, which only moves on), so that a snapshot of a
            # large environment does not hold an entry per key.
            floor = _EPOCH if self._watermark is None else self._watermark - 2 * self._overlap
            sent: dict[str, datetime] = {}
            async with (
                self._caller_slot(caller),
                contextlib.aclosing(self._snapshot_pages(environment_id, since)) as pages,
            ):
                async for page in pages:
                    for count, key in enumerate(page, 1):
                        if key.updated_at >= floor:
                            sent[key.id] = key.updated_at
                        last = position_of(key.updated_at, key.id)
                        yield WatchEvent(kind, key, last)
                        if not count % YIELD_EVERY:
                            await asyncio.sleep(0)
                # The snapshot may come from a region behind the feed: add what the feed
                # already knows to be newer, so no change applied before this watcher
                # subscribed is lost; and, for an environment some of whose recent changes
                # the feed dropped for room, read those again (a page at a time).
                # Only from the floor up, where "sent" is complete: an older record might be
                # older than what the snapshot sent (read from a region ahead of the feed).
                merged = [
                    key
                    for key in self._recent.values()
                    if key.environment_id == environment_id
                    and key.updated_at >= floor
                    and key.updated_at > sent.get(key.id, _EPOCH)
                ]
                merged.sort(key=lambda k: (k.updated_at, k.id))
                newest = parse_position(last)
                for source in (_each(merged), self._catch_up(environment_id, sent)):
                    async for key in source:
                        if key.updated_at <= sent.get(key.id, _EPOCH):
                            continue
                        sent[key.id] = key.updated_at
                        position = position_of(key.updated_at, key.id)
                        if key.updated_at >= newest:  # SYNCED hands out the newest
                            newest, last = key.updated_at, position
                        yield WatchEvent(kind, key, position)
            live_since = asyncio.get_running_loop().time()
            yield WatchEvent("synced", None, last)
            async for event in self._live(watcher, last, live_since):
                yield event
        finally:
            self._watchers.discard(watcher)
            self._streams -= 1
            self._streams_by_caller[caller] -= 1
            if not self._streams_by_caller[caller]:
                del self._streams_by_caller[caller]

    async def _live(
        self, watcher: _Watcher, last: str, since: float
    ) -> AsyncGenerator[WatchEvent, None]:
        """The live part of a stream, from ``since`` (the event loop's time of its SYNCED):
        its changes, a ``progress`` event whenever it has been idle for the progress
        interval, and its end at its maximum age."""
        loop = asyncio.get_running_loop()
        ends = math.inf
        if self._max_stream_age is not None:
            shorter = random.uniform(0.0, MAX_AGE_JITTER)  # spreading, not secrecy
            ends = since + self._max_stream_age * (1.0 - shorter)
        interval = math.inf if self._progress_interval is None else self._progress_interval
        for count in itertools.count(1):
            if watcher.overflowed:
                raise SlowConsumerError(
                    "this watcher fell behind the change stream; resume from its last position"
                )
            # Past its age, a stream ends at its first idle moment: what is queued is sent
            # first, so that the last position it hands out covers all of it.
            if watcher.queue.empty():
                wait = min(interval, ends - loop.time())
                if wait <= 0 or not await watcher.wait_for_event(wait):
                    # Nothing queued: every change the feed applied up to its watermark has
                    # been handed to this watcher, so the watermark is a safe resume point.
                    last = self._progress_position(last)
                    yield WatchEvent("progress", None, last)
                    if loop.time() >= ends:
                        raise WatchMaxAgeError(
                            "this watch stream reached its maximum age; resume from its last "
                            "position (on any instance)"
                        )
                    continue
            event = watcher.queue.get_nowait()  # no turn for others while the queue holds some
            last = event.position
            yield event
            if not count % YIELD_EVERY:
                await asyncio.sleep(0)

    def _progress_position(self, last: str) -> str:
        """The feed's watermark as a position, unless the stream's last position is not
        older (a snapshot may have been read from a region ahead of the feed): positions on
        one stream never go back."""
        if self._watermark is None or self._watermark <= parse_position(last):
            return last
        return position_of(self._watermark)

    def _admit(self, caller: str) -> None:
        """Refuse a stream past this instance's cap, or past its caller's."""
        limits = self._limits
        if limits.streams is not None and self._streams >= limits.streams:
            self._metrics.limited["watch_streams_instance"].inc()
            raise TooManyWatchersError(
                f"this instance serves {limits.streams} watch streams already; retry later"
            )
        mine = self._streams_by_caller[caller]
        if limits.streams_per_caller is not None and mine >= limits.streams_per_caller:
            self._metrics.limited["watch_streams"].inc()
            raise TooManyRequestsError(
                f"this access token has {mine} watch streams open on this instance, the most "
                "it may: close one before opening another"
            )

    @contextlib.asynccontextmanager
    async def _caller_slot(self, caller: str) -> AsyncIterator[None]:
        """Hold one of the caller's snapshot slots for a whole snapshot, reading and sending
        (waiting for one if all are taken)."""
        if self._limits.snapshots_per_caller is None:
            yield
            return
        entry = self._caller_snapshots.get(caller)
        if entry is None:
            slots = asyncio.Semaphore(self._limits.snapshots_per_caller)
            entry = self._caller_snapshots[caller] = _CallerSnapshots(slots)
        entry.users += 1
        try:
            async with entry.slots:
                yield
        finally:
            entry.users -= 1
            if not entry.users:
                del self._caller_snapshots[caller]

    async def _snapshot_pages(
        self, environment_id: str, since: datetime | None
    ) -> AsyncGenerator[list[SigningKey], None]:
        """The environment's pages, each read while holding one of the instance's read slots
        — released before the page is handed on, so that a slow consumer holds none."""
        pages = aiter(self._source.pages(environment_id=environment_id, since=since))
        try:
            while True:
                async with self._read_slot():
                    page = await anext(pages, None)
                if page is None:
                    return
                yield page
        finally:
            if isinstance(pages, AsyncGenerator):
                await pages.aclose()
