"""What a request may bring, checked where grpclib reads it off the wire.

grpclib (checked against 0.4.9) trusts its clients in three ways a hostile one can use:

1. It has no maximum message size: ``grpclib.stream.recv_message`` reads a request's 5-byte
   prefix, then as many bytes as the prefix announces, acknowledging HTTP/2 flow control as
   it reads — so one request could make the server buffer gigabytes. The stream window
   (``Configuration.http2_stream_window_size``) bounds only what a client may send ahead of
   those reads, and nothing public shows a server the prefix before the body.
2. It answers bad framing with ``INTERNAL``: a message with the compressed flag set (this
   service supports no compression) raises ``NotImplementedError``, and a request stream that
   ends inside a prefix or a message fails an assertion.
3. Its HTTP/2 layer decodes header values as strict ASCII: one other byte (in an
   ``authorization`` value, say) raises out of the protocol's ``data_received``, so asyncio
   logs a traceback and drops the connection with every call on it.

So :func:`bound_message_size` — with :func:`decode_headers_as_latin1`, the only code in the
service that reaches into grpclib — wraps ``recv_data`` of the HTTP/2 stream behind grpclib's
server stream (its private ``_stream``) and reads each prefix before grpclib does: a length
above the limit is refused with ``RESOURCE_EXHAUSTED`` (grpc-core's status for the case)
before a byte of the body is read, so what the client sent stays within the stream window; a
compressed message gets ``UNIMPLEMENTED`` and a stream that ends early ``INVALID_ARGUMENT``,
each with a message saying why. :class:`SizeLimit` applies it to a call, before its handler
reads; the server does so for every call of every service.
:func:`decode_headers_as_latin1` makes the server's HTTP/2 configuration (its private
``_h2_config``) decode header values as Latin-1, which maps every byte to a character and
leaves ASCII as it is: a stray byte then reaches the service as text it refuses (credentials
must be printable ASCII: ``UNAUTHENTICATED``) instead of failing the connection.

Should a grpclib release move either attribute, the calls go on and the error is logged:
:class:`~service.grpc.codec.StrictCodec` still refuses an oversized message, only after
reading it; ``tests/grpc/test_limits.py`` fails on such a release, against a real server.
"""

from __future__ import annotations

import struct
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Final

import grpclib
import structlog
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server, Stream

log = structlog.get_logger(__name__)

CHECKED_GRPCLIB_VERSION: Final = "0.4.9"
PREFIX_BYTES: Final = 5  # compressed flag + 4-byte big-endian length
_PREFIX: Final = struct.Struct(">BI")
COMPRESSION_UNSUPPORTED: Final = (
    "compressed messages are not supported: send requests uncompressed (no grpc-encoding)"
)
ENDED_INSIDE_MESSAGE: Final = "the request stream ended inside a message"
# Every byte is one Latin-1 character and ASCII maps to itself: decoding never fails.
HEADER_ENCODING: Final = "latin-1"


class SizeLimit:
    """Makes a call refuse request messages longer than ``max_message_bytes`` (from their
    length prefix) and framing it cannot serve; applied to every call of every service, before
    its handler reads (the server's ``CallGate``).

    >>> SizeLimit(max_message_bytes=65536).bound(stream)
    """

    def __init__(self, *, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        self._reported = False

    def __repr__(self) -> str:
        return f"<SizeLimit max_message_bytes={self.max_message_bytes}>"

    def bound(self, stream: Stream[Any, Any]) -> None:
        """Limit ``stream``'s request messages (reported once, should grpclib have moved what
        this relies on)."""
        if not bound_message_size(stream, self.max_message_bytes):
            self._report_moved_layout()

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


class _Framing:
    """Reads through one request stream as grpclib does (a prefix, then the message it
    announces, and again), refusing what grpclib would answer with ``INTERNAL``."""

    def __init__(
        self, stream: object, recv_data: Callable[[Any, int], Awaitable[bytes]], limit: int
    ) -> None:
        # The stream weakly: it holds this reader, and a strong reference back would make a
        # cycle that keeps every finished call's stream, buffers and events alive until the
        # garbage collector's next pass (about twenty objects a call, the collector's main
        # cost under load). Its read method as a plain function and a weak reference, as
        # weakref.WeakMethod would keep them, at a tenth of its cost per call.
        self._stream = weakref.ref(stream)
        self._recv_data = recv_data
        self._limit = limit
        self._prefix_due = True

    async def recv_data(self, size: int) -> bytes:
        if size > self._limit:  # the prefix was checked; this guards any other read
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED, f"request message larger than {self._limit} bytes"
            )
        if self._prefix_due:
            data = await self._read(size)
            if data and size == PREFIX_BYTES:  # b"": the stream ended between messages
                self._check_prefix(data)
                self._prefix_due = False
            return data
        self._prefix_due = True
        data = await self._read(size)
        if len(data) < size:
            raise GRPCError(Status.INVALID_ARGUMENT, ENDED_INSIDE_MESSAGE)
        return data

    async def _read(self, size: int) -> bytes:
        stream = self._stream()
        if stream is None:  # the stream is gone: no call reads from it any more
            raise GRPCError(Status.CANCELLED, "the request stream has ended")
        try:
            return await self._recv_data(stream, size)
        except AssertionError:
            # grpclib's buffer asserts that a read got all it asked for: the stream ended.
            raise GRPCError(Status.INVALID_ARGUMENT, ENDED_INSIDE_MESSAGE) from None

    def _check_prefix(self, prefix: bytes) -> None:
        if len(prefix) < PREFIX_BYTES:
            raise GRPCError(Status.INVALID_ARGUMENT, ENDED_INSIDE_MESSAGE)
        flag, length = _PREFIX.unpack(prefix)
        if flag == 1:
            raise GRPCError(Status.UNIMPLEMENTED, COMPRESSION_UNSUPPORTED)
        if flag != 0:
            raise GRPCError(Status.INVALID_ARGUMENT, "malformed message prefix")
        if length > self._limit:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED, f"request message larger than {self._limit} bytes"
            )


def bound_message_size(stream: Stream[Any, Any], limit: int) -> bool:
    """Make ``stream`` refuse, from its length prefix, any request message longer than
    ``limit`` bytes, and answer bad framing with a status of its own; False if this grpclib
    no longer has the layout relied on here."""
    h2_stream: Any = getattr(stream, "_stream", None)
    recv_data = getattr(getattr(h2_stream, "recv_data", None), "__func__", None)
    if recv_data is None:  # no such method
        return False
    h2_stream.recv_data = _Framing(h2_stream, recv_data, limit).recv_data
    return True


def decode_headers_as_latin1(server: Server) -> bool:
    """Make ``server`` decode request header values as Latin-1 rather than strict ASCII;
    False if this grpclib no longer has the layout relied on here (then a non-ASCII byte in
    a header still drops its connection)."""
    config: Any = getattr(server, "_h2_config", None)
    if config is None or not hasattr(config, "header_encoding"):
        log.error(
            "grpc_header_decoding_unchanged",
            reason="grpclib's server has no _h2_config: a non-ASCII header byte drops the "
            "connection",
            grpclib_version=grpclib.__version__,
            checked_against=CHECKED_GRPCLIB_VERSION,
        )
        return False
    config.header_encoding = HEADER_ENCODING
    return True
