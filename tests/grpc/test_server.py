"""The GrpcServer as a whole: health that follows the router, reflection, message limits,
malformed input and its lifecycle — against the real service's collaborators."""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.descriptor_pb2 import FileDescriptorProto
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpclib.reflection.v1.reflection_grpc import ServerReflectionStub
from grpclib.reflection.v1.reflection_pb2 import ServerReflectionRequest

from service.core.auth import CLIENT_ADDRESS
from service.core.keys import KeyService
from service.core.models import Principal, SigningKey
from service.core.readiness import Readiness
from service.core.requests import KeyRef
from service.grpc import server as grpc_server_module
from service.grpc.generated.signingkeys import v1 as pb
from service.grpc.limits import SizeLimit
from service.grpc.server import SERVICE_NAME, GrpcServer
from service.server import Server
from tests.support.service import build_grpc_server
from tests.support.tls import write_self_signed

GET = "/signingkeys.v1.SigningKeys/GetSigningKey"
SERVING = HealthCheckResponse.SERVING
NOT_SERVING = HealthCheckResponse.NOT_SERVING


class FakeRegions:
    """A router stand-in whose read health the test flips."""

    def __init__(self, readable: bool = True) -> None:
        self.readable = readable
        self.listeners: list[Callable[..., Any]] = []

    def can_read(self) -> bool:
        return self.readable

    def add_listener(self, callback: Callable[..., Any]) -> None:
        self.listeners.append(callback)

    def flip(self, readable: bool) -> None:
        self.readable = readable
        for listener in self.listeners:
            listener()


class RawCodec(CodecBase):
    """Sends bytes as they are, so a test can put anything on the wire."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        assert isinstance(message, bytes)
        return message

    def decode(self, data: bytes, message_type: Any) -> Any:
        return data


async def raw_call(channel: Channel, payload: bytes | None, path: str = GET) -> bytes:
    # Client-streaming on our side only so that grpclib lets a test send no message at all.
    async with channel.request(path, Cardinality.STREAM_UNARY, bytes, bytes) as stream:
        if payload is None:
            await stream.send_request(end=True)
        else:
            await stream.send_message(payload, end=True)
        reply = await stream.recv_message()
        assert reply is not None
        return reply


# --- health -------------------------------------------------------------------------------


async def test_health_is_serving_for_the_server_and_the_service(channel: Channel) -> None:
    health = HealthStub(channel)
    for service in ("", SERVICE_NAME):
        reply = await health.Check(HealthCheckRequest(service=service))
        assert reply.status == SERVING, service
    with pytest.raises(GRPCError) as raised:
        await health.Check(HealthCheckRequest(service="no.such.Service"))
    assert raised.value.status is Status.NOT_FOUND


async def test_health_follows_readiness_and_stays_serving_while_degraded(server: Server) -> None:
    regions = FakeRegions()
    verifying = [True]
    readiness = Readiness(can_read=regions.can_read, can_verify=lambda: verifying[0])
    grpc_server = build_grpc_server(server, readiness=readiness, regions=regions)
    async with grpc_server:
        assert grpc_server.port is not None
        channel = Channel("127.0.0.1", grpc_server.port)
        try:
            health = HealthStub(channel)

            async def statuses() -> list[object]:
                return [
                    (await health.Check(HealthCheckRequest(service=service))).status
                    for service in ("", SERVICE_NAME)
                ]

            async with health.Watch.open() as watch:
                await watch.send_message(HealthCheckRequest(service=SERVICE_NAME), end=True)
                first = await asyncio.wait_for(watch.recv_message(), 5)
                assert first is not None and first.status == SERVING

                regions.flip(False)  # degraded: verification goes on from cached keys
                assert await statuses() == [SERVING, SERVING]

                verifying[0] = False  # unavailable
                regions.flip(False)
                changed = await asyncio.wait_for(watch.recv_message(), 5)
                assert changed is not None and changed.status == NOT_SERVING, (
                    "nothing was sent while degraded"
                )
                assert await statuses() == [NOT_SERVING, NOT_SERVING]

                verifying[0] = True
                regions.flip(True)
                back = await asyncio.wait_for(watch.recv_message(), 5)
                assert back is not None and back.status == SERVING
                await watch.cancel()
        finally:
            channel.close()


# --- reflection ---------------------------------------------------------------------------


async def test_reflection_lists_and_describes_the_services(channel: Channel) -> None:
    reflection = ServerReflectionStub(channel)
    replies = await reflection.ServerReflectionInfo(
        [
            ServerReflectionRequest(list_services=""),
            ServerReflectionRequest(file_containing_symbol=SERVICE_NAME),
        ]
    )
    listed = {service.name for service in replies[0].list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= listed
    (raw,) = replies[1].file_descriptor_response.file_descriptor_proto
    descriptor = FileDescriptorProto.FromString(raw)
    assert descriptor.package == "signingkeys.v1"
    (service,) = descriptor.service
    assert {method.name for method in service.method} == {
        "CreateSigningKey",
        "ImportSigningKey",
        "GetSigningKey",
        "ListSigningKeys",
        "BatchGetSigningKeys",
        "ListAuditEvents",
        "RevokeSigningKey",
        "VerifyToken",
        "WatchSigningKeys",
        "RotateSigningKey",
        "UpdateSigningKey",
        "GetCurrentSigningKey",
        "GetJwks",
    }
    watch = next(method for method in service.method if method.name == "WatchSigningKeys")
    assert watch.server_streaming and not watch.client_streaming


# --- limits and malformed input -----------------------------------------------------------


@pytest.fixture
async def raw_channel(grpc_port: int) -> Any:
    channel = Channel("127.0.0.1", grpc_port, codec=RawCodec())
    yield channel
    channel.close()


async def test_an_oversized_request_is_refused_from_its_prefix_and_the_server_goes_on(
    raw_channel: Channel, server: Server
) -> None:
    limit = server.settings.max_body_bytes
    for size in (limit + 1, 8 * 1024 * 1024):
        payload = b"\x0a" + _varint(size) + b"a" * size
        with pytest.raises(GRPCError) as raised:
            await asyncio.wait_for(raw_call(raw_channel, payload), 10)
        assert raised.value.status is Status.RESOURCE_EXHAUSTED
        assert raised.value.message == f"request message larger than {limit} bytes"
    ok = pb.GetSigningKeyRequest(id="x")
    with pytest.raises(GRPCError) as unauthenticated:
        await raw_call(raw_channel, bytes(ok))
    assert unauthenticated.value.status is Status.UNAUTHENTICATED, "the connection still serves"


@pytest.mark.parametrize(
    "payload",
    [
        b"\x0a\x05ab",  # a string announcing 5 bytes, carrying 2
        b"\x0a\x02\xff\xfe",  # a string that is not UTF-8
        b"\x08\x96\x01",  # a varint where a string belongs
        b"\xff\xff\xff",  # no valid tag at all
        b"\x0b",  # a group start, which proto3 does not know
    ],
)
async def test_a_malformed_request_gets_invalid_argument(
    raw_channel: Channel, payload: bytes
) -> None:
    with pytest.raises(GRPCError) as raised:
        await raw_call(raw_channel, payload)
    assert raised.value.status is Status.INVALID_ARGUMENT
    assert raised.value.message == "malformed request message"


async def test_a_call_without_a_request_message_gets_invalid_argument(
    raw_channel: Channel,
) -> None:
    with pytest.raises(GRPCError) as raised:
        await raw_call(raw_channel, None)
    assert raised.value.status is Status.INVALID_ARGUMENT


async def test_health_and_reflection_are_size_limited_too(
    raw_channel: Channel, server: Server
) -> None:
    size = server.settings.max_body_bytes + 1
    with pytest.raises(GRPCError) as raised:
        await raw_call(
            raw_channel, b"\x0a" + _varint(size) + b"a" * size, "/grpc.health.v1.Health/Check"
        )
    assert raised.value.status is Status.RESOURCE_EXHAUSTED


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


# --- lifecycle ----------------------------------------------------------------------------


async def test_port_zero_picks_a_port_and_shutdown_ends_open_streams_with_unavailable(
    server: Server, md: dict[str, str]
) -> None:
    grpc_server = build_grpc_server(server)
    await grpc_server.start("127.0.0.1", 0)
    assert grpc_server.port and grpc_server.port > 0
    assert "serving" in repr(grpc_server)
    with pytest.raises(RuntimeError):
        await grpc_server.start("127.0.0.1", 0)
    channel = Channel("127.0.0.1", grpc_server.port)
    try:
        async with (
            channel.request(
                "/signingkeys.v1.SigningKeys/WatchSigningKeys",
                Cardinality.UNARY_STREAM,
                pb.WatchSigningKeysRequest,
                pb.WatchSigningKeysResponse,
                metadata=md,
            ) as stream,
            HealthStub(channel).Watch.open() as health_watch,
        ):
            await stream.send_message(pb.WatchSigningKeysRequest(), end=True)
            synced = await asyncio.wait_for(stream.recv_message(), 5)
            assert synced is not None and synced.kind == pb.WatchEventKind.SYNCED
            await health_watch.send_message(HealthCheckRequest(service=""), end=True)
            first = await asyncio.wait_for(health_watch.recv_message(), 5)
            assert first is not None and first.status == SERVING

            # Clients reading when the shutdown comes, as watchers do.
            reads = [
                asyncio.ensure_future(_read_to_the_end(open_stream))
                for open_stream in (stream, health_watch)
            ]
            await asyncio.sleep(0.05)
            grpc_server.close()
            await asyncio.wait_for(grpc_server.wait_closed(), 6)
            for read in reads:
                with pytest.raises(GRPCError) as ended:
                    await asyncio.wait_for(read, 5)
                assert ended.value.status is Status.UNAVAILABLE
                assert ended.value.message == "the server is shutting down; retry elsewhere"
    finally:
        channel.close()
    assert "closed" in repr(grpc_server)
    assert grpc_server.connections == 0


async def _read_to_the_end(stream: Any) -> None:
    while await stream.recv_message() is not None:
        pass
    await stream.recv_trailing_metadata()


async def test_the_async_context_manager_starts_on_the_settings_address(server: Server) -> None:
    async with build_grpc_server(server) as grpc_server:
        assert isinstance(grpc_server, GrpcServer) and grpc_server.port
        _, writer = await asyncio.open_connection("127.0.0.1", grpc_server.port)
        writer.close()
        await writer.wait_closed()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", grpc_server.port)


async def test_shutdown_closes_idle_connections_so_clients_go_elsewhere(server: Server) -> None:
    grpc_server = build_grpc_server(server)
    await grpc_server.start("127.0.0.1", 0)
    assert grpc_server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", grpc_server.port)
    try:
        async with asyncio.timeout(5):
            while grpc_server.connections == 0:
                await asyncio.sleep(0.01)
        await asyncio.wait_for(grpc_server.aclose(), 6)
        # The server's HTTP/2 preface, then end-of-file: the connection is closed.
        await asyncio.wait_for(reader.read(), 5)
        assert reader.at_eof()
    finally:
        writer.close()
        await writer.wait_closed()
    assert grpc_server.connections == 0


class _GatedKeys(KeyService):
    """The real KeyService, holding each get until the test opens the gate."""

    def __init__(self, database: Any) -> None:
        super().__init__(database)
        self.gate = asyncio.Event()

    async def get(self, principal: Principal, ref: KeyRef) -> SigningKey:
        await self.gate.wait()
        return await super().get(principal, ref)


async def test_shutdown_lets_unary_calls_in_flight_finish(
    server: Server, md: dict[str, str]
) -> None:
    keys = _GatedKeys(server.key_records)
    grpc_server = build_grpc_server(server, key_service=keys)
    await grpc_server.start("127.0.0.1", 0)
    assert grpc_server.port is not None
    channel = Channel("127.0.0.1", grpc_server.port)
    late = Channel("127.0.0.1", grpc_server.port)
    try:
        stub = pb.SigningKeysStub(channel)
        created = await stub.create_signing_key(pb.CreateSigningKeyRequest(), metadata=md)
        call = asyncio.create_task(
            stub.get_signing_key(pb.GetSigningKeyRequest(id=created.key.id), metadata=md)
        )
        async with asyncio.timeout(5):
            while grpc_server.servicer.in_flight == 0:
                await asyncio.sleep(0.01)
        grpc_server.close()
        # New calls are refused, on the connection already open and on a new one, on every
        # service, so that draining can finish.
        with pytest.raises(GRPCError) as refused:
            await stub.list_signing_keys(pb.ListSigningKeysRequest(), metadata=md)
        assert refused.value.status is Status.UNAVAILABLE
        with pytest.raises(GRPCError) as refused_health:
            await HealthStub(late).Check(HealthCheckRequest(service=""))
        assert refused_health.value.status is Status.UNAVAILABLE
        keys.gate.set()
        reply = await asyncio.wait_for(call, 5)
        assert reply.key.id == created.key.id
        await asyncio.wait_for(grpc_server.wait_closed(), 6)
    finally:
        channel.close()
        late.close()
    with pytest.raises(OSError):  # closed: no longer listening
        await asyncio.open_connection("127.0.0.1", grpc_server.port)


async def test_a_call_still_running_at_the_shutdown_timeout_ends_with_unavailable(
    server: Server, md: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(grpc_server_module, "SHUTDOWN_TIMEOUT", 0.2)
    keys = _GatedKeys(server.key_records)  # never opened
    grpc_server = build_grpc_server(server, key_service=keys)
    await grpc_server.start("127.0.0.1", 0)
    assert grpc_server.port is not None
    channel = Channel("127.0.0.1", grpc_server.port)
    try:
        stub = pb.SigningKeysStub(channel)
        call = asyncio.create_task(
            stub.get_signing_key(pb.GetSigningKeyRequest(id="k"), metadata=md)
        )
        async with asyncio.timeout(5):
            while grpc_server.servicer.in_flight == 0:
                await asyncio.sleep(0.01)
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(grpc_server.aclose(), 5)
        assert asyncio.get_running_loop().time() - started < 2
        with pytest.raises(GRPCError) as ended:
            await asyncio.wait_for(call, 5)
        assert ended.value.status is Status.UNAVAILABLE
    finally:
        channel.close()
    assert grpc_server.servicer.in_flight == 0 and grpc_server.gate.running == 0


async def test_tls_when_configured(server: Server, tmp_path: Path) -> None:
    cert_file, key_file = write_self_signed(tmp_path)
    settings = dataclasses.replace(
        server.settings, tls_cert_file=str(cert_file), tls_key_file=str(key_file)
    )
    tls_server = build_grpc_server(server, settings=settings, regions=FakeRegions())
    async with tls_server:
        assert tls_server.port is not None
        context = ssl.create_default_context(cafile=str(cert_file))
        context.set_alpn_protocols(["h2"])
        channel = Channel("localhost", tls_server.port, ssl=context)
        try:
            reply = await HealthStub(channel).Check(HealthCheckRequest(service=""))
            assert reply.status == SERVING
        finally:
            channel.close()
        plain = Channel("127.0.0.1", tls_server.port)
        try:
            with pytest.raises((GRPCError, OSError, StreamTerminatedError, ProtocolError)):
                await asyncio.wait_for(HealthStub(plain).Check(HealthCheckRequest()), 5)
        finally:
            plain.close()


class _Peer:
    def __init__(self, address: tuple[str, int], cert: dict[str, Any] | None = None) -> None:
        self._address = address
        self._cert = cert

    def addr(self) -> tuple[str, int]:
        return self._address

    def cert(self) -> dict[str, Any] | None:
        return self._cert


class _H2Stream:
    async def recv_data(self, size: int) -> bytes:
        return b"\0" * size


class _Stream:
    """grpclib's server stream as far as the gate sees it."""

    def __init__(self, peer: _Peer) -> None:
        self.peer = peer
        self._stream = _H2Stream()
        self.trailers: list[dict[str, Any]] = []

    async def send_trailing_metadata(self, **trailers: Any) -> None:
        self.trailers.append(trailers)


async def test_the_gate_runs_each_call_with_its_client_address_and_tells_the_guard_first() -> None:
    seen: list[object] = []
    told: list[object] = []

    class Guard:
        def request_hook(self) -> Callable[[object], None]:
            return told.append

    async def handler(stream: Any) -> None:
        seen.append((CLIENT_ADDRESS.get(), gate.running))

    gate = grpc_server_module.CallGate(
        size_limit=SizeLimit(max_message_bytes=10),
        connection_guard=Guard(),  # type: ignore[arg-type]
    )
    gated = gate.wrap(GET, handler)
    stream = _Stream(_Peer(("10.0.0.7", 4321)))
    await gated(stream)  # type: ignore[arg-type]
    assert seen == [("10.0.0.7", 1)] and told == [("10.0.0.7", 4321)]
    assert CLIENT_ADDRESS.get() is None and gate.running == 0
    with pytest.raises(GRPCError):  # the size limit is on the stream the handler reads
        await stream._stream.recv_data(11)
    gate.close()
    with pytest.raises(GRPCError) as refused:
        await gated(_Stream(_Peer(("10.0.0.8", 1))))  # type: ignore[arg-type]
    assert refused.value.status is Status.UNAVAILABLE
    assert len(seen) == 1 and told[-1] == ("10.0.0.8", 1), "a refused call is a request too"


async def test_under_mutual_tls_the_gate_refuses_a_call_without_a_certificate_but_health() -> None:
    called: list[str] = []

    async def handler(stream: Any) -> None:
        called.append("called")

    gate = grpc_server_module.CallGate(
        size_limit=SizeLimit(max_message_bytes=10), requires_client_certificate=True
    )
    anonymous = _Stream(_Peer(("10.0.0.7", 1)))
    await gate.wrap(GET, handler)(anonymous)  # type: ignore[arg-type]
    assert called == [] and anonymous.trailers[0]["status"] is Status.UNAUTHENTICATED
    await gate.wrap("/grpc.health.v1.Health/Check", handler)(anonymous)  # type: ignore[arg-type]
    certified = _Stream(_Peer(("10.0.0.7", 1), cert={"subject": ()}))
    await gate.wrap(GET, handler)(certified)  # type: ignore[arg-type]
    assert called == ["called", "called"]
