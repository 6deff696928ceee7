"""Listing keys at scale: filters, an opaque keyset cursor, and reading many keys by id.

A list is newest first, by ``(created_at, id)`` descending — the order Mux's 1-based pages
have always had — so a cursor taken from the last key of any page (an offset page included)
continues the same sequence: ``page=1`` then ``cursor=…`` reads exactly what ``page=2`` would
have, without counting the keys before it. ``created_at`` never changes after an insert and
``id`` is unique, so a position between two keys is stable: keys revoked between two pages
drop out of a ``status=active`` list without moving the others, and keys created meanwhile
are newer than where the walk started and belong before it (a new walk sees them).

The cursor is opaque to callers: unpadded base64url of a small JSON object holding the last
key's ``created_at`` (integer microseconds, the database's precision), its id and a digest of
the environment and filters it was issued for. It is validated, not signed: it can only move
a walk within the caller's own environment and filters, which are checked again on every
page; a cursor whose digest does not match the request's filters is refused, so a client
cannot silently mix two lists.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Final, get_args

from service.core import crypto, times
from service.core.crypto import Algorithm
from service.core.models import AuditAction, AuditEvent, KeySource, SigningKey, check_id
from service.errors import InvalidRequestError

if TYPE_CHECKING:  # both import this module: the names are for annotations only
    from service.core.ports import KeyRecords
    from service.core.requests import ListAuditEventsRequest, ListKeysRequest

MAX_CURSOR_LENGTH: Final = 512
MAX_BATCH_IDS: Final = 100
_CURSOR_VERSION: Final = 1
_DIGEST_LENGTH: Final = 16  # hex characters: enough to tell filters apart, not a secret
SOURCES: Final[tuple[KeySource, ...]] = get_args(KeySource)


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyFilter:
    """Which keys a list lets through beyond the status: one algorithm, one source, an
    expiry strictly before a time (keys that never expire do not match)."""

    algorithm: Algorithm | None = None
    source: KeySource | None = None
    expires_before: datetime | None = None

    @classmethod
    def parse(
        cls, *, algorithm: object = None, source: object = None, expires_before: object = None
    ) -> KeyFilter:
        if source is not None and source not in SOURCES:
            raise InvalidRequestError(f"source must be one of {', '.join(SOURCES)}")
        return cls(
            algorithm=None if algorithm is None else crypto.parse_algorithm(algorithm),
            source=source,  # checked just above
            expires_before=times.parse_unix(expires_before, "expires_before"),
        )

    def matches(self, key: SigningKey) -> bool:
        """The same test as the store's SQL, for stores that filter in memory."""
        return (
            (self.algorithm is None or key.algorithm == self.algorithm)
            and (self.source is None or key.source == self.source)
            and (
                self.expires_before is None
                or (key.expires_at is not None and key.expires_at < self.expires_before)
            )
        )


@dataclass(frozen=True, slots=True)
class Position:
    """Where a walk stands: the last key returned. The next page holds the keys that sort
    after it, newest first: ``(created_at, id)`` strictly below this."""

    created_at: datetime
    key_id: str

    @classmethod
    def of(cls, key: SigningKey) -> Position:
        return cls(key.created_at, key.id)


def _digest(scope: Sequence[object]) -> str:
    return hashlib.sha256(json.dumps(list(scope)).encode()).hexdigest()[:_DIGEST_LENGTH]


def key_scope(environment_id: str, status: str, filters: KeyFilter) -> tuple[object, ...]:
    """What a key list's cursor is bound to: its environment, status and filters."""
    return (
        environment_id,
        status,
        filters.algorithm,
        filters.source,
        times.unix_seconds(filters.expires_before),
    )


def encode_cursor(position: Position, scope: Sequence[object]) -> str:
    delta = position.created_at - times.EPOCH
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    body = {"v": _CURSOR_VERSION, "t": micros, "i": position.key_id, "f": _digest(scope)}
    raw = json.dumps(body, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(token: str, *, name: str, scope: Sequence[object]) -> Position:
    """The position ``token`` holds; :class:`InvalidRequestError` naming ``name`` (never
    repeating the value) if it is not one this service issued for this ``scope`` (the
    environment and filters of the list)."""
    malformed = InvalidRequestError(f"{name} is malformed: pass back a value a list returned")
    if not token or len(token) > MAX_CURSOR_LENGTH or not token.isascii():
        raise malformed
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        body = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise malformed from exc
    if not isinstance(body, dict) or body.get("v") != _CURSOR_VERSION:
        raise malformed
    micros, key_id, digest = body.get("t"), body.get("i"), body.get("f")
    if (
        isinstance(micros, bool)
        or not isinstance(micros, int)
        or not isinstance(key_id, str)
        or not isinstance(digest, str)
    ):
        raise malformed
    try:
        created_at = times.EPOCH + timedelta(microseconds=micros)
        check_id(key_id)
    except (OverflowError, InvalidRequestError) as exc:
        raise malformed from exc
    if digest != _digest(scope):
        raise InvalidRequestError(
            f"{name} was issued for another environment or other filters: keep them, or"
            " start without it"
        )
    return Position(created_at, key_id)


def batch_ids(value: object, name: str = "ids") -> tuple[str, ...]:
    """1 to :data:`MAX_BATCH_IDS` key ids, each of a key id's shape; repeats are read once."""
    if value is None:
        raise InvalidRequestError(f"{name} is required: 1 to {MAX_BATCH_IDS} signing key ids")
    if isinstance(value, str):
        value = value.split(",") if value else []
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise InvalidRequestError(f"{name} must be a list of signing key ids")
    if not 1 <= len(value) <= MAX_BATCH_IDS:
        raise InvalidRequestError(f"{name} must hold 1 to {MAX_BATCH_IDS} signing key ids")
    return tuple(dict.fromkeys(check_id(v) for v in value))


@dataclass(frozen=True, slots=True)
class KeyPage:
    """A page of keys, and the cursor that reads the next one (``None``: none follows)."""

    keys: list[SigningKey]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class KeyBatch:
    """The keys found, in the order they were asked for, and the ids not found (missing, of
    another environment, or not of the status asked for: indistinguishable)."""

    keys: list[SigningKey]
    not_found: list[str]


async def read_page(records: KeyRecords, environment_id: str, request: ListKeysRequest) -> KeyPage:
    """The page ``request`` asks for, read one key beyond it: that key's presence, not a full
    page, says whether a next page exists, so the last page carries no cursor."""
    after = None
    scope = key_scope(environment_id, request.status, request.filters)
    if request.cursor is not None:
        after = decode_cursor(request.cursor, name=request.cursor_name, scope=scope)
    status = None if request.status == "all" else request.status
    keys = await records.list_page(
        environment_id,
        limit=request.limit + 1,
        offset=0 if after is not None else (request.page - 1) * request.limit,
        status=status,
        filters=request.filters,
        after=after,
    )
    if len(keys) <= request.limit:
        return KeyPage(keys, None)
    keys = keys[: request.limit]
    return KeyPage(keys, encode_cursor(Position.of(keys[-1]), scope))


# Every action the trail records (rotate and update included): each may be filtered on.
AUDIT_ACTIONS: Final[tuple[AuditAction, ...]] = get_args(AuditAction)


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditFilter:
    """Which audit events a read lets through: of one key, by one actor (an access token
    id), of one action, at or after ``since`` and before ``until``."""

    key_id: str | None = None
    actor: str | None = None
    action: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    @classmethod
    def parse(
        cls,
        *,
        key_id: object = None,
        actor: object = None,
        action: object = None,
        since: object = None,
        until: object = None,
    ) -> AuditFilter:
        for name, value in (("key_id", key_id), ("actor", actor), ("action", action)):
            if value is not None and not isinstance(value, str):
                raise InvalidRequestError(f"{name} must be a string")
        if action is not None and action not in AUDIT_ACTIONS:
            raise InvalidRequestError(f"action must be one of {', '.join(AUDIT_ACTIONS)}")
        return cls(
            key_id=None if key_id is None else check_id(str(key_id), "key_id"),
            actor=None if actor is None else check_id(str(actor), "actor"),
            action=None if action is None else str(action),
            since=times.parse_unix(since, "since"),
            until=times.parse_unix(until, "until"),
        )

    def scope(self, environment_id: str) -> tuple[object, ...]:
        """What an audit list's cursor is bound to."""
        return (
            "audit",
            environment_id,
            self.key_id,
            self.actor,
            self.action,
            times.unix_seconds(self.since),
            times.unix_seconds(self.until),
        )

    def matches(self, event: AuditEvent) -> bool:
        """The same test as the store's SQL, for stores that filter in memory."""
        stamp = event.created_at
        return (
            (self.key_id is None or event.key_id == self.key_id)
            and (self.actor is None or event.actor == self.actor)
            and (self.action is None or event.action == self.action)
            and (self.since is None or (stamp is not None and stamp >= self.since))
            and (self.until is None or (stamp is not None and stamp < self.until))
        )


@dataclass(frozen=True, slots=True)
class AuditPage:
    """A page of audit events, newest first, and the cursor of the next (``None``: none)."""

    events: list[AuditEvent]
    next_cursor: str | None


async def read_audit_page(
    records: KeyRecords, environment_id: str, request: ListAuditEventsRequest
) -> AuditPage:
    """The page of audit events ``request`` asks for, newest first by ``(created_at, id)``,
    read one event beyond it to know whether another page follows."""
    scope = request.filters.scope(environment_id)
    after = None
    if request.cursor is not None:
        after = decode_cursor(request.cursor, name=request.cursor_name, scope=scope)
    events = await records.audit_page(
        environment_id, limit=request.limit + 1, filters=request.filters, after=after
    )
    if len(events) <= request.limit:
        return AuditPage(events, None)
    events = events[: request.limit]
    last = events[-1]
    assert last.created_at is not None  # a stored event is stamped
    return AuditPage(events, encode_cursor(Position(last.created_at, last.id), scope))
