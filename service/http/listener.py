"""The HTTP listener: what aiohttp does not bound about a connection, bounded here.

aiohttp (checked against 3.14) closes an idle keep-alive connection after
``keepalive_timeout`` — a connection that never completes a request head is idle to it too —
and limits a request's size, but it gives a client all that time to trickle in a request head
(a slowloris), and lets one client hold any number of connections. So the listener serves
aiohttp's own protocol (``runner.server``, its public protocol factory), each connection
wrapped in a :class:`GuardedConnection`:

- at most ``max_per_client`` connections from one address (IPv6: one /64, as the
  authentication limits count); another is closed as soon as it is accepted;
- a request head must arrive whole within ``header_timeout`` of the connection opening, or of
  its first byte after a response; else the connection is closed.

The HTTP middleware tells the guard when a request head has arrived and when its response is
done (:meth:`ConnectionGuard.request_started`, :meth:`ConnectionGuard.request_finished`);
it reads the body itself, within its own timeout.

>>> guard = ConnectionGuard(max_per_client=256, header_timeout=10.0)
>>> listener = await guard.serve(runner.server, "0.0.0.0", 8080, ssl=None)
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl as ssl_module
from collections.abc import Callable
from typing import Any, Final, Literal, cast

import structlog
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CollectorRegistry, Counter

from service.core.auth import client_key

log = structlog.get_logger(__name__)

DropReason = Literal["header_timeout", "too_many_from_client"]
DROP_REASONS: Final[tuple[DropReason, ...]] = ("header_timeout", "too_many_from_client")


class GuardedConnection(asyncio.Protocol):
    """One accepted connection: aiohttp's protocol inside, the guard's rules around it."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._transport: asyncio.Transport | None = None
        self._client: str | None = None
        self._counted = False
        self._in_request = False
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # a stream server's transport
        peer = transport.get_extra_info("peername")
        self._client = client_key(str(peer[0])) if peer else None
        if not self._guard._admit(self):
            self._transport.abort()  # aiohttp never hears of it
            return
        self._counted = True
        self._inner.connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if not self._in_request and self._deadline is None:
            self._arm()  # the first byte of the next request head
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if not self._counted:
            return
        self._counted = False
        self._guard._release(self)
        self._inner.connection_lost(exc)

    def request_started(self) -> None:
        self._in_request = True
        self._disarm()

    def request_finished(self) -> None:
        self._in_request = False

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self._guard.header_timeout, self._head_too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_too_slow(self) -> None:
        self._deadline = None
        if self._in_request or self._transport is None:
            return
        self._guard._dropped("header_timeout", self._client)
        self._transport.abort()


class ProtocolLog:
    """aiohttp's logger for one connection, minus its error log for a request head it cannot
    parse: aiohttp answers that 400 itself, and logs it at error level with a traceback that
    quotes the offending header line, so any client could fill the error log at will, and a
    stray byte in an ``Authorization`` header put its secret in the log. Such a head is the
    client's mistake: logged at debug, by its type only. Everything else goes to aiohttp's
    logger unchanged."""

    def __init__(self, inner: logging.Logger) -> None:
        self._inner = inner

    def debug(self, *args: Any, **kwargs: Any) -> None:
        self._inner.debug(*args, **kwargs)

    def exception(self, *args: Any, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            log.debug("http_bad_request_head", error_type=type(exc_info).__name__)
            return
        self._inner.exception(*args, exc_info=exc_info, **kwargs)

    def __getattr__(self, name: str) -> Any:  # any other logging call aiohttp may make
        return getattr(self._inner, name)


class ConnectionGuard:
    """The connections one HTTP listener holds, by client address, and their head deadlines.

    ``max_per_client``: open connections one address may hold; ``header_timeout``: seconds a
    connection has to deliver a whole request head.
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
        self._connections: dict[Any, GuardedConnection] = {}
        dropped = Counter(
            "signing_keys_http_connections_dropped",
            "HTTP connections closed by the listener, by reason (a request head too slow, too "
            "many connections from one client address).",
            ["reason"],
            registry=registry if registry is not None else CollectorRegistry(),
        )
        self._drops = {reason: dropped.labels(reason) for reason in DROP_REASONS}

    def __repr__(self) -> str:
        return (
            f"<ConnectionGuard open={len(self._connections)} clients={len(self._by_client)} "
            f"max_per_client={self.max_per_client} header_timeout={self.header_timeout:g}s>"
        )

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def protocol_factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], Any]:
        """A protocol factory for ``loop.create_server``: ``inner``'s protocol, guarded."""

        def guarded() -> GuardedConnection:
            protocol = inner()
            if isinstance(getattr(protocol, "logger", None), logging.Logger):
                cast(Any, protocol).logger = ProtocolLog(cast(Any, protocol).logger)
            return GuardedConnection(self, protocol)

        return guarded

    async def serve(
        self,
        inner: Callable[[], asyncio.Protocol],
        host: str,
        port: int,
        *,
        ssl: ssl_module.SSLContext | None,
        reuse_port: bool = False,
    ) -> asyncio.Server:
        """Listen on ``host``:``port`` (port 0: any free port), serving ``inner``'s protocol
        (aiohttp's ``runner.server``) on every connection, guarded. ``reuse_port``: share
        the port with the other workers (``SO_REUSEPORT``: the kernel spreads connections)."""
        loop = asyncio.get_running_loop()
        return await loop.create_server(
            self.protocol_factory(inner),
            host,
            port,
            ssl=ssl,
            reuse_port=reuse_port or None,
            # A TLS handshake is the first thing a connection must finish: no longer than a head.
            ssl_handshake_timeout=self.header_timeout if ssl is not None else None,
        )

    def request_started(self, transport: Any) -> None:
        """A request head has arrived on ``transport``: its deadline is met."""
        connection = self._connections.get(transport)
        if connection is not None:
            connection.request_started()

    def request_finished(self, transport: Any) -> None:
        """The response to ``transport``'s request is written: the connection idles until
        its next request's first byte."""
        connection = self._connections.get(transport)
        if connection is not None:
            connection.request_finished()

    def _admit(self, connection: GuardedConnection) -> bool:
        client = connection._client
        if client is not None and self._by_client[client] >= self.max_per_client:
            self._dropped("too_many_from_client", client)
            return False
        self._by_client[client] += 1
        self._connections[connection._transport] = connection
        return True

    def _release(self, connection: GuardedConnection) -> None:
        client = connection._client
        self._connections.pop(connection._transport, None)
        self._by_client[client] -= 1
        if self._by_client[client] <= 0:
            del self._by_client[client]

    def _dropped(self, reason: DropReason, client: str | None) -> None:
        self._drops[reason].inc()
        log.debug("http_connection_dropped", reason=reason, client=client)
