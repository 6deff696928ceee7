"""A watch stream's progress events, its maximum age and its positions' lifetime, over the
in-memory ports: an idle stream learns how far it is, a stream past its age ends with
UNAVAILABLE after a last position from which a resume misses nothing, and a position of any
age still resumes.

The writer is another instance's key service sharing the records, so the feed hears of a
change only when the test polls, as in production.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator

import pytest

from service.core.changes import ChangeFeed, WatchEvent, parse_position, position_of
from service.core.keycache import KeyCache
from service.core.keys import KeyService
from service.core.requests import KeyRef, WatchRequest
from service.errors import DependencyError, WatchMaxAgeError
from tests.core.test_change_feed_rules import ADMIN, OVERLAP, READER, A, B, Instance
from tests.support.memory import ManualClock, MemoryKeyRecords

# Generous: a loaded machine may run a 0.05 s timer late, never a second late.
WITHIN = 5.0


def instance(*, progress_interval: float | None, max_stream_age: float | None) -> Instance:
    clock = ManualClock(tick=0.001)
    records = MemoryKeyRecords(clock=clock)
    cache = KeyCache(size=100, negative_size=10, negative_ttl=1.0, clock=clock.seconds)
    feed = ChangeFeed(
        records,
        cache,
        poll_interval=0.05,
        overlap=OVERLAP,
        clock=clock.seconds,
        progress_interval=progress_interval,
        max_stream_age=max_stream_age,
    )
    return Instance(clock, records, KeyService(records), cache, feed)


async def next_event(stream: AsyncGenerator[WatchEvent, None]) -> WatchEvent:
    return await asyncio.wait_for(anext(stream), timeout=WITHIN)


async def until_synced(stream: AsyncGenerator[WatchEvent, None]) -> list[WatchEvent]:
    """The events up to and including SYNCED."""
    events = [await next_event(stream)]
    while events[-1].kind != "synced":
        events.append(await next_event(stream))
    return events


async def replayed_ids(node: Instance, after: str) -> set[str]:
    """The keys a watch resumed from ``after`` replays before it is synced."""
    stream = node.feed.watch(READER, WatchRequest(environment_id=A, after=after))
    try:
        events = (await until_synced(stream))[:-1]
    finally:
        await stream.aclose()
    assert {event.kind for event in events} <= {"changed"}, "a resume sends no snapshot"
    return {event.key.id for event in events if event.key is not None}


async def test_an_idle_stream_gets_progress_with_the_feeds_position() -> None:
    node = instance(progress_interval=0.05, max_stream_age=None)
    await node.create()
    await node.feed.poll_once()
    stream = node.feed.watch(READER, WatchRequest(environment_id=A))
    synced = (await until_synced(stream))[-1]
    # Changes elsewhere move the feed on; this environment's stream has nothing to send.
    other = await node.create(B)
    await node.feed.poll_once()
    progress = await next_event(stream)
    assert (progress.kind, progress.key) == ("progress", None)
    assert progress.position == position_of(other.updated_at)
    assert parse_position(progress.position) > parse_position(synced.position)
    again = await next_event(stream)
    assert again.kind == "progress" and again.position == progress.position, "never back"
    await stream.aclose()


async def test_no_progress_while_changes_flow_and_none_when_not_asked_for() -> None:
    busy = instance(progress_interval=0.2, max_stream_age=None)
    await busy.feed.poll_once()
    stream = busy.feed.watch(READER, WatchRequest(environment_id=A))
    assert (await next_event(stream)).kind == "synced"
    key = await busy.create()
    await busy.feed.poll_once()
    event = await next_event(stream)
    assert (event.kind, event.key) == ("changed", key), "a queued change goes first"
    await stream.aclose()

    quiet = instance(progress_interval=None, max_stream_age=None)
    await quiet.feed.poll_once()
    stream = quiet.feed.watch(READER, WatchRequest(environment_id=A))
    assert (await next_event(stream)).kind == "synced"
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(stream), timeout=0.2)
    await stream.aclose()


async def test_a_resume_from_progress_misses_a_write_committed_after_it() -> None:
    """The progress position is the feed's watermark; a write whose transaction began before
    it but committed after it (so no poll had seen it) is still replayed from there."""
    node = instance(progress_interval=0.05, max_stream_age=None)
    await node.feed.poll_once()
    stream = node.feed.watch(READER, WatchRequest(environment_id=A))
    assert (await next_event(stream)).kind == "synced"
    pending = node.records.hold_next_write()
    late = await node.create()  # stamped first ...
    node.clock.advance(OVERLAP / 2)
    fast = await node.create()  # ... committed first
    elsewhere = await node.create(B)  # and the feed's watermark moves past both
    await node.feed.poll_once()
    assert (await next_event(stream)).key == fast
    progress = await next_event(stream)
    assert progress.kind == "progress"
    assert parse_position(progress.position) == elsewhere.updated_at > late.updated_at
    await stream.aclose()
    pending.commit()
    assert late.id in await replayed_ids(node, progress.position)


async def test_a_stream_ends_at_its_maximum_age_after_a_last_position() -> None:
    age = 0.5
    node = instance(progress_interval=None, max_stream_age=age)
    await node.feed.poll_once()
    stream = node.feed.watch(READER, WatchRequest(environment_id=A))
    assert (await next_event(stream)).kind == "synced"
    started = time.monotonic()
    seen = await node.create()
    await node.feed.poll_once()
    assert (await next_event(stream)).key == seen
    # Created just before the end, and never polled: only a resume can deliver it.
    unseen = await node.create()
    last = await next_event(stream)
    assert (last.kind, last.key) == ("progress", None)
    assert parse_position(last.position) == seen.updated_at
    with pytest.raises(WatchMaxAgeError) as ended:
        await next_event(stream)
    elapsed = time.monotonic() - started
    assert age * 0.9 - 0.05 <= elapsed < age + WITHIN
    assert isinstance(ended.value, DependencyError), "UNAVAILABLE: reconnect"
    assert "resume from its last position" in str(ended.value)
    assert node.feed.open_streams == 0
    assert unseen.id in await replayed_ids(node, last.position)


async def test_past_its_age_a_stream_first_sends_what_is_queued() -> None:
    node = instance(progress_interval=None, max_stream_age=0.1)
    await node.feed.poll_once()
    stream = node.feed.watch(READER, WatchRequest(environment_id=A))
    assert (await next_event(stream)).kind == "synced"
    keys = [await node.create() for _ in range(3)]
    await node.feed.poll_once()
    await asyncio.sleep(0.2)  # past its age, with three changes queued
    events = [await next_event(stream) for _ in range(4)]
    assert [event.key for event in events] == [*keys, None]
    assert events[-1].kind == "progress"
    assert parse_position(events[-1].position) == keys[-1].updated_at
    with pytest.raises(WatchMaxAgeError):
        await next_event(stream)


async def test_positions_older_than_the_feeds_memory_still_resume() -> None:
    """Positions do not expire: the feed forgets changes after two overlaps, but a resume
    reads the store, which keeps every key's latest state."""
    node = instance(progress_interval=None, max_stream_age=None)
    first = await node.create()
    await node.feed.poll_once()
    old_position = position_of(first.updated_at, first.id)
    for _ in range(5):  # 50 overlaps, and polls that forget everything older than two
        node.clock.advance(10 * OVERLAP)
        await node.create(B)
        await node.feed.poll_once()
    later = await node.create()
    await node.writer.revoke(ADMIN, KeyRef(environment_id=A, key_id=first.id))
    await node.feed.poll_once()
    stream = node.feed.watch(READER, WatchRequest(environment_id=A, after=old_position))
    events = await until_synced(stream)
    await stream.aclose()
    assert [event.kind for event in events] == ["changed"] * (len(events) - 1) + ["synced"]
    latest = {event.key.id: event.key for event in events if event.key is not None}
    assert set(latest) == {first.id, later.id}
    assert latest[first.id].status == "revoked", "the latest state, not a history"
    assert await replayed_ids(node, "0.") == {first.id, later.id}, "even the very beginning"
