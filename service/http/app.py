"""The aiohttp application: routes, middleware and typed state, built from collaborators."""

from __future__ import annotations

from typing import Final

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
    add_routes(app.router, keys.routes, tokens.routes, ops.routes)
    return app


# The routes called most, by path. aiohttp tries the resources indexed under one path prefix
# (``/system/v1/signing-keys`` holds the collection, its key, rotate, public-key…) one after
# the other in registration order, each an awaited match: these are tried first.
HOT_PATHS: Final = (keys.KEY_PATH, tokens.VERIFY_PATH, tokens.JWKS_PATH)


def add_routes(router: web.UrlDispatcher, *tables: web.RouteTableDef) -> None:
    """Every route of ``tables``, the methods of one path on one resource, the hot paths'
    resources first. aiohttp gives a path registered apart from its other methods a resource
    of its own (the key's GET, PATCH and DELETE were three), each one more match to try."""
    by_path: dict[str, list[web.RouteDef]] = {}
    for table in tables:
        for route in table:
            if not isinstance(route, web.RouteDef):
                raise TypeError(f"not a route of one method and path: {route!r}")
            by_path.setdefault(route.path, []).append(route)
    for path in sorted(by_path, key=lambda path: path not in HOT_PATHS):  # stable
        for route in by_path[path]:
            route.register(router)
