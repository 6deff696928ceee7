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
its first request within ``header_timeout`` of being accepted, or be closed: a client that
sends the preface, settings and pings but never a request (a slowloris over HTTP/2) holds
nothing for long. Once a request has arrived, a connection may idle for as long as its
client likes (gRPC channels are long-lived); the per-address cap bounds how many.

It does so through public surfaces only, none of grpclib's internals:

* :meth:`Listener.accept` hands each connection to :meth:`ConnectionGuard.admit`, which
  closes one over its address's cap at once (grpclib never hears of it) and starts the
  deadline of the others — before a TLS handshake, which the event loop runs before grpclib
  hears of the connection (and would give 60 s). Each admitted connection is handed to the
  event loop as an :class:`AcceptedSocket`, whose ``close()`` — called by the loop's
  transport when the connection ends, as asyncio's selector transports do (checked in
  ``tests/grpc/test_listener.py``) — frees its address's slot; so does the socket being
  collected unclosed.
* grpclib's public ``RecvRequest`` event (``grpclib.events.listen``, as
  :meth:`~ConnectionGuard.install` listens) says a connection has delivered a request:
  complete headers that grpclib accepted as a call (a method it serves, gRPC's content
  type). Its ``peer.addr()`` is the client's address and port, which name the accepted
  socket; the first one disarms the connection's deadline. A server that wraps every handler
  itself tells the guard from there instead (:meth:`~ConnectionGuard.request_hook`; the
  service's ``CallGate`` does), at the same moment and without an event per call.
* A deadline that passes shuts the socket down, as :meth:`Listener.end_connections` does:
  the transport reads end-of-file and closes itself.

>>> guard = ConnectionGuard(max_per_client=256, header_timeout=10.0)
>>> guard.install(grpclib_server)  # before any RecvRequest listener that may refuse a call
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
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import structlog
from grpclib.events import RecvRequest, listen
from prometheus_client import CollectorRegistry, Counter

from service.core.auth import client_key

log = structlog.get_logger(__name__)

DropReason = Literal["header_timeout", "too_many_from_client"]
DROP_REASONS: Final[tuple[DropReason, ...]] = ("header_timeout", "too_many_from_client")

# A connection is named by its client's address and port, as both its accepted socket and
# grpclib's ``Peer.addr()`` report them (IPv6 adds flow info and scope, the same for both).
PeerAddress = tuple[str, int]


def peer_address(address: Any) -> PeerAddress | None:
    """``(host, port)`` of a socket address as ``accept()``/``getpeername()`` give it."""
    if isinstance(address, tuple) and len(address) >= 2:
        return str(address[0]), int(address[1])
    return None  # not an IP connection


class AcceptedSocket(socket.socket):
    """An accepted connection, as the event loop is handed it: a plain socket that runs
    ``on_close`` once when it is closed — asyncio's transport closes its socket when the
    connection ends, however it ends (a failed TLS handshake included)."""

    def __init__(
        self, family: int = -1, kind: int = -1, proto: int = -1, fileno: int | None = None
    ) -> None:
        super().__init__(family, kind, proto, fileno)
        self.on_close: Callable[[], Any] | None = None

    def close(self) -> None:
        try:
            super().close()
        finally:
            on_close, self.on_close = self.on_close, None
            if on_close is not None:
                on_close()


@dataclass(slots=True, eq=False)
class _Connection:
    """An admitted connection: whose it is, and its deadline for a first request."""

    client: str
    peer: PeerAddress
    sock: weakref.ref[socket.socket]
    deadline: asyncio.TimerHandle | None = field(default=None)
    closed: bool = False


class ConnectionGuard:
    """The connections one gRPC listener holds, by client address, and their deadlines for
    a first request.

    ``max_per_client``: open connections one address may hold; ``header_timeout``: seconds a
    connection has to deliver its first request.
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
        self.installed = False
        self._by_client: collections.Counter[str] = collections.Counter()
        self._by_peer: dict[PeerAddress, _Connection] = {}
        # Connections whose deadline is armed: while none is, a request has nothing to
        # disarm, and is not looked up (every call tells the guard).
        self._awaiting = 0
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
            f"<ConnectionGuard open={self.open_connections} clients={len(self._by_client)} "
            f"awaiting_request={self._awaiting} max_per_client={self.max_per_client} "
            f"header_timeout={self.header_timeout:g}s>"
        )

    @property
    def open_connections(self) -> int:
        return len(self._by_peer)

    def install(self, server: Any) -> None:
        """Learn of ``server``'s requests (a ``grpclib.server.Server``) through its public
        ``RecvRequest`` event. Install it before any listener that may refuse a call (grpclib
        stops at the first that raises): a refused request is a request all the same."""
        listen(server, RecvRequest, self._request_received)
        self.installed = True

    def request_hook(self) -> Callable[[Any], None]:
        """For a server that sees each call before its handler itself (rather than through
        ``RecvRequest``, which costs an event per call): the function to call with each
        request's peer address (``Peer.addr()``), refused calls included."""
        self.installed = True
        return self.request_received

    def admit(self, conn: socket.socket, address: Any) -> socket.socket:
        """``conn`` has just been accepted from ``address``: the socket to hand the event
        loop, its deadline started; or, over its address's cap, ``conn`` is closed and
        :class:`ConnectionAbortedError` raised (asyncio's loops take it as "nothing to
        accept now")."""
        peer = peer_address(address)
        if peer is None:
            return conn  # not TCP: nothing to count it by
        client = client_key(peer[0])
        if self._by_client[client] >= self.max_per_client:
            conn.close()
            self._dropped("too_many_from_client", client)
            raise ConnectionAbortedError(f"too many connections from {client}")
        timeout = conn.gettimeout()
        accepted = AcceptedSocket(conn.family, conn.type, conn.proto, fileno=conn.detach())
        accepted.settimeout(timeout)
        connection = _Connection(client, peer, weakref.ref(accepted))
        # Closed by its transport, or (should anything drop it unclosed) collected: either
        # way its slot is freed, once.
        release = weakref.finalize(accepted, self._release, connection)
        release.atexit = False
        accepted.on_close = release
        self._by_client[client] += 1
        stale = self._by_peer.pop(peer, None)  # a port reused before its close was seen
        if stale is not None:
            self._release(stale)
        self._by_peer[peer] = connection
        connection.deadline = asyncio.get_running_loop().call_later(
            self.header_timeout, self._expired, connection
        )
        self._awaiting += 1
        return accepted

    async def _request_received(self, event: RecvRequest) -> None:
        self.request_received(event.peer.addr() if event.peer is not None else None)

    def request_received(self, address: Any) -> None:
        """A connection, named by its peer's address, has delivered a request."""
        if not self._awaiting:
            return
        peer = peer_address(address)
        connection = self._by_peer.get(peer) if peer is not None else None
        if connection is not None:
            self._disarm(connection)  # a request has arrived: it may idle from now on

    def _disarm(self, connection: _Connection) -> None:
        if connection.deadline is not None:
            connection.deadline.cancel()
            connection.deadline = None
            self._awaiting -= 1

    def _expired(self, connection: _Connection) -> None:
        self._disarm(connection)
        sock = connection.sock()
        if connection.closed or sock is None or sock.fileno() == -1:
            return  # closed already (a failed handshake, say)
        # Shut down, not closed: the descriptor is the transport's, which reads end-of-file
        # and closes itself (and the socket, which frees the slot).
        with contextlib.suppress(OSError):  # the peer may have gone already
            sock.shutdown(socket.SHUT_RDWR)
        self._dropped("header_timeout", connection.client)

    def _release(self, connection: _Connection) -> None:
        if connection.closed:
            return
        connection.closed = True
        self._disarm(connection)
        if self._by_peer.get(connection.peer) is connection:
            del self._by_peer[connection.peer]
        self._by_client[connection.client] -= 1
        if self._by_client[connection.client] <= 0:
            del self._by_client[connection.client]

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
        if self.guard is not None:
            conn = self.guard.admit(conn, address)
        self._connections.add(conn)
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


async def bind_listener(
    host: str, port: int, *, guard: ConnectionGuard | None = None, reuse_port: bool = False
) -> Listener:
    """A :class:`Listener` bound to ``host``:``port`` (port 0: any free port), as asyncio's
    ``create_server`` binds: address reuse on, IPv6 sockets IPv6-only. One socket, on the first
    address ``host`` resolves to. With a ``guard`` (installed on the server first, or no
    request would ever disarm a deadline), each connection is admitted or refused as it is
    accepted, and its deadline for a first request starts then, so that it bounds a TLS
    handshake too. ``reuse_port``: share the port with the other workers (``SO_REUSEPORT``;
    the kernel spreads the connections among them)."""
    if guard is not None and not guard.installed:
        raise ValueError("install the connection guard on the grpclib server first")
    infos = await asyncio.get_running_loop().getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, kind, proto, _, address = infos[0]
    listener = Listener(family, kind, proto)
    listener.guard = guard
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        listener.bind(address)
    except BaseException:
        listener.close()
        raise
    return listener
