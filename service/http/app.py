"""The aiohttp application: routes, middleware and typed state, built from collaborators."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry

from service.core.auth import Authenticator
from service.core.keys import KeyService
from service.core.readiness import Readiness
from service.core.verify import TokenVerifier
from service.http import appkeys, keys, ops, tokens
from service.http.appkeys import RegionHealth
from service.http.listener import ConnectionGuard
from service.http.middleware import HttpMetrics, make_middleware
from service.settings import Settings


def make_app(
    settings: Settings,
    *,
    key_service: KeyService,
    authenticator: Authenticator,
    verifier: TokenVerifier,
    regions: RegionHealth,
    readiness: Readiness,
    registry: CollectorRegistry,
    connections: ConnectionGuard,
) -> web.Application:
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[make_middleware(settings, HttpMetrics(registry), connections)],
    )
    app[appkeys.SETTINGS] = settings
    app[appkeys.KEYS] = key_service
    app[appkeys.AUTHENTICATOR] = authenticator
    app[appkeys.VERIFIER] = verifier
    app[appkeys.REGIONS] = regions
    app[appkeys.READINESS] = readiness
    app[appkeys.REGISTRY] = registry
    app.add_routes(keys.routes)
    app.add_routes(tokens.routes)
    app.add_routes(ops.routes)
    return app
