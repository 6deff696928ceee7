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

>>> listener = await bind_listener("127.0.0.1", 0)
>>> await grpclib_server.start(sock=listener)
>>> listener.port
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import weakref

import structlog

log = structlog.get_logger(__name__)


class Listener(socket.socket):
    """A TCP socket for ``grpclib.server.Server.start(sock=…)`` that notes the connections it
    accepts; made by :func:`bind_listener`."""

    def __init__(
        self, family: int = -1, kind: int = -1, proto: int = -1, fileno: int | None = None
    ) -> None:
        super().__init__(family, kind, proto, fileno)
        self._connections: weakref.WeakSet[socket.socket] = weakref.WeakSet()

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


async def bind_listener(host: str, port: int) -> Listener:
    """A :class:`Listener` bound to ``host``:``port`` (port 0: any free port), as asyncio's
    ``create_server`` binds: address reuse on, IPv6 sockets IPv6-only. One socket, on the first
    address ``host`` resolves to."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, kind, proto, _, address = infos[0]
    listener = Listener(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        listener.bind(address)
    except BaseException:
        listener.close()
        raise
    return listener
