"""The size limit refuses a request from its length prefix, before reading its body."""

from __future__ import annotations

import pytest
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError

from service.grpc.limits import SizeLimited, limit_stream


class _H2Stream:
    def __init__(self) -> None:
        self.asked: list[int] = []

    async def recv_data(self, size: int) -> bytes:
        self.asked.append(size)
        return b"\0" * size


class _ServerStream:
    def __init__(self) -> None:
        self._stream = _H2Stream()


async def test_reads_within_the_limit_pass_and_larger_ones_are_refused_unread() -> None:
    stream = _ServerStream()
    limit_stream(stream, 100)
    assert await stream._stream.recv_data(5) == b"\0" * 5
    assert await stream._stream.recv_data(100) == b"\0" * 100
    with pytest.raises(GRPCError) as raised:
        await stream._stream.recv_data(101)
    assert raised.value.status is Status.RESOURCE_EXHAUSTED
    assert stream._stream.asked == [5, 100], "the oversized body was never read"


async def test_the_wrapper_keeps_paths_and_types_and_limits_every_call() -> None:
    seen: list[object] = []

    async def handler(stream: object) -> None:
        seen.append(stream)

    class _Service:
        def __mapping__(self) -> dict[str, Handler]:
            return {"/p.S/M": Handler(handler, Cardinality.UNARY_UNARY, bytes, str)}

    ((path, limited),) = SizeLimited(_Service(), max_message_bytes=10).__mapping__().items()
    assert path == "/p.S/M"
    assert (limited.cardinality, limited.request_type, limited.reply_type) == (
        Cardinality.UNARY_UNARY,
        bytes,
        str,
    )
    stream = _ServerStream()
    await limited.func(stream)
    assert seen == [stream]
    with pytest.raises(GRPCError):
        await stream._stream.recv_data(11)
