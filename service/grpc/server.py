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

grpclib 0.4 offers no public way to the listening socket or the open connections, so two
of its internals are used, here only: ``Server._server`` (the asyncio server: its port,
and closing it to stop accepting while calls drain) and ``Server._protocol_factory`` (to
remember connections so that shutdown can close them).
"""

from __future__ import annotations

import asyncio
import weakref
from types import TracebackType
from typing import Any, Final, Literal

import structlog
from grpclib.config import Configuration
from grpclib.protocol import H2Protocol
from grpclib.reflection.service import ServerReflection
from grpclib.server import Server
from prometheus_client import CollectorRegistry

from service.core.auth import Authenticator
from service.core.changes import ChangeFeed
from service.core.keys import KeyService
from service.core.readiness import Readiness
from service.core.verify import TokenVerifier
from service.grpc.codec import StrictCodec, protobuf_twins
from service.grpc.generated.signingkeys import v1 as pb
from service.grpc.generated.signingkeys.v1 import signing_keys_pb2
from service.grpc.health import RegionEvents, readiness_health
from service.grpc.limits import size_limited
from service.grpc.metrics import GrpcMetrics
from service.grpc.servicer import SigningKeysServicer
from service.settings import Settings
from service.tls import server_context

log = structlog.get_logger(__name__)

SHUTDOWN_TIMEOUT: Final = 5.0
SERVICE_NAME: Final = "signingkeys.v1.SigningKeys"
MIN_STREAM_WINDOW: Final = 65_535  # HTTP/2's smallest window that grpclib accepts


class _Server(Server):
    """grpclib's server, remembering its connections so that shutdown can close them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._protocols: weakref.WeakSet[H2Protocol] = weakref.WeakSet()

    def _protocol_factory(self) -> H2Protocol:
        protocol = super()._protocol_factory()
        self._protocols.add(protocol)
        return protocol

    def close_connections(self) -> None:
        for protocol in list(self._protocols):
            processor = getattr(protocol, "processor", None)  # set once connected
            if processor is not None:
                processor.close("the server is shutting down")


class GrpcServer:
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
        services = ServerReflection.extend([self.servicer, self.health])
        window = max(MIN_STREAM_WINDOW, self.max_message_bytes + 5)
        self._server = _Server(
            size_limited(services, max_message_bytes=self.max_message_bytes),
            codec=StrictCodec(
                max_message_bytes=self.max_message_bytes,
                twins=protobuf_twins(pb, signing_keys_pb2),
            ),
            config=Configuration(http2_stream_window_size=window),
        )
        self._state: Literal["new", "serving", "closing", "closed"] = "new"
        self._closed = asyncio.Event()
        self._shutdown: asyncio.Future[None] | None = None
        self.port: int | None = None

    def __repr__(self) -> str:
        return f"<GrpcServer {self._state} port={self.port} health={self.health_check!r}>"

    async def start(self, host: str | None = None, port: int | None = None) -> None:
        """Listen on ``host``:``port`` (default: the settings'; port 0 picks a free port)."""
        if self._state != "new":
            raise RuntimeError(f"the gRPC server is {self._state}; start it once")
        host = self.settings.grpc_host if host is None else host
        port = self.settings.grpc_port if port is None else port
        await self._server.start(host, port, ssl=server_context(self.settings, alpn=["h2"]))
        self._state = "serving"
        listener: Any = self._server._server  # grpclib exposes no public way to the port
        self.port = listener.sockets[0].getsockname()[1]
        log.info("grpc serving", port=self.port, max_message_bytes=self.max_message_bytes)

    def close(self) -> None:
        """Stop accepting connections and begin the shutdown (see :meth:`wait_closed`)."""
        if self._state == "new":
            self._state = "closed"
            self._closed.set()
        if self._state != "serving":
            return
        self._state = "closing"
        self.servicer.stop_accepting()
        listener: Any = self._server._server
        listener.close()
        self._shutdown = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        try:
            try:
                await asyncio.wait_for(self.servicer.drained(), SHUTDOWN_TIMEOUT)
            except TimeoutError:
                log.warning("grpc calls still running at shutdown", timeout=SHUTDOWN_TIMEOUT)
            # What is left (watch streams, health watches, stragglers) is cancelled, and the
            # connections closed so that clients see the end and reconnect elsewhere.
            self._server.close()
            self._server.close_connections()
            try:
                await asyncio.wait_for(self._server.wait_closed(), SHUTDOWN_TIMEOUT)
            except TimeoutError:
                log.warning("grpc handlers did not exit in time", timeout=SHUTDOWN_TIMEOUT)
        finally:
            self._state = "closed"
            self._closed.set()
            log.info("grpc closed", port=self.port)

    async def wait_closed(self) -> None:
        """Wait for the shutdown: unary calls in flight finish (at most ``SHUTDOWN_TIMEOUT``
        seconds), then the rest is cancelled and every connection closed."""
        if self._shutdown is not None:
            await asyncio.shield(self._shutdown)
        await self._closed.wait()

    async def aclose(self) -> None:
        self.close()
        await self.wait_closed()

    async def __aenter__(self) -> GrpcServer:
        if self._state == "new":
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.shield(self.aclose())
