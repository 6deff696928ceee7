"""The gRPC listening socket: bound here, so that its port is known, and remembering the
connections it accepts, so that shutdown can end them.

grpclib (checked against 0.4.9) serves a socket it is given (``Server.start(sock=…)``) but
shows neither its listener nor its connections, and its ``close()`` leaves every connection
open until the client hangs up — a client would keep calling a server that is gone. A
:class:`Listener` is a ``socket.socket`` whose ``accept()`` notes each connection it hands
out; :meth:`Listener.end_connections` shuts them down, after which each transport reads
end-of-file and closes itself (grpclib cancelling whatever still ran on it), and the clients
reconnect elsewhere. This relies on the event loop accepting through the ``accept()`` of the
socket it was given, as asyncio's selector loops do; ``tests/grpc/test_listener.py`` checks
it.

What grpclib does not bound about a connection is bounded by a :class:`ConnectionGuard`,
as the HTTP listener bounds aiohttp's: at most ``max_per_client`` connections from one
address (IPv6: one /64, as the authentication limits count), and a connection must deliver
its first complete request headers (an HTTP/2 ``HEADERS`` frame, and its ``CONTINUATION``
frames, up to ``END_HEADERS``) within ``header_timeout`` of being accepted, or be closed: a
client that sends the preface, settings and pings but never a request (a slowloris over
HTTP/2) holds nothing for long. The deadline starts in :meth:`Listener.accept`, so it bounds
a TLS handshake too (the event loop runs one before the connection's protocol exists, and
would give it 60 s). Once a request has arrived, a connection may idle for as long as its
client likes (gRPC channels are long-lived); the per-address cap bounds how many.

>>> guard = ConnectionGuard(max_per_client=256, header_timeout=10.0)
>>> guard.install(grpclib_server)
>>> listener = await bind_listener("127.0.0.1", 0, guard=guard)
>>> await grpclib_server.start(sock=listener)
>>> listener.port
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, cast

import grpclib
import structlog
from prometheus_client import CollectorRegistry, Counter

from service.core.auth import client_key
from service.grpc.limits import CHECKED_GRPCLIB_VERSION

log = structlog.get_logger(__name__)

DropReason = Literal["header_timeout", "too_many_from_client"]
DROP_REASONS: Final[tuple[DropReason, ...]] = ("header_timeout", "too_many_from_client")

# HTTP/2 (RFC 9113): the client's connection preface, then frames of a 9-byte header
# (24-bit length, type, flags, stream id) and a payload.
PREFACE_BYTES: Final = len(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
FRAME_HEADER_BYTES: Final = 9
HEADERS_FRAME: Final = 0x1
CONTINUATION_FRAME: Final = 0x9
END_HEADERS_FLAG: Final = 0x4


class RequestHeadScanner:
    """Follows the client's bytes of an HTTP/2 connection, frame by frame, only far enough
    to tell when the first request's headers are complete: the end of a ``HEADERS`` or
    ``CONTINUATION`` frame that carries ``END_HEADERS``. It validates nothing (the HTTP/2
    stack behind it does) and keeps at most one frame header."""

    def __init__(self) -> None:
        self._preface_left = PREFACE_BYTES
        self._header = bytearray()
        self._payload_left = 0
        self._ends_headers = False
        self.complete = False

    def feed(self, data: bytes) -> bool:
        """Take the next bytes the client sent; True once the request headers are complete."""
        at = 0
        skipped = min(self._preface_left, len(data))
        self._preface_left -= skipped
        at += skipped
        while not self.complete and at < len(data):
            if self._payload_left:
                taken = min(self._payload_left, len(data) - at)
                self._payload_left -= taken
                at += taken
                self.complete = self._payload_left == 0 and self._ends_headers
                continue
            wanted = FRAME_HEADER_BYTES - len(self._header)
            self._header += data[at : at + wanted]
            at += wanted
            if len(self._header) == FRAME_HEADER_BYTES:
                self._frame_started(bytes(self._header))
                self._header.clear()
        return self.complete

    def _frame_started(self, header: bytes) -> None:
        kind, flags = header[3], header[4]
        self._payload_left = int.from_bytes(header[:3], "big")
        self._ends_headers = kind in (HEADERS_FRAME, CONTINUATION_FRAME) and bool(
            flags & END_HEADERS_FLAG
        )
        self.complete = self._payload_left == 0 and self._ends_headers


class GuardedConnection(asyncio.Protocol):
    """One accepted gRPC connection: grpclib's protocol inside, the guard's rules around it."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._transport: asyncio.Transport | None = None
        self._fd: int | None = None
        self.client: str | None = None
        self._counted = False
        self._scanner: RequestHeadScanner | None = RequestHeadScanner()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # a stream server's transport
        peer = transport.get_extra_info("peername")
        self.client = client_key(str(peer[0])) if peer else None
        sock = transport.get_extra_info("socket")
        self._fd = sock.fileno() if sock is not None else None
        if not self._guard._admit(self):
            self._guard._disarm(self._fd)
            self._transport.abort()  # grpclib never hears of it
            return
        self._counted = True
        self._inner.connection_made(transport)
        self._guard._made(self._fd, self._transport, self.client)

    def data_received(self, data: bytes) -> None:
        if self._scanner is not None and self._scanner.feed(data):
            self._scanner = None  # a request has arrived: from now on, bytes pass unread
            self._guard._disarm(self._fd)
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._scanner is not None:
            self._guard._disarm(self._fd)
        if not self._counted:
            return
        self._counted = False
        self._guard._release(self)
        self._inner.connection_lost(exc)


@dataclass(slots=True)
class _Deadline:
    """A connection's deadline for its first request, and how to end it when it passes."""

    timer: asyncio.TimerHandle
    close: Callable[[], bool]  # True if it ended an open connection
    client: str | None


class ConnectionGuard:
    """The connections one gRPC listener holds, by client address, and their deadlines for
    a first request.

    ``max_per_client``: open connections one address may hold; ``header_timeout``: seconds a
    connection has to deliver its first complete request headers.
    """

    def __init__(
        self,
        *,
        max_per_client: int,
        header_timeout: float,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.max_per_client = max_per_client
        self.header_timeout = header_timeout
        self._by_client: collections.Counter[str | None] = collections.Counter()
        self._open = 0
        self._deadlines: dict[int, _Deadline] = {}  # by file descriptor
        dropped = Counter(
            "signing_keys_grpc_connections_dropped",
            "gRPC connections closed by the listener, by reason (no complete request headers "
            "in time, too many connections from one client address).",
            ["reason"],
            registry=registry if registry is not None else CollectorRegistry(),
        )
        self._drops = {reason: dropped.labels(reason) for reason in DROP_REASONS}

    def __repr__(self) -> str:
        return (
            f"<ConnectionGuard open={self._open} clients={len(self._by_client)} "
            f"max_per_client={self.max_per_client} header_timeout={self.header_timeout:g}s>"
        )

    @property
    def open_connections(self) -> int:
        return self._open

    def protocol_factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], Any]:
        """A protocol factory for ``loop.create_server``: ``inner``'s protocol, guarded."""
        return lambda: GuardedConnection(self, inner())

    def install(self, server: Any) -> bool:
        """Guard every connection ``server`` (a ``grpclib.server.Server``, not yet started)
        accepts; False if this grpclib no longer has the layout relied on here.

        grpclib offers no public hook on its connections: its ``start`` hands the event loop
        the server's own ``_protocol_factory``, which is replaced here, on the instance."""
        factory = getattr(server, "_protocol_factory", None)
        if not callable(factory):
            log.error(
                "grpc_connection_guard_not_installed",
                reason="grpclib's server has no _protocol_factory: gRPC connections are "
                "neither capped per client nor given a deadline for their first request",
                grpclib_version=grpclib.__version__,
                checked_against=CHECKED_GRPCLIB_VERSION,
            )
            return False
        server._protocol_factory = self.protocol_factory(factory)
        return True

    def accepted(self, conn: socket.socket) -> None:
        """``conn`` has just been accepted: its deadline starts now, before a TLS handshake
        (which the event loop runs before the connection's protocol hears of it)."""
        try:
            peer = conn.getpeername()
        except OSError:
            return  # gone already
        ref = weakref.ref(conn)

        def close() -> bool:
            accepted = ref()
            if accepted is None or accepted.fileno() == -1:
                return False  # closed already (a failed handshake, say)
            with contextlib.suppress(OSError):  # the peer may have gone already
                accepted.shutdown(socket.SHUT_RDWR)
            return True

        # A descriptor is reused as soon as it is closed: whatever deadline it had was
        # another connection's.
        self._disarm(conn.fileno())
        self._start(conn.fileno(), close, client_key(str(peer[0])) if peer else None)

    def _made(self, fd: int | None, transport: asyncio.Transport, client: str | None) -> None:
        """The connection on ``fd`` has a transport: when its deadline passes (started at
        its accept, or now if it was not accepted through a guarded :class:`Listener`),
        abort that."""

        def close() -> bool:
            if transport.is_closing():
                return False
            transport.abort()
            return True

        deadline = self._deadlines.get(fd) if fd is not None else None
        if deadline is not None:
            deadline.close = close
        else:
            self._start(fd, close, client)

    def _start(self, fd: int | None, close: Callable[[], bool], client: str | None) -> None:
        if fd is None:
            return
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self.header_timeout, self._expired, fd)
        self._deadlines[fd] = _Deadline(timer, close, client)

    def _disarm(self, fd: int | None) -> None:
        deadline = self._deadlines.pop(fd, None) if fd is not None else None
        if deadline is not None:
            deadline.timer.cancel()

    def _expired(self, fd: int) -> None:
        deadline = self._deadlines.pop(fd, None)
        if deadline is not None and deadline.close():
            self._dropped("header_timeout", deadline.client)

    def _admit(self, connection: GuardedConnection) -> bool:
        client = connection.client
        if client is not None and self._by_client[client] >= self.max_per_client:
            self._dropped("too_many_from_client", client)
            return False
        self._by_client[client] += 1
        self._open += 1
        return True

    def _release(self, connection: GuardedConnection) -> None:
        client = connection.client
        self._open -= 1
        self._by_client[client] -= 1
        if self._by_client[client] <= 0:
            del self._by_client[client]

    def _dropped(self, reason: DropReason, client: str | None) -> None:
        self._drops[reason].inc()
        log.debug("grpc_connection_dropped", reason=reason, client=client)


class Listener(socket.socket):
    """A TCP socket for ``grpclib.server.Server.start(sock=…)`` that notes the connections it
    accepts; made by :func:`bind_listener`."""

    def __init__(
        self, family: int = -1, kind: int = -1, proto: int = -1, fileno: int | None = None
    ) -> None:
        super().__init__(family, kind, proto, fileno)
        self._connections: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self.guard: ConnectionGuard | None = None  # told of every connection accepted

    @property
    def port(self) -> int:
        port: int = self.getsockname()[1]
        return port

    @property
    def connections(self) -> int:
        """How many accepted connections are still open."""
        return sum(1 for conn in list(self._connections) if conn.fileno() != -1)

    def accept(self) -> tuple[socket.socket, object]:
        conn, address = super().accept()
        self._connections.add(conn)
        if self.guard is not None:
            self.guard.accepted(conn)
        return conn, address

    def end_connections(self) -> int:
        """Shut down every accepted connection still open (without closing its descriptor,
        which its transport owns); return how many."""
        ended = 0
        for conn in list(self._connections):
            if conn.fileno() == -1:
                continue
            with contextlib.suppress(OSError):  # the peer may have gone already
                conn.shutdown(socket.SHUT_RDWR)
                ended += 1
        return ended


async def bind_listener(host: str, port: int, *, guard: ConnectionGuard | None = None) -> Listener:
    """A :class:`Listener` bound to ``host``:``port`` (port 0: any free port), as asyncio's
    ``create_server`` binds: address reuse on, IPv6 sockets IPv6-only. One socket, on the first
    address ``host`` resolves to. With a ``guard``, each connection's deadline for its first
    request starts as it is accepted, so that it bounds a TLS handshake too."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, kind, proto, _, address = infos[0]
    listener = Listener(family, kind, proto)
    listener.guard = guard
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        listener.bind(address)
    except BaseException:
        listener.close()
        raise
    return listener
