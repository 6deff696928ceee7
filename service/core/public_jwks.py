"""The anonymous JWK Set: an environment's public keys for verifiers that cannot send our
credentials (Envoy ``remote_jwks``, Istio ``jwksUri``, JOSE remote key sets), served only
for environments whose operators opted in (``environment_settings.public_jwks``).

Whether an environment opted in is read from the database and remembered for
``setting_ttl`` seconds (a bounded TTL cache, answers "no" included), from a region whose
data is at most ``max_data_age`` old: an environment that opts out stops being served by
every instance within ``setting_ttl + max_data_age`` (2.6 s by default). The instance that
records the change forgets its cached answer at once.

An environment that did not opt in, one that does not exist and a malformed id all get the
same :class:`NotFoundError`, word for word: the route tells nobody which environments exist.
The document itself is :class:`~service.core.jwks.JwksDocuments`' (the same bytes and
strong ETag the authenticated route serves). Anonymous callers are limited per client
address (an IPv6 address by its /64) to ``per_client`` requests a second, since a miss in the
setting cache costs a database read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final, Protocol

import cachetools
import structlog

from service.core.auth import CLIENT_ADDRESS, client_key
from service.core.jwks import JwksDocument, JwksDocuments
from service.core.models import Principal, Scope, check_id, is_valid_id
from service.core.ratelimit import KeyedBuckets
from service.errors import NotFoundError, TooManyRequestsError

log = structlog.get_logger(__name__)

DEFAULT_SETTING_TTL: Final = 2.0
DEFAULT_PER_CLIENT: Final = 50.0
# Environments whose setting is remembered (least recent forgotten first).
DEFAULT_REMEMBERED: Final = 10_000
NOT_PUBLIC: Final = "no public JWK Set for that environment"


class EnvironmentSettingsRecords(Protocol):
    """The port to the stored per-environment settings."""

    async def public_jwks(
        self,
        environment_id: str,
        *,
        timeout: float | None = None,
        max_data_age: float | None = None,
    ) -> bool: ...

    async def set_public_jwks(
        self, environment_id: str, enabled: bool, *, timeout: float | None = None
    ) -> None: ...


class PublicJwks:
    """Serves opted-in environments' JWK Sets to anyone; records opting in and out.

    >>> public = PublicJwks(settings_records, verifier.jwks_documents, max_data_age=0.6)
    >>> document = await public.get("env-1")  # NotFoundError unless env-1 opted in
    """

    def __init__(
        self,
        records: EnvironmentSettingsRecords,
        documents: JwksDocuments,
        *,
        setting_ttl: float = DEFAULT_SETTING_TTL,
        max_data_age: float | None = None,
        per_client: float = DEFAULT_PER_CLIENT,
        write_timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._records = records
        self._documents = documents
        self._max_data_age = max_data_age
        self._write_timeout = write_timeout
        self._opted_in: cachetools.TTLCache[str, bool] = cachetools.TTLCache(
            maxsize=DEFAULT_REMEMBERED, ttl=setting_ttl, timer=clock
        )
        self._clients = KeyedBuckets(per_client, clock=clock)
        self.setting_ttl = setting_ttl

    def __repr__(self) -> str:
        return f"<PublicJwks remembered={len(self._opted_in)} ttl={self.setting_ttl:g}>"

    @property
    def opt_out_bound(self) -> float:
        """The longest an environment that opted out may still be served, in seconds."""
        return self.setting_ttl + (self._max_data_age or 0.0)

    async def get(self, environment_id: str) -> JwksDocument:
        """The environment's JWK Set, if it opted in; :class:`NotFoundError` otherwise."""
        self._limit()
        if not is_valid_id(environment_id) or not await self._is_public(environment_id):
            raise NotFoundError(NOT_PUBLIC)
        return await self._documents.get(environment_id)

    async def set(self, principal: Principal, environment_id: str, *, public: bool) -> None:
        """Opt the environment in (or out): the caller needs ``write`` on it."""
        check_id(environment_id, "environment id")
        principal.require(Scope.WRITE, environment_id)
        await self._records.set_public_jwks(environment_id, public, timeout=self._write_timeout)
        self._opted_in.pop(environment_id, None)
        log.info(
            "public_jwks_set",
            environment_id=environment_id,
            public=public,
            actor=principal.token_id,
        )

    async def _is_public(self, environment_id: str) -> bool:
        known = self._opted_in.get(environment_id)
        if known is not None:
            return known
        public = await self._records.public_jwks(environment_id, max_data_age=self._max_data_age)
        self._opted_in[environment_id] = public
        return public

    def _limit(self) -> None:
        client = CLIENT_ADDRESS.get()
        if client is None:
            return
        key = client_key(client)
        if not self._clients.take(key):
            raise TooManyRequestsError(
                "too many requests for public JWK Sets from this address; retry later",
                retry_after=self._clients.wait(key),
            )
