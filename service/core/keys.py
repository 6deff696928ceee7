"""Key management: create, import, get, list and revoke an environment's signing keys.

Transports translate requests into calls here; the rules (scopes, environments, idempotency,
audit, where key generation runs) live here once for HTTP, gRPC and the CLI.

A key is read from the in-process :class:`~service.core.keycache.KeyCache` when the change feed
keeps it current (:meth:`~service.core.changes.ChangeFeed.answers_reads`: fresh, or no older
than a database read may be) and the request does not carry a consistency token; otherwise,
and on a miss, from the database as before. Nothing is lost:
a token's position is one the feed cannot vouch for (it follows ``updated_at``, not commit
positions), so such a read goes where the router can; and this instance's own writes reach
the cache as they return, before any later read of this instance can ask for them.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

import structlog

from service.core import consistency, crypto, listing
from service.core.changes import ChangeFeed
from service.core.crypto import Algorithm
from service.core.keycache import KeyCache
from service.core.keygen import KeyGenerator
from service.core.listing import AuditPage, KeyBatch, KeyPage
from service.core.models import (
    AuditAction,
    AuditEvent,
    CreatedKey,
    ImportedKey,
    Principal,
    Scope,
    SigningKey,
)
from service.core.ports import (
    IdempotencyClaim,
    InsertOutcome,
    KeyRecords,
    RotateOutcome,
    RotateRefusal,
)
from service.core.requests import (
    IDEMPOTENCY_KEY,
    BatchGetKeysRequest,
    CreateKeyRequest,
    CurrentKeyRequest,
    ImportKeyRequest,
    KeyRef,
    KeySpec,
    KeyStatusFilter,
    ListAuditEventsRequest,
    ListKeysRequest,
    RotateKeyRequest,
    UpdateKeyRequest,
    field,
    statuses,
)
from service.errors import (
    ConflictError,
    IdempotencyKeyMismatchError,
    InternalError,
    InvalidRequestError,
    NotFoundError,
)

log = structlog.get_logger(__name__)

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
        keygen: KeyGenerator | None = None,
        write_timeout: float | None = None,
        on_change: Callable[[SigningKey], object] | None = None,
        cache: KeyCache | None = None,
        feed: ChangeFeed | None = None,
    ) -> None:
        """``on_change`` sees every key this instance stores or revokes, at once. ``cache``
        gets them too (so a key verifies here without waiting for the change feed) and, with
        ``feed``, answers :meth:`get` while the feed keeps it current."""
        self._records = records
        self._on_change = on_change
        self._cache = cache
        self._feed = feed
        self._keygen = keygen or KeyGenerator()
        self._write_timeout = write_timeout

    async def create(self, principal: Principal, request: CreateKeyRequest) -> CreatedKey:
        """Generate a key pair off the event loop, store the public half, return both once."""
        environment_id = principal.default_environment(request.environment_id)
        principal.require(Scope.WRITE, environment_id)
        spec = request.spec
        claim = _claim(request.idempotency_key, spec)
        pair = await self._keygen.generate(spec.algorithm)  # bounded, off the event loop
        key = self._new_key(environment_id, spec, pair.algorithm, pair.public_der, "generated")
        stored = await self._insert(principal, key, "create", claim)
        return CreatedKey(key=stored, private_key_pem=pair.private_pem)

    async def import_key(self, principal: Principal, request: ImportKeyRequest) -> ImportedKey:
        """Store a customer-supplied public key (PEM or JWK); repeated with its idempotency
        key, the key the first request stored."""
        environment_id = principal.default_environment(request.environment_id)
        principal.require(Scope.WRITE, environment_id)
        found, der = field("public_key", crypto.parse_customer_public_key, request.public_key)
        if request.algorithm is not None and request.algorithm != found:
            raise InvalidRequestError(
                f"algorithm {request.algorithm!r} does not match the key ({found})",
                field="algorithm",
            )
        spec = KeySpec(
            algorithm=found,
            name=request.name,
            expires_at=request.expires_at,
            not_before=request.not_before,
        )
        claim = _claim(request.idempotency_key, spec, der)
        key = self._new_key(environment_id, spec, found, der, "imported")
        stored = await self._insert(principal, key, "import", claim)
        return ImportedKey(key=stored, replayed=stored.id != key.id)

    async def get(self, principal: Principal, ref: KeyRef) -> SigningKey:
        """The key, if it has the status ``ref`` asks for (by default: active)."""
        environment_id = principal.default_environment(ref.environment_id)
        principal.require(Scope.READ, environment_id)
        key = self._cached(ref.key_id, environment_id)
        if key is None:
            key = await self._records.get(ref.key_id, environment_id=environment_id)
            if key is not None and self._cache is not None:
                # Kept for the next read; and the cache may know a newer version (a
                # revocation the feed applied that a lagging region has not replayed yet).
                key = self._cache.put(key).record
        wanted = statuses(ref.status)
        if key is None or (wanted is not None and key.status != wanted):
            raise NotFoundError(_NOT_FOUND[ref.status])
        return key

    def _cached(self, key_id: str, environment_id: str) -> SigningKey | None:
        """The cached key, when the cache may answer for it; ``None``: ask the database.

        Another environment's key is a miss like any other, so that it is answered exactly
        like a key that does not exist (by the database, which finds none there)."""
        if self._cache is None or self._feed is None or not self._feed.answers_reads():
            return None
        scope = consistency.current()
        if scope is not None and scope.required is not None:
            return None  # the feed cannot tell whether it has read that far
        cached = self._cache.get(key_id)
        if cached is None or cached.record.environment_id != environment_id:
            return None
        return cached.record

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

    async def rotate(self, principal: Principal, request: RotateKeyRequest) -> RotatedKey:
        """Create the next key and schedule the old one's expiry, in one transaction; the
        new key's private key is returned this once, as a create's is."""
        environment_id = principal.default_environment(request.environment_id)
        principal.require(Scope.WRITE, environment_id)
        old = await self._records.get(request.key_id, environment_id=environment_id)
        if old is None:
            raise NotFoundError(_NOT_FOUND["all"])
        spec = KeySpec(
            algorithm=request.algorithm or old.algorithm,
            name=request.name,
            expires_at=request.expires_at,
            not_before=request.not_before,
        )
        claim = _claim(request.idempotency_key, spec, rotates=(old.id, request.grace_seconds))
        pair = await self._keygen.generate(spec.algorithm)  # bounded, off the event loop
        new = self._new_key(environment_id, spec, pair.algorithm, pair.public_der, "generated")
        audits = (
            _audit(principal, environment_id, old.id, "rotate"),
            _audit(principal, environment_id, new.id, "create"),
        )
        outcome = await self._records.rotate(
            environment_id,
            old.id,
            new,
            grace_seconds=request.grace_seconds,
            audits=audits,
            idempotency=claim,
            timeout=self._write_timeout,
        )
        _raise_for_replay(environment_id, outcome.replayed_key_id, outcome.request_matches)
        rotated = _rotated(outcome)
        self._changed(rotated.new)
        self._changed(rotated.old)
        log.info(
            "signing_key_rotated",
            key_id=rotated.old.id,
            new_key_id=rotated.new.id,
            environment_id=environment_id,
            algorithm=rotated.new.algorithm,
        )
        return RotatedKey(
            old=rotated.old, created=CreatedKey(key=rotated.new, private_key_pem=pair.private_pem)
        )

    async def update(self, principal: Principal, request: UpdateKeyRequest) -> SigningKey:
        """Rename a key and/or bring its expiry forward; the change feed carries it."""
        environment_id = principal.default_environment(request.environment_id)
        principal.require(Scope.WRITE, environment_id)
        if not request.name_given and request.expires_at is None:  # nothing to change
            key = await self._records.get(request.key_id, environment_id=environment_id)
            if key is None:
                raise NotFoundError(_NOT_FOUND["all"])
            return key
        outcome = await self._records.update(
            environment_id,
            request.key_id,
            name_given=request.name_given,
            name=request.name,
            expires_at=request.expires_at,
            audit=_audit(principal, environment_id, request.key_id, "update"),
            timeout=self._write_timeout,
        )
        if outcome.refusal == "not_found":
            raise NotFoundError(_NOT_FOUND["all"])
        if outcome.refusal == "lengthens":
            raise InvalidRequestError(
                "expires_at may only be brought forward: it is later than the key's expiry",
                field="expires_at",
            )
        if outcome.refusal == "past":
            raise InvalidRequestError(
                "expires_at has passed: to stop a key verifying at once, revoke it",
                field="expires_at",
            )
        if outcome.refusal == "before_start":
            raise InvalidRequestError(
                "expires_at must be later than the key's not_before", field="expires_at"
            )
        if outcome.key is None:  # pragma: no cover - the store returns one or the other
            raise InternalError("the key was not updated")
        self._changed(outcome.key)
        log.info("signing_key_updated", key_id=outcome.key.id, environment_id=environment_id)
        return outcome.key

    async def current(self, principal: Principal, request: CurrentKeyRequest) -> SigningKey:
        """The environment's current key: the newest active, unexpired key whose not_before
        has passed. Computed, not stored: a rotation with a not_before in the future takes
        over at that moment without anyone writing anything then."""
        environment_id = principal.default_environment(request.environment_id)
        principal.require(Scope.READ, environment_id)
        key = await self._records.current(environment_id)
        if key is None:
            raise NotFoundError("this environment has no current signing key")
        return key

    def _changed(self, key: SigningKey) -> None:
        if self._cache is not None:
            self._cache.put(key)
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
            not_before=spec.not_before,
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
            return await self._replayed(key.environment_id, outcome, action)
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

    async def _replayed(
        self, environment_id: str, outcome: InsertOutcome, action: Literal["create", "import"]
    ) -> SigningKey:
        """The answer to a request whose idempotency key an earlier request took: a
        different request is refused; the same import gets the key it stored; the same
        create is refused naming its key, since the private key was shown once and is gone."""
        key_id = outcome.replayed_key_id
        assert key_id is not None
        ids = {"key_id": key_id, "environment_id": environment_id}
        if not outcome.request_matches:
            raise IdempotencyKeyMismatchError(
                f"this {IDEMPOTENCY_KEY} was already used for a different request",
                field="idempotency_key",
                metadata=ids,
            )
        if action == "create":
            raise ConflictError(
                f"this {IDEMPOTENCY_KEY} already created signing key {key_id}; "
                "its private key was returned once, by that request, and is not stored",
                metadata=ids,
            )
        # The write that took the claim stored the key with it, at or before the position
        # this request's reads now wait for: the read finds it, revoked or not.
        stored = await self._records.get(key_id, environment_id=environment_id)
        if stored is None:  # pragma: no cover - the claim and the key commit together
            raise InternalError("the key this idempotency key stored was not found")
        log.info("signing_key_import_replayed", key_id=key_id, environment_id=environment_id)
        return stored


@dataclass(frozen=True, slots=True, kw_only=True)
class RotatedKey:
    """The answer to a rotation: the old key (rotated, its expiry scheduled) and the new
    key with its private key, shown this once."""

    old: SigningKey
    created: CreatedKey


@dataclass(frozen=True, slots=True)
class _Rotated:
    old: SigningKey
    new: SigningKey


_ROTATE_REFUSALS: Final[dict[RotateRefusal, str]] = {
    "revoked": "a revoked key is not rotated: create a new key",
    "expired": "an expired key is not rotated: create a new key",
    "gap": "not_before must fall before the old key's expiry, or no key would verify between",
}


def _raise_for_replay(
    environment_id: str, replayed_key_id: str | None, request_matches: bool
) -> None:
    """A rotation whose idempotency key an earlier request took answers as a create does:
    a different request is refused, the same one names the key it created (whose private
    key was shown once)."""
    if replayed_key_id is None:
        return
    ids = {"key_id": replayed_key_id, "environment_id": environment_id}
    if not request_matches:
        raise IdempotencyKeyMismatchError(
            f"this {IDEMPOTENCY_KEY} was already used for a different request",
            field="idempotency_key",
            metadata=ids,
        )
    raise ConflictError(
        f"this {IDEMPOTENCY_KEY} already created signing key {replayed_key_id}; "
        "its private key was returned once, by that request, and is not stored",
        metadata=ids,
    )


def _rotated(outcome: RotateOutcome) -> _Rotated:
    if outcome.refusal == "not_found":
        raise NotFoundError(_NOT_FOUND["all"])
    if outcome.refusal == "rotated":
        raise ConflictError(f"this key was already rotated, to signing key {outcome.rotated_to}")
    if outcome.refusal == "gap":
        raise InvalidRequestError(_ROTATE_REFUSALS["gap"], field="not_before")
    if outcome.refusal is not None:
        raise ConflictError(_ROTATE_REFUSALS[outcome.refusal])
    if outcome.old is None or outcome.new is None:  # pragma: no cover - one or the other
        raise InternalError("the key was not rotated")
    return _Rotated(outcome.old, outcome.new)


def _audit(
    principal: Principal,
    environment_id: str,
    key_id: str,
    action: AuditAction,
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
    idempotency_key: str | None,
    spec: KeySpec,
    public_der: bytes = b"",
    *,
    rotates: tuple[str, int] | None = None,
) -> IdempotencyClaim | None:
    if idempotency_key is None:
        return None
    fields: dict[str, object] = {
        "algorithm": spec.algorithm,
        "name": spec.name,
        "expires_at": spec.expires_at.isoformat() if spec.expires_at else None,
        "public_key": public_der.hex(),
    }
    # Only when set: a request without them hashes as it did before they existed, so a
    # retry across an upgrade still matches its first attempt.
    if spec.not_before is not None:
        fields["not_before"] = spec.not_before.isoformat()
    if rotates is not None:
        fields["rotates"], fields["grace_seconds"] = rotates
    request = json.dumps(fields, sort_keys=True)
    return IdempotencyClaim(idempotency_key, hashlib.sha256(request.encode()).digest())
