"""The size limit refuses a request from its length prefix, before reading its body.

The limit rests on one private detail of grpclib (:mod:`service.grpc.limits`); the tests
against a real server here fail if a grpclib release moves it, rather than let the limit
quietly degrade to the codec's check after the whole message is read.
"""

from __future__ import annotations

import asyncio
import gc
import io
import struct
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpclib
import h2.config
import h2.connection
import h2.events
import pytest
import structlog
from grpclib.const import Status
from grpclib.events import RecvRequest, listen
from grpclib.exceptions import GRPCError
from grpclib.health.service import Health
from grpclib.health.v1.health_pb2 import HealthCheckRequest
from grpclib.server import Server as GrpclibServer
from grpclib.server import Stream

from service.grpc.generated.signingkeys import v1 as pb
from service.grpc.limits import (
    CHECKED_GRPCLIB_VERSION,
    COMPRESSION_UNSUPPORTED,
    ENDED_INSIDE_MESSAGE,
    SizeLimit,
    bound_message_size,
)
from service.grpc.listener import bind_listener
from service.server import Server
from tests.support.service import errors_logged

HEALTH_CHECK = "/grpc.health.v1.Health/Check"


class _H2Stream:
    def __init__(self) -> None:
        self.asked: list[int] = []

    async def recv_data(self, size: int) -> bytes:
        self.asked.append(size)
        return b"\0" * size


class _ServerStream:
    """grpclib's server stream as far as the limit sees it (grpclib 0.4.9's layout)."""

    def __init__(self) -> None:
        self._stream = _H2Stream()


async def test_reads_within_the_limit_pass_and_larger_ones_are_refused_unread() -> None:
    stream = _ServerStream()
    assert bound_message_size(stream, 100)  # type: ignore[arg-type]
    assert await stream._stream.recv_data(5) == b"\0" * 5
    assert await stream._stream.recv_data(100) == b"\0" * 100
    with pytest.raises(GRPCError) as raised:
        await stream._stream.recv_data(101)
    assert raised.value.status is Status.RESOURCE_EXHAUSTED
    assert stream._stream.asked == [5, 100], "the oversized body was never read"


class _ScriptedH2Stream:
    """Answers each read with the next scripted chunk (an exception is raised instead)."""

    def __init__(self, *chunks: bytes | BaseException) -> None:
        self._chunks = list(chunks)

    async def recv_data(self, size: int) -> bytes:
        chunk = self._chunks.pop(0)
        if isinstance(chunk, BaseException):
            raise chunk
        return chunk


def _scripted(*chunks: bytes | BaseException) -> Any:
    stream = _ServerStream()
    stream._stream = _ScriptedH2Stream(*chunks)  # type: ignore[assignment]
    assert bound_message_size(stream, 100)  # type: ignore[arg-type]
    return stream._stream


@pytest.mark.parametrize(
    ("chunks", "status", "message"),
    [
        ([struct.pack(">BI", 1, 2)], Status.UNIMPLEMENTED, "compressed messages are not supported"),
        ([struct.pack(">BI", 7, 2)], Status.INVALID_ARGUMENT, "malformed message prefix"),
        ([b"\0\0"], Status.INVALID_ARGUMENT, "ended inside a message"),
        # grpclib's buffer asserts when the stream ends short of what a read asked for.
        ([AssertionError("Received less data than expected")], Status.INVALID_ARGUMENT, "ended"),
    ],
)
async def test_framing_grpclib_would_answer_with_internal_gets_a_status_of_its_own(
    chunks: list[bytes | BaseException], status: Status, message: str
) -> None:
    h2_stream = _scripted(*chunks)
    with pytest.raises(GRPCError) as raised:
        await h2_stream.recv_data(5)
    assert raised.value.status is status and message in str(raised.value.message)


async def test_a_message_cut_short_is_refused_and_the_next_prefix_is_read_as_one() -> None:
    h2_stream = _scripted(_prefix(3), b"ab", _prefix(2), b"ok", _prefix(0), b"")
    await h2_stream.recv_data(5)
    with pytest.raises(GRPCError) as raised:
        await h2_stream.recv_data(3)
    assert raised.value.status is Status.INVALID_ARGUMENT
    assert await h2_stream.recv_data(5) == _prefix(2)
    assert await h2_stream.recv_data(2) == b"ok"
    assert await h2_stream.recv_data(5) == _prefix(0)
    assert await h2_stream.recv_data(0) == b""


async def test_a_limited_stream_is_freed_as_soon_as_it_is_dropped() -> None:
    """No reference cycle: a finished call's stream goes with its last reference, not at the
    garbage collector's next pass (which, under load, was most of its cost)."""
    stream = _ServerStream()
    assert bound_message_size(stream, 100)  # type: ignore[arg-type]
    await stream._stream.recv_data(5)
    h2_stream = weakref.ref(stream._stream)
    gc.disable()
    try:
        del stream
        assert h2_stream() is None
    finally:
        gc.enable()


async def test_a_read_after_the_stream_is_gone_is_refused() -> None:
    h2_stream = _H2Stream()
    stream = _ServerStream()
    stream._stream = h2_stream
    assert bound_message_size(stream, 100)  # type: ignore[arg-type]
    limited_read = h2_stream.recv_data
    del stream, h2_stream
    gc.collect()
    with pytest.raises(GRPCError) as raised:
        await limited_read(5)
    assert raised.value.status is Status.CANCELLED


async def test_a_stream_without_the_layout_is_left_alone_and_reported() -> None:
    assert not bound_message_size(object(), 100)  # type: ignore[arg-type]


async def test_the_limit_applies_to_a_call_and_reports_a_moved_layout_once() -> None:
    limit = SizeLimit(max_message_bytes=10)
    stream = _ServerStream()
    limit.bound(stream)  # type: ignore[arg-type]
    with pytest.raises(GRPCError):
        await stream._stream.recv_data(11)
    with structlog.testing.capture_logs() as logs:
        limit.bound(object())  # type: ignore[arg-type]
        limit.bound(object())  # type: ignore[arg-type]
    assert [line["event"] for line in logs] == ["grpc_size_limit_unenforceable"]


# --- against the real server: fails if a grpclib release moves what the limit relies on ---


@dataclass
class _Exchange:
    """What a raw HTTP/2 client saw of one call."""

    headers: dict[str, str] = field(default_factory=dict)
    stream_ended: bool = False
    reset: bool = False

    @property
    def grpc_status(self) -> Status | None:
        value = self.headers.get("grpc-status")
        return None if value is None else Status(int(value))


async def _raw_call(
    port: int,
    path: str,
    data: bytes,
    *,
    end_stream: bool,
    headers: Sequence[tuple[bytes, bytes]] = (),
    calls: int = 1,
) -> list[_Exchange]:
    """``calls`` calls, one after the other on one connection, from a bare HTTP/2 client that
    sends ``headers`` and ``data`` (length prefixes included) as they are, ending each request
    stream only if asked. Stops early if the server ends the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=True, header_encoding="utf-8", validate_outbound_headers=False
        )
    )
    conn.initiate_connection()
    exchanges: list[_Exchange] = []
    try:
        for stream_id in range(1, 2 * calls, 2):
            conn.send_headers(
                stream_id,
                [
                    (b":method", b"POST"),
                    (b":scheme", b"http"),
                    (b":path", path.encode()),
                    (b":authority", b"localhost"),
                    (b"content-type", b"application/grpc"),
                    (b"te", b"trailers"),
                    *headers,
                ],
            )
            conn.send_data(stream_id, data, end_stream=end_stream)
            writer.write(conn.data_to_send())
            exchange = _Exchange()
            exchanges.append(exchange)
            while not (exchange.stream_ended or exchange.reset):
                chunk = await reader.read(65536)
                if not chunk:
                    return exchanges
                for event in conn.receive_data(chunk):
                    if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                        exchange.headers.update((str(k), str(v)) for k, v in event.headers)
                    elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                        exchange.stream_ended = True
                    elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream_id:
                        exchange.reset = True
                writer.write(conn.data_to_send())
    finally:
        writer.close()
        await writer.wait_closed()
    return exchanges


def _prefix(length: int) -> bytes:
    return struct.pack(">?I", False, length)


async def test_a_request_is_refused_from_its_prefix_before_its_body_arrives(
    server: Server,
) -> None:
    """The body never comes: only a limit acting on the prefix can answer at all."""
    assert server.grpc_port is not None
    limit = server.settings.max_body_bytes
    for announced in (limit + 1, 2**31):
        try:
            # The prefix announces ``announced`` bytes; 1000 come, and the stream stays open.
            (exchange,) = await asyncio.wait_for(
                _raw_call(
                    server.grpc_port,
                    HEALTH_CHECK,
                    _prefix(announced) + b"a" * 1000,
                    end_stream=False,
                ),
                5,
            )
        except TimeoutError:
            pytest.fail(
                f"no answer to a request announcing {announced} bytes: the server waited for "
                f"the body, so the prefix limit is gone (grpclib {grpclib.__version__}; "
                f"service/grpc/limits.py was checked against {CHECKED_GRPCLIB_VERSION})"
            )
        assert exchange.grpc_status is Status.RESOURCE_EXHAUSTED, exchange
        assert exchange.headers["grpc-message"] == f"request message larger than {limit} bytes"


async def test_grpclib_still_reads_requests_through_the_stream_the_limit_wraps() -> None:
    """The private detail itself, on grpclib alone: its server stream has ``_stream``, and a
    request message is read through that stream's ``recv_data``, prefix first."""
    seen: list[tuple[bool, list[int]]] = []

    async def spy(event: RecvRequest) -> None:
        handler = event.method_func

        async def spied(stream: Stream[Any, Any]) -> None:
            h2_stream: Any = getattr(stream, "_stream", None)
            recv_data = getattr(h2_stream, "recv_data", None)
            sizes: list[int] = []
            if recv_data is not None:

                async def recording(size: int) -> bytes:
                    sizes.append(size)
                    data: bytes = await recv_data(size)
                    return data

                h2_stream.recv_data = recording
            seen.append((recv_data is not None, sizes))
            await handler(stream)

        event.method_func = spied

    server = GrpclibServer([Health()])
    listen(server, RecvRequest, spy)
    listener = await bind_listener("127.0.0.1", 0)
    await server.start(sock=listener)
    try:
        request = HealthCheckRequest(service="").SerializeToString()
        (exchange,) = await asyncio.wait_for(
            _raw_call(
                listener.port, HEALTH_CHECK, _prefix(len(request)) + request, end_stream=True
            ),
            5,
        )
    finally:
        server.close()
        await server.wait_closed()
    assert exchange.grpc_status is Status.OK, exchange
    ((has_layout, sizes),) = seen
    assert has_layout, (
        f"grpclib {grpclib.__version__} moved Stream._stream.recv_data: "
        f"service/grpc/limits.py (checked against {CHECKED_GRPCLIB_VERSION}) must follow it"
    )
    assert sizes[:2] == [5, len(request)], "the prefix is read first, then what it announces"


GET_KEY = "/signingkeys.v1.SigningKeys/GetSigningKey"


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        (struct.pack(">BI", 1, 2) + b"\x0a\x00", Status.UNIMPLEMENTED, COMPRESSION_UNSUPPORTED),
        (_prefix(100) + b"\x0a\x00", Status.INVALID_ARGUMENT, ENDED_INSIDE_MESSAGE),
        (b"\0\0", Status.INVALID_ARGUMENT, ENDED_INSIDE_MESSAGE),
    ],
    ids=["compressed", "message cut short", "prefix cut short"],
)
async def test_framing_errors_get_a_clean_status_and_no_traceback(
    server: Server, log_stream: io.StringIO, data: bytes, status: Status, message: str
) -> None:
    """Before: ``INTERNAL`` (grpclib's NotImplementedError and AssertionError), logged with a
    traceback. The connection serves the next call as well."""
    assert server.grpc_port is not None
    exchanges = await asyncio.wait_for(
        _raw_call(server.grpc_port, GET_KEY, data, end_stream=True, calls=2), 5
    )
    assert [(e.grpc_status, e.headers.get("grpc-message")) for e in exchanges] == [
        (status, message)
    ] * 2
    assert errors_logged(log_stream) == []


async def test_a_non_ascii_byte_in_credentials_is_unauthenticated_not_a_dropped_connection(
    server: Server, log_stream: io.StringIO
) -> None:
    """Before: grpclib's HTTP/2 layer failed to decode the header as ASCII, asyncio logged a
    traceback and dropped the connection."""
    assert server.grpc_port is not None
    request = bytes(pb.GetSigningKeyRequest(id="k"))
    exchanges = await asyncio.wait_for(
        _raw_call(
            server.grpc_port,
            GET_KEY,
            _prefix(len(request)) + request,
            end_stream=True,
            headers=[(b"authorization", b"Bearer skt_AAAAAAAAAAAAAAAA:\xe9")],
            calls=2,
        ),
        5,
    )
    assert [(e.grpc_status, e.headers.get("error-type")) for e in exchanges] == [
        (Status.UNAUTHENTICATED, "unauthorized")
    ] * 2
    assert errors_logged(log_stream) == []
