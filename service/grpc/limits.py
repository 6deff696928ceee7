"""The request size limit, applied from a message's length prefix, before its body is read.

grpclib (checked against 0.4.9) has no maximum message size: ``grpclib.stream.recv_message``
reads a request's 5-byte prefix, then as many bytes as the prefix announces, acknowledging
HTTP/2 flow control as it reads — so one request could make the server buffer gigabytes.
The stream window (``Configuration.http2_stream_window_size``) bounds only what a client may
send ahead of those reads, and nothing public shows a server the prefix before the body.

So :func:`bound_message_size` — the one place in the service that reaches into grpclib —
wraps ``recv_data`` of the HTTP/2 stream behind grpclib's server stream (its private
``_stream``): a read longer than the limit is refused with ``RESOURCE_EXHAUSTED`` (grpc-core's
status for the case) before a byte of the body is read, so what the client sent stays within
the stream window. :class:`SizeLimit` applies it to every call of every service through
grpclib's public events (``listen(server, RecvRequest, …)``).

Should a grpclib release move that attribute, the calls go on, the error is logged, and
:class:`~service.grpc.codec.StrictCodec` still refuses the oversized message — only after
reading it; ``tests/grpc/test_limits.py`` fails on such a release, against a real server.
"""

from __future__ import annotations

from typing import Any, Final

import grpclib
import structlog
from grpclib.const import Status
from grpclib.events import RecvRequest
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

log = structlog.get_logger(__name__)

CHECKED_GRPCLIB_VERSION: Final = "0.4.9"
PREFIX_BYTES: Final = 5  # compressed flag + 4-byte big-endian length


class SizeLimit:
    """A ``RecvRequest`` listener: every call refuses request messages longer than
    ``max_message_bytes``, from their length prefix.

    >>> grpclib.events.listen(server, RecvRequest, SizeLimit(max_message_bytes=65536))
    """

    def __init__(self, *, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        self._reported = False

    def __repr__(self) -> str:
        return f"<SizeLimit max_message_bytes={self.max_message_bytes}>"

    async def __call__(self, event: RecvRequest) -> None:
        handler = event.method_func

        async def limited(stream: Stream[Any, Any]) -> None:
            if not bound_message_size(stream, self.max_message_bytes):
                self._report_moved_layout()
            await handler(stream)

        event.method_func = limited

    def _report_moved_layout(self) -> None:
        if self._reported:
            return
        self._reported = True
        log.error(
            "grpc_size_limit_unenforceable",
            reason="grpclib's server stream has no _stream.recv_data: request sizes are checked "
            "only after the whole message is read",
            grpclib_version=grpclib.__version__,
            checked_against=CHECKED_GRPCLIB_VERSION,
        )


def bound_message_size(stream: Stream[Any, Any], limit: int) -> bool:
    """Make ``stream`` refuse, from its length prefix, any request message longer than
    ``limit`` bytes; False if this grpclib no longer has the layout relied on here."""
    h2_stream: Any = getattr(stream, "_stream", None)
    recv_data = getattr(h2_stream, "recv_data", None)
    if recv_data is None:
        return False

    async def bounded_recv_data(size: int) -> bytes:
        if size > limit:
            raise GRPCError(Status.RESOURCE_EXHAUSTED, f"request message larger than {limit} bytes")
        data: bytes = await recv_data(size)
        return data

    h2_stream.recv_data = bounded_recv_data
    return True
