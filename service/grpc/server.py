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
knows the connections to end at shutdown), ``Server.close()`` and ``wait_closed()``, and
``grpclib.events`` listeners on ``RecvRequest`` for what applies to every call of every
service: the connection guard's note that a connection has made its first request, the
client-certificate rule of mutual TLS (:class:`ClientCertificateRule`), the size limit, the
client's address for per-client limits, and the shutdown gate (:class:`CallGate`). Its
connections are capped per client address and must send a first request in time
(:class:`~service.grpc.listener.ConnectionGuard`, told of each connection by the listening
socket and of each request by that event).

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
from collections.abc import Awaitable
from typing import Any, Final, Literal, Self

import structlog
from grpclib.config import Configuration
from grpclib.const import Status
from grpclib.events import RecvRequest, listen
from grpclib.exceptions import GRPCError
from grpclib.reflection.service import ServerReflection
from grpclib.server import Server, Stream
from prometheus_client import CollectorRegistry

from service.core.auth import CLIENT_ADDRESS, Authenticator
from service.core.changes import ChangeFeed
from service.core.keys import KeyService
from service.core.readiness import Readiness
from service.core.verify import TokenVerifier
from service.errors import UnauthenticatedError
from service.grpc.codec import StrictCodec, protobuf_twins
from service.grpc.errors import ERROR_TYPE_METADATA
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


class CallGate:
    """Every call of every service passes here (a ``RecvRequest`` listener).

    Once :meth:`close` is called, new calls answer ``UNAVAILABLE``, and calls that shutdown
    cancels end with ``UNAVAILABLE`` rather than vanish; :meth:`idle` says when no handler
    runs any more.
    """

    def __init__(self) -> None:
        self.is_open = True
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

    async def __call__(self, event: RecvRequest) -> None:
        if not self.is_open:
            event.method_func = _refuse
            event.interrupt()  # nothing else needs to wrap a refusal
            return
        handler = event.method_func

        async def gated(stream: Stream[Any, Any]) -> None:
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

        event.method_func = gated


async def bind_client_address(event: RecvRequest) -> None:
    """A ``RecvRequest`` listener: every call runs with its client's address bound to
    :data:`~service.core.auth.CLIENT_ADDRESS`, which the per-client limits count by."""
    handler = event.method_func
    peer = event.peer.addr() if event.peer is not None else None
    address = str(peer[0]) if peer else None

    async def bound(stream: Stream[Any, Any]) -> None:
        token = CLIENT_ADDRESS.set(address)
        try:
            await handler(stream)
        finally:
            CLIENT_ADDRESS.reset(token)

    event.method_func = bound


class ClientCertificateRule:
    """A ``RecvRequest`` listener for mutual TLS: a call from a connection that presented no
    client certificate answers ``UNAUTHENTICATED``, except the health service's, which
    orchestrators call without one (:mod:`service.tls` states the rule)."""

    async def __call__(self, event: RecvRequest) -> None:
        if event.method_name.startswith(HEALTH_METHODS):
            return
        certificate = event.peer.cert() if event.peer is not None else None
        if not certificate:
            event.method_func = _refuse_without_certificate


async def _refuse_without_certificate(stream: Stream[Any, Any]) -> None:
    await stream.send_trailing_metadata(
        status=Status.UNAUTHENTICATED,
        status_message=CERTIFICATE_REQUIRED,
        metadata={ERROR_TYPE_METADATA: UnauthenticatedError.type},
    )


async def _refuse(stream: Stream[Any, Any]) -> None:
    raise GRPCError(Status.UNAVAILABLE, SHUTTING_DOWN)


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
        self._server = Server(
            ServerReflection.extend([self.servicer, self.health]),
            codec=StrictCodec(
                max_message_bytes=self.max_message_bytes,
                twins=protobuf_twins(pb, signing_keys_pb2),
            ),
            config=Configuration(http2_stream_window_size=window),
        )
        decode_headers_as_latin1(self._server)
        self.connection_guard = ConnectionGuard(
            max_per_client=settings.grpc_max_connections_per_client,
            header_timeout=settings.grpc_header_timeout,
            registry=registry,
        )
        # First of the RecvRequest listeners, so that none can stop the event before it (the
        # gate does, for a call it refuses): a refused call is a request all the same.
        self.connection_guard.install(self._server)
        if requires_client_certificate(settings):
            listen(self._server, RecvRequest, ClientCertificateRule())
        self.gate = CallGate()
        listen(self._server, RecvRequest, self.gate)
        listen(self._server, RecvRequest, SizeLimit(max_message_bytes=self.max_message_bytes))
        listen(self._server, RecvRequest, bind_client_address)
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
