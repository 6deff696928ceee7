"""The gRPC port's connection limits, over real sockets: a connection must make its first
call in time (HTTP/2 slowloris), and one client address holds a bounded number of
connections; a client that has made a call may idle on its connection."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from grpclib.client import Channel
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest

from harness import LocalTopology
from service.server import Server
from service.settings import Settings
from tests.support.service import service_env
from tests.support.tls import write_self_signed

HEADER_TIMEOUT = 0.5
MAX_PER_CLIENT = 3
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # an empty SETTINGS frame on stream 0


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big")
        + bytes([kind, flags])
        + stream.to_bytes(4, "big")
        + (payload)
    )


PING = frame(0x6, 0, 0, b"12345678")


@pytest.fixture
async def guarded(migrated_topology: LocalTopology) -> AsyncIterator[Server]:
    settings = Settings.from_env(
        service_env(
            migrated_topology,
            grpc_header_timeout=str(HEADER_TIMEOUT),
            grpc_max_connections_per_client=str(MAX_PER_CLIENT),
        )
    )
    async with Server(settings) as running:
        yield running


def dropped(server: Server, reason: str) -> float:
    value = server.registry.get_sample_value(
        "signing_keys_grpc_connections_dropped_total", {"reason": reason}
    )
    return value or 0.0


async def open_raw(
    server: Server, source: str = "127.0.0.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", server.grpc_port, local_addr=(source, 0)
    )
    writer.write(PREFACE + SETTINGS)
    await writer.drain()
    return reader, writer


async def seconds_until_closed(reader: asyncio.StreamReader, limit: float = 10.0) -> float:
    """Read (and discard) what the server sends until it closes the connection; how long
    that took. Fails if it stays open past ``limit``."""
    started = time.monotonic()
    async with asyncio.timeout(limit):
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass
    return time.monotonic() - started


async def keep_pinging(writer: asyncio.StreamWriter) -> None:
    """Busy but useless: a PING every 100 ms, never a request."""
    with contextlib.suppress(ConnectionError):
        while True:
            writer.write(PING)
            await writer.drain()
            await asyncio.sleep(0.1)


async def test_a_connection_that_never_sends_a_request_is_closed_after_the_header_timeout(
    guarded: Server,
) -> None:
    reader, writer = await open_raw(guarded)
    pinging = asyncio.create_task(keep_pinging(writer))
    try:
        elapsed = await seconds_until_closed(reader)
    finally:
        pinging.cancel()
        writer.close()
    assert HEADER_TIMEOUT * 0.9 <= elapsed < HEADER_TIMEOUT + 4.0
    assert dropped(guarded, "header_timeout") == 1


async def test_a_request_head_trickled_in_and_never_finished_is_closed_too(
    guarded: Server,
) -> None:
    """A HEADERS frame whose payload never all arrives, or without END_HEADERS and no
    CONTINUATION after it, is not a request."""
    for head in (
        frame(0x1, 0x4, 1, b"\x00" * 40)[:30],  # END_HEADERS, but the payload is cut short
        frame(0x1, 0x0, 1, b"\x00" * 40),  # complete frame, but the block goes on
    ):
        reader, writer = await open_raw(guarded)
        writer.write(head)
        await writer.drain()
        try:
            elapsed = await seconds_until_closed(reader)
        finally:
            writer.close()
        assert elapsed < HEADER_TIMEOUT + 4.0


async def test_a_client_that_has_made_a_request_may_idle_past_the_header_timeout(
    guarded: Server,
) -> None:
    channel = Channel("127.0.0.1", guarded.grpc_port)
    try:
        health = HealthStub(channel)
        await health.Check(HealthCheckRequest())
        assert guarded.grpc is not None
        assert guarded.grpc.connection_guard.open_connections == 1
        await asyncio.sleep(HEADER_TIMEOUT * 3)  # idle, as gRPC channels do
        await health.Check(HealthCheckRequest())
        assert guarded.grpc.connection_guard.open_connections == 1, "the same connection"
    finally:
        channel.close()
    assert dropped(guarded, "header_timeout") == 0


async def test_one_client_address_holds_at_most_the_cap_and_others_are_not_affected(
    guarded: Server,
) -> None:
    held = [await open_raw(guarded) for _ in range(MAX_PER_CLIENT)]
    assert guarded.grpc is not None
    guard = guarded.grpc.connection_guard
    try:
        async with asyncio.timeout(5):
            while guard.open_connections < MAX_PER_CLIENT:
                await asyncio.sleep(0.01)
        reader, writer = await open_raw(guarded)
        assert await seconds_until_closed(reader) < HEADER_TIMEOUT * 0.9, "closed at once"
        writer.close()
        assert dropped(guarded, "too_many_from_client") == 1
        # Another address (loopback is a /8) is counted on its own.
        _, other = await open_raw(guarded, source="127.0.0.2")
        async with asyncio.timeout(5):
            while guard.open_connections < MAX_PER_CLIENT + 1:
                await asyncio.sleep(0.01)
        other.close()
        # One of the first address's connections goes: a new one is admitted again.
        held.pop()[1].close()
        async with asyncio.timeout(5):
            while guard.open_connections >= MAX_PER_CLIENT:
                await asyncio.sleep(0.01)
        channel = Channel("127.0.0.1", guarded.grpc_port)
        try:
            await HealthStub(channel).Check(HealthCheckRequest())
        finally:
            channel.close()
        assert dropped(guarded, "too_many_from_client") == 1
    finally:
        for _, writer in held:
            writer.close()


async def test_with_tls_a_stalled_handshake_is_bounded_by_the_header_timeout_too(
    migrated_topology: LocalTopology, tmp_path: Path
) -> None:
    """The event loop runs a TLS handshake before the connection's protocol exists (and
    gives it 60 s); the deadline starts at the accept, so a client that connects and never
    says hello is closed like one that never sends a request — and a real TLS client still
    calls."""
    cert_file, key_file = write_self_signed(tmp_path)
    settings = Settings.from_env(
        service_env(
            migrated_topology,
            grpc_header_timeout=str(HEADER_TIMEOUT),
            tls_cert_file=str(cert_file),
            tls_key_file=str(key_file),
        )
    )
    async with Server(settings) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.grpc_port)
        try:
            elapsed = await seconds_until_closed(reader)
        finally:
            writer.close()
        assert HEADER_TIMEOUT * 0.9 <= elapsed < HEADER_TIMEOUT + 4.0
        assert dropped(server, "header_timeout") == 1
        client = ssl.create_default_context(cafile=str(cert_file))
        client.set_alpn_protocols(["h2"])
        channel = Channel("localhost", server.grpc_port, ssl=client)
        try:
            health = HealthStub(channel)
            await health.Check(HealthCheckRequest())
            await asyncio.sleep(HEADER_TIMEOUT * 3)
            await health.Check(HealthCheckRequest())
        finally:
            channel.close()
        assert dropped(server, "header_timeout") == 1, "the TLS client was not cut off"
