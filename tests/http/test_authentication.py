"""Authentication over HTTP as a hostile client sees it: whatever bytes it sends as
credentials, the answer is 401, never an error of ours."""

from __future__ import annotations

import asyncio
import io
import statistics
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from harness import LocalTopology
from service.grpc.generated.signingkeys import v1 as pb
from service.server import Server
from service.settings import Settings
from tests.support.service import TokenFactory, errors_logged, service_env


async def raw_exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` as it is on a fresh connection; the response's status line and
    headers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_a_non_utf8_byte_in_the_secret_is_unauthenticated_not_an_error(
    server: Server, log_stream: io.StringIO
) -> None:
    """Before: 500, and a traceback in the log (the secret could not be encoded to hash)."""
    assert server.http_port is not None
    for credentials in (b"skt_AAAAAAAAAAAAAAAA:\xe9", b"skt_AAAAAAAAAAAAAAAA:\xc3\xa9"):
        head = await raw_exchange(
            server.http_port,
            b"POST /v1/tokens/verify HTTP/1.1\r\nHost: localhost\r\n"
            b"Authorization: Bearer " + credentials + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
        )
        assert head.startswith(b"HTTP/1.1 401 "), head
    assert errors_logged(log_stream) == []


UNKNOWN_ID = "skt_{:016d}"
GUESS = "a-guessed-secret-as-long-as-a-real-one-xxxx"


def db_attempts(server: Server) -> float:
    """Database attempts so far, of every kind, in every region (the router's histogram)."""
    return sum(
        sample.value
        for metric in server.registry.collect()
        if metric.name == "signing_keys_db_query_seconds"
        for sample in metric.samples
        if sample.name.endswith("_count")
    )


@pytest.fixture
async def quiet_server(migrated_topology: LocalTopology) -> AsyncIterator[Server]:
    """A service whose background polls stay away while a test counts database reads (its
    limits on failed authentications are the tests' loose ones)."""
    env = service_env(migrated_topology, change_poll_interval="60", change_overlap="70")
    async with Server(Settings.from_env(env)) as running:
        yield running


async def test_unknown_token_ids_cost_no_database_read(quiet_server: Server) -> None:
    """Before: every unknown id of the right shape was a database read (200 here)."""
    server = quiet_server
    async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http:
        before = db_attempts(server)
        for i in range(200):
            headers = {"Authorization": f"Bearer {UNKNOWN_ID.format(i)}:{GUESS}"}
            async with http.get("/v1/environments/env-x/jwks.json", headers=headers) as response:
                assert response.status == 401
        assert db_attempts(server) == before


async def test_an_unknown_id_answers_as_fast_as_a_wrong_secret(quiet_server: Server) -> None:
    """Timing must not tell which ids exist. Before: ≈1.1 ms for an unknown id (a database
    read) against ≈0.5 ms for a wrong secret. Medians of interleaved tries, with a margin
    (0.3 ms) well below a database read and well above the noise."""
    server = quiet_server
    known = await TokenFactory(server)(["env-x"])
    timings: dict[str, list[float]] = {"unknown": [], "wrong": []}
    async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http:
        for i in range(400):
            for kind, token_id in (("unknown", UNKNOWN_ID.format(i)), ("wrong", known.login)):
                headers = {"Authorization": f"Bearer {token_id}:{GUESS}"}
                started = time.perf_counter()
                async with http.get("/v1/environments/env-x/jwks.json", headers=headers) as r:
                    assert r.status == 401
                timings[kind].append(time.perf_counter() - started)
    unknown, wrong = (statistics.median(timings[kind]) for kind in ("unknown", "wrong"))
    print(f"\nmedian: unknown id {unknown * 1e3:.3f} ms, wrong secret {wrong * 1e3:.3f} ms")
    assert abs(unknown - wrong) < 0.3e-3, (unknown, wrong)


async def test_a_client_over_its_failed_authentications_gets_429_over_http_and_grpc(
    migrated_topology: LocalTopology, log_stream: io.StringIO
) -> None:
    env = service_env(migrated_topology, auth_failures_per_client="1")  # and a burst of one
    async with Server(Settings.from_env(env)) as server:
        headers = {"Authorization": f"Bearer {UNKNOWN_ID.format(1)}:{GUESS}"}
        seen: list[int] = []
        async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http:
            while 429 not in seen:
                assert len(seen) < 100, seen
                async with http.get("/v1/environments/env-x/jwks.json", headers=headers) as r:
                    seen.append(r.status)
                    if r.status == 429:
                        assert int(r.headers["Retry-After"]) >= 1
                        body = await r.json()
        assert seen[0] == 401 and set(seen) == {401, 429}
        assert body["error"]["type"] == "too_many_requests"
        assert "failed authentications" in body["error"]["messages"][0]

        async with Channel("127.0.0.1", server.grpc_port) as channel:
            stub = pb.SigningKeysStub(channel)
            statuses: list[Status] = []
            while Status.RESOURCE_EXHAUSTED not in statuses:
                assert len(statuses) < 100, statuses
                with pytest.raises(GRPCError) as refused:
                    await stub.get_signing_key(
                        pb.GetSigningKeyRequest(id="k"),
                        metadata={"authorization": headers["Authorization"]},
                    )
                statuses.append(refused.value.status)
        assert metric(server, "signing_keys_limited_total", limit="auth_client") >= 2
        assert metric(server, "signing_keys_auth_failures_total", reason="unknown_token") >= 1
    assert errors_logged(log_stream) == []


def metric(server: Server, name: str, **labels: str) -> float:
    return server.registry.get_sample_value(name, labels) or 0.0
