"""Read your writes, on the real topology, over HTTP and gRPC (issue 10).

Two service instances whose local regions are different standbys: A in ``aws-eu-west-1``
(a synchronous standby, current), B in ``gcp-us-central1``, whose replication link is cut
for the test — it answers every query from data that no longer moves, and with
``MAX_REPLICA_LAG`` at 30 s B keeps reading it. A key created through A is then missing
from B's standby (asserted by asking B's store without a token, so that the setup is shown
to be real; B's own answers without a token may come from its key cache, which its change
feed fills from a fresher region, and which keeps what a read with the token found); with
the token A answered, B never answers 404. A write through B itself is seen by B's next
read without any token.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError

from harness import LocalTopology
from service.core.consistency import CommitPosition, decode_token, encode_token
from service.grpc.generated.signingkeys import v1 as pb
from service.server import Server
from service.settings import Settings
from service.store.migrations import migrate
from tests.locality.traffic import eventually
from tests.support.service import Credentials, TokenFactory, known_everywhere, service_env

pytestmark = pytest.mark.fault

A_REGION = "aws-eu-west-1"
B_REGION = "gcp-us-central1"
KEYS = "/system/v1/signing-keys"
HEADER = "X-Consistency-Token"
METADATA = "x-consistency-token"
TRIALS = 5


def start(topology: LocalTopology, local_region: str) -> Server:
    return Server(Settings.from_env(service_env(topology, local_region, max_replica_lag="30")))


@pytest.fixture
async def pair(
    migrated_topology: LocalTopology,
) -> AsyncIterator[tuple[Server, Server]]:
    async with start(migrated_topology, A_REGION) as a, start(migrated_topology, B_REGION) as b:
        yield a, b


@pytest.fixture(autouse=True)
async def _healed(migrated_topology: LocalTopology) -> AsyncIterator[None]:
    """After each test every link passes again and every standby has caught up, so that the
    tests after these find the shared topology as it was (not only its proxies)."""
    yield
    for region in migrated_topology.regions:
        region.proxy.pass_through()
        region.replication_proxy.pass_through()
    await asyncio.to_thread(migrated_topology.wait_replayed, 60.0)


@pytest.fixture
async def credentials(pair: tuple[Server, Server], environment: str) -> Credentials:
    issued = await TokenFactory(pair[0])([environment])
    await known_everywhere(pair, issued)
    return issued


def cut_b_replication(topology: LocalTopology) -> None:
    """B's standby stops receiving WAL (the proxy swallows it; the standby still answers)
    until the test ends (:func:`_healed`)."""
    topology.region(B_REGION).replication_proxy.blackhole()


async def post(
    session: aiohttp.ClientSession, auth: Credentials, **body: Any
) -> tuple[dict[str, Any], str | None]:
    async with session.post(KEYS, headers=auth.headers, json=body or None) as response:
        assert response.status == 201, await response.text()
        return (await response.json())["data"], response.headers.get(HEADER)


async def get_status(
    session: aiohttp.ClientSession, auth: Credentials, key_id: str, token: str | None = None
) -> int:
    headers = {**auth.headers, **({HEADER: token} if token else {})}
    async with session.get(f"{KEYS}/{key_id}", headers=headers) as response:
        await response.read()
        return response.status


async def in_standby(server: Server, key_id: str) -> bool:
    """Whether a read of ``server``'s store with no token (outside any request, past its key
    cache) finds the key: what its GET without a token found before keys were cached."""
    return await server.key_records.get(key_id) is not None


def http_session(server: Server) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(base_url=f"http://127.0.0.1:{server.http_port}")


async def test_a_post_on_one_instance_is_read_on_another_with_its_token(
    migrated_topology: LocalTopology, pair: tuple[Server, Server], credentials: Credentials
) -> None:
    a, b = pair
    cut_b_replication(migrated_topology)
    untokened: list[bool] = []
    timings: list[float] = []
    gets: list[float] = []
    async with http_session(a) as on_a, http_session(b) as on_b:
        for _ in range(TRIALS):
            started = time.perf_counter()
            created, token = await post(on_a, credentials, algorithm="EdDSA")
            assert token is not None, "a write answers a consistency token"
            posted = time.perf_counter()
            status = await get_status(on_b, credentials, created["id"], token)
            timings.append(time.perf_counter() - started)
            gets.append(time.perf_counter() - posted)
            assert status == 200, "with the token, B must read where the key is"
            untokened.append(await in_standby(b, created["id"]))
    # Without the token B reads its own standby, which never got the key: the setup is real.
    assert False in untokened, untokened
    print(
        f"\nPOST on A -> GET on B with token, B's standby cut: "
        f"median {sorted(timings)[len(timings) // 2] * 1000:.1f} ms, "
        f"worst {max(timings) * 1000:.1f} ms (the GET alone: median "
        f"{sorted(gets)[len(gets) // 2] * 1000:.1f} ms, worst {max(gets) * 1000:.1f} ms); "
        f"without token: {untokened}"
    )


async def test_the_same_with_b_standby_walreceiver_frozen(fresh_topology: LocalTopology) -> None:
    """B's standby frozen as :meth:`LocalTopology.pause` freezes it (its walreceiver
    stopped; the server answers from data that no longer moves), on a topology of its own."""
    async with start(fresh_topology, A_REGION) as a:
        assert await a.database.wait_ready(writable=True, timeout=10)
        await migrate(a.database)
        await asyncio.to_thread(fresh_topology.wait_replayed)
        async with start(fresh_topology, B_REGION) as b:
            issued = await TokenFactory(a)(["env-frozen"])
            await known_everywhere((a, b), issued)
            await asyncio.to_thread(fresh_topology.pause, B_REGION, "walreceiver")
            untokened: list[bool] = []
            async with http_session(a) as on_a, http_session(b) as on_b:
                for _ in range(TRIALS):
                    created, token = await post(on_a, issued, algorithm="EdDSA")
                    assert token is not None
                    assert await get_status(on_b, issued, created["id"], token) == 200
                    untokened.append(await in_standby(b, created["id"]))
            await asyncio.to_thread(fresh_topology.resume, B_REGION)
    assert False in untokened, untokened


async def test_with_the_writer_out_of_sight_a_standby_that_has_the_write_serves_it(
    migrated_topology: LocalTopology, pair: tuple[Server, Server], credentials: Credentials
) -> None:
    """B cannot reach the primary: the token's read goes to A's standby, which replayed the
    write (synchronously); with that one out of sight too, only B's own standby is left,
    which lacks it — the read is refused (503), never answered 404."""
    a, b = pair
    cut_b_replication(migrated_topology)
    primary = migrated_topology.primary
    async with http_session(a) as on_a, http_session(b) as on_b:
        created, token = await post(on_a, credentials, algorithm="EdDSA")
        assert token is not None
        migrated_topology.region(primary).proxy.blackhole()
        await eventually(lambda: b.database.status().region(primary).state == "down", timeout=10)
        assert await get_status(on_b, credentials, created["id"], token) == 200
        assert not await in_standby(b, created["id"])
        migrated_topology.region(A_REGION).proxy.blackhole()
        await eventually(lambda: b.database.status().region(A_REGION).state == "down", timeout=10)
        assert await get_status(on_b, credentials, created["id"], token) in (503, 504)


async def test_a_verification_with_the_token_sees_a_key_the_cache_lacks(
    migrated_topology: LocalTopology, pair: tuple[Server, Server], credentials: Credentials
) -> None:
    """B's key cache holds every key (a miss means "unknown" without a database read), but
    a key created on A reaches it only with B's next poll: with the token, B asks the
    database at once."""
    a, b = pair
    cut_b_replication(migrated_topology)
    async with http_session(a) as on_a, http_session(b) as on_b:
        for _ in range(TRIALS):
            created, token = await post(on_a, credentials, algorithm="EdDSA")
            assert token is not None
            pem = base64.b64decode(created["private_key"])
            signed = jwt.encode(
                {"sub": "p", "aud": "v", "exp": int(time.time()) + 60},
                pem,
                algorithm="EdDSA",
                headers={"kid": created["id"]},
            )
            headers = {**credentials.headers, HEADER: token}
            async with on_b.post(
                "/v1/tokens/verify", json={"token": signed, "audience": "v"}, headers=headers
            ) as response:
                assert response.status == 200
                verdict = (await response.json())["data"]
            assert verdict["valid"] is True, verdict


async def test_a_read_after_a_write_on_the_same_instance_needs_no_token(
    migrated_topology: LocalTopology, pair: tuple[Server, Server], credentials: Credentials
) -> None:
    _, b = pair
    cut_b_replication(migrated_topology)
    async with http_session(b) as on_b:
        for _ in range(TRIALS):
            created, _ = await post(on_b, credentials, algorithm="EdDSA")
            assert await get_status(on_b, credentials, created["id"]) == 200


async def test_a_bad_or_foreign_token_is_refused(
    pair: tuple[Server, Server], credentials: Credentials
) -> None:
    a, _ = pair
    async with http_session(a) as on_a:
        created, token = await post(on_a, credentials, algorithm="EdDSA")
        assert token is not None
        mine = decode_token(token)
        other_system = str((int(mine.system_identifier) + 1) % 2**64)
        foreign = encode_token(CommitPosition(other_system, mine.timeline, mine.lsn))
        # Well-formed base64url, wrong version byte.
        future = base64.urlsafe_b64encode(struct.pack(">BQIQ", 9, 1, 1, 1)).rstrip(b"=")
        for bad in ("garbage", token[:-1] + "!", foreign, future.decode()):
            headers = {**credentials.headers, HEADER: bad}
            async with on_a.get(f"{KEYS}/{created['id']}", headers=headers) as response:
                assert response.status == 400, bad
                body = await response.json()
            assert body["error"]["type"] == "invalid_consistency_token"
            assert bad not in " ".join(body["error"]["messages"])


# -- gRPC ------------------------------------------------------------------------------------


def grpc_metadata(credentials: Credentials, token: str | None = None) -> dict[str, str]:
    return {
        "authorization": credentials.headers["Authorization"],
        **({METADATA: token} if token else {}),
    }


async def grpc_create(
    channel: Channel, credentials: Credentials, environment: str
) -> tuple[str, str | None]:
    async with channel.request(
        "/signingkeys.v1.SigningKeys/CreateSigningKey",
        Cardinality.UNARY_UNARY,
        pb.CreateSigningKeyRequest,
        pb.CreateSigningKeyResponse,
        metadata=grpc_metadata(credentials),
    ) as stream:
        await stream.send_message(
            pb.CreateSigningKeyRequest(environment_id=environment, algorithm="EdDSA"), end=True
        )
        reply = await stream.recv_message()
        await stream.recv_trailing_metadata()
        assert reply is not None
        token = dict(stream.initial_metadata or {}).get(METADATA)
        return reply.key.id, token if isinstance(token, str) else None


async def grpc_get(
    channel: Channel, credentials: Credentials, environment: str, key_id: str, token: str | None
) -> Status:
    stub = pb.SigningKeysStub(channel)
    try:
        await stub.get_signing_key(
            pb.GetSigningKeyRequest(environment_id=environment, id=key_id),
            metadata=grpc_metadata(credentials, token),
        )
    except GRPCError as exc:
        return exc.status
    return Status.OK


async def test_the_same_over_grpc(
    migrated_topology: LocalTopology,
    pair: tuple[Server, Server],
    credentials: Credentials,
    environment: str,
) -> None:
    a, b = pair
    assert a.grpc_port is not None and b.grpc_port is not None
    cut_b_replication(migrated_topology)
    untokened: list[bool] = []
    async with Channel("127.0.0.1", a.grpc_port) as on_a, Channel("127.0.0.1", b.grpc_port) as on_b:
        for _ in range(TRIALS):
            key_id, token = await grpc_create(on_a, credentials, environment)
            assert token is not None, "a write answers x-consistency-token metadata"
            assert await grpc_get(on_b, credentials, environment, key_id, token) is Status.OK
            untokened.append(await in_standby(b, key_id))
        assert False in untokened, untokened
        bad = await grpc_get(on_b, credentials, environment, key_id, "garbage")
        assert bad is Status.INVALID_ARGUMENT


async def test_the_token_is_accepted_on_reads_that_need_nothing(
    pair: tuple[Server, Server], credentials: Credentials
) -> None:
    """A read carrying a token that every region has long replayed reads as usual."""
    a, b = pair
    async with http_session(a) as on_a, http_session(b) as on_b:
        created, token = await post(on_a, credentials)
        assert token is not None
        await asyncio.sleep(0.5)  # replicated everywhere (the link is not cut here)
        assert await get_status(on_b, credentials, created["id"], token) == 200
