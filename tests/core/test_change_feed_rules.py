"""The change feed's rules, over the in-memory ports (no database): changes applied in
order, revocations applied, late commits caught by the overlap window, a watermark that
follows the data and never the clock, and watch streams (snapshot, replay, merge, bounds).

The writer is another instance's key service sharing the records, so this feed's cache
hears of a change only by polling, as in production.
"""

from __future__ import annotations

import asyncio
import collections
import math
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import pytest

from service.core import changes, crypto
from service.core.changes import (
    CLOCK_ALLOWANCE,
    ChangeFeed,
    WatchEvent,
    WatchLimits,
    parse_position,
    position_of,
)
from service.core.keycache import KeyCache
from service.core.keys import KeyService
from service.core.metrics import CoreMetrics
from service.core.models import Principal, Scope, SigningKey
from service.core.ports import Changes
from service.core.requests import ImportKeyRequest, KeyRef, WatchRequest
from service.errors import (
    InvalidRequestError,
    PermissionDeniedError,
    RegionUnavailableError,
    SlowConsumerError,
    TooManyRequestsError,
    TooManyWatchersError,
)
from tests.support.memory import DEFAULT_START, ManualClock, MemoryKeyRecords

A, B = "env-a", "env-b"
OVERLAP = 1.0
ADMIN = Principal(token_id="skt_writer", scopes=frozenset(Scope), environments=frozenset({A, B}))
READER = Principal(
    token_id="skt_reader", scopes=frozenset({Scope.READ}), environments=frozenset({A})
)
PUBLIC_DER = crypto.generate_key_pair("EdDSA").public_der


@dataclass
class Instance:
    clock: ManualClock
    records: MemoryKeyRecords
    writer: KeyService
    cache: KeyCache
    feed: ChangeFeed

    async def create(self, env: str = A) -> SigningKey:
        pem = crypto.public_key_pem(PUBLIC_DER)
        imported = await self.writer.import_key(
            ADMIN, ImportKeyRequest(environment_id=env, public_key=pem)
        )
        return imported.key

    def cached(self, key_id: str) -> SigningKey | None:
        entry = self.cache.get(key_id)
        return None if entry is None else entry.record


def instance(
    *,
    tick: float = 0.001,
    limits: WatchLimits | None = None,
    metrics: CoreMetrics | None = None,
    max_data_age: float | None = None,
) -> Instance:
    clock = ManualClock(tick=tick)
    records = MemoryKeyRecords(clock=clock)
    cache = KeyCache(size=100, negative_size=10, negative_ttl=1.0, clock=clock.seconds)
    feed = ChangeFeed(
        records,
        cache,
        poll_interval=0.05,
        overlap=OVERLAP,
        max_data_age=max_data_age,
        limits=limits or WatchLimits(streams=10),
        metrics=metrics,
        clock=clock.seconds,
        wall=clock.seconds,
    )
    return Instance(clock, records, KeyService(records), cache, feed)


@pytest.fixture
async def polled() -> Instance:
    """An instance whose feed has made its first poll, of a store holding one key of
    another environment."""
    node = instance()
    await node.create(B)
    await node.feed.poll_once()
    return node


async def next_event(stream: AsyncIterator[WatchEvent]) -> WatchEvent:
    return await asyncio.wait_for(anext(stream), timeout=1.0)


# Polling.


async def test_the_first_poll_loads_every_key_and_proves_misses_unknown() -> None:
    node = instance()
    keys = [await node.create(env) for env in (A, A, B)]
    assert node.feed.staleness() == math.inf, "never polled"
    assert await node.feed.poll_once() == 3
    assert all(node.cached(key.id) == key for key in keys)
    assert node.cache.complete and node.feed.staleness() == 0


async def test_changes_are_applied_and_a_revocation_wins(polled: Instance) -> None:
    key = await polled.create()
    assert polled.cached(key.id) is None, "only polling tells this instance"
    await polled.writer.revoke(ADMIN, KeyRef(environment_id=A, key_id=key.id))
    assert await polled.feed.poll_once() == 1
    cached = polled.cached(key.id)
    assert cached is not None and cached.status == "revoked"


async def test_the_overlaps_rereads_are_not_new_changes(polled: Instance) -> None:
    await polled.create()
    assert await polled.feed.poll_once() == 1
    assert await polled.feed.poll_once() == 0
    polled.clock.advance(OVERLAP / 2)
    assert await polled.feed.poll_once() == 0


async def test_a_row_stamped_earlier_but_committed_later_is_caught_within_the_overlap(
    polled: Instance,
) -> None:
    slow = polled.records.hold_next_write()
    late = await polled.create()  # its transaction started first ...
    polled.clock.advance(OVERLAP / 2)
    fast = await polled.create()  # ... this one committed first
    assert late.updated_at < fast.updated_at
    await polled.feed.poll_once()
    assert polled.cached(fast.id) is not None and polled.cached(late.id) is None
    slow.commit()
    assert await polled.feed.poll_once() == 1
    assert polled.cached(late.id) == late


async def test_the_overlap_window_is_inclusive_and_bounds_how_late_a_commit_may_be() -> None:
    """A commit exactly one overlap behind the newest row read is caught; a later one is
    lost — which is why the settings insist the overlap exceed the longest write."""
    node = instance(tick=0)
    await node.feed.poll_once()
    edge = node.records.hold_next_write()
    at_edge = await node.create()
    node.clock.advance(OVERLAP)
    await node.create()
    await node.feed.poll_once()
    edge.commit()
    await node.feed.poll_once()
    assert node.cached(at_edge.id) == at_edge

    beyond = node.records.hold_next_write()
    too_late = await node.create()
    node.clock.advance(OVERLAP + 0.001)
    await node.create()
    await node.feed.poll_once()
    beyond.commit()
    await node.feed.poll_once()
    assert node.cached(too_late.id) is None


async def test_the_watermark_follows_the_data_and_never_the_clock(polled: Instance) -> None:
    """Polls that read nothing new from a standby that has not replayed a slow commit yet
    (its data ever older) leave the watermark where the data put it, and the horizon where
    the data's age puts it, so the row still pending is read once it is visible, however
    long that took."""
    seen = await polled.create()
    pending = polled.records.hold_next_write()
    late = await polled.create()
    await polled.feed.poll_once()
    for _ in range(3):
        polled.clock.advance(1200)
        polled.records.data_age += 1200
        assert await polled.feed.poll_once() == 0
    pending.commit()
    polled.records.data_age = 0.0  # replayed at last
    assert await polled.feed.poll_once() == 1
    assert polled.cached(late.id) == late and polled.cached(seen.id) == seen


async def test_a_quiet_feed_stops_reading_again_what_every_poll_has_seen() -> None:
    """Keys written at one instant (an import) are read again while a slow writer's row may
    still appear among them, not for ever: once the poll's data is an overlap (and the
    clock allowance) past them, the next polls read only what is newer."""
    node = instance()
    await node.feed.poll_once()
    for _ in range(20):
        await node.create()
    read: list[int] = []
    changes = node.records.changes

    async def counted(**kwargs: Any) -> Changes:
        result = await changes(**kwargs)
        read.append(len(result.keys))
        return result

    node.records.changes = counted  # type: ignore[method-assign]
    await node.feed.poll_once()
    node.clock.advance(OVERLAP / 2)
    await node.feed.poll_once()
    assert read == [20, 20], "within the overlap: read again"
    node.clock.advance(OVERLAP + CLOCK_ALLOWANCE)
    await node.feed.poll_once()  # its data is past them: what it reads is the last re-read
    await node.feed.poll_once()
    assert read[-1] == 0
    late = await node.create()
    assert await node.feed.poll_once() == 1 and node.cached(late.id) == late
    slow = node.records.hold_next_write()
    pending = await node.create()
    node.clock.advance(OVERLAP / 2)  # a slow writer, within its bound, in a quiet time
    await node.feed.poll_once()
    slow.commit()
    assert await node.feed.poll_once() == 1 and node.cached(pending.id) == pending


async def test_a_lagging_read_never_takes_a_key_back() -> None:
    """After the feed has seen a key revoked, an older version read from a region that lags
    is ignored: nothing is re-applied and no watcher hears of it."""
    active = signing_key(A, at=DEFAULT_START)
    revoked = replace(active, status="revoked", updated_at=DEFAULT_START + timedelta(seconds=1))
    elsewhere = signing_key(B, at=DEFAULT_START)
    # Reads: the first poll, the watch's snapshot, then two polls of two different regions.
    source = ScriptedSource([elsewhere], [], [revoked], [active])
    cache = KeyCache(size=10, negative_size=10, negative_ttl=1.0)
    feed = ChangeFeed(source, cache, poll_interval=0.05, overlap=OVERLAP)
    await feed.poll_once()
    stream = feed.watch(READER, WatchRequest(environment_id=A))
    assert (await next_event(stream)).kind == "synced"
    assert await feed.poll_once() == 1
    assert await feed.poll_once() == 0, "the lagging region's older version is not a change"
    cached = cache.get(active.id)
    assert cached is not None and cached.record.status == "revoked"
    event = await next_event(stream)
    assert event.key == revoked
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(stream), timeout=0.05)


async def test_a_failing_poll_keeps_what_was_known_and_the_staleness_grows(
    polled: Instance,
) -> None:
    key = await polled.create()
    await polled.feed.poll_once()
    polled.records.unavailable = True
    polled.clock.advance(7)
    with pytest.raises(RegionUnavailableError):
        await polled.feed.poll_once()
    assert polled.feed.staleness() == pytest.approx(7)
    assert polled.cached(key.id) == key
    polled.records.unavailable = False
    await polled.feed.poll_once()
    assert polled.feed.staleness() == 0


async def test_starting_against_an_unreachable_store_does_not_fail() -> None:
    node = instance()
    node.records.unavailable = True
    async with node.feed:
        assert node.feed.staleness() == math.inf
    assert node.records.calls["pages"] >= 1, "it did try"


# Watch streams.


async def test_a_watch_is_a_snapshot_of_one_environment_then_its_changes(
    polled: Instance,
) -> None:
    first, second = await polled.create(), await polled.create()
    await polled.create(B)
    await polled.feed.poll_once()
    stream = polled.feed.watch(READER, WatchRequest(environment_id=A))
    snapshot = [await next_event(stream) for _ in range(3)]
    assert [(event.kind, event.key) for event in snapshot] == [
        ("snapshot", first),
        ("snapshot", second),
        ("synced", None),
    ]
    assert snapshot[2].position == position_of(second.updated_at, second.id)

    await polled.create(B)
    third = await polled.create()
    revoked = await polled.writer.revoke(ADMIN, KeyRef(environment_id=A, key_id=first.id))
    await polled.feed.poll_once()
    live = [await next_event(stream) for _ in range(2)]
    assert [(event.kind, event.key) for event in live] == [
        ("changed", third),
        ("changed", revoked),
    ], "in the order they changed, this environment's only"
    assert [parse_position(event.position) for event in live] == [
        third.updated_at,
        revoked.updated_at,
    ]
    await stream.aclose()


async def test_resuming_replays_from_one_overlap_before_the_position(polled: Instance) -> None:
    old = await polled.create()
    polled.clock.advance(5 * OVERLAP)
    recent = await polled.create()
    newer = await polled.create()
    stream = polled.feed.watch(
        READER, WatchRequest(environment_id=A, after=position_of(recent.updated_at, recent.id))
    )
    events = [await next_event(stream) for _ in range(3)]
    assert [(event.kind, event.key) for event in events] == [
        ("changed", recent),  # at least once: the position's own change comes again
        ("changed", newer),
        ("synced", None),
    ]
    assert old not in [event.key for event in events]
    await stream.aclose()


async def test_a_snapshot_from_a_lagging_region_is_completed_by_what_the_feed_knows() -> None:
    active = signing_key(A, at=DEFAULT_START)
    revoked = replace(active, status="revoked", updated_at=DEFAULT_START + timedelta(seconds=1))
    # Reads: the feed polls the revocation; the watch's own snapshot comes from a laggard.
    source = ScriptedSource([revoked], [active])
    feed = ChangeFeed(
        source, KeyCache(size=10, negative_size=10, negative_ttl=1.0), poll_interval=1, overlap=1
    )
    await feed.poll_once()
    stream = feed.watch(READER, WatchRequest(environment_id=A))
    events = [await next_event(stream) for _ in range(3)]
    assert [(event.kind, event.key) for event in events] == [
        ("snapshot", active),
        ("snapshot", revoked),
        ("synced", None),
    ]
    await stream.aclose()


async def test_a_watch_needs_read_on_its_environment_and_a_position_of_ours(
    polled: Instance,
) -> None:
    verifier = Principal(
        token_id="v", scopes=frozenset({Scope.VERIFY}), environments=frozenset({A})
    )
    with pytest.raises(PermissionDeniedError, match="read"):
        await anext(polled.feed.watch(verifier, WatchRequest(environment_id=A)))
    with pytest.raises(PermissionDeniedError, match="environment"):
        await anext(polled.feed.watch(READER, WatchRequest(environment_id=B)))
    for position in ["", "abc", "12", "1" * 21 + ".k", "-5.k"]:
        with pytest.raises(InvalidRequestError, match="position"):
            await anext(polled.feed.watch(READER, WatchRequest(environment_id=A, after=position)))


async def test_watch_streams_are_bounded_and_give_back_their_places() -> None:
    node = instance(limits=WatchLimits(streams=2))
    await node.feed.poll_once()
    streams = [node.feed.watch(READER, WatchRequest(environment_id=A)) for _ in range(3)]
    for stream in streams[:2]:
        assert (await next_event(stream)).kind == "synced"
    with pytest.raises(TooManyWatchersError):
        await anext(streams[2])
    await streams[0].aclose()
    again = node.feed.watch(READER, WatchRequest(environment_id=A))
    assert (await next_event(again)).kind == "synced"
    for stream in (streams[1], again):
        await stream.aclose()


def reader(token_id: str) -> Principal:
    return Principal(token_id=token_id, scopes=frozenset({Scope.READ}), environments=frozenset({A}))


async def test_one_callers_streams_are_capped_and_another_caller_is_not_affected() -> None:
    """Before: only the instance's cap (1,000 streams), which one caller could take whole."""
    metrics = CoreMetrics()
    node = instance(limits=WatchLimits(streams=10, streams_per_caller=2), metrics=metrics)
    await node.feed.poll_once()
    greedy = [node.feed.watch(reader("skt_greedy"), WatchRequest()) for _ in range(3)]
    for stream in greedy[:2]:
        assert (await next_event(stream)).kind == "synced"
    with pytest.raises(TooManyRequestsError, match="2 watch streams open") as refused:
        await anext(greedy[2])
    assert refused.value.type == "too_many_requests"
    other = node.feed.watch(reader("skt_other"), WatchRequest())
    assert (await next_event(other)).kind == "synced", "another caller still gets a stream"
    assert node.feed.open_streams == 3
    await greedy[0].aclose()
    again = node.feed.watch(reader("skt_greedy"), WatchRequest())
    assert (await next_event(again)).kind == "synced", "a closed stream gives its place back"
    for stream in (greedy[1], other, again):
        await stream.aclose()
    assert node.feed.open_streams == 0
    assert metrics.value("signing_keys_limited_total", limit="watch_streams") == 1


async def settle() -> None:
    """Let every task that can run do so, until each waits on something (no clock involved)."""
    for _ in range(100):
        await asyncio.sleep(0)


class GatedSource:
    """Keys in pages of one, each page read held until the test lets it through; records
    how many page reads are in flight, in all and per environment, and the most ever."""

    def __init__(self, records: MemoryKeyRecords) -> None:
        self._records = records
        self.gate = asyncio.Event()
        self.in_flight: collections.Counter[str | None] = collections.Counter()
        self.most: collections.Counter[str | None] = collections.Counter()

    async def changes(self, **read: Any) -> Changes:
        return await self._records.changes(**read)  # polls pass; only snapshots are gated

    async def pages(self, **options: Any) -> AsyncIterator[list[SigningKey]]:
        options["page_size"] = 1
        environment = options.get("environment_id")
        pages = self._records.pages(**options)
        while True:
            self.in_flight[environment] += 1
            self.in_flight["all"] += 1
            for where in (environment, "all"):
                self.most[where] = max(self.most[where], self.in_flight[where])
            try:
                await self.gate.wait()
                page = await anext(pages, None)
            finally:
                self.in_flight[environment] -= 1
                self.in_flight["all"] -= 1
            if page is None:
                return
            yield page


async def until_synced(stream: AsyncIterator[WatchEvent]) -> int:
    """Read a stream's snapshot to its end; how many keys it held."""
    keys = 0
    async for event in stream:
        if event.kind == "synced":
            return keys
        keys += 1
    raise AssertionError("the stream ended before it was synced")


async def test_a_flood_of_snapshots_holds_few_database_reads_and_cannot_starve_a_neighbour() -> (
    None
):
    """One caller opens many watch streams at once: only ``snapshots_per_caller`` of its
    snapshots run at a time, and all snapshots together hold at most ``snapshot_reads``
    database reads, so another caller's snapshot still reads at once."""
    records = MemoryKeyRecords()
    writer = KeyService(records)
    pem = crypto.public_key_pem(PUBLIC_DER)
    for environment_id in (A, A, A, B):
        await writer.import_key(
            ADMIN, ImportKeyRequest(environment_id=environment_id, public_key=pem)
        )
    source = GatedSource(records)
    cache = KeyCache(size=100, negative_size=10, negative_ttl=1.0)
    limits = WatchLimits(streams_per_caller=50, snapshots_per_caller=2, snapshot_reads=3)
    feed = ChangeFeed(source, cache, poll_interval=0.05, overlap=OVERLAP, limits=limits)
    flood = [feed.watch(reader("skt_flood"), WatchRequest()) for _ in range(40)]
    flooding = [asyncio.ensure_future(until_synced(stream)) for stream in flood]
    await settle()
    assert source.in_flight[A] == 2, "the flood runs only its own two snapshots"
    neighbour = Principal(
        token_id="skt_neighbour", scopes=frozenset({Scope.READ}), environments=frozenset({B})
    )
    watching = asyncio.ensure_future(until_synced(feed.watch(neighbour, WatchRequest())))
    await settle()
    assert source.in_flight[B] == 1, "the neighbour's snapshot reads at once"
    source.gate.set()
    assert await asyncio.wait_for(watching, 1) == 1
    assert await asyncio.wait_for(asyncio.gather(*flooding), 5) == [3] * 40
    assert source.most[A] == 2 and source.most["all"] == 3
    for stream in flood:
        await stream.aclose()


async def test_a_watcher_that_falls_behind_is_told_to_resume(
    polled: Instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(changes, "DEFAULT_WATCH_QUEUE", 3)
    stream = polled.feed.watch(READER, WatchRequest(environment_id=A))
    assert (await next_event(stream)).kind == "synced"
    for _ in range(4):
        await polled.create()
    await polled.feed.poll_once()
    with pytest.raises(SlowConsumerError, match="resume"):
        await next_event(stream)


async def test_a_watcher_hears_of_the_first_key_ever_created() -> None:
    node = instance()
    await node.feed.poll_once()  # an empty store: a new deployment
    stream = node.feed.watch(READER, WatchRequest(environment_id=A))
    assert (await next_event(stream)).kind == "synced"
    key = await node.create()
    await node.feed.poll_once()
    try:
        event = await asyncio.wait_for(anext(stream), timeout=0.1)
    finally:
        await stream.aclose()
    assert (event.kind, event.key) == ("changed", key)


# A change source the test scripts: each read reaches another region, which may lag.


class ScriptedSource:
    """A :class:`~service.core.ports.ChangeSource` whose every read goes to the next region,
    each holding the keys scripted for it (and read as the store reads them)."""

    def __init__(self, *regions: list[SigningKey]) -> None:
        self._regions = [MemoryKeyRecords.holding(keys) for keys in regions]

    def pages(self, **read: Any) -> AsyncIterator[list[SigningKey]]:
        return self._regions.pop(0).pages(**read)

    async def changes(self, **read: Any) -> Changes:
        return await self._regions.pop(0).changes(**read)


def signing_key(environment_id: str, *, at: datetime) -> SigningKey:
    return SigningKey(
        id=secrets.token_urlsafe(24),
        environment_id=environment_id,
        algorithm="EdDSA",
        public_key=PUBLIC_DER,
        fingerprint=crypto.fingerprint(PUBLIC_DER),
        status="active",
        source="imported",
        name=None,
        created_at=at,
        updated_at=at,
    )


# Freshness is the age of the data read, not the time of the last successful poll.


async def test_the_feed_is_as_fresh_as_the_data_it_read() -> None:
    node = instance(max_data_age=0.6)
    node.records.data_age = 0.5  # the region that answered trails the writer by 0.5 s
    await node.feed.poll_once()
    assert 0.5 <= node.feed.staleness() < 0.6
    assert node.feed.is_fresh()
    node.clock.advance(0.3)
    assert node.feed.staleness() > 0.79
    assert not node.feed.is_fresh(), "0.8 s old: past the bound and its slack"


async def test_a_poll_refuses_data_older_than_the_bound_and_the_feed_goes_stale() -> None:
    node = instance(max_data_age=0.6)
    await node.feed.poll_once()
    assert node.feed.is_fresh()
    node.records.data_age = 5.0  # every region that answers is far behind
    with pytest.raises(RegionUnavailableError, match=r"younger than 0\.6"):
        await node.feed.poll_once()
    node.clock.advance(10.0)
    assert node.feed.staleness() >= 10.0, "answers from stale data do not refresh it"
    assert not node.feed.is_fresh()
    node.records.data_age = 0.0
    await node.feed.poll_once()
    assert node.feed.staleness() < 0.1


async def test_with_no_region_young_enough_a_poll_still_applies_what_the_freshest_holds() -> None:
    """The writer is gone (a crash just after a revoke was acknowledged): no region's data
    is within the bound, but a synchronous standby holds the revocation. The poll still
    applies it — the key stops verifying at once — while the feed stays stale and its
    watermark does not move, so the next bounded poll misses nothing."""
    node = instance(max_data_age=0.6)
    key = await node.create()
    await node.feed.poll_once()
    watermark = node.feed._since()
    await node.writer.revoke(ADMIN, KeyRef(environment_id=A, key_id=key.id))
    late = await node.create()
    node.records.data_age = 5.0  # every region that answers is far behind the bound
    node.clock.advance(2.0)
    with pytest.raises(RegionUnavailableError):
        await node.feed.poll_once()
    revoked = node.cached(key.id)
    assert revoked is not None and revoked.status == "revoked"
    assert node.cached(late.id) is not None
    assert not node.feed.is_fresh(), "what a stale region said does not refresh the feed"
    assert node.feed._since() == watermark, "the watermark waits for a bounded poll"
    node.records.data_age = 0.0
    await node.feed.poll_once()
    assert node.feed.is_fresh()
