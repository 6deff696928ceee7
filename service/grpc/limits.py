"""The request size limit, applied from the message's length prefix.

grpclib has no maximum message size: it reads as many bytes as a request's 5-byte prefix
announces, acknowledging HTTP/2 flow control as it goes, so one request could make the
server buffer gigabytes. Every service's handlers are therefore wrapped so that a request
announcing more than the limit is refused with ``RESOURCE_EXHAUSTED`` (grpc-core's status
for the same case) before its body is read; what the client already sent stays within the
HTTP/2 stream window.

This reaches into one private attribute of grpclib's server stream (``_stream``, the
HTTP/2 stream whose ``recv_data`` reads the prefix and then the body). Should a grpclib
release move it, the wrapper steps aside and :class:`~service.grpc.codec.StrictCodec`
still refuses the oversized message, only after reading it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

import structlog
from grpclib.const import Handler, Status
from grpclib.exceptions import GRPCError

log = structlog.get_logger(__name__)

PREFIX_BYTES = 5  # compressed flag + 4-byte big-endian length


class SizeLimited:
    """A service whose requests are refused above ``max_message_bytes``.

    >>> services = [SizeLimited(service, max_message_bytes=65536) for service in services]
    """

    def __init__(self, service: Any, *, max_message_bytes: int) -> None:
        self._service = service
        self._max = max_message_bytes

    def __repr__(self) -> str:
        return f"<SizeLimited {type(self._service).__name__} max={self._max}>"

    def __mapping__(self) -> Mapping[str, Handler]:
        return {
            path: handler._replace(func=self._limited(handler.func))
            for path, handler in self._service.__mapping__().items()
        }

    def _limited(self, func: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        limit = self._max

        async def limited(stream: Any) -> None:
            limit_stream(stream, limit)
            await func(stream)

        return limited


def limit_stream(stream: Any, limit: int) -> None:
    """Make ``stream`` refuse any request message longer than ``limit`` bytes."""
    raw: Any = getattr(stream, "_stream", None)
    recv_data = getattr(raw, "recv_data", None)
    if raw is None or recv_data is None:  # pragma: no cover - if grpclib changes internals
        return

    async def bounded_recv_data(size: int) -> bytes:
        if size > limit:
            raise GRPCError(Status.RESOURCE_EXHAUSTED, f"request message larger than {limit} bytes")
        data: bytes = await recv_data(size)
        return data

    raw.recv_data = bounded_recv_data


def size_limited(services: Collection[Any], *, max_message_bytes: int) -> list[SizeLimited]:
    return [SizeLimited(service, max_message_bytes=max_message_bytes) for service in services]
