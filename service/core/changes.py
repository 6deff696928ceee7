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

Positions handed to watchers are ``"<updated_at µs>.<key id>"``; resuming from one replays
every change of the environment from ``overlap`` before it, so delivery is at-least-once
(dedupe on key id and ``updated_at``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

import structlog

from service.core.keycache import KeyCache
from service.core.metrics import CoreMetrics
from service.core.models import Principal, Scope, SigningKey
from service.core.ports import ChangeSource
from service.core.requests import WatchRequest
from service.errors import InvalidRequestError, SlowConsumerError, TooManyWatchersError
from service.lifecycle import AsyncResource

log = structlog.get_logger(__name__)

DEFAULT_WATCH_QUEUE: Final = 1024
# Each watcher may hold a full queue: the bound keeps their memory bounded too.
DEFAULT_MAX_WATCHERS: Final = 1000
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One event of a watch stream: ``snapshot`` (an existing key), ``synced`` (the snapshot
    or replay is complete; no key), or ``changed`` (a key was created, revoked or updated)."""

    kind: Literal["snapshot", "synced", "changed"]
    key: SigningKey | None
    position: str


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


class ChangeFeed(AsyncResource):
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
        max_watchers: int = DEFAULT_MAX_WATCHERS,
        metrics: CoreMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._metrics = metrics if metrics is not None else CoreMetrics()
        self._max_watchers = max_watchers
        self._cache = cache
        self._interval = poll_interval
        self._overlap = timedelta(seconds=overlap)
        self._clock = clock
        self._watermark: datetime | None = None  # the newest updated_at read so far
        self._last_success: float | None = None
        # The latest record of every key changed within two overlaps of the watermark: for
        # de-duplicating the overlap's re-reads, and for watchers to merge after a snapshot.
        self._recent: dict[str, SigningKey] = {}
        self._watchers: set[_Watcher] = set()
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def __repr__(self) -> str:
        return (
            f"<ChangeFeed watermark={self._watermark} staleness={self.staleness():.3f}s "
            f"watchers={len(self._watchers)} {self._cache!r}>"
        )

    async def start(self) -> None:
        """Load every key (best effort: a database that is down now is retried by polling)."""
        with contextlib.suppress(Exception):
            await self.poll_once()
        self._task = asyncio.create_task(self._run(), name="change-feed")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def staleness(self) -> float:
        """Seconds since the last successful poll (infinite before the first)."""
        return math.inf if self._last_success is None else self._clock() - self._last_success

    async def poll_once(self) -> int:
        """One poll: apply what changed; return how many changed keys were new to us."""
        # The first successful poll loads what exists and tells no watcher; every later one
        # notifies, even when the first found nothing (an empty store: a new deployment).
        first = self._last_success is None
        since = None if self._watermark is None else self._watermark - self._overlap
        fresh = 0
        async for page in self._source.pages(since=since):
            fresh += self._apply(page, notify=not first)
            self._watermark = max(self._watermark or page[-1].updated_at, page[-1].updated_at)
        if first:
            # Everything fitted (no eviction marked it otherwise): a miss now proves "unknown".
            self._cache.complete = len(self._cache) < self._cache.capacity
        self._last_success = self._clock()
        self._metrics.polls_ok.inc()
        if self._watermark is not None:
            horizon = self._watermark - 2 * self._overlap
            self._recent = {k: v for k, v in self._recent.items() if v.updated_at >= horizon}
        return fresh

    def _apply(self, keys: list[SigningKey], *, notify: bool) -> int:
        fresh = 0
        for key in keys:
            known = self._recent.get(key.id)
            if known is not None and key.updated_at <= known.updated_at:
                continue  # the overlap's re-read, or an older version from a lagging region
            fresh += 1
            self._recent[key.id] = key
            self._cache.put(key)  # also clears a negative entry: a new key verifies at once
            if not notify:
                continue
            event = WatchEvent("changed", key, position_of(key.updated_at, key.id))
            for watcher in list(self._watchers):
                if watcher.environment_id == key.environment_id:
                    self._deliver(watcher, event)
        return fresh

    def _deliver(self, watcher: _Watcher, event: WatchEvent) -> None:
        try:
            watcher.queue.put_nowait(event)
        except asyncio.QueueFull:
            watcher.overflowed = True
            self._watchers.discard(watcher)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._metrics.polls_failed.inc()
                if not self._failing:
                    log.warning(
                        "change_poll_failing",
                        error=type(exc).__name__,
                        serving_from="last_known_good_keys",
                    )
                self._failing = True
            else:
                if self._failing:
                    log.info("change_poll_recovered")
                self._failing = False

    async def watch(
        self, principal: Principal, request: WatchRequest
    ) -> AsyncGenerator[WatchEvent, None]:
        """Stream an environment's keys: a snapshot (or a replay from ``after``), then changes."""
        environment_id = principal.default_environment(request.environment_id)
        principal.require(Scope.READ, environment_id)
        after = request.after
        since = None if after is None else parse_position(after) - self._overlap
        if len(self._watchers) >= self._max_watchers:
            raise TooManyWatchersError(
                f"this instance serves {self._max_watchers} watch streams already; retry later"
            )
        watcher = _Watcher(environment_id)
        self._watchers.add(watcher)  # subscribe first, so nothing falls between query and live
        try:
            kind: Literal["snapshot", "changed"] = "snapshot" if after is None else "changed"
            last = after or position_of(self._watermark or _EPOCH)
            sent: dict[str, datetime] = {}
            async for page in self._source.pages(environment_id=environment_id, since=since):
                for key in page:
                    sent[key.id] = key.updated_at
                    last = position_of(key.updated_at, key.id)
                    yield WatchEvent(kind, key, last)
            # The snapshot may come from a region behind the feed: add what the feed already
            # knows to be newer, so no change applied before this watcher subscribed is lost.
            for key in sorted(self._recent.values(), key=lambda k: (k.updated_at, k.id)):
                if key.environment_id == environment_id and key.updated_at > sent.get(
                    key.id, _EPOCH
                ):
                    last = position_of(key.updated_at, key.id)
                    yield WatchEvent(kind, key, last)
            yield WatchEvent("synced", None, last)
            while True:
                if watcher.overflowed:
                    raise SlowConsumerError(
                        "this watcher fell behind the change stream; resume from its last position"
                    )
                yield await watcher.queue.get()
        finally:
            self._watchers.discard(watcher)
