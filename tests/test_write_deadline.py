"""Key writes have a deadline of their own (``WRITE_DEADLINE``), longer than reads'
(``REQUEST_DEADLINE``): on CockroachDB a key write commits to GLOBAL tables, whose commit
waits out the cluster's maximum clock offset after a cross-region consensus round, and a
40001 retry repeats all of it — one retry from the farthest region already exceeds 2 s.

Here the slow commit is a slow path to the primary (the harness's proxy adds latency to
every chunk), which makes every statement of the write slow, as a remote leaseholder does.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from harness import LocalTopology
from service.server import Server
from service.settings import Settings, SettingsError
from tests.support.service import TokenFactory, service_env

KEYS = "/system/v1/signing-keys"
REQUEST_DEADLINE = 1.0
WRITE_DEADLINE = 8.0
# Per chunk, each way: a key write's dozen round trips then take well over REQUEST_DEADLINE.
LATENCY = 0.1


@pytest.fixture
async def slow_primary_server(migrated_topology: LocalTopology) -> AsyncIterator[Server]:
    env = service_env(
        migrated_topology,
        request_deadline=str(REQUEST_DEADLINE),
        write_deadline=str(WRITE_DEADLINE),
        change_overlap=str(WRITE_DEADLINE + 2),
        probe_timeout="1.5",
        statement_timeout="5",
        hedge_delay="off",
    )
    async with Server(Settings.from_env(env)) as server:
        yield server


async def test_a_key_write_slower_than_the_request_deadline_completes_within_the_write_deadline(
    slow_primary_server: Server, migrated_topology: LocalTopology, environment: str
) -> None:
    server = slow_primary_server
    assert await server.database.wait_ready(writable=True, timeout=10)
    credentials = await TokenFactory(server)([environment])
    migrated_topology.region(migrated_topology.primary).proxy.delay(LATENCY)
    base = f"http://127.0.0.1:{server.http_port}"
    async with aiohttp.ClientSession(base_url=base) as http:
        started = time.monotonic()
        async with http.post(KEYS, headers=credentials.headers, json={}) as response:
            body = await response.text()
        took = time.monotonic() - started
    print(f"\nkey write over the slow path: {took:.2f} s, status {response.status}")
    assert took > REQUEST_DEADLINE, "the path was not slow enough to test anything"
    assert response.status == 201, body


def test_the_change_feed_overlap_must_cover_the_longest_write(
    migrated_topology: LocalTopology,
) -> None:
    """The feed re-reads `overlap` behind its watermark; a write may commit that late."""
    with pytest.raises(SettingsError, match="SIGNING_KEYS_WRITE_DEADLINE"):
        Settings.from_env(service_env(migrated_topology, write_deadline="6"))
    settings = Settings.from_env(
        service_env(migrated_topology, write_deadline="6", change_overlap="7")
    )
    assert settings.longest_write == 6.0
