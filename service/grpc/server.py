"""The gRPC server: the SigningKeys servicer, health and reflection on one grpclib server.

>>> grpc_server = GrpcServer(settings, key_service=keys, authenticator=auth,
...                          verifier=verifier, changes=feed, readiness=readiness,
...                          regions=router)
>>> await grpc_server.start("127.0.0.1", 0)  # port 0: any free port, then see .port
>>> grpc_server.close(); await grpc_server.wait_closed()

or ``async with GrpcServer(...) as grpc_server:``, which listens on the settings' gRPC
host and port. It runs in the service's event loop beside HTTP. Requests are limited to
``settings.max_body_bytes`` (the HTTP body limit), refused from their length prefix
(:mod:`service.grpc.limits`); malformed ones get ``INVALID_ARGUMENT``
(:mod:`service.grpc.codec`); health follows the service's readiness
(:mod:`service.grpc.health`).

Only grpclib's public API runs the server (checked against grpclib 0.4.9):
``Server.start(sock=…)`` on a socket bound here (:mod:`service.grpc.listener`, which also
knows the connections to end at shutdown), ``Server.close()`` and ``wait_closed()``, and the
services it is given, each method a ``Handler`` of grpclib's. What applies to every call of
every service is one wrapper around each handler, built with the server (:class:`CallGate`):
the connection guard's note that a connection has made its first request, the shutdown
gate, the client-certificate rule of mutual TLS, the size limit, and the client's address
for per-client limits. (grpclib's ``RecvRequest`` event could do as much, but it builds an
event and awaits each listener on every call, and each listener wrapped the handler anew.)
Its connections are capped per client address and must send a first request in time
(:class:`~service.grpc.listener.ConnectionGuard`, told of each connection by the listening
socket and of each request by the gate).

Shutdown (:meth:`GrpcServer.close`, then :meth:`GrpcServer.wait_closed`), each step bounded
by ``SHUTDOWN_TIMEOUT``:

1. every new call, on any service, answers ``UNAVAILABLE``;
2. the unary SigningKeys calls in flight finish (the servicer counts them);
3. ``Server.close()`` stops listening and cancels what still runs — watch streams, health
   watches, stragglers — and each ends with ``UNAVAILABLE``;
4. every connection is shut down, so that clients reconnect elsewhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final, Literal, Protocol, Self

import structlog
from grpclib.config import Configuration
from grpclib.const import Handler, Status
from grpclib.reflection.service import ServerReflection
from grpclib.server import Server, Stream
from prometheus_client import CollectorRegistry

from service.core.auth import CLIENT_ADDRESS, Authenticator
from service.core.changes import ChangeFeed
from service.core.keys import KeyService
from service.core.readiness import Readiness
from service.core.verify import TokenVerifier
from service.errors import DependencyError, UnauthenticatedError
from service.grpc.codec import StrictCodec, protobuf_twins
from service.grpc.errors import error_status, grpc_error, status_details_codec
from service.grpc.generated.signingkeys import v1 as pb
from service.grpc.generated.signingkeys.v1 import signing_keys_pb2
from service.grpc.health import RegionEvents, readiness_health
from service.grpc.limits import PREFIX_BYTES, SizeLimit, decode_headers_as_latin1
from service.grpc.listener import ConnectionGuard, Listener, bind_listener
from service.grpc.metrics import GrpcMetrics
from service.grpc.servicer import SigningKeysServicer
from service.lifecycle import AsyncResource
from service.settings import Settings
from service.tls import CERTIFICATE_REQUIRED, requires_client_certificate, server_context

log = structlog.get_logger(__name__)

SHUTDOWN_TIMEOUT: Final = 5.0
SERVICE_NAME: Final = "signingkeys.v1.SigningKeys"
MIN_STREAM_WINDOW: Final = 65_535  # HTTP/2's smallest window that grpclib accepts
SHUTTING_DOWN: Final = "the server is shutting down; retry elsewhere"
HEALTH_METHODS: Final = "/grpc.health.v1.Health/"

ServerMethod = Callable[[Stream[Any, Any]], Awaitable[None]]


class Servable(Protocol):
    """A service as grpclib serves it: its methods by path."""

    def __mapping__(self) -> Mapping[str, Handler]: ...


class CallGate:
    """Every call of every service passes here, in one wrapper per handler built when the
    server is: the connection guard hears of the request, a call answers ``UNAVAILABLE``
    once :meth:`close` is called and, under mutual TLS, ``UNAUTHENTICATED`` from a
    connection without a client certificate (but for health); its request messages are
    size-limited; it runs with its client's address bound to
    :data:`~service.core.auth.CLIENT_ADDRESS`, which the per-client limits count by.

    Calls that shutdown cancels end with ``UNAVAILABLE`` rather than vanish; :meth:`idle`
    says when no handler runs any more.

    >>> gate = CallGate(size_limit=SizeLimit(max_message_bytes=65536))
    >>> server = grpclib.server.Server(gate.guard([servicer, health]))
    """

    def __init__(
        self,
        *,
        size_limit: SizeLimit,
        connection_guard: ConnectionGuard | None = None,
        requires_client_certificate: bool = False,
    ) -> None:
        self.is_open = True
        self._size_limit = size_limit
        self._request_seen = (
            connection_guard.request_hook() if connection_guard is not None else _ignore
        )
        self._requires_client_certificate = requires_client_certificate
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def __repr__(self) -> str:
        return f"<CallGate {'open' if self.is_open else 'closed'} running={self._running}>"

    @property
    def running(self) -> int:
        return self._running

    def close(self) -> None:
        self.is_open = False

    async def idle(self) -> None:
        await self._idle.wait()

    def guard(self, services: Iterable[Servable]) -> list[Servable]:
        """``services`` as grpclib is to serve them: each handler behind this gate."""
        return [_Guarded(self, service) for service in services]

    def wrap(self, method_name: str, handler: ServerMethod) -> ServerMethod:
        """``handler`` (of the method ``method_name``) behind this gate: what applies to a
        call is decided here, once, rather than on every call."""
        checks_certificate = self._requires_client_certificate and not method_name.startswith(
            HEALTH_METHODS
        )
        request_seen = self._request_seen
        bound = self._size_limit.bound

        async def gated(stream: Stream[Any, Any]) -> None:
            peer = stream.peer
            address = peer.addr() if peer is not None else None
            # First: a refused call is a request all the same.
            request_seen(address)
            if not self.is_open:
                raise grpc_error(DependencyError(SHUTTING_DOWN))
            if checks_certificate and not (peer is not None and peer.cert()):
                await _refuse_without_certificate(stream)
                return
            bound(stream)
            token = CLIENT_ADDRESS.set(str(address[0]) if address else None)
            self._running += 1
            self._idle.clear()
            try:
                await handler(stream)
            except asyncio.CancelledError:
                if not self.is_open:
                    await _end_unavailable(stream)
                raise
            finally:
                self._running -= 1
                if not self._running:
                    self._idle.set()
                CLIENT_ADDRESS.reset(token)

        return gated


class _Guarded:
    """A service as the server serves it: its methods, each behind the gate."""

    def __init__(self, gate: CallGate, service: Servable) -> None:
        self._service = service
        self._mapping = {
            name: handler._replace(func=gate.wrap(name, handler.func))
            for name, handler in service.__mapping__().items()
        }

    def __repr__(self) -> str:
        return f"<guarded {self._service!r}>"

    def __mapping__(self) -> Mapping[str, Handler]:
        return self._mapping


def _ignore(address: object) -> None:
    return None


async def _refuse_without_certificate(stream: Stream[Any, Any]) -> None:
    failure = error_status(UnauthenticatedError(CERTIFICATE_REQUIRED))
    await stream.send_trailing_metadata(
        status=failure.status,
        status_message=failure.message,
        status_details=failure.details,
        metadata=failure.metadata(),
    )


async def _end_unavailable(stream: Stream[Any, Any]) -> None:
    try:
        await stream.send_trailing_metadata(status=Status.UNAVAILABLE, status_message=SHUTTING_DOWN)
    except Exception as exc:
        # The call had ended already: trailers sent, stream reset or connection gone.
        log.debug("grpc_call_ended_during_shutdown", error=repr(exc))


class GrpcServer(AsyncResource):
    """``signingkeys.v1.SigningKeys`` + ``grpc.health.v1.Health`` + server reflection.

    Health answers for ``""`` and ``signingkeys.v1.SigningKeys`` from ``readiness``, and
    wakes ``Watch`` streams when ``regions`` (the router) reports a change.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        key_service: KeyService,
        authenticator: Authenticator,
        verifier: TokenVerifier,
        changes: ChangeFeed,
        readiness: Readiness,
        regions: RegionEvents,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.max_message_bytes = settings.max_body_bytes
        self.servicer = SigningKeysServicer(
            key_service=key_service,
            authenticator=authenticator,
            verifier=verifier,
            changes=changes,
            observer=GrpcMetrics(settings, registry),
        )
        self.health, self.health_check = readiness_health(
            readiness, [self.servicer], regions=regions
        )
        # A stream window that holds the largest request and its prefix: a legitimate
        # request arrives without waiting on flow control, an oversized one is refused
        # from its prefix with no more than this window in flight.
        window = max(MIN_STREAM_WINDOW, self.max_message_bytes + PREFIX_BYTES)
        self.connection_guard = ConnectionGuard(
            max_per_client=settings.grpc_max_connections_per_client,
            header_timeout=settings.grpc_header_timeout,
            registry=registry,
        )
        self.gate = CallGate(
            size_limit=SizeLimit(max_message_bytes=self.max_message_bytes),
            connection_guard=self.connection_guard,
            requires_client_certificate=requires_client_certificate(settings),
        )
        self._server = Server(
            self.gate.guard(ServerReflection.extend([self.servicer, self.health])),
            codec=StrictCodec(
                max_message_bytes=self.max_message_bytes,
                twins=protobuf_twins(pb, signing_keys_pb2),
            ),
            # google.rpc.Status in grpc-status-details-bin (given a codec, grpclib picks none).
            status_details_codec=status_details_codec(),
            config=Configuration(http2_stream_window_size=window),
        )
        decode_headers_as_latin1(self._server)
        self._listener: Listener | None = None
        self._state: Literal["new", "serving", "closing", "closed"] = "new"
        self._closed = asyncio.Event()
        self._shutdown: asyncio.Future[None] | None = None
        self.port: int | None = None

    def __repr__(self) -> str:
        return (
            f"<GrpcServer {self._state} port={self.port} {self.gate!r} "
            f"health={self.health_check!r}>"
        )

    @property
    def connections(self) -> int:
        """Open client connections."""
        return 0 if self._listener is None else self._listener.connections

    async def start(self, host: str | None = None, port: int | None = None) -> None:
        """Listen on ``host``:``port`` (default: the settings'; port 0 picks a free port)."""
        if self._state != "new":
            raise RuntimeError(f"the gRPC server is {self._state}; start it once")
        host = self.settings.grpc_host if host is None else host
        port = self.settings.grpc_port if port is None else port
        listener = await bind_listener(
            host, port, guard=self.connection_guard, reuse_port=self.settings.workers > 1
        )
        try:
            await self._server.start(sock=listener, ssl=server_context(self.settings, alpn=["h2"]))
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self.port = listener.port
        self._state = "serving"
        log.info("grpc_serving", port=self.port, max_message_bytes=self.max_message_bytes)

    def close(self) -> None:
        """Refuse new calls and begin the shutdown (see :meth:`wait_closed`)."""
        if self._state == "new":
            self._state = "closed"
            self._closed.set()
        if self._state != "serving":
            return
        self._state = "closing"
        self.gate.close()
        self.servicer.stop_accepting()
        self._shutdown = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        try:
            await _within(self.servicer.drained(), "grpc calls still running at shutdown")
            self._server.close()
            await _within(self.gate.idle(), "grpc handlers did not exit in time")
            assert self._listener is not None
            ended = self._listener.end_connections()
            await _within(self._server.wait_closed(), "grpc server did not close in time")
        finally:
            self._state = "closed"
            self._closed.set()
        log.info("grpc_closed", port=self.port, connections_ended=ended)

    async def wait_closed(self) -> None:
        """Wait for the shutdown: unary calls in flight finish (at most ``SHUTDOWN_TIMEOUT``
        seconds), then the rest ends with ``UNAVAILABLE`` and every connection is closed."""
        if self._shutdown is not None:
            await asyncio.shield(self._shutdown)
        await self._closed.wait()

    async def aclose(self) -> None:
        """Close and wait; cancelling the caller ends its wait, not the shutdown, which runs
        in a task of its own."""
        self.close()
        await self.wait_closed()

    async def __aenter__(self) -> Self:
        if self._state == "new":  # else started already, on an address the caller chose
            await self.start()
        return self


async def _within(step: Awaitable[None], warning: str) -> None:
    try:
        await asyncio.wait_for(step, SHUTDOWN_TIMEOUT)
    except TimeoutError:
        log.warning(warning, timeout=SHUTDOWN_TIMEOUT)
