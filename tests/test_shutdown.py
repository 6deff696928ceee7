"""A rolling update drops no request: on SIGTERM the process first fails ``/readyz`` (and gRPC
health) while it still serves, waits ``DRAIN_DELAY``, then closes, all within its bound.

The real ``signing-keys serve`` process gets a real SIGTERM while a load balancer stand-in
routes traffic to it only while its last ``/readyz`` poll said ready — what Kubernetes'
endpoints (and Compose's users' proxies) do, with a poll period of their own.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from harness import LocalTopology
from service import server as server_module
from service.grpc.generated.signingkeys import v1 as pb
from service.server import CLOSE_BOUND, Server
from service.settings import Settings
from tests.support.service import TokenFactory, service_env

ROOT = Path(__file__).resolve().parents[1]
DRAIN_DELAY = 2.0
# The load balancer's readiness poll: well inside the drain delay, as the chart's is.
POLL_PERIOD = 0.2
WORKERS = 8


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Balancer:
    """Sends traffic while the target was ready at the last poll; counts the outcomes."""

    base: str
    in_rotation: bool = False
    left_rotation_at: float | None = None
    outcomes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    stopped: bool = False

    async def poll(self) -> None:
        async with aiohttp.ClientSession() as session:
            while not self.stopped:
                try:
                    async with session.get(f"{self.base}/readyz") as response:
                        ready = response.status == 200
                except aiohttp.ClientError:
                    ready = False
                if self.in_rotation and not ready:
                    self.left_rotation_at = time.monotonic()
                self.in_rotation = ready
                await asyncio.sleep(POLL_PERIOD)

    async def send(self) -> None:
        # A new connection per request, as a proxy opening connections to a new endpoint
        # does: a closed listener shows as a refused connection at once.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            while not self.stopped:
                if not self.in_rotation:
                    await asyncio.sleep(0.01)
                    continue
                try:
                    async with session.get(f"{self.base}/healthz") as response:
                        await response.read()
                        self.outcomes[str(response.status)] += 1
                except aiohttp.ClientError as exc:
                    self.outcomes["error"] += 1
                    self.failures.append(repr(exc))
                await asyncio.sleep(0.005)


async def test_sigterm_fails_readiness_first_and_refuses_no_routed_request(
    migrated_topology: LocalTopology,
) -> None:
    http_port, grpc_port = free_port(), free_port()
    env = {
        **os.environ,
        **service_env(
            migrated_topology,
            http_port=str(http_port),
            grpc_port=str(grpc_port),
            drain_delay=str(DRAIN_DELAY),
            log_level="warning",
        ),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", "serve", cwd=ROOT, env=env
    )
    balancer = Balancer(f"http://127.0.0.1:{http_port}")
    tasks = [asyncio.create_task(balancer.poll())]
    tasks += [asyncio.create_task(balancer.send()) for _ in range(WORKERS)]
    try:
        async with asyncio.timeout(30):
            while balancer.outcomes["200"] < 50:
                await asyncio.sleep(0.05)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(DRAIN_DELAY + CLOSE_BOUND + 10):
            code = await process.wait()
        stopped = time.monotonic() - signalled
    finally:
        balancer.stopped = True
        await asyncio.gather(*tasks, return_exceptions=True)
        if process.returncode is None:
            process.kill()
            await process.wait()

    print(f"\nshutdown: {stopped:.2f} s after SIGTERM; outcomes {dict(balancer.outcomes)}")
    assert code == 0
    assert balancer.left_rotation_at is not None
    # Readiness failed first: the balancer saw it within the delay, not at the closed port.
    assert balancer.left_rotation_at - signalled < DRAIN_DELAY
    assert balancer.outcomes["error"] == 0, balancer.failures[:5]
    assert set(balancer.outcomes) == {"200"}
    # The delay was kept, and the whole stop stayed within DRAIN_DELAY + CLOSE_BOUND.
    assert DRAIN_DELAY <= stopped < DRAIN_DELAY + CLOSE_BOUND


async def test_while_draining_grpc_health_says_not_serving_and_calls_still_answer(
    migrated_topology: LocalTopology,
) -> None:
    settings = Settings.from_env(service_env(migrated_topology, drain_delay="1.5"))
    async with Server(settings) as server:
        assert server.grpc_port is not None
        channel = Channel("127.0.0.1", server.grpc_port)
        try:
            health = HealthStub(channel)
            reply = await health.Check(HealthCheckRequest())
            assert reply.status == HealthCheckResponse.SERVING
            server.request_close()
            await asyncio.sleep(0.2)
            reply = await health.Check(HealthCheckRequest())
            assert reply.status == HealthCheckResponse.NOT_SERVING
            async with aiohttp.ClientSession() as http:
                base = f"http://127.0.0.1:{server.http_port}"
                async with http.get(f"{base}/readyz") as response:
                    assert response.status == 503
                async with http.get(f"{base}/healthz") as response:
                    assert response.status == 200  # liveness holds: no restart mid-drain
        finally:
            channel.close()
        await server.wait_closed()


@pytest.mark.parametrize("delay", ["-1", "x"])
def test_a_bad_drain_delay_is_refused(migrated_topology: LocalTopology, delay: str) -> None:
    with pytest.raises(ValueError, match="SIGNING_KEYS_DRAIN_DELAY"):
        Settings.from_env(service_env(migrated_topology, drain_delay=delay))


async def test_the_close_is_bounded_even_when_parts_below_the_slow_one_are_slow_too(
    migrated_topology: LocalTopology, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bound that only cancelled the part stopping when it expired would let each part
    below it take its own time, past the orchestrator's stop period."""
    monkeypatch.setattr(server_module, "CLOSE_BOUND", 0.5)
    released = asyncio.Event()

    async def wait_released() -> None:
        await released.wait()

    server = Server(Settings.from_env(service_env(migrated_topology)))
    await server.start()
    try:
        # Two more parts, stopped first (the stack unwinds in reverse): a slow one, and
        # below it one that is slower still.
        server._started("slow below", wait_released)
        server._started("slow on top", lambda: asyncio.sleep(1.0))
        started = time.monotonic()
        async with asyncio.timeout(10):
            await server.aclose()
        took = time.monotonic() - started
    finally:
        released.set()
    print(f"\nclose with slow parts: {took:.2f} s (bound 0.5 s)")
    assert took < 0.5 + 0.4
    # What was abandoned still finishes once it can (here: the real parts below).
    async with asyncio.timeout(30):
        while server.running:
            await asyncio.sleep(0.05)


async def read_to_the_end(stream: Any) -> None:
    """Read as a watcher does; the stream's status comes with its trailers."""
    while await stream.recv_message() is not None:
        pass
    await stream.recv_trailing_metadata()


async def test_a_close_with_a_watch_stream_and_idle_connections_open_is_quick(
    migrated_topology: LocalTopology, environment: str
) -> None:
    """What a pod holds at a rolling update: a long-lived WatchSigningKeys stream (ended with
    UNAVAILABLE, the client reconnects elsewhere) and idle keep-alive HTTP connections."""
    settings = Settings.from_env(service_env(migrated_topology, drain_delay="0.5"))
    server = Server(settings)
    await server.start()
    credentials = await TokenFactory(server)([environment])
    assert server.grpc_port is not None
    channel = Channel("127.0.0.1", server.grpc_port)
    http = aiohttp.ClientSession(base_url=f"http://127.0.0.1:{server.http_port}")
    try:
        async with channel.request(
            "/signingkeys.v1.SigningKeys/WatchSigningKeys",
            Cardinality.UNARY_STREAM,
            pb.WatchSigningKeysRequest,
            pb.WatchSigningKeysResponse,
            metadata={"authorization": credentials.headers["Authorization"]},
        ) as stream:
            await stream.send_message(pb.WatchSigningKeysRequest(), end=True)
            synced = await asyncio.wait_for(stream.recv_message(), 5)
            assert synced is not None and synced.kind == pb.WatchEventKind.SYNCED
            for _ in range(3):  # keep-alive connections left idle in the pool
                async with http.get("/healthz") as response:
                    assert response.status == 200
            reading = asyncio.ensure_future(read_to_the_end(stream))
            started = time.monotonic()
            await server.aclose()
            took = time.monotonic() - started
            with pytest.raises(GRPCError) as ended:
                await asyncio.wait_for(reading, 5)
            assert ended.value.status is Status.UNAVAILABLE
    finally:
        await http.close()
        channel.close()
        await server.aclose()
    print(f"\nclose with a watch stream and idle connections: {took:.2f} s (drain 0.5 s)")
    assert 0.5 <= took < 0.5 + CLOSE_BOUND
