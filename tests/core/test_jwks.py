"""JWK Sets from memory (no database): rendered once per change of their environment, served
from the database when the cache cannot vouch for them, and matched by ``If-None-Match``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest

from service.core import consistency
from service.core.changes import ChangeFeed
from service.core.consistency import CommitPosition
from service.core.jwks import JwksDocument, JwksDocuments
from service.core.keycache import KeyCache
from service.core.keys import KeyService
from service.core.models import Principal, Scope, SigningKey
from service.core.requests import CreateKeyRequest, KeyRef, KeySpec
from tests.support.memory import ManualClock, MemoryKeyRecords

A, B = "env-a", "env-b"
POLL = 0.1
MAX_DATA_AGE = 0.5
WRITER = Principal(
    token_id="skt_writer",
    scopes=frozenset(Scope),
    environments=frozenset({A, B, *(f"env-{i}" for i in range(20))}),
    api="http",
    request_id="req-1",
)


@dataclass
class Instance:
    clock: ManualClock
    records: MemoryKeyRecords
    cache: KeyCache
    feed: ChangeFeed
    documents: JwksDocuments
    elsewhere: KeyService  # another instance's writes, learnt through the feed

    async def create(
        self, environment_id: str = A, *, expires_at: datetime | None = None
    ) -> SigningKey:
        spec = KeySpec(algorithm="EdDSA", expires_at=expires_at)
        request = CreateKeyRequest(environment_id=environment_id, spec=spec)
        return (await self.elsewhere.create(WRITER, request)).key

    async def kids(self, environment_id: str = A) -> list[str]:
        document = await self.documents.get(environment_id)
        return [jwk["kid"] for jwk in json.loads(document.body)["keys"]]

    @property
    def reads(self) -> int:
        """Page reads of the store (the feed's polls included)."""
        return self.records.calls["pages"]


def build(*, max_bytes: int = 1 << 20, render_slice: float = 0.005) -> Instance:
    clock = ManualClock()
    records = MemoryKeyRecords(clock=clock)
    cache = KeyCache(size=100, negative_size=10, negative_ttl=1.0, clock=clock.seconds)
    feed = ChangeFeed(
        records, cache, poll_interval=POLL, overlap=1.0, max_data_age=MAX_DATA_AGE,
        clock=clock.seconds,
    )  # fmt: skip
    documents = JwksDocuments(
        records, cache, feed, max_bytes=max_bytes, render_slice=render_slice, clock=clock.seconds
    )
    return Instance(clock, records, cache, feed, documents, KeyService(records))


@pytest.fixture
async def instance() -> Instance:
    instance = build()
    await instance.feed.poll_once()
    return instance


@pytest.fixture(autouse=True)
def no_request_scope() -> Iterator[None]:
    token = consistency._current.set(None)
    yield
    consistency._current.reset(token)


async def test_a_document_is_rendered_once_per_change_of_its_environment(
    instance: Instance,
) -> None:
    first, second = await instance.create(), await instance.create()
    await instance.create(B)
    await instance.feed.poll_once()
    reads = instance.reads
    documents = [await instance.documents.get(A) for _ in range(50)]
    assert instance.documents.renders == 1
    assert instance.reads == reads, "from memory: no page of the store was read"
    assert all(document is documents[0] for document in documents)
    assert sorted(json.loads(documents[0].body)["keys"][i]["kid"] for i in (0, 1)) == sorted(
        [first.id, second.id]
    )

    await instance.create(B)  # another environment's change
    await instance.feed.poll_once()
    assert (await instance.documents.get(A)) is documents[0]
    assert instance.documents.renders == 1

    await instance.elsewhere.revoke(WRITER, KeyRef(environment_id=A, key_id=first.id))
    await instance.feed.poll_once()
    changed = await instance.documents.get(A)
    assert instance.documents.renders == 2, "the feed applied a change to A: rendered again"
    assert [jwk["kid"] for jwk in json.loads(changed.body)["keys"]] == [second.id]
    assert changed.etag != documents[0].etag
    await instance.documents.get(A)
    assert instance.documents.renders == 2
    assert instance.documents.converted == 2, "a re-render reuses the JWKs of unchanged keys"

    await instance.create()
    await instance.feed.poll_once()
    assert len(json.loads((await instance.documents.get(A)).body)["keys"]) == 2
    assert (instance.documents.renders, instance.documents.converted) == (3, 3)


async def test_memory_and_database_render_the_same_bytes_and_etag(instance: Instance) -> None:
    for _ in range(3):
        await instance.create()
    await instance.feed.poll_once()
    from_memory = await instance.documents.get(A)
    instance.cache.complete = False
    from_database = await instance.documents.get(A)
    assert from_database is not from_memory
    assert (from_database.body, from_database.etag) == (from_memory.body, from_memory.etag), (
        "one ETag for one document, whichever instance or path renders it"
    )
    assert from_memory.etag.startswith('"') and from_memory.etag.endswith('"'), "strong"


@pytest.mark.parametrize("why", ["incomplete", "stale", "token"])
async def test_the_database_answers_when_memory_cannot_vouch_for_the_document(
    instance: Instance, why: str
) -> None:
    key = await instance.create()
    await instance.feed.poll_once()
    assert await instance.kids() == [key.id]
    if why == "incomplete":
        instance.cache.complete = False  # an eviction happened: the cache may miss keys
    elif why == "stale":
        instance.clock.advance(MAX_DATA_AGE + 4 * POLL)
    else:
        consistency.bind(consistency.encode_token(CommitPosition("7301234567890123456", 1, 64)))
    newer = await instance.create()  # not polled: only the database knows it
    reads, renders = instance.reads, instance.documents.renders
    assert sorted(await instance.kids()) == sorted([key.id, newer.id])
    assert instance.reads == reads + 1 and instance.documents.renders == renders


async def test_a_document_is_rendered_again_when_its_first_key_expires(
    instance: Instance,
) -> None:
    lasting = await instance.create()
    expiring = await instance.create(expires_at=instance.clock() + timedelta(seconds=30))
    await instance.feed.poll_once()
    assert sorted(await instance.kids()) == sorted([lasting.id, expiring.id])
    instance.clock.advance(29)
    await instance.feed.poll_once()  # stays fresh; nothing changed
    assert len(await instance.kids()) == 2 and instance.documents.renders == 1
    instance.clock.advance(2)
    await instance.feed.poll_once()
    assert await instance.kids() == [lasting.id], "no change, but a listed key expired"
    assert instance.documents.renders == 2


async def test_concurrent_requests_share_one_render_which_gives_the_loop_turns() -> None:
    instance = build(render_slice=0.0)
    await instance.feed.poll_once()
    for _ in range(60):
        await instance.create()
    await instance.feed.poll_once()
    turns = 0

    async def other_work() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    other = asyncio.create_task(other_work())
    try:
        documents = await asyncio.gather(*(instance.documents.get(A) for _ in range(5)))
    finally:
        other.cancel()
    assert instance.documents.renders == 1
    assert all(document is documents[0] for document in documents)
    assert documents[0].key_count == 60
    assert turns >= 60, "the render let other tasks run whenever its slice was spent"


async def test_a_render_goes_on_for_others_when_the_request_that_started_it_is_gone() -> None:
    instance = build(render_slice=0.0)
    await instance.feed.poll_once()
    for _ in range(5):
        await instance.create()
    await instance.feed.poll_once()
    first = asyncio.create_task(instance.documents.get(A))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    first.cancel()
    document = await instance.documents.get(A)
    assert document.key_count == 5 and instance.documents.renders == 1


async def test_rendered_documents_are_bounded_in_bytes() -> None:
    instance = build(max_bytes=16 * 1024)
    await instance.feed.poll_once()
    environments = [f"env-{i}" for i in range(20)]
    for environment in environments:
        for _ in range(5):
            await instance.create(environment)
    await instance.feed.poll_once()
    for environment in environments:
        assert (await instance.documents.get(environment)).key_count == 5
    assert 0 < instance.documents.kept_bytes <= 16 * 1024
    assert instance.documents.renders == 20
    await instance.documents.get(environments[0])  # evicted long since: rendered again
    assert instance.documents.renders == 21
    await instance.documents.get(environments[0])
    assert instance.documents.renders == 21


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        (None, False),
        ("", False),
        ('"abc"', True),
        ('W/"abc"', True),  # If-None-Match compares weakly (RFC 9110, 13.1.2)
        ('"nope", W/"abc"', True),
        ('"nope",W/"x" , "abc"', True),
        ("*", True),
        (" * ", True),
        ('"abcd"', False),
        ('"ab,c"', False),
        ("abc", False),  # unquoted: not an entity tag
        ('W/"nope"', False),
    ],
)
def test_if_none_match(header: str | None, matches: bool) -> None:
    assert JwksDocument(b"{}", '"abc"', 0).matches(header) is matches
