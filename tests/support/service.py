"""Shared fixtures for tests that run the real service against the local topology.

Registered from the root conftest as a pytest plugin.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import secrets
import sys
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import structlog

from harness import LocalTopology
from service.cli import open_database
from service.core.models import Scope
from service.errors import TooManyRequestsError, UnauthenticatedError
from service.grpc.server import GrpcServer
from service.logs import configure_logging
from service.server import Server
from service.settings import Settings
from service.store.migrations import migrate

LOCAL_REGION = "aws-us-east-1"


def service_env(
    topology: LocalTopology, local_region: str = LOCAL_REGION, **overrides: str
) -> dict[str, str]:
    """Settings for a test instance: ephemeral ports on loopback, short timeouts, and limits
    on failed authentications loose enough for tests that send bad credentials in bursts
    from one address (the tests of those limits set their own)."""
    env = {
        **topology.env(local_region),
        "SIGNING_KEYS_HTTP_HOST": "127.0.0.1",
        "SIGNING_KEYS_HTTP_PORT": "0",
        "SIGNING_KEYS_GRPC_HOST": "127.0.0.1",
        "SIGNING_KEYS_GRPC_PORT": "0",
        "SIGNING_KEYS_ACCESS_LOG": "off",
        "SIGNING_KEYS_AUTH_FAILURES_PER_CLIENT": "1000",
        "SIGNING_KEYS_AUTH_FAILURES_PER_TOKEN": "1000",
    }
    env.update({f"SIGNING_KEYS_{key.upper()}": value for key, value in overrides.items()})
    return env


@contextlib.asynccontextmanager
async def guarded_server(
    topology: LocalTopology, *, header_timeout: float, idle_timeout: float
) -> AsyncIterator[Server]:
    """A service whose HTTP connection guard has short timeouts and allows one client
    address five connections, for the tests of the guard's rules."""
    env = service_env(
        topology,
        http_header_timeout=str(header_timeout),
        http_idle_timeout=str(idle_timeout),
        http_max_connections_per_client="5",
    )
    async with Server(Settings.from_env(env)) as running:
        yield running


async def closed_by_server(
    reader: asyncio.StreamReader, limit: float, *, since: float | None = None
) -> float:
    """Read until the server ends the connection; the seconds it took (at most ``limit``)
    since ``since`` (a ``time.monotonic()`` taken before whatever started the server's
    clock), else since now."""
    started = time.monotonic() if since is None else since
    async with asyncio.timeout(limit):
        try:
            while await reader.read(4096):
                pass
        except ConnectionResetError:
            pass
    return time.monotonic() - started


def connections_dropped(server: Server, reason: str) -> float:
    """How many HTTP connections ``server``'s guard has closed for ``reason``."""
    labels = {"reason": reason}
    return (
        server.registry.get_sample_value("signing_keys_http_connections_dropped_total", labels) or 0
    )


async def _migrate(settings: Settings) -> None:
    async with open_database(settings, writable=True) as database:
        await migrate(database)


@pytest.fixture(scope="session")
def migrated_topology(topology: LocalTopology) -> LocalTopology:
    """The shared topology with the schema applied once for the session."""
    asyncio.run(_migrate(Settings.from_env(service_env(topology))))
    return topology


@pytest.fixture
async def server(migrated_topology: LocalTopology) -> AsyncIterator[Server]:
    async with Server(Settings.from_env(service_env(migrated_topology))) as running:
        yield running


@pytest.fixture
async def http(server: Server) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{server.http_port}") as session:
        yield session


@pytest.fixture
def environment() -> str:
    """A fresh environment id per test: tests share one database and never collide."""
    return "env-" + secrets.token_hex(6)


@dataclass(frozen=True)
class Credentials:
    """An access token's id and secret, and the Authorization header that carries them."""

    login: str
    password: str = field(repr=False)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": aiohttp.encode_basic_auth(self.login, self.password)}


class TokenFactory:
    def __init__(self, server: Server) -> None:
        self._server = server

    async def __call__(
        self, environments: Iterable[str], scopes: Iterable[Scope] = tuple(Scope)
    ) -> Credentials:
        token, secret = await self._server.authenticator.issue(scopes, environments)
        return Credentials(token.id, secret)


async def known_everywhere(
    servers: Iterable[Server], credentials: Credentials, timeout: float = 5.0
) -> float:
    """Wait until every server authenticates ``credentials`` (a token issued on one reaches
    the others with their credential table's next poll); the seconds it took."""
    started = asyncio.get_running_loop().time()
    pending = list(servers)
    async with asyncio.timeout(timeout):
        while pending:
            for server in list(pending):
                try:
                    await server.authenticator.authenticate(
                        credentials.login, credentials.password, api="http"
                    )
                except (UnauthenticatedError, TooManyRequestsError):
                    continue  # not read there yet (its failures are counted: hence 429)
                pending.remove(server)
            if pending:
                await asyncio.sleep(0.01)
    return asyncio.get_running_loop().time() - started


@pytest.fixture
def issue_token(server: Server) -> TokenFactory:
    return TokenFactory(server)


@pytest.fixture
async def auth(issue_token: TokenFactory, environment: str) -> Credentials:
    """Credentials with every scope on this test's environment."""
    return await issue_token([environment])


def build_grpc_server(
    server: Server, *, settings: Settings | None = None, **overrides: Any
) -> GrpcServer:
    """A gRPC server of its own on a running service's collaborators (and settings), any of
    them replaced by ``overrides``; not started."""
    collaborators: dict[str, Any] = {
        "key_service": server.keys,
        "authenticator": server.authenticator,
        "verifier": server.verifier,
        "changes": server.changes,
        "readiness": server.readiness,
        "regions": server.database,
        **overrides,
    }
    return GrpcServer(settings or server.settings, **collaborators)


async def rows(topology: LocalTopology, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Query the current primary directly (not through the service)."""
    return await asyncio.to_thread(topology.query, topology.primary, sql, *args)


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """The service's JSON log lines, at debug level, for the test to read."""
    stream = io.StringIO()
    configure_logging("debug", stream=stream)
    yield stream
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()
    _forget_cached_loggers()


def _forget_cached_loggers() -> None:
    """``configure_logging`` has each module's logger cache its configuration on first use:
    forget those caches, so that later tests' ``structlog.testing.capture_logs`` sees the
    modules first used under this fixture."""
    for name, module in list(sys.modules.items()):
        proxy = getattr(module, "log", None) if name.startswith("service.") else None
        if type(proxy).__name__ == "BoundLoggerLazyProxy":
            vars(proxy).pop("bind", None)


def log_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    """Every line logged so far, parsed."""
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def errors_logged(stream: io.StringIO) -> list[dict[str, Any]]:
    """The lines logged at error level or above: a failure of ours, with its traceback."""
    return [line for line in log_lines(stream) if line["level"] in ("error", "critical")]
