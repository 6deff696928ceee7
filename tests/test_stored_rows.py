"""A stored row that today's rules would refuse still reads back on every route.

Rows are written straight into the database, as an older version (or an operator) could have
written them, and read back over HTTP (list, get, JWKS, verify) and gRPC (list, get, watch):
one row must never break its environment's reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator

import aiohttp
import jwt
import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality
from h2.exceptions import StreamClosedError

from harness import LocalTopology
from service.core import crypto
from service.grpc.generated.signingkeys import v1 as pb
from service.server import Server
from tests.support.service import Credentials, rows

KEYS = "/system/v1/signing-keys"


@pytest.fixture
async def stub(server: Server) -> AsyncIterator[pb.SigningKeysStub]:
    assert server.grpc_port is not None
    channel = Channel("127.0.0.1", server.grpc_port)
    try:
        yield pb.SigningKeysStub(channel)
    finally:
        channel.close()


async def store_row(
    topology: LocalTopology, environment: str, der: bytes, *, expires_at: str
) -> str:
    """Insert an active imported key directly on the primary; ``expires_at`` is SQL text."""
    key_id = "by-hand-" + secrets.token_hex(8)
    await rows(
        topology,
        "INSERT INTO signing_keys (id, environment_id, algorithm, public_key, fingerprint,"
        " status, source, name, created_at, updated_at, revoked_at, expires_at)"
        " VALUES ($1, $2, $3, $4, $5, 'active', 'imported', NULL, now(), now(), NULL,"
        " $6::text::timestamptz)",
        key_id,
        environment,
        crypto.algorithm_of(crypto.load_public_key(der)),
        der,
        crypto.fingerprint(der),
        expires_at,
    )
    return key_id


async def verdict(http: aiohttp.ClientSession, auth: Credentials, token: str) -> dict[str, object]:
    """The verdict once the change feed has brought the row into the key cache."""
    deadline = time.monotonic() + 5
    while True:
        async with http.post("/v1/tokens/verify", headers=auth.headers, json={"token": token}) as r:
            assert r.status == 200, await r.text()
            data: dict[str, object] = (await r.json())["data"]
        if data["reason"] != "unknown_key" or time.monotonic() > deadline:
            return data
        await asyncio.sleep(0.1)


@pytest.mark.parametrize(
    ("stored", "rendered", "reason"),
    [
        ("-infinity", "0", "revoked_key"),  # what year 1 became before the range was checked
        ("0044-03-15 BC", "0", "revoked_key"),
        ("infinity", "253402300799", None),
    ],
)
async def test_an_expiry_out_of_range_reads_back_everywhere(
    migrated_topology: LocalTopology,
    http: aiohttp.ClientSession,
    stub: pb.SigningKeysStub,
    auth: Credentials,
    environment: str,
    stored: str,
    rendered: str,
    reason: str | None,
) -> None:
    pair = crypto.generate_key_pair("EdDSA")
    key_id = await store_row(migrated_topology, environment, pair.public_der, expires_at=stored)

    async with http.get(KEYS, headers=auth.headers) as response:
        assert response.status == 200, await response.text()
        assert [key["expires_at"] for key in (await response.json())["data"]] == [rendered]
    async with http.get(f"{KEYS}/{key_id}", headers=auth.headers) as response:
        assert response.status == 200, await response.text()
        assert (await response.json())["data"]["expires_at"] == rendered
    token = jwt.encode(
        {"exp": int(time.time()) + 60}, pair.private_pem, algorithm="EdDSA", headers={"kid": key_id}
    )
    answer = await verdict(http, auth, token)
    assert (answer["reason"], answer["key_id"]) == (reason, key_id)
    async with http.get(f"/v1/environments/{environment}/jwks.json", headers=auth.headers) as r:
        assert r.status == 200, await r.text()
        published = [jwk["kid"] for jwk in (await r.json())["keys"]]
    assert published == ([] if reason else [key_id])

    md = {"authorization": auth.headers["Authorization"]}
    listed = await stub.list_signing_keys(pb.ListSigningKeysRequest(), metadata=md)
    assert [key.expires_at for key in listed.keys] == [rendered]
    got = await stub.get_signing_key(pb.GetSigningKeyRequest(id=key_id), metadata=md)
    assert got.key.expires_at == rendered
    channel = stub.channel
    async with channel.request(
        "/signingkeys.v1.SigningKeys/WatchSigningKeys",
        Cardinality.UNARY_STREAM,
        pb.WatchSigningKeysRequest,
        pb.WatchSigningKeysResponse,
        metadata=md,
    ) as stream:
        await stream.send_message(pb.WatchSigningKeysRequest(), end=True)
        snapshot = await asyncio.wait_for(stream.recv_message(), 5)
        synced = await asyncio.wait_for(stream.recv_message(), 5)
        with contextlib.suppress(StreamClosedError):
            await stream.cancel()
    assert snapshot is not None and synced is not None
    assert (snapshot.kind, snapshot.key.id, snapshot.key.expires_at) == (
        pb.WatchEventKind.SNAPSHOT,
        key_id,
        rendered,
    )
    assert synced.kind == pb.WatchEventKind.SYNCED
