"""Every piece of typed application state, declared in one place."""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry

from service.core.auth import Authenticator
from service.core.keys import KeyService
from service.core.public_jwks import PublicJwks
from service.core.readiness import Readiness
from service.core.verify import TokenVerifier
from service.settings import Settings


class RegionHealth(Protocol):
    """What the HTTP layer needs to know about the database regions."""

    def can_read(self) -> bool: ...

    def can_write(self) -> bool: ...

    def status(self) -> Any: ...  # a snapshot with ``to_dict()``


SETTINGS = web.AppKey("settings", Settings)
KEYS = web.AppKey("keys", KeyService)
AUTHENTICATOR = web.AppKey("authenticator", Authenticator)
VERIFIER = web.AppKey("verifier", TokenVerifier)
REGIONS = web.AppKey("regions", RegionHealth)
READINESS = web.AppKey("readiness", Readiness)
REGISTRY = web.AppKey("registry", CollectorRegistry)
PUBLIC_JWKS = web.AppKey("public_jwks", PublicJwks)
