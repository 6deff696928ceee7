"""Key management: create, import, get, list and revoke an environment's signing keys.

Transports translate requests into calls here; the rules (scopes, environments, idempotency,
audit, where key generation runs) live here once for HTTP, gRPC and the CLI.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final, Literal

import structlog

from service.core import crypto, listing
from service.core.crypto import Algorithm
from service.core.listing import AuditPage, KeyBatch, KeyPage
from service.core.models import AuditEvent, CreatedKey, Principal, Scope, SigningKey
from service.core.ports import IdempotencyClaim, KeyRecords
from service.core.requests import (
    BatchGetKeysRequest,
    CreateKeyRequest,
    ImportKeyRequest,
    KeyRef,
    KeySpec,
    KeyStatusFilter,
    ListAuditEventsRequest,
    ListKeysRequest,
    statuses,
)
from service.errors import ConflictError, InternalError, InvalidRequestError, NotFoundError

log = structlog.get_logger(__name__)

# At most this many key generations run at once; more wait rather than crowd the executor.
DEFAULT_KEYGEN_CONCURRENCY: Final = 4
# The words depend on what a read asked for, never on what exists: a key that does not
# exist and one of another environment get the same answer, so that a caller learns
# nothing of other environments (nor, asking for active keys, whether one was revoked).
_NOT_FOUND: Final[dict[KeyStatusFilter, str]] = {
    "all": "no signing key with that id in this environment",
    "active": "no signing key with that id in this environment"
    " (a revoked key is read with status=all or status=revoked)",
    "revoked": "no revoked signing key with that id in this environment",
}


def new_key_id() -> str:
    """An opaque, URL-safe, unguessable id (192 random bits), used as the JWT ``kid``."""
    return secrets.token_urlsafe(24)


def new_event_id() -> str:
    return secrets.token_urlsafe(16)


class KeyService:
    """Manages signing keys through the :class:`KeyRecords` port; every method checks the
    principal.

    >>> service = KeyService(records)
    >>> created = await service.create(principal, CreateKeyRequest.parse(algorithm="ES256"))
    """

    def __init__(
        self,
        records: KeyRecords,
        *,
        keygen_concurrency: int = DEFAULT_KEYGEN_CONCURRENCY,
        write_timeout: float | None = None,
        on_change: Callable[[SigningKey], object] | None = None,
    ) -> None:
        """``on_change`` sees every key this instance stores or revokes, at once (the local
        key cache uses it, so a key verifies here without waiting for the change feed)."""
        self._records = records
        self._on_change = on_change
        self._keygen = asyncio.Semaphore(keygen_concurrency)
        self._write_timeout = write_timeout

    async def create(self, principal: Principal, request: CreateKeyRequest) -> CreatedKey:
        """Generate a key pair off the event loop, store the public half, return both once."""
        environment_id = principal.default_environment(request.environment_id)
        principal.require(Scope.WRITE, environment_id)
        spec = request.spec
        claim = _claim(request.idempotency_key, spec)
        async with self._keygen:
            pair = await asyncio.to_thread(crypto.generate_key_pair, spec.algorithm)
        key = self._new_key(environment_id, spec, pair.algorithm, pair.public_der, "generated")
        stored = await self._insert(principal, key, "create", claim)
        return CreatedKey(key=stored, private_key_pem=pair.private_pem)

    async def import_key(self, principal: Principal, request: ImportKeyRequest) -> SigningKey:
        """Store a customer-supplied public key (PEM or JWK)."""
        environment_id = principal.default_environment(request.environment_id)
        principal.require(Scope.WRITE, environment_id)
        found, der = crypto.parse_customer_public_key(request.public_key)
        if request.algorithm is not None and request.algorithm != found:
            raise InvalidRequestError(
                f"algorithm {request.algorithm!r} does not match the key ({found})"
            )
        spec = KeySpec(algorithm=found, name=request.name, expires_at=request.expires_at)
        claim = _claim(request.idempotency_key, spec, der)
        key = self._new_key(environment_id, spec, found, der, "imported")
        return await self._insert(principal, key, "import", claim)

    async def get(self, principal: Principal, ref: KeyRef) -> SigningKey:
        """The key, if it has the status ``ref`` asks for (by default: active)."""
        environment_id = principal.default_environment(ref.environment_id)
        principal.require(Scope.READ, environment_id)
        key = await self._records.get(ref.key_id, environment_id=environment_id)
        wanted = statuses(ref.status)
        if key is None or (wanted is not None and key.status != wanted):
            raise NotFoundError(_NOT_FOUND[ref.status])
        return key

    async def list(self, principal: Principal, request: ListKeysRequest) -> list[SigningKey]:
        """One page (1-based) of the keys of the status asked for, newest first; past the
        last page, an empty list."""
        return (await self.list_page(principal, request)).keys

    async def list_page(self, principal: Principal, request: ListKeysRequest) -> KeyPage:
        """One page of keys (by page number, or after the request's cursor), newest first,
        with the cursor of the page after it when there is one."""
        environment_id = principal.default_environment(request.environment_id)
        principal.require(Scope.READ, environment_id)
        return await listing.read_page(self._records, environment_id, request)

    async def audit_events(
        self, principal: Principal, request: ListAuditEventsRequest
    ) -> AuditPage:
        """A page of the environment's audit events (who created, imported or revoked which
        key, when, through which API), newest first. Events hold ids, never key material."""
        environment_id = principal.default_environment(request.environment_id)
        principal.require(Scope.READ, environment_id)
        return await listing.read_audit_page(self._records, environment_id, request)

    async def batch_get(self, principal: Principal, request: BatchGetKeysRequest) -> KeyBatch:
        """Many keys by id at once, each as :meth:`get` would find it."""
        environment_id = principal.default_environment(request.environment_id)
        principal.require(Scope.READ, environment_id)
        found = await self._records.get_many(request.key_ids, environment_id=environment_id)
        wanted = statuses(request.status)
        by_id = {key.id: key for key in found if wanted is None or key.status == wanted}
        return KeyBatch(
            keys=[by_id[key_id] for key_id in request.key_ids if key_id in by_id],
            not_found=[key_id for key_id in request.key_ids if key_id not in by_id],
        )

    async def revoke(self, principal: Principal, ref: KeyRef) -> SigningKey:
        """Revoke a key; revoking it again is harmless and writes no second audit event."""
        environment_id = principal.default_environment(ref.environment_id)
        principal.require(Scope.WRITE, environment_id)
        audit = _audit(principal, environment_id, ref.key_id, "revoke")
        key = await self._records.revoke(
            environment_id, ref.key_id, audit=audit, timeout=self._write_timeout
        )
        if key is None:
            raise NotFoundError(_NOT_FOUND["all"])
        self._changed(key)
        log.info("signing_key_revoked", key_id=key.id, environment_id=environment_id)
        return key

    def _changed(self, key: SigningKey) -> None:
        if self._on_change is not None:
            self._on_change(key)

    def _new_key(
        self,
        environment_id: str,
        spec: KeySpec,
        algorithm: Algorithm,
        der: bytes,
        source: Literal["generated", "imported"],
    ) -> SigningKey:
        now = datetime.now(UTC)  # placeholder: the database sets created_at/updated_at
        return SigningKey(
            id=new_key_id(),
            environment_id=environment_id,
            algorithm=algorithm,
            public_key=der,
            fingerprint=crypto.fingerprint(der),
            status="active",
            source=source,
            name=spec.name,
            created_at=now,
            updated_at=now,
            expires_at=spec.expires_at,
        )

    async def _insert(
        self,
        principal: Principal,
        key: SigningKey,
        action: Literal["create", "import"],
        claim: IdempotencyClaim | None,
    ) -> SigningKey:
        audit = _audit(principal, key.environment_id, key.id, action)
        outcome = await self._records.insert(
            key, audit=audit, idempotency=claim, timeout=self._write_timeout
        )
        if outcome.replayed_key_id is not None:
            if not outcome.request_matches:
                raise ConflictError("this Idempotency-Key was already used for another request")
            raise ConflictError(
                f"this Idempotency-Key already created signing key {outcome.replayed_key_id}; "
                "its private key was returned once, by that request, and is not stored"
            )
        if outcome.key is None:  # pragma: no cover - the store returns one or the other
            raise InternalError("the key was not stored")
        self._changed(outcome.key)
        log.info(
            "signing_key_stored",
            key_id=key.id,
            environment_id=key.environment_id,
            algorithm=key.algorithm,
            action=action,
        )
        return outcome.key


def _audit(
    principal: Principal,
    environment_id: str,
    key_id: str,
    action: Literal["create", "import", "revoke"],
) -> AuditEvent:
    return AuditEvent(
        id=new_event_id(),
        environment_id=environment_id,
        key_id=key_id,
        action=action,
        actor=principal.token_id,
        api=principal.api,
        request_id=principal.request_id,
    )


def _claim(
    idempotency_key: str | None, spec: KeySpec, public_der: bytes = b""
) -> IdempotencyClaim | None:
    if idempotency_key is None:
        return None
    request = json.dumps(
        {
            "algorithm": spec.algorithm,
            "name": spec.name,
            "expires_at": spec.expires_at.isoformat() if spec.expires_at else None,
            "public_key": public_der.hex(),
        },
        sort_keys=True,
    )
    return IdempotencyClaim(idempotency_key, hashlib.sha256(request.encode()).digest())
