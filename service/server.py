"""The composition root: builds the database access, the core services and the servers.

>>> async with Server(Settings.from_env()) as server:
...     await server.wait_closed()

Startup and shutdown are one ordered stack (:class:`contextlib.AsyncExitStack`): the database
(the locality router), the credentials (the access-token table), the change feed, HTTP and
gRPC start in that order, each pushing its own stop as soon as it is up, and shutdown unwinds
the stack — exactly the reverse, so the servers stop taking calls while the credentials, the
feed and the database still serve the calls in flight.
A startup that fails half-way undoes only what had started. Closing is shielded from
cancellation, each part's stop bounded by ``PART_CLOSE_TIMEOUT``, and idempotent: a second
``aclose()`` waits for the first. :attr:`Server.history` records what started and stopped.

Draining (a rolling update): :meth:`Server.request_close` — what SIGTERM calls — first makes
``/readyz`` answer 503 and gRPC health ``NOT_SERVING`` while every listener still serves,
waits ``DRAIN_DELAY`` seconds so that load balancers and Kubernetes endpoints stop sending
here, and only then unwinds the stack. The whole stop takes at most
``DRAIN_DELAY + CLOSE_BOUND`` seconds (:data:`CLOSE_BOUND`); the chart's
``terminationGracePeriodSeconds`` and Compose's ``stop_grace_period`` must exceed it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Final, Literal

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge

from service.core.auth import Authenticator, FailureLimits
from service.core.changes import ChangeFeed, WatchLimits
from service.core.keycache import KeyCache
from service.core.keys import KeyService
from service.core.metrics import CoreMetrics
from service.core.public_jwks import PublicJwks
from service.core.readiness import Readiness
from service.core.verify import TokenVerifier
from service.grpc.server import GrpcServer
from service.http.app import make_app
from service.http.appkeys import PUBLIC_JWKS
from service.http.listener import ConnectionGuard
from service.lifecycle import AsyncResource
from service.locality.router import LocalityRouter
from service.settings import Settings
from service.store.environments import PostgresEnvironmentSettings
from service.store.keys import PostgresKeyRecords
from service.store.routing import RoutedDatabase
from service.store.tokens import PostgresTokenRecords
from service.tls import server_context

log = structlog.get_logger(__name__)

SHUTDOWN_TIMEOUT: Final = 5.0
# How long aiohttp keeps reading (and dropping) a body it was not asked for — one too large,
# or too slow — so that the client sees the answer rather than a reset (aiohttp's own: 10 s).
LINGERING_TIME: Final = 1.0
# A backstop: every part bounds its own close (HTTP and gRPC by SHUTDOWN_TIMEOUT per step).
PART_CLOSE_TIMEOUT: Final = 4 * SHUTDOWN_TIMEOUT
# The bound on the whole close after the drain delay: gRPC's and HTTP's are the long ones
# (calls in flight get SHUTDOWN_TIMEOUT each); what is left past it is abandoned, since the
# orchestrator's SIGKILL would end it anyway. The deploy files budget
# DRAIN_DELAY + CLOSE_BOUND (+ the chart's preStop pause) under their stop periods.
CLOSE_BOUND: Final = 3 * SHUTDOWN_TIMEOUT

Lifecycle = Literal["new", "starting", "serving", "closing", "closed"]


class Server(AsyncResource):
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
        # Write transactions are bounded on the server too, by the longest write deadline;
        # the settings refuse a change-feed overlap that does not cover it plus a poll.
        self.store = RoutedDatabase(self.database, write_bound=settings.longest_write)
        self.key_records = PostgresKeyRecords(self.store)
        self.draining = False
        self.metrics = CoreMetrics(self.registry)
        self.authenticator = Authenticator(
            PostgresTokenRecords(self.store),
            cache_ttl=settings.credential_cache_ttl,
            max_staleness=settings.max_staleness,
            poll_interval=settings.change_poll_interval,
            overlap=settings.change_overlap,
            max_data_age=settings.change_max_data_age,
            limits=FailureLimits(
                per_client=settings.auth_failures_per_client,
                per_token=settings.auth_failures_per_token,
            ),
            metrics=self.metrics,
        )
        self.key_cache = KeyCache(
            size=settings.key_cache_size,
            negative_size=settings.negative_cache_size,
            negative_ttl=settings.negative_cache_ttl,
        )
        self.changes = ChangeFeed(
            self.key_records,
            self.key_cache,
            poll_interval=settings.change_poll_interval,
            overlap=settings.change_overlap,
            max_data_age=settings.change_max_data_age,
            read_staleness=settings.router.max_replica_lag,
            limits=WatchLimits(
                streams=settings.max_watch_streams,
                streams_per_caller=settings.max_watch_streams_per_caller,
                snapshots_per_caller=settings.max_snapshots_per_caller,
                snapshot_reads=settings.max_snapshot_reads,
            ),
            metrics=self.metrics,
            progress_interval=settings.watch_progress_interval,
            max_stream_age=settings.watch_max_age,
        )
        # Reads come from the cache while the feed keeps it fresh; writes go into it at once.
        self.keys = KeyService(
            self.key_records,
            write_timeout=settings.write_deadline,
            cache=self.key_cache,
            feed=self.changes,
        )
        self.verifier = TokenVerifier(
            self.key_records,
            self.key_cache,
            self.changes,
            max_token_bytes=settings.max_token_bytes,
            clock_skew=settings.clock_skew,
            max_staleness=settings.max_staleness,
            metrics=self.metrics,
        )
        # Draining reads as "unavailable" (503, NOT_SERVING) so that traffic goes elsewhere
        # while the listeners still answer whatever is already on its way here.
        self.readiness = Readiness(
            can_read=lambda: not self.draining and self.database.can_read(),
            can_verify=lambda: (
                not self.draining and self.verifier.can_serve() and self.authenticator.can_serve()
            ),
            is_fresh=lambda: self.changes.is_fresh() and self.authenticator.credentials.is_fresh(),
        )
        # The anonymous JWK Set of the environments that opted in (same documents).
        self.public_jwks = PublicJwks(
            PostgresEnvironmentSettings(self.store),
            self.verifier.jwks_documents,
            setting_ttl=settings.public_jwks_setting_ttl,
            max_data_age=settings.change_max_data_age,
            per_client=settings.public_jwks_per_client,
            write_timeout=settings.write_deadline,
        )
        self.http_connections = ConnectionGuard(
            max_per_client=settings.http_max_connections_per_client,
            header_timeout=settings.http_header_timeout,
            registry=self.registry,
        )
        self.app = make_app(
            settings,
            key_service=self.keys,
            authenticator=self.authenticator,
            verifier=self.verifier,
            regions=self.database,
            readiness=self.readiness,
            registry=self.registry,
            connections=self.http_connections,
        )
        self.app[PUBLIC_JWKS] = self.public_jwks
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
        self.http_port: int | None = None
        self.grpc_port: int | None = None
        self.history: list[tuple[Literal["started", "stopped"], str]] = []
        self._state: Lifecycle = "new"
        self._stack = contextlib.AsyncExitStack()
        self._start_finished = asyncio.Event()
        self._closing: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()

    def _register_gauges(self) -> None:
        degraded = Gauge(
            "signing_keys_degraded",
            "1 while no region can serve reads and verification runs on last known good keys.",
            registry=self.registry,
        )
        degraded.set_function(lambda: float(self.readiness.is_degraded()))
        staleness = Gauge(
            "signing_keys_key_staleness_seconds",
            "Age of the newest data the change feed has seen: since its last successful poll "
            "began, plus how old the data that poll read was.",
            registry=self.registry,
        )
        staleness.set_function(lambda: min(self.changes.staleness(), 1e9))
        cached = Gauge(
            "signing_keys_cached_keys", "Parsed keys held in the cache.", registry=self.registry
        )
        cached.set_function(lambda: len(self.key_cache))
        streams = Gauge(
            "signing_keys_watch_streams",
            "WatchSigningKeys streams open on this instance.",
            registry=self.registry,
        )
        streams.set_function(lambda: self.changes.open_streams)

    @property
    def running(self) -> list[str]:
        """The parts up now, in the order they started."""
        stopped = {name for event, name in self.history if event == "stopped"}
        return [name for event, name in self.history if event == "started" and name not in stopped]

    def __repr__(self) -> str:
        return (
            f"<Server {self._state} http_port={self.http_port} grpc_port={self.grpc_port} "
            f"running={self.running} {self.readiness!r} database={self.database!r}>"
        )

    # -- startup ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the database, the credentials, the change feed, HTTP and gRPC, in that order;
        if one fails, stop those already started (in reverse) and raise."""
        if self._state != "new":
            raise RuntimeError(f"the server is {self._state}; start it once")
        self._state = "starting"
        try:
            await self._start_parts()
        except BaseException:
            self._start_finished.set()
            await self.aclose()
            raise
        self._start_finished.set()
        if self._state == "starting":  # not closed meanwhile
            self._state = "serving"
            log.info(
                "serving",
                http_port=self.http_port,
                grpc_port=self.grpc_port,
                local_region=self.settings.local_region,
            )

    async def _start_parts(self) -> None:
        await self.database.start()
        self._started("database", self.database.aclose)
        await self.authenticator.start()
        self._started("credentials", self.authenticator.aclose)
        await self.changes.start()
        self._started("change feed", self.changes.aclose)
        stop_http = await self._start_http()
        self._started("http", stop_http)
        if self.grpc is not None:
            await self.grpc.start()
            self.grpc_port = self.grpc.port
            self._started("grpc", self.grpc.aclose)

    async def _start_http(self) -> Callable[[], Awaitable[None]]:
        """Listen for HTTP; the stop: listen no more, then let aiohttp end the connections."""
        runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
            keepalive_timeout=self.settings.http_idle_timeout,
            lingering_time=LINGERING_TIME,
        )
        await runner.setup()
        try:
            assert runner.server is not None  # set up
            listener = await self.http_connections.serve(
                runner.server,
                self.settings.http_host,
                self.settings.http_port,
                ssl=server_context(self.settings),
                reuse_port=self.settings.workers > 1,  # the workers share the port
            )
        except BaseException:
            await asyncio.shield(runner.cleanup())
            raise
        self.http_port = listener.sockets[0].getsockname()[1]

        async def stop() -> None:
            listener.close()
            await runner.cleanup()

        return stop

    def _started(self, part: str, stop: Callable[[], Awaitable[None]]) -> None:
        self._stack.push_async_callback(self._stop, part, stop)
        self.history.append(("started", part))
        log.debug("started", part=part)

    # -- shutdown --------------------------------------------------------------------------

    def request_close(self) -> None:
        """Start closing (once: a second signal joins the first shutdown); for signal handlers."""
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(
                self._close(), name="server-close"
            )

    async def aclose(self) -> None:
        """Stop what started, in reverse; shielded: cancelling the caller does not stop it."""
        self.request_close()
        assert self._closing is not None
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        if self._state == "starting":
            await self._start_finished.wait()  # then unwind whatever it started
        was_serving = self._state == "serving"
        self._state = "closing"
        try:
            if was_serving:
                await self._drain()
            await self._unwind_within(CLOSE_BOUND)
        finally:
            self._state = "closed"
            self._closed.set()
            log.info("closed", http_port=self.http_port, grpc_port=self.grpc_port)

    async def _unwind_within(self, bound: float) -> None:
        """Unwind the stack; past ``bound`` seconds, stop waiting for it. Not a cancellation:
        one would end only the part stopping at that moment, and the parts below it would
        still take their own time. What is left runs on until the process exits."""
        unwinding = asyncio.ensure_future(self._stack.aclose())
        # Each part's stop logs its own failure; nothing is left to retrieve.
        unwinding.add_done_callback(lambda task: task.cancelled() or task.exception())
        try:
            await asyncio.wait_for(asyncio.shield(unwinding), bound)
        except TimeoutError:
            log.warning("server_close_timed_out", timeout=bound, running=self.running)

    async def _drain(self) -> None:
        """Fail readiness, then keep serving for ``drain_delay`` while traffic moves away."""
        self.draining = True
        delay = self.settings.drain_delay
        log.info("draining", delay=delay)
        if delay > 0:
            await asyncio.sleep(delay)

    async def _stop(self, part: str, stop: Callable[[], Awaitable[None]]) -> None:
        try:
            async with asyncio.timeout(PART_CLOSE_TIMEOUT):
                await stop()
        except TimeoutError:
            log.warning("server_part_stop_timed_out", part=part, timeout=PART_CLOSE_TIMEOUT)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Shutdown goes on: the parts below this one still need their stop.
            log.exception("server_part_stop_failed", part=part)
        finally:
            self.history.append(("stopped", part))
            log.debug("stopped", part=part)

    async def wait_closed(self) -> None:
        await self._closed.wait()
