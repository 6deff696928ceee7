"""The revocation bound holds when replication misbehaves: the change feed reads only data
younger than ``CHANGE_MAX_DATA_AGE``, and its freshness — hence readiness and the fail-closed
limit — is the age of that data, not the time of its last successful poll."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import aiohttp
import jwt
import pytest

from harness import LocalTopology
from service.server import Server
from service.settings import Settings
from tests.support.service import TokenFactory, service_env

KEYS = "/system/v1/signing-keys"
PRIMARY, STANDBY = "aws-us-east-1", "gcp-us-central1"
REVOCATION_BOUND = 1.0


@pytest.fixture
def standby_frozen(migrated_topology: LocalTopology) -> Iterator[LocalTopology]:
    """The shared topology; the test may freeze the standby's walreceiver and cut proxies,
    and both are undone afterwards whatever happens."""
    yield migrated_topology
    migrated_topology.resume(STANDBY)
    for name in migrated_topology.region_names:
        migrated_topology.region(name).proxy.pass_through()


@pytest.fixture
async def writer_and_reader(
    standby_frozen: LocalTopology,
) -> AsyncIterator[tuple[Server, Server]]:
    """An instance in the primary's region and one in the standby's region."""
    writer = Server(Settings.from_env(service_env(standby_frozen, PRIMARY)))
    reader = Server(Settings.from_env(service_env(standby_frozen, STANDBY)))
    async with writer, reader:
        yield writer, reader


async def until(
    check: Callable[[], Awaitable[object]], expected: object, *, limit: float, what: str
) -> float:
    """Seconds until ``await check()`` equals ``expected`` (tried every 10 ms); fails after
    ``limit`` with the last answer."""
    started = time.monotonic()
    while (seen := await check()) != expected:
        elapsed = time.monotonic() - started
        assert elapsed < limit, f"{what}: still {seen!r} after {limit} s"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def verdict(http: aiohttp.ClientSession, server: Server, token: str) -> object:
    url = f"http://127.0.0.1:{server.http_port}/v1/tokens/verify"
    async with http.post(url, json={"token": token}) as response:
        if response.status != 200:
            return response.status
        return (await response.json())["data"]["reason"] or "valid"


async def create_token(http: aiohttp.ClientSession, server: Server) -> tuple[str, str]:
    """A new key (through ``server``) and a token signed with it."""
    async with http.post(f"http://127.0.0.1:{server.http_port}{KEYS}") as response:
        assert response.status == 201, await response.text()
        created = (await response.json())["data"]
    private = base64.b64decode(created["private_key"])
    claims = {"exp": int(time.time()) + 300}
    return created["id"], jwt.encode(claims, private, "RS256", headers={"kid": created["id"]})


@pytest.mark.fault
async def test_a_revocation_reaches_an_instance_whose_standby_is_frozen_within_a_second(
    writer_and_reader: tuple[Server, Server], standby_frozen: LocalTopology, environment: str
) -> None:
    """The reader's local standby still answers, from data that no longer moves (its
    walreceiver is stopped). A key revoked through the writer's region must be refused by
    the reader within the bound: its feed leaves the frozen standby once that data is older
    than CHANGE_MAX_DATA_AGE. Before, the feed kept polling the standby successfully and the
    revocation waited for MAX_REPLICA_LAG (about 5 s)."""
    writer, reader = writer_and_reader
    credentials = await TokenFactory(writer)([environment])
    await asyncio.to_thread(standby_frozen.wait_replayed)  # the token reaches the standby
    async with aiohttp.ClientSession(headers=credentials.headers) as http:
        key_id, token = await create_token(http, writer)
        await until(lambda: verdict(http, reader, token), "valid", limit=5.0, what="propagated")
        standby_frozen.pause(STANDBY, "walreceiver")
        url = f"http://127.0.0.1:{writer.http_port}{KEYS}/{key_id}"
        async with http.delete(url) as response:
            assert response.status == 204
        lag = await until(
            lambda: verdict(http, reader, token),
            "revoked_key",
            limit=REVOCATION_BOUND,
            what="revocation enforced by the reader",
        )
    assert reader.database.status().read_region == STANDBY, "plain reads may stay local"
    assert lag < REVOCATION_BOUND


@pytest.mark.fault
async def test_verification_fails_closed_when_only_stale_data_is_reachable(
    standby_frozen: LocalTopology, environment: str
) -> None:
    """Every fresh region is cut off from the instance and its own standby answers from
    frozen data: the feed's polls find no data young enough, so the keys age — readiness
    says degraded, then past MAX_STALENESS verification fails closed — although a region
    still answers every query. Before, polls of the frozen standby kept the feed "fresh"
    and the limit never triggered."""
    env = service_env(standby_frozen, STANDBY, max_staleness="2", credential_cache_ttl="60")
    async with Server(Settings.from_env(env)) as server:
        credentials = await TokenFactory(server)([environment])
        await asyncio.to_thread(standby_frozen.wait_replayed)
        base = f"http://127.0.0.1:{server.http_port}"
        async with aiohttp.ClientSession(headers=credentials.headers) as http:
            _, token = await create_token(http, server)
            await until(lambda: verdict(http, server, token), "valid", limit=5.0, what="key")

            async def readyz() -> tuple[int, str]:
                async with http.get(f"{base}/readyz") as response:
                    return response.status, (await response.json())["status"]

            assert await readyz() == (200, "ready")
            standby_frozen.pause(STANDBY, "walreceiver")
            for name in (PRIMARY, "aws-eu-west-1"):
                standby_frozen.region(name).proxy.blackhole()
            await until(readyz, (200, "degraded"), limit=3.0, what="degraded readiness")
            assert server.database.can_read(), "the frozen standby still answers queries"
            await until(lambda: verdict(http, server, token), 503, limit=5.0, what="closed")
            assert await readyz() == (503, "unavailable")

            standby_frozen.resume(STANDBY)
            for name in standby_frozen.region_names:
                standby_frozen.region(name).proxy.pass_through()
            await until(lambda: verdict(http, server, token), "valid", limit=10.0, what="back")
            await until(readyz, (200, "ready"), limit=5.0, what="ready again")
