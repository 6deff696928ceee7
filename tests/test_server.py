"""The composition root: one readiness for every surface, and startup and shutdown as one
ordered stack — against the real service on the local topology."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from grpclib.client import Channel
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from harness import LocalTopology
from service.grpc.server import SERVICE_NAME
from service.server import Server
from service.settings import Settings
from tests.support.service import service_env

SERVING = HealthCheckResponse.SERVING
NOT_SERVING = HealthCheckResponse.NOT_SERVING
STARTED = [
    ("started", "database"),
    ("started", "credentials"),
    ("started", "change feed"),
    ("started", "http"),
    ("started", "grpc"),
]


async def _wait_for(predicate: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


# --- one readiness ------------------------------------------------------------------------


@pytest.fixture
def all_regions_cut(migrated_topology: LocalTopology) -> Iterator[LocalTopology]:
    yield migrated_topology
    for name in migrated_topology.region_names:
        migrated_topology.region(name).proxy.pass_through()


@pytest.fixture
async def degradable(all_regions_cut: LocalTopology) -> AsyncIterator[Server]:
    """A server whose regions the test can cut, with a short allowed key staleness."""
    env = service_env(
        all_regions_cut,
        probe_interval="0.05",
        probe_timeout="0.2",
        request_deadline="0.5",
        max_staleness="2",
    )
    async with Server(Settings.from_env(env)) as server:
        yield server


async def _surfaces(
    server: Server, http: aiohttp.ClientSession, health: HealthStub
) -> tuple[int, str, float | None, object, object]:
    """What /readyz, the degraded gauge and gRPC health ("" and the service) say now."""
    async with http.get("/readyz") as response:
        status, body = response.status, await response.json()
    gauge = server.registry.get_sample_value("signing_keys_degraded")
    overall = (await health.Check(HealthCheckRequest(service=""))).status
    service = (await health.Check(HealthCheckRequest(service=SERVICE_NAME))).status
    return status, body["status"], gauge, overall, service


async def test_readyz_the_gauge_and_grpc_health_agree_in_every_state(
    degradable: Server, all_regions_cut: LocalTopology
) -> None:
    server, topology = degradable, all_regions_cut
    assert server.grpc_port is not None
    channel = Channel("127.0.0.1", server.grpc_port)
    try:
        async with (
            aiohttp.ClientSession(base_url=f"http://127.0.0.1:{server.http_port}") as http,
            HealthStub(channel).Watch.open() as watch,
        ):
            health = HealthStub(channel)
            await watch.send_message(HealthCheckRequest(service=SERVICE_NAME), end=True)
            first = await asyncio.wait_for(watch.recv_message(), 5)
            assert first is not None and first.status == SERVING

            await _wait_for(lambda: server.readiness.state() == "ready")
            assert await _surfaces(server, http, health) == (200, "ready", 0.0, SERVING, SERVING)

            for name in topology.region_names:
                topology.region(name).proxy.blackhole()
            await _wait_for(lambda: server.readiness.state() == "degraded")
            assert await _surfaces(server, http, health) == (
                200,
                "degraded",
                1.0,
                SERVING,  # verification goes on from the last known good keys
                SERVING,
            )

            # No region event announces it: the keys simply grow too old.
            await _wait_for(lambda: server.readiness.state() == "unavailable")
            assert await _surfaces(server, http, health) == (
                503,
                "unavailable",
                0.0,
                NOT_SERVING,
                NOT_SERVING,
            )
            changed = await asyncio.wait_for(watch.recv_message(), 5)
            assert changed is not None and changed.status == NOT_SERVING, (
                "the watch said nothing while degraded, then the flip"
            )

            for name in topology.region_names:
                topology.region(name).proxy.pass_through()
            await _wait_for(lambda: server.readiness.state() == "ready")
            assert await _surfaces(server, http, health) == (200, "ready", 0.0, SERVING, SERVING)
            back = await asyncio.wait_for(watch.recv_message(), 5)
            assert back is not None and back.status == SERVING
            await watch.cancel()
    finally:
        channel.close()


# --- one ordered lifecycle ----------------------------------------------------------------


@pytest.fixture
def settings(migrated_topology: LocalTopology) -> Settings:
    return Settings.from_env(service_env(migrated_topology))


async def _refuses(port: int | None) -> bool:
    assert port is not None
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    await writer.wait_closed()
    return False


async def test_shutdown_is_startup_in_reverse(settings: Settings) -> None:
    server = Server(settings)
    assert "new" in repr(server)
    await server.start()
    assert server.history == STARTED
    assert server.running == ["database", "credentials", "change feed", "http", "grpc"]
    assert "serving" in repr(server)
    with pytest.raises(RuntimeError, match="start it once"):
        await server.start()

    await server.aclose()
    assert server.history == [*STARTED, *[("stopped", name) for _, name in reversed(STARTED)]]
    assert server.running == []
    assert "closed" in repr(server)
    assert await _refuses(server.http_port) and await _refuses(server.grpc_port)
    with pytest.raises(RuntimeError, match="closed"):
        await server.database.read(lambda conn: conn.fetchval("SELECT 1"))


async def test_a_second_close_waits_for_the_first_and_cancelling_does_not_stop_it(
    settings: Settings,
) -> None:
    server = Server(settings)
    await server.start()
    first = asyncio.create_task(server.aclose())
    second = asyncio.create_task(server.aclose())
    await asyncio.sleep(0)
    first.cancel()  # the caller gives up; the shutdown goes on
    await asyncio.wait_for(second, 30)
    assert server.running == [], "the second close returned only once all had stopped"
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(server.wait_closed(), 1)
    await server.aclose()  # and once closed, closing again is a no-op
    assert len(server.history) == 2 * len(STARTED)


async def test_a_startup_failure_half_way_undoes_only_what_started(
    migrated_topology: LocalTopology,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = service_env(migrated_topology, grpc_port=str(port))
        server = Server(Settings.from_env(env))
        with pytest.raises(OSError) as raised:
            await server.start()
        assert raised.value.errno is not None
    assert server.history == [
        ("started", "database"),
        ("started", "credentials"),
        ("started", "change feed"),
        ("started", "http"),
        ("stopped", "http"),
        ("stopped", "change feed"),
        ("stopped", "credentials"),
        ("stopped", "database"),
    ]
    assert await _refuses(server.http_port), "the HTTP listener is closed"
    with pytest.raises(RuntimeError, match="closed"):
        await server.database.read(lambda conn: conn.fetchval("SELECT 1"))
    assert server.grpc is not None and server.grpc.connections == 0
    await asyncio.wait_for(server.wait_closed(), 1)
    await server.aclose()


async def test_without_grpc_the_stack_holds_four_parts(migrated_topology: LocalTopology) -> None:
    env = service_env(migrated_topology, grpc_enabled="false")
    async with Server(Settings.from_env(env)) as server:
        assert server.running == ["database", "credentials", "change feed", "http"]
    assert [name for event, name in server.history if event == "stopped"] == [
        "http",
        "change feed",
        "credentials",
        "database",
    ]
