"""A verification that cannot tell whether its key exists says "retry", never
``unknown_key``, over gRPC as over HTTP: the three cases that used to answer
``unknown_key`` (the caller's miss budget spent, no region answering the look-up, a key
created moments ago on another instance), each against the real service's records.

The instance under test is a verifier of its own — its own key cache, which hears of new
keys only from the one poll made here, as an instance that has not polled since another
created a key — served by its own gRPC server beside the running service.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import jwt
import pytest
from google.rpc import error_details_pb2
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from service.core.changes import ChangeFeed
from service.core.keycache import KeyCache
from service.core.ports import KeyRecords
from service.core.verify import TokenVerifier
from service.errors import RegionUnavailableError
from service.grpc.generated.signingkeys import v1 as pb
from service.server import Server
from tests.support.service import build_grpc_server


class Switchable:
    """The service's key records, whose look-ups fail as with no region reachable on
    demand."""

    def __init__(self, records: KeyRecords) -> None:
        self._records = records
        self.down = False

    async def get(self, key_id: str, **options: Any) -> Any:
        if self.down:
            raise RegionUnavailableError("no region is reachable")
        return await self._records.get(key_id, **options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._records, name)


@asynccontextmanager
async def another_instance(
    server: Server, *, miss_budget: float
) -> AsyncIterator[tuple[pb.SigningKeysStub, Switchable]]:
    records = Switchable(server.key_records)
    cache = KeyCache(size=1000, negative_size=100, negative_ttl=0.5)
    feed = ChangeFeed(server.key_records, cache, poll_interval=60, overlap=5)
    await feed.poll_once()  # every key as of now: the cache is complete, and hears no more
    assert cache.complete
    verifier = TokenVerifier(
        cast(KeyRecords, records),
        cache,
        feed,
        max_token_bytes=8192,
        clock_skew=30,
        max_staleness=300,
        miss_budget=miss_budget,
    )
    async with build_grpc_server(server, verifier=verifier) as grpc_server:
        assert grpc_server.port is not None
        channel = Channel("127.0.0.1", grpc_server.port)
        try:
            yield pb.SigningKeysStub(channel), records
        finally:
            channel.close()


async def new_token(stub: pb.SigningKeysStub, md: dict[str, str]) -> str:
    """A token, issued now, signed with a key created now (through the running service)."""
    created = await stub.create_signing_key(
        pb.CreateSigningKeyRequest(algorithm="EdDSA"), metadata=md
    )
    now = int(time.time())
    return jwt.encode(
        {"exp": now + 300, "iat": now},
        base64.b64decode(created.private_key),
        algorithm="EdDSA",
        headers={"kid": created.key.id},
    )


def retry_seconds(error: GRPCError) -> int:
    [retry] = [d for d in error.details or () if isinstance(d, error_details_pb2.RetryInfo)]
    return int(retry.retry_delay.seconds)


def reason(error: GRPCError) -> str:
    [info] = [d for d in error.details or () if isinstance(d, error_details_pb2.ErrorInfo)]
    return str(info.reason)


async def test_a_key_created_on_another_instance_moments_ago_verifies(
    server: Server, stub: pb.SigningKeysStub, md: dict[str, str]
) -> None:
    async with another_instance(server, miss_budget=50) as (elsewhere, _):
        token = await new_token(stub, md)
        verdict = await elsewhere.verify_token(pb.VerifyTokenRequest(token=token), metadata=md)
        assert verdict.valid, verdict  # it used to be UNKNOWN_KEY until the next poll


async def test_no_region_answering_the_look_up_is_unavailable_with_a_retry_hint(
    server: Server, stub: pb.SigningKeysStub, md: dict[str, str]
) -> None:
    async with another_instance(server, miss_budget=50) as (elsewhere, records):
        token = await new_token(stub, md)
        records.down = True
        with pytest.raises(GRPCError) as raised:
            await elsewhere.verify_token(pb.VerifyTokenRequest(token=token), metadata=md)
        assert raised.value.status is Status.UNAVAILABLE
        assert reason(raised.value) == "key_unavailable" and retry_seconds(raised.value) >= 1
        records.down = False
        verdict = await elsewhere.verify_token(pb.VerifyTokenRequest(token=token), metadata=md)
        assert verdict.valid, "the retry it asked for succeeds"


async def test_a_spent_miss_budget_is_resource_exhausted_with_a_retry_hint(
    server: Server, stub: pb.SigningKeysStub, md: dict[str, str]
) -> None:
    async with another_instance(server, miss_budget=1) as (elsewhere, _):
        first, second = await new_token(stub, md), await new_token(stub, md)
        assert (await elsewhere.verify_token(pb.VerifyTokenRequest(token=first), metadata=md)).valid
        with pytest.raises(GRPCError) as raised:
            await elsewhere.verify_token(pb.VerifyTokenRequest(token=second), metadata=md)
        assert raised.value.status is Status.RESOURCE_EXHAUSTED
        assert reason(raised.value) == "too_many_requests" and retry_seconds(raised.value) >= 1
