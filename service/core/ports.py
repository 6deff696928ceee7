"""What the core needs from storage, stated by the core: its ports.

The core's rules (scopes, environments, idempotency, revocation, the change feed's ordering)
are written against these protocols, never against SQL or a connection; ``service.store``
implements them over the database and the composition root wires the two together. The
arrows point at the core, so its rules can be tested against an in-memory implementation
without a database, and the SQL behind the real one is tested on PostgreSQL.

Every write a port offers is idempotent, because the database layer may run it again after
an ambiguous commit: the caller chooses the ids (key, audit event, token) before the first
attempt, and running the same write twice leaves one row and one audit event.

>>> outcome = await records.insert(key, audit=event, idempotency=claim)
>>> if outcome.replayed_key_id is not None:
...     ...  # the claim belongs to an earlier request: nothing was stored
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal, Protocol

from service.core.listing import AuditFilter, KeyFilter, Position
from service.core.models import AccessToken, AuditEvent, KeyStatus, SigningKey

# Large enough that a full scan takes few round trips, small enough that one page of keys
# (a few hundred bytes each) stays well below a megabyte.
DEFAULT_PAGE_SIZE: Final = 1000


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    """A caller's ``Idempotency-Key`` and the hash of the request it came with."""

    key: str
    request_hash: bytes


@dataclass(frozen=True, slots=True)
class InsertOutcome:
    """What an insert found: ``replayed_key_id`` is set when the idempotency key was used
    before by another key; ``request_matches`` says whether that request was the same."""

    key: SigningKey | None
    replayed_key_id: str | None = None
    request_matches: bool = True


# Why a rotation stored nothing: no such key; the key is revoked or expired (nothing to hand
# over: create a key); it was already rotated (to ``RotateOutcome.rotated_to``); or the new
# key's not_before falls after the old key's expiry (tokens could verify with neither).
RotateRefusal = Literal["not_found", "revoked", "expired", "rotated", "gap"]
# Why an update changed nothing: no such key; the expiry asked for is later than the key's
# (an update only brings an expiry forward); it has passed already; or it is at or before
# the key's not_before (a key that could never verify: create refuses the same).
UpdateRefusal = Literal["not_found", "lengthens", "past", "before_start"]


@dataclass(frozen=True, slots=True)
class RotateOutcome:
    """What a rotation did: ``old`` (its expiry scheduled) and ``new``, both as stored; or,
    as an insert's outcome does, the key an earlier request with the same idempotency key
    created (``replayed_key_id``); or why it did nothing (``refusal``)."""

    old: SigningKey | None = None
    new: SigningKey | None = None
    replayed_key_id: str | None = None
    request_matches: bool = True
    refusal: RotateRefusal | None = None
    rotated_to: str | None = None


@dataclass(frozen=True, slots=True)
class UpdateOutcome:
    """The key as updated, or why nothing changed."""

    key: SigningKey | None = None
    refusal: UpdateRefusal | None = None


@dataclass(frozen=True, slots=True)
class Changes:
    """Keys changed since a point, oldest change first, and how old the data read was:
    ``data_age`` seconds bounds it when the read began (0 when read from the writer)."""

    keys: list[SigningKey]
    data_age: float


class ChangeSource(Protocol):
    """Keys in the order they last changed: what the change feed and watch streams read.

    A port of its own, although :class:`KeyRecords` offers it too, because the feed only
    reads: it can be given a source that lags or fails (a standby, an unreachable region)
    without a whole key store behind it, and its ordering contract is stated in one place.
    """

    def pages(
        self,
        *,
        environment_id: str | None = None,
        since: datetime | None = None,
        active_only: bool = False,
        page_size: int = DEFAULT_PAGE_SIZE,
        timeout: float | None = None,
    ) -> AsyncIterator[list[SigningKey]]:
        """Keys (of one environment, if given; with ``updated_at`` at or after ``since``, if
        given), oldest change first, ordered by ``(updated_at, id)``, in pages of at most
        ``page_size``. Paging is by keyset on ``(updated_at, id)``, not by offset, so a key
        changed while the pages are read is neither skipped nor cut short.

        ``updated_at`` is the time the changing transaction *started* (the primary's clock),
        so a slow writer's row can become visible after rows stamped later than it; readers
        of changes re-read an overlap window to catch it."""
        ...

    async def changes(
        self,
        *,
        since: datetime | None = None,
        after: tuple[datetime, str] | None = None,
        limit: int | None = None,
        max_data_age: float | None = None,
        timeout: float | None = None,
    ) -> Changes:
        """Every key changed at or after ``since`` (every key when ``None``), ordered as
        :meth:`pages` orders them, read only where the data is at most ``max_data_age``
        seconds old (raising :class:`~service.errors.RegionUnavailableError` when no such
        place answers), with the age of what was read.

        With ``limit``, one page of them: at most ``limit`` keys, and only those after the
        keyset position ``after`` (``(updated_at, id)``), so that a reader of a large change
        (the first load of a large table, an import) holds one page at a time."""
        ...


class KeyRecords(ChangeSource, Protocol):
    """Signing keys and their audit trail, as the key service and the verifier need them.

    Keys are stored with ``status='active'`` and the store's own ``created_at`` /
    ``updated_at`` (whatever the caller's record says); only revocation changes a key.
    """

    async def insert(
        self,
        key: SigningKey,
        *,
        audit: AuditEvent,
        idempotency: IdempotencyClaim | None = None,
        timeout: float | None = None,
    ) -> InsertOutcome:
        """Store ``key`` with its ``audit`` event, atomically.

        With ``idempotency``, the claim is taken first, per environment: if the claim already
        names another key, nothing is stored and the outcome names that key (and whether its
        request hash matched). Repeating the same insert (same key id, same claim) stores
        nothing new and returns the stored key."""
        ...

    async def get(
        self, key_id: str, *, environment_id: str | None = None, timeout: float | None = None
    ) -> SigningKey | None:
        """The key with ``key_id``; ``None`` if there is none, or if ``environment_id`` is
        given and the key belongs to another environment (the two are indistinguishable)."""
        ...

    async def list_page(
        self,
        environment_id: str,
        *,
        limit: int,
        offset: int,
        status: KeyStatus | None = None,
        filters: KeyFilter | None = None,
        after: Position | None = None,
        timeout: float | None = None,
    ) -> list[SigningKey]:
        """One page of an environment's keys (of one ``status`` and matching ``filters``, if
        given), newest first: by ``(created_at, id)`` descending; past the last key, an empty
        list. With ``after``, only keys that sort after that position (``(created_at, id)``
        strictly below it): a keyset page, which costs the same however deep it is."""
        ...

    async def audit_page(
        self,
        environment_id: str,
        *,
        limit: int,
        filters: AuditFilter,
        after: Position | None = None,
        timeout: float | None = None,
    ) -> list[AuditEvent]:
        """One page of an environment's audit events matching ``filters``, newest first by
        ``(created_at, id)`` descending (``created_at`` stamped by the store); with
        ``after``, only those strictly below that position."""
        ...

    async def get_many(
        self, key_ids: Sequence[str], *, environment_id: str, timeout: float | None = None
    ) -> list[SigningKey]:
        """The keys of ``environment_id`` among ``key_ids``, in no particular order; an id
        that does not exist and one of another environment are both simply absent."""
        ...

    async def revoke(
        self,
        environment_id: str,
        key_id: str,
        *,
        audit: AuditEvent,
        timeout: float | None = None,
    ) -> SigningKey | None:
        """Revoke an active key of ``environment_id`` (stamping ``revoked_at`` and
        ``updated_at``) and record ``audit``; a revoked key is returned unchanged with no
        second audit event. ``None``: no such key in that environment."""
        ...

    async def rotate(
        self,
        environment_id: str,
        key_id: str,
        new_key: SigningKey,
        *,
        grace_seconds: int,
        audits: tuple[AuditEvent, AuditEvent],
        idempotency: IdempotencyClaim | None = None,
        timeout: float | None = None,
    ) -> RotateOutcome:
        """In one transaction: store ``new_key`` (with its ``not_before``), mark ``key_id``
        rotated to it, and bring the old key's expiry forward to ``grace_seconds`` after the
        new key takes over (its ``not_before``, or now; never later than the old expiry),
        recording both ``audits`` (rotate, create). Only an active, unexpired key that was
        never rotated is rotated; concurrent rotations of one key store one new key. The
        idempotency claim is looked at first, as an insert's is, so a replay is answered as
        a replay even once the old key has expired. Repeating the same rotation (same ids,
        same claim) stores nothing new."""
        ...

    async def update(
        self,
        environment_id: str,
        key_id: str,
        *,
        name_given: bool,
        name: str | None,
        expires_at: datetime | None,
        audit: AuditEvent,
        timeout: float | None = None,
    ) -> UpdateOutcome:
        """Rename the key (when ``name_given``) and/or bring its expiry forward to
        ``expires_at``, stamping ``updated_at`` (so the change feed carries it) and recording
        ``audit``; an expiry later than the key's, already past, or at or before the key's
        ``not_before``, changes nothing."""
        ...

    async def current(
        self, environment_id: str, *, timeout: float | None = None
    ) -> SigningKey | None:
        """The environment's current key: the newest (by ``(created_at, id)``) active key
        that has not expired and whose ``not_before`` has passed; ``None`` if none has."""
        ...


class TokenRecords(Protocol):
    """Access tokens (only their secrets' hashes), as authentication and the CLI need them.

    A token is stored with the store's own ``updated_at``; whatever changes a token later
    (revoking it: ``revoked_at``) stamps ``updated_at`` again, so that the credential table
    of every instance reads the change on its next poll.
    """

    async def insert(self, token: AccessToken, *, timeout: float | None = None) -> None:
        """Store a new token; storing the same token id again changes nothing."""
        ...

    async def get(self, token_id: str, *, timeout: float | None = None) -> AccessToken | None:
        """The token with ``token_id``, revoked or not; ``None`` if there is none."""
        ...

    def pages(
        self,
        *,
        since: datetime | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        timeout: float | None = None,
        max_data_age: float | None = None,
    ) -> AsyncIterator[list[AccessToken]]:
        """Every token (with ``updated_at`` at or after ``since``, if given), revoked or not,
        ordered by ``(updated_at, id)``, in pages of at most ``page_size``, paged by keyset
        as :meth:`ChangeSource.pages` is and with the same meaning of ``updated_at``.
        ``max_data_age``: read each page only where the data is at most that old (as the
        change feed does), raising :class:`~service.errors.RegionUnavailableError` when no
        such region can serve."""
        ...
