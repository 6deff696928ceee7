"""The change feed's memory is bounded whatever the table holds: it reads a page at a time
and remembers at most ``recent_size`` changes, yet misses no change (over the in-memory
ports, no database).

Before: the first poll read every row into one list, and the feed remembered every key
changed within two overlaps of its watermark — with a million keys written at one instant
(an import, a restore, a benchmark's load), a million records beside a cache bounded to a
tenth of them.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

from service.core import crypto
from service.core.changes import ChangeFeed
from service.core.keycache import KeyCache
from service.core.keys import KeyService
from service.core.models import Principal, Scope, SigningKey
from service.core.ports import Changes
from service.core.requests import ImportKeyRequest, WatchRequest
from tests.core.test_change_feed_rules import ScriptedSource, next_event, signing_key
from tests.support.memory import DEFAULT_START, ManualClock, MemoryKeyRecords

A, B = "env-a", "env-b"
OVERLAP = 1.0
ADMIN = Principal(token_id="skt_writer", scopes=frozenset(Scope), environments=frozenset({A, B}))
READER = Principal(
    token_id="skt_reader", scopes=frozenset({Scope.READ}), environments=frozenset({A})
)
PEM = crypto.public_key_pem(crypto.generate_key_pair("EdDSA").public_der)


class CountedReads:
    """The records, with the size of every ``changes`` read recorded."""

    def __init__(self, records: MemoryKeyRecords) -> None:
        self.records = records
        self.reads: list[int] = []

    def pages(self, **read: Any) -> Any:
        return self.records.pages(**read)

    async def changes(self, **read: Any) -> Changes:
        changes = await self.records.changes(**read)
        self.reads.append(len(changes.keys))
        return changes


async def import_keys(records: MemoryKeyRecords, count: int, env: str = A) -> list[SigningKey]:
    writer = KeyService(records)
    request = ImportKeyRequest(environment_id=env, public_key=PEM)
    return [(await writer.import_key(ADMIN, request)).key for _ in range(count)]


async def test_a_large_first_load_is_read_a_page_at_a_time_and_remembered_within_the_bound() -> (
    None
):
    records = MemoryKeyRecords(clock=ManualClock(tick=0))  # every key at one instant
    await import_keys(records, 50)
    source = CountedReads(records)
    cache = KeyCache(size=10, negative_size=10, negative_ttl=1.0)
    feed = ChangeFeed(source, cache, poll_interval=0.05, overlap=OVERLAP, page_size=7)
    assert await feed.poll_once() == 50
    assert source.reads == [7, 7, 7, 7, 7, 7, 7, 1], "never more than a page at a time"
    assert feed.remembered == 10, "the cache's capacity, by default"
    assert len(cache) == 10 and not cache.complete
    assert await feed.poll_once() == 40, "the re-read applies again what was dropped"
    assert feed.remembered == 10


async def test_no_change_is_missed_when_more_keys_change_at_once_than_the_feed_remembers() -> None:
    """Twenty keys at one instant, a feed that remembers five: a watcher hears of all of
    them, and of a late commit stamped at that instant (a slow writer, within the overlap),
    which is no longer taken for an unknown key."""
    clock = ManualClock(tick=0)
    records = MemoryKeyRecords(clock=clock)
    cache = KeyCache(size=5, negative_size=10, negative_ttl=60.0, clock=clock.seconds)
    feed = ChangeFeed(
        records,
        cache,
        poll_interval=0.05,
        overlap=OVERLAP,
        clock=clock.seconds,
        wall=clock.seconds,
        page_size=4,
    )
    await feed.poll_once()
    stream = feed.watch(READER, WatchRequest(environment_id=A))
    assert (await next_event(stream)).kind == "synced"
    slow = records.hold_next_write()
    late = (await import_keys(records, 1))[0]
    keys = await import_keys(records, 20)
    await feed.poll_once()
    cache.mark_unknown(late.id)  # looked up before it committed: not found then
    heard = [await next_event(stream) for _ in keys]
    assert {event.key.id for event in heard if event.key} == {key.id for key in keys}
    assert feed.remembered <= 5
    slow.commit()
    clock.advance(OVERLAP / 2)
    await feed.poll_once()
    # The five remembered are not heard again; the fifteen dropped are (at least once).
    heard = [await next_event(stream) for _ in range(16)]
    assert late.id in {event.key.id for event in heard if event.key}
    assert not cache.is_known_unknown(late.id), "it exists: a look-up must find it"
    assert feed.remembered <= 5
    await stream.aclose()


async def test_a_lagging_snapshot_is_completed_by_changes_the_feed_dropped_for_room() -> None:
    """The feed has applied a revocation but kept no record of it (it remembers one change,
    another environment's); a watch's snapshot comes from a region that has not replayed
    the revocation. The stream still carries it: the environment was marked when its
    changes were dropped, and the merge reads them again."""
    active = replace(signing_key(A, at=DEFAULT_START), id="a1")
    later = DEFAULT_START + timedelta(seconds=1)
    revoked = replace(active, status="revoked", updated_at=later)
    sibling = replace(signing_key(A, at=later), id="a2")
    elsewhere = replace(signing_key(B, at=later), id="b3")
    # Reads: the feed's poll, the watch's snapshot (a laggard), the merge's read.
    source = ScriptedSource([revoked, sibling, elsewhere], [active], [revoked, sibling, elsewhere])
    cache = KeyCache(size=10, negative_size=10, negative_ttl=1.0)
    feed = ChangeFeed(source, cache, poll_interval=1, overlap=OVERLAP, recent_size=1)
    await feed.poll_once()
    assert feed.remembered == 1
    stream = feed.watch(READER, WatchRequest(environment_id=A))
    events = [await next_event(stream) for _ in range(4)]
    assert (events[0].kind, events[0].key) == ("snapshot", active)
    merged = [(event.kind, event.key) for event in events[1:3]]
    assert sorted(merged, key=str) == sorted(
        [("snapshot", revoked), ("snapshot", sibling)], key=str
    ), "what memory still holds first, then what is read again: each once"
    assert events[3].kind == "synced"
    await stream.aclose()


async def test_a_feed_that_remembers_less_than_the_cache_holds_still_fills_it() -> None:
    """Changes dropped from the feed's memory are still cached while the cache has room, so
    a cache that holds every key may still say so (and answer a miss "unknown" without
    asking the database) only when it truly does."""
    records = MemoryKeyRecords(clock=ManualClock(tick=0))
    keys = await import_keys(records, 10)
    cache = KeyCache(size=100, negative_size=10, negative_ttl=1.0)
    feed = ChangeFeed(records, cache, poll_interval=0.05, overlap=OVERLAP, recent_size=3)
    await feed.poll_once()
    assert feed.remembered == 3
    assert all(cache.peek(key.id) == key for key in keys)
    assert cache.complete
