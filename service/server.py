"""The composition root: builds the database access, the core services and the servers.

>>> async with Server(Settings.from_env()) as server:
...     await server.wait_closed()
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge

from service.core.auth import Authenticator
from service.core.changes import ChangeFeed
from service.core.keycache import KeyCache
from service.core.keys import KeyService
from service.core.readiness import Readiness
from service.core.verify import TokenVerifier
from service.grpc.server import GrpcServer
from service.http.app import make_app
from service.locality.router import LocalityRouter
from service.settings import Settings
from service.store.keys import PostgresKeyRecords
from service.store.tokens import PostgresTokenRecords
from service.tls import server_context

log = structlog.get_logger(__name__)

SHUTDOWN_TIMEOUT = 5.0


class Server:
    """HTTP (and gRPC) serving one :class:`Settings`; an async context manager."""

    def __init__(self, settings: Settings, *, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.database = LocalityRouter(
            settings.regions,
            local_region=settings.local_region,
            settings=settings.router,
            registry=self.registry,
        )
        self.key_records = PostgresKeyRecords(self.database)
        self.authenticator = Authenticator(
            PostgresTokenRecords(self.database),
            cache_ttl=settings.credential_cache_ttl,
            max_staleness=settings.max_staleness,
        )
        self.key_cache = KeyCache(
            size=settings.key_cache_size,
            negative_size=settings.negative_cache_size,
            negative_ttl=settings.negative_cache_ttl,
        )
        self.keys = KeyService(self.key_records, on_change=self.key_cache.put)
        self.changes = ChangeFeed(
            self.key_records,
            self.key_cache,
            poll_interval=settings.change_poll_interval,
            overlap=settings.change_overlap,
        )
        self.verifier = TokenVerifier(
            self.key_records,
            self.key_cache,
            self.changes,
            max_token_bytes=settings.max_token_bytes,
            clock_skew=settings.clock_skew,
            max_staleness=settings.max_staleness,
        )
        self.readiness = Readiness(
            can_read=self.database.can_read, can_verify=self.verifier.can_serve
        )
        self.app = make_app(
            settings,
            key_service=self.keys,
            authenticator=self.authenticator,
            verifier=self.verifier,
            regions=self.database,
            readiness=self.readiness,
            registry=self.registry,
        )
        self._register_gauges()
        self.grpc: GrpcServer | None = None
        if settings.grpc_enabled:
            self.grpc = GrpcServer(
                settings,
                key_service=self.keys,
                authenticator=self.authenticator,
                verifier=self.verifier,
                changes=self.changes,
                readiness=self.readiness,
                regions=self.database,
                registry=self.registry,
            )
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._closed = asyncio.Event()
        self._closing: asyncio.Task[None] | None = None
        self.http_port: int | None = None
        self.grpc_port: int | None = None

    def _register_gauges(self) -> None:
        degraded = Gauge(
            "signing_keys_degraded",
            "1 while no region can serve reads and verification runs on last known good keys.",
            registry=self.registry,
        )
        degraded.set_function(lambda: float(self.readiness.is_degraded()))
        staleness = Gauge(
            "signing_keys_key_staleness_seconds",
            "Seconds since the change feed last read the database.",
            registry=self.registry,
        )
        staleness.set_function(lambda: min(self.changes.staleness(), 1e9))
        cached = Gauge(
            "signing_keys_cached_keys", "Parsed keys held in the cache.", registry=self.registry
        )
        cached.set_function(lambda: len(self.key_cache))

    def __repr__(self) -> str:
        return (
            f"<Server http_port={self.http_port} grpc_port={self.grpc_port} "
            f"database={self.database!r}>"
        )

    async def start(self) -> None:
        await self.database.start()
        await self.changes.start()
        self._runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT
        )
        await self._runner.setup()
        self._site = web.TCPSite(
            self._runner,
            self.settings.http_host,
            self.settings.http_port,
            ssl_context=server_context(self.settings),
        )
        await self._site.start()
        self.http_port = self._runner.addresses[0][1]
        if self.grpc is not None:
            await self.grpc.start(self.settings.grpc_host, self.settings.grpc_port)
            self.grpc_port = self.grpc.port
        log.info(
            "serving",
            http_port=self.http_port,
            grpc_port=self.grpc_port,
            local_region=self.settings.local_region,
        )

    def request_close(self) -> None:
        """Start closing (once: a second signal joins the first shutdown); for signal handlers."""
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._close())

    async def aclose(self) -> None:
        self.request_close()
        assert self._closing is not None
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        try:
            if self.grpc is not None:
                self.grpc.close()
                await self.grpc.wait_closed()
            if self._runner is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._runner.cleanup(), SHUTDOWN_TIMEOUT * 2)
        finally:
            await self.changes.aclose()
            await self.database.aclose()
            self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def __aenter__(self) -> Server:
        try:
            await self.start()
        except BaseException:
            await asyncio.shield(self.aclose())
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.shield(self.aclose())
