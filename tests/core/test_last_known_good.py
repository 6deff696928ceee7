"""Every region unreachable: verification goes on from the last known good keys, for a
bounded time, and the service says it is degraded; key writes fail fast."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator

import aiohttp
import jwt
import pytest

from harness import LocalTopology
from service.server import Server
from service.settings import Settings
from tests.support.service import TokenFactory, service_env

KEYS = "/system/v1/signing-keys"


@pytest.fixture
def all_regions_cut(migrated_topology: LocalTopology) -> Iterator[LocalTopology]:
    yield migrated_topology
    for name in migrated_topology.region_names:
        migrated_topology.region(name).proxy.pass_through()


async def _wait_for(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_cached_keys_keep_verifying_while_every_region_is_down(
    all_regions_cut: LocalTopology, environment: str
) -> None:
    topology = all_regions_cut
    env = service_env(
        topology,
        probe_interval="0.05",
        probe_timeout="0.2",
        request_deadline="0.5",
        max_staleness="5",  # room for a loaded machine between the cut and the checks
        credential_cache_ttl="0.2",
    )
    async with Server(Settings.from_env(env)) as server:
        auth = (await TokenFactory(server)([environment])).headers
        base = f"http://127.0.0.1:{server.http_port}"
        async with aiohttp.ClientSession(base_url=base, headers=auth) as http:
            async with http.post(KEYS, json={"algorithm": "ES256"}) as response:
                created = (await response.json())["data"]
            private = base64.b64decode(created["private_key"])
            token = jwt.encode(
                {"exp": int(time.time()) + 60}, private, "ES256", headers={"kid": created["id"]}
            )
            # The credential is in the table since it was issued; the key since the create.
            async with http.post("/v1/tokens/verify", json={"token": token}) as response:
                assert (await response.json())["data"]["valid"] is True

            for name in topology.region_names:
                topology.region(name).proxy.blackhole()
            await _wait_for(lambda: not server.database.can_read())
            await asyncio.sleep(0.3)  # past the credential resync: last known good now

            async with http.get("/readyz") as response:
                assert response.status == 200
                assert (await response.json())["status"] == "degraded"
            async with http.get("/metrics") as response:
                assert "signing_keys_degraded 1.0" in await response.text()
            async with http.post("/v1/tokens/verify", json={"token": token}) as response:
                assert (await response.json())["data"]["valid"] is True, "last known good"
            unknown = jwt.encode(
                {"exp": int(time.time()) + 60}, private, "ES256", headers={"kid": "neverSeen"}
            )
            async with http.post("/v1/tokens/verify", json={"token": unknown}) as response:
                assert (await response.json())["data"]["reason"] == "unknown_key"
            started = time.monotonic()
            async with http.post(KEYS) as response:
                assert response.status == 503
                body = await response.json()
            assert time.monotonic() - started < 1.0, "writes fail fast"
            text = " ".join(body["error"]["messages"])
            assert "writable" in text.lower()
            assert "127.0.0.1" not in text and "Errno" not in text, "no internals to clients"

            # Past the allowed staleness, verification fails closed.
            await _wait_for(lambda: not server.verifier.can_serve(), timeout=12)
            async with http.post("/v1/tokens/verify", json={"token": token}) as response:
                assert response.status == 503
            async with http.get("/readyz") as response:
                assert response.status == 503

            for name in topology.region_names:
                topology.region(name).proxy.pass_through()
            await _wait_for(
                lambda: (
                    server.database.can_read()
                    and server.verifier.can_serve()
                    and server.authenticator.can_serve()
                )  # the credentials are polled apart
            )
            async with http.get("/readyz") as response:
                assert (await response.json())["status"] == "ready"
            async with http.post("/v1/tokens/verify", json={"token": token}) as response:
                assert (await response.json())["data"]["valid"] is True
