"""The domain's records: signing keys, access tokens and the principal behind a request."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from service.core import times
from service.core.crypto import Algorithm
from service.errors import EnvironmentRequiredError, InvalidRequestError, PermissionDeniedError

KeyStatus = Literal["active", "revoked"]
# What a key is shown as: its stored status, or "expired" for an active key whose expiry
# has passed (nothing is stored when it passes; reads work it out).
ShownStatus = Literal["active", "revoked", "expired"]
KeySource = Literal["generated", "imported"]
Api = Literal["http", "grpc", "cli"]
AuditAction = Literal["create", "import", "revoke", "rotate", "update"]


_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


def is_valid_id(value: str) -> bool:
    """Whether ``value`` has the shape of our ids (and environment ids)."""
    return _ID.fullmatch(value) is not None


def check_id(value: str, what: str = "signing key id") -> str:
    """Validate an id taken from a path or message before it reaches SQL or a log."""
    if not is_valid_id(value):
        raise InvalidRequestError(
            f"{what} must be 1-128 characters of A-Z, a-z, 0-9, '.', '-', '_'"
        )
    return value


class Scope(enum.StrEnum):
    READ = "read"
    WRITE = "write"
    VERIFY = "verify"


@dataclass(frozen=True, slots=True, kw_only=True)
class SigningKey:
    """A stored public signing key. ``id`` is the JWT ``kid``."""

    id: str
    environment_id: str
    algorithm: Algorithm
    public_key: bytes = field(repr=False)  # SubjectPublicKeyInfo DER
    fingerprint: str
    status: KeyStatus
    source: KeySource
    name: str | None
    created_at: datetime
    updated_at: datetime
    revoked_at: datetime | None = None
    expires_at: datetime | None = None
    # The moment the key may start signing: published (JWKS) before it, so that verifiers
    # holding an older copy already have it, but a token it signed earlier is refused.
    not_before: datetime | None = None
    # The key this one was rotated to: a key is rotated once.
    rotated_to: str | None = None

    @property
    def is_active(self) -> bool:
        return self.status == "active"

    def status_at(self, now: float) -> ShownStatus:
        """The status to show at ``now`` (Unix seconds): ``expired`` once an active key's
        ``expires_at`` has passed, as verification and the JWK Set already treat it."""
        expires_at = self.expires_at
        if self.status == "active" and expires_at is not None and times.seconds(expires_at) <= now:
            return "expired"
        return self.status


@dataclass(frozen=True, slots=True, kw_only=True)
class CreatedKey:
    """The answer to a create: the stored key and its private key, shown this once."""

    key: SigningKey
    private_key_pem: bytes = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportedKey:
    """The answer to an import: the stored key, and whether an earlier request with the same
    idempotency key stored it (a replay: nothing new was stored)."""

    key: SigningKey
    replayed: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessToken:
    """A stored credential: the secret itself is never kept, only its SHA-256.

    ``updated_at`` is the store's stamp of the last change (``None`` until stored), which
    the credential table polls for, as the change feed polls keys'.
    """

    id: str
    secret_hash: bytes = field(repr=False)
    scopes: frozenset[Scope]
    environments: frozenset[str]
    name: str | None = None
    revoked_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Principal:
    """Who is calling: an authenticated access token, and through which API."""

    token_id: str
    scopes: frozenset[Scope]
    environments: frozenset[str]
    api: Api = "http"
    request_id: str | None = None

    def require(self, scope: Scope, environment_id: str) -> None:
        """Raise unless this principal holds ``scope`` on ``environment_id``."""
        if scope not in self.scopes:
            raise PermissionDeniedError(f"this access token lacks the {scope.value!r} scope")
        if environment_id not in self.environments:
            raise PermissionDeniedError("this access token is not valid for that environment")

    def default_environment(self, requested: str | None) -> str:
        """The environment a request means: the one asked for, or the token's only one."""
        if requested:
            return requested
        if len(self.environments) == 1:
            return next(iter(self.environments))
        # A missing argument, not a refusal: the token may well cover the one meant.
        raise EnvironmentRequiredError(
            "this access token covers several environments: name one with the "
            "X-Environment-Id header or the environment_id parameter",
            field="environment_id",
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEvent:
    """An append-only record of who changed which key, when, through which API."""

    id: str
    environment_id: str
    key_id: str | None
    action: AuditAction
    actor: str
    api: Api
    request_id: str | None
    # Stamped by the store (its clock, as a key's created_at); None before it is stored.
    created_at: datetime | None = None
