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
  its first byte after a response; else the connection is closed. Each connection notes when
  its clock started, and one sweep per guard, every eighth of ``header_timeout`` while any
  connection is open, closes those overdue: a request arms and cancels no timer of its own.

The HTTP middleware tells the guard when a request head has arrived
(:meth:`ConnectionGuard.request_started`) and the connection when its response is done
(:meth:`GuardedConnection.request_finished`); it reads the body itself, within its own
timeout.

>>> guard = ConnectionGuard(max_per_client=256, header_timeout=10.0)
>>> listener = await guard.serve(runner.server, "0.0.0.0", 8080, ssl=None)
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl as ssl_module
import time
from collections.abc import Callable
from typing import Any, Final, Literal, cast

import structlog
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CollectorRegistry, Counter

from service.core.auth import client_key

log = structlog.get_logger(__name__)

DropReason = Literal["header_timeout", "too_many_from_client"]
DROP_REASONS: Final[tuple[DropReason, ...]] = ("header_timeout", "too_many_from_client")
# How often, per header timeout, the guard looks for overdue request heads: a head is cut off
# between ``header_timeout`` and an eighth of it later.
SWEEPS_PER_TIMEOUT: Final = 8
# ...but no more often than this, whatever the timeout (a millisecond one would spin the loop).
MIN_SWEEP_INTERVAL: Final = 0.01


class GuardedConnection(asyncio.Protocol):
    """One accepted connection: aiohttp's protocol inside, the guard's rules around it.

    ``address``: the client's address as its socket names it (``None``: not an IP socket).
    """

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._transport: asyncio.Transport | None = None
        self.address: str | None = None
        self._client: str | None = None
        self._counted = False
        self._in_request = False
        # When the connection's clock for a whole request head started (its opening, or the
        # next request's first byte); None while it is not waiting for one. A timestamp,
        # not a timer: the guard's sweep reads it, so a request costs no timer to arm and
        # cancel.
        self._head_since: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # a stream server's transport
        peer = transport.get_extra_info("peername")
        if peer:
            self.address = str(peer[0])
            self._client = client_key(self.address)
        if not self._guard._admit(self):
            self._transport.abort()  # aiohttp never hears of it
            return
        self._counted = True
        self._head_since = self._guard.clock()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._head_since is None and not self._in_request:
            self._head_since = self._guard.clock()  # the first byte of the next request head
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_since = None
        if not self._counted:
            return
        self._counted = False
        self._guard._release(self)
        self._inner.connection_lost(exc)

    def request_started(self) -> None:
        self._in_request = True
        self._head_since = None

    def request_finished(self) -> None:
        self._in_request = False

    def is_head_overdue(self, now: float) -> bool:
        """Whether a request head it waits for is ``header_timeout`` late at ``now``."""
        since = self._head_since
        return since is not None and now - since >= self._guard.header_timeout

    def drop_slow_head(self) -> None:
        self._head_since = None
        if self._transport is None:
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
    connection has to deliver a whole request head; ``clock``: monotonic seconds, for the
    heads' timestamps and the sweep.
    """

    def __init__(
        self,
        *,
        max_per_client: int,
        header_timeout: float,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
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
        self.clock = clock
        self._sweep_interval = max(header_timeout / SWEEPS_PER_TIMEOUT, MIN_SWEEP_INTERVAL)
        self._sweep: asyncio.TimerHandle | None = None

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

    def request_started(self, transport: Any) -> GuardedConnection | None:
        """A request head has arrived on ``transport``: its deadline is met. Its connection
        (``None`` if the guard does not hold it), to tell when the response is written
        (:meth:`GuardedConnection.request_finished`): the connection then idles until its
        next request's first byte."""
        connection = self._connections.get(transport)
        if connection is not None:
            connection.request_started()
        return connection

    def _admit(self, connection: GuardedConnection) -> bool:
        client = connection._client
        if client is not None and self._by_client[client] >= self.max_per_client:
            self._dropped("too_many_from_client", client)
            return False
        self._by_client[client] += 1
        self._connections[connection._transport] = connection
        if self._sweep is None:
            self._schedule_sweep()
        return True

    def _release(self, connection: GuardedConnection) -> None:
        client = connection._client
        self._connections.pop(connection._transport, None)
        self._by_client[client] -= 1
        if self._by_client[client] <= 0:
            del self._by_client[client]

    def _schedule_sweep(self) -> None:
        loop = asyncio.get_running_loop()
        self._sweep = loop.call_later(self._sweep_interval, self._drop_slow_heads)

    def _drop_slow_heads(self) -> None:
        """One sweep: close the connections whose request head is overdue; the next sweep
        while any connection is open (a head is cut off at most a sweep interval late)."""
        self._sweep = None
        now = self.clock()
        overdue = [c for c in self._connections.values() if c.is_head_overdue(now)]
        for connection in overdue:
            connection.drop_slow_head()
        if self._connections:
            self._schedule_sweep()

    def _dropped(self, reason: DropReason, client: str | None) -> None:
        self._drops[reason].inc()
        log.debug("http_connection_dropped", reason=reason, client=client)
