"""Reads of a key from memory (no database): the key service answers ``get`` from the key
cache while the change feed is fresh, and from the store on a miss, a stale feed or a
consistency token; another environment's key answers like a missing one."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from service.core import consistency
from service.core.changes import ChangeFeed
from service.core.consistency import CommitPosition
from service.core.keycache import KeyCache
from service.core.keys import KeyService
from service.core.models import Principal, Scope, SigningKey
from service.core.requests import CreateKeyRequest, KeyRef, KeySpec, KeyStatusFilter
from service.errors import NotFoundError
from tests.support.memory import ManualClock, MemoryKeyRecords

A, B = "env-a", "env-b"
POLL = 0.1
MAX_DATA_AGE = 0.5


def principal(*environments: str) -> Principal:
    return Principal(
        token_id="skt_reader",
        scopes=frozenset(Scope),
        environments=frozenset(environments or (A,)),
        api="http",
        request_id="req-1",
    )


@dataclass
class Instance:
    """One instance (cache, feed, key service) over shared records, and another instance
    writing to them whose writes this one learns only through its feed."""

    clock: ManualClock
    records: MemoryKeyRecords
    cache: KeyCache
    feed: ChangeFeed
    keys: KeyService
    elsewhere: KeyService

    async def create(self, environment_id: str = A, *, here: bool = False) -> SigningKey:
        writer = self.keys if here else self.elsewhere
        request = CreateKeyRequest(environment_id=environment_id, spec=KeySpec(algorithm="EdDSA"))
        return (await writer.create(principal(A, B), request)).key

    async def get(
        self, key_id: str, environment_id: str = A, status: KeyStatusFilter = "active"
    ) -> SigningKey:
        ref = KeyRef(environment_id=environment_id, key_id=key_id, status=status)
        return await self.keys.get(principal(A, B), ref)

    @property
    def reads(self) -> int:
        return self.records.calls["get"]


@pytest.fixture
async def instance() -> Instance:
    clock = ManualClock()
    records = MemoryKeyRecords(clock=clock)
    cache = KeyCache(size=100, negative_size=10, negative_ttl=1.0, clock=clock.seconds)
    feed = ChangeFeed(
        records,
        cache,
        poll_interval=POLL,
        overlap=1.0,
        max_data_age=MAX_DATA_AGE,
        clock=clock.seconds,
    )
    keys = KeyService(records, cache=cache, feed=feed)
    instance = Instance(clock, records, cache, feed, keys, KeyService(records))
    await feed.poll_once()
    return instance


@pytest.fixture(autouse=True)
def no_request_scope() -> Iterator[None]:
    """Each test starts outside any request's consistency scope, and leaves none behind."""
    token = consistency._current.set(None)
    yield
    consistency._current.reset(token)


async def test_gets_are_answered_from_memory_while_the_feed_is_fresh(instance: Instance) -> None:
    key = await instance.create()
    await instance.feed.poll_once()
    before = instance.reads
    for _ in range(50):
        assert (await instance.get(key.id)).id == key.id
    assert instance.reads == before, "no look-up reached the store"
    instance.records.unavailable = True
    assert (await instance.get(key.id)) == key, "served while the database is unreachable"


async def test_a_stale_feed_sends_gets_to_the_database(instance: Instance) -> None:
    key = await instance.create()
    await instance.feed.poll_once()
    assert instance.feed.is_fresh()
    instance.clock.advance(MAX_DATA_AGE + 4 * POLL)  # no poll since: past the bound
    assert not instance.feed.is_fresh()
    before = instance.reads
    assert (await instance.get(key.id)).id == key.id
    assert instance.reads == before + 1


async def test_a_late_feed_answers_while_no_staler_than_a_database_read() -> None:
    """With ``read_staleness`` (the age a database read may have), a feed whose polls are
    late (a saturated loop) still answers reads until its data is older than that."""
    clock = ManualClock()
    records = MemoryKeyRecords(clock=clock)
    cache = KeyCache(size=10, negative_size=10, negative_ttl=1.0, clock=clock.seconds)
    feed = ChangeFeed(
        records, cache, poll_interval=POLL, overlap=1.0, clock=clock.seconds,
        read_staleness=5.0,
    )  # fmt: skip
    await feed.poll_once()
    clock.advance(3.0)
    assert not feed.is_fresh() and feed.answers_reads()
    clock.advance(2.5)
    assert not feed.answers_reads()
    records.data_age = 4.0
    await feed.poll_once()
    assert not feed.is_fresh() and feed.answers_reads(), "4 s old data: as a standby's"


async def test_a_miss_reads_the_database_once_and_the_key_is_kept(instance: Instance) -> None:
    key = await instance.create()  # elsewhere, and not polled yet
    before = instance.reads
    assert (await instance.get(key.id)).id == key.id
    assert (await instance.get(key.id)).id == key.id
    assert instance.reads == before + 1
    with pytest.raises(NotFoundError):
        await instance.get("no-such-key")
    assert instance.reads == before + 2, "a miss still asks the database"


async def test_a_revocation_applied_by_the_feed_is_seen_by_the_next_get(
    instance: Instance,
) -> None:
    key = await instance.create()
    await instance.feed.poll_once()
    assert (await instance.get(key.id)).status == "active"
    await instance.elsewhere.revoke(principal(A), KeyRef(environment_id=A, key_id=key.id))
    await instance.feed.poll_once()
    instance.records.unavailable = True  # so the answers below can only come from memory
    with pytest.raises(NotFoundError):
        await instance.get(key.id)
    revoked = await instance.get(key.id, status="revoked")
    assert revoked.status == "revoked" and revoked.revoked_at is not None


async def test_this_instances_own_writes_are_read_at_once(instance: Instance) -> None:
    key = await instance.create(here=True)  # the feed has not polled since
    before = instance.reads
    assert (await instance.get(key.id)).id == key.id
    await instance.keys.revoke(principal(A), KeyRef(environment_id=A, key_id=key.id))
    with pytest.raises(NotFoundError):
        await instance.get(key.id)
    assert instance.reads == before, "from memory, and already current"


async def test_a_consistency_token_reads_the_database_past_a_lagging_cache(
    instance: Instance,
) -> None:
    key = await instance.create()
    await instance.feed.poll_once()
    await instance.elsewhere.revoke(principal(A), KeyRef(environment_id=A, key_id=key.id))
    # The feed has not polled since the revocation: the cache lags behind it, and is fresh.
    assert instance.feed.is_fresh()
    assert (await instance.get(key.id)).status == "active", "no token: memory answers"
    before = instance.reads
    consistency.bind(consistency.encode_token(CommitPosition("7301234567890123456", 1, 4096)))
    with pytest.raises(NotFoundError):
        await instance.get(key.id)
    assert instance.reads == before + 1, "with a token, the database answers"
    consistency.bind(None)
    assert (await instance.get(key.id, status="revoked")).status == "revoked", (
        "and the cache learnt the newer record from that read"
    )


async def test_another_environments_key_answers_exactly_like_a_missing_one(
    instance: Instance,
) -> None:
    theirs = await instance.create(B)
    await instance.feed.poll_once()
    assert instance.cache.get(theirs.id) is not None, "cached, in environment B"
    answers = []
    for key_id in (theirs.id, "no-such-key"):
        before = instance.reads
        with pytest.raises(NotFoundError) as raised:
            await instance.get(key_id, environment_id=A)
        answers.append((str(raised.value), instance.reads - before))
    assert answers[0] == answers[1], "same words, and the same path (a database read)"
    assert answers[0][1] == 1
