"""``GetSigningKey`` comes from memory while the change feed is fresh (the real service on
the local topology): calls under load do not reach the database."""

from __future__ import annotations

import asyncio

import pytest

from service.grpc.generated.signingkeys import v1 as pb
from service.server import Server
from tests.http.test_key_reads import count_calls, eventually


async def test_get_signing_key_under_load_does_not_reach_the_database(
    server: Server, stub: pb.SigningKeysStub, md: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    created = (await stub.create_signing_key(pb.CreateSigningKeyRequest(), metadata=md)).key
    await eventually(server.changes.is_fresh)
    reads = count_calls(monkeypatch, server.key_records, "get")
    request = pb.GetSigningKeyRequest(id=created.id)
    replies = await asyncio.gather(
        *(stub.get_signing_key(request, metadata=md) for _ in range(100))
    )
    assert all(reply.key == created for reply in replies)
    # Every one from memory, unless the busy machine let the feed fall stale for a moment.
    assert len(reads) < len(replies) // 4, f"{len(reads)} of {len(replies)} reached the database"
