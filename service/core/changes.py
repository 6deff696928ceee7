"""The change feed: a portable poller over ``updated_at`` that keeps every instance current.

LISTEN/NOTIFY does not exist on CockroachDB and is not delivered on standbys, so each
instance polls its nearest readable region every ``poll_interval`` for keys updated since the
previous poll's database time minus an ``overlap`` window. The overlap catches a transaction
that started (and took its ``now()``) before the previous poll but committed after it; writes
have a deadline of a few seconds, well inside the default 5 s window. Changes are applied to
the :class:`~service.core.keycache.KeyCache` and fanned out to ``WatchSigningKeys`` streams.

Positions handed to watchers are ``"<updated_at µs>.<key id>"``; resuming from one replays
every change of the environment from ``overlap`` before it, so delivery is at-least-once
(dedupe on key id and ``updated_at``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

import structlog

from service.core.keycache import KeyCache
from service.core.models import Principal, Scope, SigningKey
from service.errors import InvalidRequestError, SlowConsumerError
from service.store import keys as store
from service.store.database import Database

log = structlog.get_logger(__name__)

DEFAULT_WATCH_QUEUE: Final = 1024
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
    return _EPOCH + timedelta(microseconds=int(micros))


@dataclass(eq=False)
class _Watcher:
    environment_id: str
    queue: asyncio.Queue[WatchEvent] = field(
        default_factory=lambda: asyncio.Queue(DEFAULT_WATCH_QUEUE)
    )
    overflowed: bool = False


class ChangeFeed:
    """Polls for key changes, applies them to the cache and streams them to watchers.

    >>> async with ChangeFeed(database, cache, poll_interval=0.2, overlap=5.0) as feed:
    ...     async for event in feed.watch("env-1"):
    ...         ...
    """

    def __init__(
        self,
        database: Database,
        cache: KeyCache,
        *,
        poll_interval: float,
        overlap: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = database
        self._cache = cache
        self._interval = poll_interval
        self._overlap = timedelta(seconds=overlap)
        self._clock = clock
        self._since: datetime | None = None  # database time of the last successful poll
        self._last_success: float | None = None
        self._seen: dict[str, datetime] = {}
        self._watchers: set[_Watcher] = set()
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self.polls = 0

    def __repr__(self) -> str:
        return (
            f"<ChangeFeed since={self._since} staleness={self.staleness():.3f}s "
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

    async def __aenter__(self) -> ChangeFeed:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def staleness(self) -> float:
        """Seconds since the last successful poll (infinite before the first)."""
        return math.inf if self._last_success is None else self._clock() - self._last_success

    async def poll_once(self) -> int:
        """One poll: apply what changed; return how many changed keys were new to us."""
        first = self._since is None
        since = None if self._since is None else self._since - self._overlap
        limit = self._cache.capacity + 1 if first else 100_000
        keys, now = await store.changed_since(self._db, since, limit=limit)
        if first:
            self._cache.put_all(keys)
            self._cache.complete = len(keys) <= self._cache.capacity
            self._seen = {key.id: key.updated_at for key in keys}
            fresh = len(keys)
        else:
            fresh = self._apply(keys)
        self._since = now
        self._last_success = self._clock()
        self.polls += 1
        horizon = now - 2 * self._overlap
        self._seen = {k: at for k, at in self._seen.items() if at >= horizon}
        return fresh

    def _apply(self, keys: list[SigningKey]) -> int:
        fresh = 0
        for key in keys:
            if self._seen.get(key.id) == key.updated_at:
                continue
            fresh += 1
            self._seen[key.id] = key.updated_at
            self._cache.put(key)  # also clears a negative entry: a new key verifies at once
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
                if not self._failing:
                    log.warning(
                        "change poll failing: verifying from last known good keys",
                        error=type(exc).__name__,
                    )
                self._failing = True
            else:
                if self._failing:
                    log.info("change poll recovered")
                self._failing = False

    async def watch(
        self, principal: Principal, environment_id: str, *, after: str | None = None
    ) -> AsyncIterator[WatchEvent]:
        """Stream an environment's keys: a snapshot (or a replay from ``after``), then changes."""
        principal.require(Scope.READ, environment_id)
        since = None if after is None else parse_position(after) - self._overlap
        watcher = _Watcher(environment_id)
        self._watchers.add(watcher)  # subscribe first, so nothing falls between query and live
        try:
            kind: Literal["snapshot", "changed"] = "snapshot" if after is None else "changed"
            last = after or position_of(self._since or _EPOCH)
            async for page in store.environment_keys(self._db, environment_id, since=since):
                for key in page:
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
