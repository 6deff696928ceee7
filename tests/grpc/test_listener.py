"""The listening socket we bind ourselves: its port, the connections it can end, and the
guard it applies to them (per-address cap, deadline for a first request).

Ending connections relies on the event loop accepting through our socket's ``accept()``;
the second test fails if an event loop stops doing so. The guard relies on it too, and on
the loop's transport closing the socket it was handed through that socket's ``close()``; the
guard tests here fail if either stops being so, against a bare grpclib server (the whole
service's are in ``tests/security/test_grpc_listener.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import types
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpclib.server
import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError
from grpclib.health.service import Health
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from prometheus_client import CollectorRegistry

from service.grpc.listener import AcceptedSocket, ConnectionGuard, Listener, bind_listener

HEADER_TIMEOUT = 0.5
MAX_PER_CLIENT = 2
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # an empty SETTINGS frame on stream 0


async def test_port_zero_binds_a_free_port_and_a_taken_one_fails_cleanly() -> None:
    listener = await bind_listener("127.0.0.1", 0)
    try:
        assert isinstance(listener, Listener) and listener.port > 0
        listener.listen()
        with pytest.raises(OSError):  # and the failed socket is closed, not leaked
            await bind_listener("127.0.0.1", listener.port)
    finally:
        listener.close()


async def test_the_event_loop_accepts_through_it_and_shutdown_ends_connections() -> None:
    listener = await bind_listener("127.0.0.1", 0)
    server = await asyncio.get_running_loop().create_server(asyncio.Protocol, sock=listener)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        try:
            async with asyncio.timeout(5):
                while listener.connections == 0:
                    await asyncio.sleep(0.01)
            assert listener.connections == 1, "the loop accepted through Listener.accept()"
            assert listener.end_connections() == 1
            assert await asyncio.wait_for(reader.read(), 5) == b""  # end-of-file
            async with asyncio.timeout(5):
                while listener.connections:  # the server's transport closed itself
                    await asyncio.sleep(0.01)
            assert listener.end_connections() == 0
        finally:
            writer.close()
            await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
    assert listener.fileno() == -1, "closing the server closed the listener"


def test_it_is_a_plain_stream_socket() -> None:
    with Listener(socket.AF_INET, socket.SOCK_STREAM, 0) as listener:
        assert listener.type == socket.SOCK_STREAM
        assert listener.connections == 0


@dataclass
class Guarded:
    server: grpclib.server.Server
    guard: ConnectionGuard
    listener: Listener
    registry: CollectorRegistry

    def dropped(self, reason: str) -> float:
        value = self.registry.get_sample_value(
            "signing_keys_grpc_connections_dropped_total", {"reason": reason}
        )
        return value or 0.0

    async def open_raw(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection that says hello (preface, settings) and then nothing."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.listener.port)
        writer.write(PREFACE + SETTINGS)
        await writer.drain()
        return reader, writer

    async def until(self, open_connections: int) -> None:
        async with asyncio.timeout(5):
            while self.guard.open_connections != open_connections:
                await asyncio.sleep(0.01)


@pytest.fixture
async def guarded() -> AsyncIterator[Guarded]:
    registry = CollectorRegistry()
    guard = ConnectionGuard(
        max_per_client=MAX_PER_CLIENT, header_timeout=HEADER_TIMEOUT, registry=registry
    )
    server = grpclib.server.Server([Health()])
    guard.install(server)
    listener = await bind_listener("127.0.0.1", 0, guard=guard)
    await server.start(sock=listener)
    try:
        yield Guarded(server, guard, listener, registry)
    finally:
        server.close()
        listener.end_connections()
        await asyncio.wait_for(server.wait_closed(), 5)


async def seconds_until_closed(reader: asyncio.StreamReader, started: float | None = None) -> float:
    """How long until the server closes the connection (counted from ``started``, a loop
    time, or from now)."""
    if started is None:
        started = asyncio.get_running_loop().time()
    async with asyncio.timeout(10):
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass
    return asyncio.get_running_loop().time() - started


async def test_the_guard_uses_no_private_part_of_grpclib(guarded: Guarded) -> None:
    """The guard is told of connections by the listener and of requests by grpclib's public
    events: the started server is exactly as grpclib made it."""
    plain = grpclib.server.Server([Health()])
    listener = await bind_listener("127.0.0.1", 0)
    await plain.start(sock=listener)
    try:
        assert set(vars(guarded.server)) == set(vars(plain)), "no attribute set on it"
        factory = guarded.server._protocol_factory
        assert isinstance(factory, types.MethodType), "grpclib's own, bound to the server"
        assert factory.__func__ is grpclib.server.Server._protocol_factory
    finally:
        plain.close()
        await plain.wait_closed()


async def test_the_guard_needs_the_server_to_tell_it_of_requests() -> None:
    guard = ConnectionGuard(max_per_client=1, header_timeout=1.0)
    with pytest.raises(ValueError, match="install"):
        await bind_listener("127.0.0.1", 0, guard=guard)


async def test_a_connection_without_a_request_is_shut_after_the_timeout_one_with_stays(
    guarded: Guarded,
) -> None:
    accepted = asyncio.get_running_loop().time()  # its deadline starts at the accept
    reader, writer = await guarded.open_raw()
    channel = Channel("127.0.0.1", guarded.listener.port)
    try:
        await HealthStub(channel).Check(HealthCheckRequest())  # a request: it may idle on
        elapsed = await seconds_until_closed(reader, accepted)
        assert HEADER_TIMEOUT * 0.9 <= elapsed < HEADER_TIMEOUT + 4.0
        assert guarded.dropped("header_timeout") == 1
        await guarded.until(1)  # the silent one's transport closed, and freed its slot
        await asyncio.sleep(HEADER_TIMEOUT * 2)
        await HealthStub(channel).Check(HealthCheckRequest())
        assert guarded.guard.open_connections == 1, "the same connection, never cut"
        assert guarded.dropped("header_timeout") == 1
    finally:
        channel.close()
        writer.close()


async def test_a_silent_connection_after_the_others_have_called_is_still_cut(
    guarded: Guarded,
) -> None:
    """A request looks nothing up while no connection awaits its first one; a connection
    accepted later is awaited again (and its request, or its timeout, counted)."""
    channel = Channel("127.0.0.1", guarded.listener.port)
    try:
        await HealthStub(channel).Check(HealthCheckRequest())
        assert "awaiting_request=0" in repr(guarded.guard)
        reader, writer = await guarded.open_raw()
        await guarded.until(2)
        assert "awaiting_request=1" in repr(guarded.guard)
        await HealthStub(channel).Check(HealthCheckRequest())  # not the silent one's request
        elapsed = await seconds_until_closed(reader)
        assert elapsed < HEADER_TIMEOUT + 4.0
        assert guarded.dropped("header_timeout") == 1
        assert "awaiting_request=0" in repr(guarded.guard)
        writer.close()
    finally:
        channel.close()


async def test_an_address_over_its_cap_is_closed_at_once_and_a_closed_one_frees_its_slot(
    guarded: Guarded,
) -> None:
    held = [await guarded.open_raw() for _ in range(MAX_PER_CLIENT)]
    try:
        await guarded.until(MAX_PER_CLIENT)
        assert all(isinstance(conn, AcceptedSocket) for conn in guarded.listener._connections), (
            "the loop was handed the guard's sockets"
        )
        reader, writer = await guarded.open_raw()
        assert await seconds_until_closed(reader) < HEADER_TIMEOUT * 0.9, "closed at once"
        writer.close()
        assert guarded.dropped("too_many_from_client") == 1
        assert guarded.guard.open_connections == MAX_PER_CLIENT
        # The client hangs up: the loop's transport closes the socket, which frees the slot.
        held.pop()[1].close()
        await guarded.until(MAX_PER_CLIENT - 1)
        channel = Channel("127.0.0.1", guarded.listener.port)
        try:
            await HealthStub(channel).Check(HealthCheckRequest())
        finally:
            channel.close()
        assert guarded.dropped("too_many_from_client") == 1
    finally:
        for _, writer in held:
            writer.close()


async def call_unserved(channel: Channel) -> None:
    unserved = channel.request(
        "/nowhere.v1.Nothing/Nothing",
        Cardinality.UNARY_UNARY,
        HealthCheckRequest,
        HealthCheckResponse,
    )
    async with unserved as stream:
        await stream.send_message(HealthCheckRequest(), end=True)
        await stream.recv_message()


async def test_a_call_to_a_method_the_server_does_not_serve_is_no_request(
    guarded: Guarded,
) -> None:
    """grpclib answers it ``UNIMPLEMENTED`` without a ``RecvRequest`` event: the connection
    is still waiting for its first call, and closed at the timeout."""
    channel = Channel("127.0.0.1", guarded.listener.port)
    try:
        with pytest.raises(GRPCError) as refused:
            await call_unserved(channel)
        # grpclib answers with headers alone (``UNIMPLEMENTED``, no content type); its
        # client reports either, depending on where it reads them.
        assert refused.value.status in (Status.UNIMPLEMENTED, Status.UNKNOWN)
        async with asyncio.timeout(HEADER_TIMEOUT + 4.0):
            while not guarded.dropped("header_timeout"):
                await asyncio.sleep(0.05)
        await guarded.until(0)
    finally:
        channel.close()
