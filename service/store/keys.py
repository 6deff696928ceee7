"""SQL for signing keys and their audit events: one method per query.

:class:`PostgresKeyRecords` implements the core's :class:`~service.core.ports.KeyRecords`
port. Every write here is idempotent by construction — ids are chosen before the first
attempt and inserts use ``ON CONFLICT DO NOTHING`` — so the router may run it again after an
ambiguous commit and it still lands exactly once.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from typing import Any, Final

from service.core import crypto, times
from service.core.listing import AuditFilter, KeyFilter, Position
from service.core.models import AuditEvent, KeyStatus, SigningKey
from service.core.ports import (
    DEFAULT_PAGE_SIZE,
    Changes,
    IdempotencyClaim,
    InsertOutcome,
    RotateOutcome,
    UpdateOutcome,
)
from service.store.database import Database

_COLUMNS = (
    "id, environment_id, algorithm, public_key, fingerprint, status, source, name, "
    "created_at, updated_at, revoked_at, expires_at, not_before, rotated_to"
)


def _bound(seconds: int) -> str:
    return f"TIMESTAMPTZ '{times.EPOCH + timedelta(seconds=seconds):%Y-%m-%d %H:%M:%S+00}'"


# What reads select: the columns, with an expiry outside the range callers may give clamped
# into it. Such a row (written before the range was checked: year 1 is kept as -infinity) must
# never fail to decode or render; an expiry before 1970 has passed either way. A CASE, not
# GREATEST/LEAST, so that NULL (no expiry) stays NULL on PostgreSQL and CockroachDB alike.
_SELECTED = _COLUMNS.replace(
    "expires_at",
    f"CASE WHEN expires_at < {_bound(times.EARLIEST)} THEN {_bound(times.EARLIEST)}"
    f" WHEN expires_at > {_bound(times.LATEST)} THEN {_bound(times.LATEST)}"
    " ELSE expires_at END AS expires_at",
)

# A change's stamp: now(), but always after the row's previous one. now() is the
# transaction's start (or another writer's clock, after a failover), so a write that began
# before a concurrent one committed would stamp its row earlier than the version it replaces;
# the change feed and the key cache take such a row for a re-read or a straggler and drop it
# (a revocation lost: the key verifies for as long as it stays cached).
_STAMP = "updated_at = GREATEST(now(), updated_at + INTERVAL '1 microsecond')"

# A constant column list; every value is a parameter.
_REVOKE = (
    f"UPDATE signing_keys SET status = 'revoked', revoked_at = now(), {_STAMP}"  # noqa: S608
    " WHERE id = $1 AND environment_id = $2 AND status = 'active'"
    " RETURNING " + _SELECTED
)


# An environment's keys, newest first, through the (environment_id, created_at, id) index;
# the filters are parameters (NULL: not filtered). _LIST_AFTER adds the keyset bound.
_LIST_WHERE = (
    f"SELECT {_SELECTED} FROM signing_keys"  # noqa: S608 - constant columns
    " WHERE environment_id = $1 AND ($4::text IS NULL OR status = $4::text)"
    " AND ($5::text IS NULL OR algorithm = $5::text)"
    " AND ($6::text IS NULL OR source = $6::text)"
    " AND ($7::timestamptz IS NULL OR expires_at < $7::timestamptz)"
)
_LIST_ORDER = " ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3"
_LIST = _LIST_WHERE + _LIST_ORDER
_LIST_AFTER = _LIST_WHERE + " AND (created_at, id) < ($8::timestamptz, $9::text)" + _LIST_ORDER


# An environment's audit events, newest first, through its (environment_id, created_at)
# index. The keyset bound is spelled so that its created_at half is an index bound although
# the index does not hold the id.
_AUDIT_WHERE = (
    "SELECT id, environment_id, key_id, action, actor, api, request_id, created_at"
    " FROM audit_events WHERE environment_id = $1"
    " AND ($3::text IS NULL OR key_id = $3::text)"
    " AND ($4::text IS NULL OR actor = $4::text)"
    " AND ($5::text IS NULL OR action = $5::text)"
    " AND ($6::timestamptz IS NULL OR created_at >= $6::timestamptz)"
    " AND ($7::timestamptz IS NULL OR created_at < $7::timestamptz)"
)
_AUDIT_ORDER = " ORDER BY created_at DESC, id DESC LIMIT $2"
_AUDIT = _AUDIT_WHERE + _AUDIT_ORDER
_AUDIT_AFTER = (
    _AUDIT_WHERE
    + " AND created_at <= $8::timestamptz AND (created_at < $8::timestamptz OR id < $9::text)"
    + _AUDIT_ORDER
)


def _event(row: Any) -> AuditEvent:
    return AuditEvent(
        id=row["id"],
        environment_id=row["environment_id"],
        key_id=row["key_id"],
        action=row["action"],
        actor=row["actor"],
        api=row["api"],
        request_id=row["request_id"],
        created_at=row["created_at"],
    )


# One object for each word a column repeats on every row (algorithm, status, source): the
# driver decodes a new string per row, 50-60 bytes each, for every cached key.
_WORDS: Final[dict[str, str]] = {
    word: word for word in (*crypto.ALGORITHMS, "active", "revoked", "generated", "imported")
}


def _key(row: Any) -> SigningKey:
    created_at, updated_at = row["created_at"], row["updated_at"]
    algorithm, status, source = row["algorithm"], row["status"], row["source"]
    return SigningKey(
        id=row["id"],
        # Few environments, many keys each: one string per environment (interned strings are
        # freed with their last reference).
        environment_id=sys.intern(row["environment_id"]),
        algorithm=_WORDS.get(algorithm, algorithm),
        public_key=bytes(row["public_key"]),
        fingerprint=row["fingerprint"],
        status=_WORDS.get(status, status),
        source=_WORDS.get(source, source),
        name=row["name"],
        created_at=created_at,
        # A key never changed since its creation has one moment, kept once.
        updated_at=created_at if updated_at == created_at else updated_at,
        revoked_at=row["revoked_at"],
        expires_at=row["expires_at"],
        not_before=row["not_before"],
        rotated_to=row["rotated_to"],
    )


async def _insert_audit(conn: Any, event: AuditEvent) -> None:
    await conn.execute(
        "INSERT INTO audit_events (id, environment_id, key_id, action, actor, api, request_id,"
        " created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, now()) ON CONFLICT (id) DO NOTHING",
        event.id,
        event.environment_id,
        event.key_id,
        event.action,
        event.actor,
        event.api,
        event.request_id,
    )


async def _insert_key(conn: Any, key: SigningKey, audit: AuditEvent) -> SigningKey:
    await conn.execute(
        f"INSERT INTO signing_keys ({_COLUMNS}) VALUES"  # noqa: S608 - constant columns
        " ($1, $2, $3, $4, $5, 'active', $6, $7, now(), now(), NULL, $8, $9, NULL)"
        " ON CONFLICT (id) DO NOTHING",
        key.id,
        key.environment_id,
        key.algorithm,
        key.public_key,
        key.fingerprint,
        key.source,
        key.name,
        key.expires_at,
        key.not_before,
    )
    await _insert_audit(conn, audit)
    row = await conn.fetchrow(
        f"SELECT {_SELECTED} FROM signing_keys WHERE id = $1",  # noqa: S608
        key.id,
    )
    return _key(row)


async def _claim(
    conn: Any, environment_id: str, claim: IdempotencyClaim, key_id: str, *, take: bool
) -> tuple[str, bool] | None:
    """Who holds ``claim`` (its key id, and whether its request hash matches), after taking
    it for ``key_id`` if ``take``; ``None``: nobody (only when not taking)."""
    if take:
        await conn.execute(
            "INSERT INTO idempotency_keys (environment_id, key, request_hash,"
            " signing_key_id, created_at) VALUES ($1, $2, $3, $4, now())"
            " ON CONFLICT DO NOTHING",
            environment_id,
            claim.key,
            claim.request_hash,
            key_id,
        )
    row = await conn.fetchrow(
        "SELECT request_hash, signing_key_id FROM idempotency_keys"
        " WHERE environment_id = $1 AND key = $2",
        environment_id,
        claim.key,
    )
    if row is None:
        return None
    return row["signing_key_id"], bytes(row["request_hash"]) == claim.request_hash


# The moment a rotation's new key takes over (its not_before, or now if that has passed or
# is not set) plus the grace: when the old key is to expire. The database's clock, the one
# every other stamp uses.
_ROTATION_EXPIRY = (
    "SELECT CASE WHEN $1::timestamptz IS NOT NULL AND $1::timestamptz > now()"
    " THEN $1::timestamptz ELSE now() END + $2::int * INTERVAL '1 second' AS expiry,"
    " now() AS now"
)
# Never later than the expiry the key had: a CASE, not LEAST (NULL handling differs between
# PostgreSQL and CockroachDB).
_MARK_ROTATED = (
    "UPDATE signing_keys SET rotated_to = $3,"  # noqa: S608 - constant columns
    " expires_at = CASE WHEN expires_at IS NOT NULL AND expires_at < $4::timestamptz"
    f" THEN expires_at ELSE $4::timestamptz END, {_STAMP}"
    " WHERE id = $1 AND environment_id = $2 RETURNING " + _SELECTED
)
_UPDATE = (
    "UPDATE signing_keys SET name = CASE WHEN $3 THEN $4::text ELSE name END,"  # noqa: S608
    f" expires_at = COALESCE($5::timestamptz, expires_at), {_STAMP}"
    " WHERE id = $1 AND environment_id = $2 RETURNING " + _SELECTED
)


class PostgresKeyRecords:
    """Signing keys in PostgreSQL or CockroachDB, reached through a :class:`Database`.

    >>> records = PostgresKeyRecords(router)
    >>> key = await records.get("kid", environment_id="env-1")
    """

    def __init__(self, database: Database) -> None:
        self._db = database

    def __repr__(self) -> str:
        return f"<PostgresKeyRecords database={self._db!r}>"

    async def insert(
        self,
        key: SigningKey,
        *,
        audit: AuditEvent,
        idempotency: IdempotencyClaim | None = None,
        timeout: float | None = None,
    ) -> InsertOutcome:
        """Store a new key with its audit event; honour the caller's idempotency key."""

        async def op(conn: Any) -> InsertOutcome:
            if idempotency is not None:
                await conn.execute(
                    "INSERT INTO idempotency_keys (environment_id, key, request_hash,"
                    " signing_key_id, created_at) VALUES ($1, $2, $3, $4, now())"
                    " ON CONFLICT DO NOTHING",
                    key.environment_id,
                    idempotency.key,
                    idempotency.request_hash,
                    key.id,
                )
                claim = await conn.fetchrow(
                    "SELECT request_hash, signing_key_id FROM idempotency_keys"
                    " WHERE environment_id = $1 AND key = $2",
                    key.environment_id,
                    idempotency.key,
                )
                if claim["signing_key_id"] != key.id:
                    return InsertOutcome(
                        key=None,
                        replayed_key_id=claim["signing_key_id"],
                        request_matches=bytes(claim["request_hash"]) == idempotency.request_hash,
                    )
            return InsertOutcome(key=await _insert_key(conn, key, audit))

        return await self._db.write(op, idempotent=True, timeout=timeout)

    async def get(
        self, key_id: str, *, environment_id: str | None = None, timeout: float | None = None
    ) -> SigningKey | None:
        """One key by id, optionally only if it belongs to ``environment_id``."""

        async def op(conn: Any) -> SigningKey | None:
            row = await conn.fetchrow(
                f"SELECT {_SELECTED} FROM signing_keys WHERE id = $1",  # noqa: S608
                key_id,
            )
            if row is None or (
                environment_id is not None and row["environment_id"] != environment_id
            ):
                return None
            return _key(row)

        return await self._db.read(op, timeout=timeout)

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
        """One page of an environment's keys (of one status and filters, if given), newest
        first; with ``after``, a keyset page below that position."""
        filters = filters or KeyFilter()
        # The keyset condition is spelled only when there is a position: behind
        # "$n IS NULL OR ..." a generic plan could not use it as an index bound, and a deep
        # page would scan every newer key as OFFSET does.
        query = _LIST if after is None else _LIST_AFTER
        position = () if after is None else (after.created_at, after.key_id)

        async def op(conn: Any) -> list[SigningKey]:
            rows = await conn.fetch(
                query,
                environment_id,
                limit,
                offset,
                status,
                filters.algorithm,
                filters.source,
                filters.expires_before,
                *position,
            )
            return [_key(row) for row in rows]

        return await self._db.read(op, timeout=timeout, hedge=False)  # a page scan

    async def audit_page(
        self,
        environment_id: str,
        *,
        limit: int,
        filters: AuditFilter,
        after: Position | None = None,
        timeout: float | None = None,
    ) -> list[AuditEvent]:
        """One page of audit events, newest first; with ``after``, a keyset page."""
        query = _AUDIT if after is None else _AUDIT_AFTER
        position = () if after is None else (after.created_at, after.key_id)

        async def op(conn: Any) -> list[AuditEvent]:
            rows = await conn.fetch(
                query,
                environment_id,
                limit,
                filters.key_id,
                filters.actor,
                filters.action,
                filters.since,
                filters.until,
                *position,
            )
            return [_event(row) for row in rows]

        return await self._db.read(op, timeout=timeout, hedge=False)  # a page scan

    async def get_many(
        self, key_ids: Sequence[str], *, environment_id: str, timeout: float | None = None
    ) -> list[SigningKey]:
        """The keys of ``environment_id`` among ``key_ids`` (primary-key look-ups)."""

        async def op(conn: Any) -> list[SigningKey]:
            rows = await conn.fetch(
                f"SELECT {_SELECTED} FROM signing_keys"  # noqa: S608
                " WHERE id = ANY($1::text[]) AND environment_id = $2",
                list(key_ids),
                environment_id,
            )
            return [_key(row) for row in rows]

        return await self._db.read(op, timeout=timeout)

    async def revoke(
        self,
        environment_id: str,
        key_id: str,
        *,
        audit: AuditEvent,
        timeout: float | None = None,
    ) -> SigningKey | None:
        """Revoke a key; revoking a revoked key changes nothing. ``None``: no such key."""

        async def op(conn: Any) -> SigningKey | None:
            row = await conn.fetchrow(
                _REVOKE,
                key_id,
                environment_id,
            )
            if row is not None:
                await _insert_audit(conn, audit)
                return _key(row)
            row = await conn.fetchrow(
                f"SELECT {_SELECTED} FROM signing_keys"  # noqa: S608
                " WHERE id = $1 AND environment_id = $2",
                key_id,
                environment_id,
            )
            return None if row is None else _key(row)

        return await self._db.write(op, idempotent=True, timeout=timeout)

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
        """Rotate ``key_id`` to ``new_key`` in one transaction (see the port)."""

        async def op(conn: Any) -> RotateOutcome:
            # The old key's row lock serialises rotations of one key: the second waits, then
            # (SERIALIZABLE) is rolled back and retried by the router, and finds it rotated.
            old = await conn.fetchrow(
                f"SELECT {_SELECTED} FROM signing_keys"  # noqa: S608
                " WHERE id = $1 AND environment_id = $2 FOR UPDATE",
                key_id,
                environment_id,
            )
            if idempotency is not None:
                held = await _claim(conn, environment_id, idempotency, new_key.id, take=False)
                if held is not None and held[0] != new_key.id:
                    return RotateOutcome(replayed_key_id=held[0], request_matches=held[1])
            if old is None:
                return RotateOutcome(refusal="not_found")
            timing = await conn.fetchrow(_ROTATION_EXPIRY, new_key.not_before, grace_seconds)
            if old["rotated_to"] is not None and old["rotated_to"] != new_key.id:
                return RotateOutcome(refusal="rotated", rotated_to=old["rotated_to"])
            if old["rotated_to"] is None:  # else: this very rotation, run again
                if old["status"] != "active":
                    return RotateOutcome(refusal="revoked")
                if old["expires_at"] is not None and old["expires_at"] <= timing["now"]:
                    return RotateOutcome(refusal="expired")
                start = new_key.not_before
                ends = old["expires_at"]
                if ends is not None and start is not None and ends <= start:
                    return RotateOutcome(refusal="gap")
            if idempotency is not None:
                held = await _claim(conn, environment_id, idempotency, new_key.id, take=True)
                # A create racing with this key is not held off by the row lock: its claim
                # wins (SERIALIZABLE rolls one back; the router's retry reads the other's).
                if held is not None and held[0] != new_key.id:
                    return RotateOutcome(replayed_key_id=held[0], request_matches=held[1])
            new = await _insert_key(conn, new_key, audits[1])
            row = await conn.fetchrow(
                _MARK_ROTATED, key_id, environment_id, new_key.id, timing["expiry"]
            )
            await _insert_audit(conn, audits[0])
            return RotateOutcome(old=_key(row), new=new)

        return await self._db.write(op, idempotent=True, timeout=timeout)

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
        """Rename and/or bring the expiry forward, in one transaction (see the port)."""

        async def op(conn: Any) -> UpdateOutcome:
            row = await conn.fetchrow(
                f"SELECT {_SELECTED}, now() AS now FROM signing_keys"  # noqa: S608
                " WHERE id = $1 AND environment_id = $2 FOR UPDATE",
                key_id,
                environment_id,
            )
            if row is None:
                return UpdateOutcome(refusal="not_found")
            if expires_at is not None:
                if row["expires_at"] is not None and expires_at > row["expires_at"]:
                    return UpdateOutcome(refusal="lengthens")
                if expires_at <= row["now"]:
                    return UpdateOutcome(refusal="past")
                if row["not_before"] is not None and expires_at <= row["not_before"]:
                    return UpdateOutcome(refusal="before_start")
            updated = await conn.fetchrow(
                _UPDATE, key_id, environment_id, name_given, name, expires_at
            )
            await _insert_audit(conn, audit)
            return UpdateOutcome(key=_key(updated))

        return await self._db.write(op, idempotent=True, timeout=timeout)

    async def current(
        self, environment_id: str, *, timeout: float | None = None
    ) -> SigningKey | None:
        """The environment's current key (see the port): the by-environment index, read
        backwards until the first key that qualifies."""

        async def op(conn: Any) -> SigningKey | None:
            row = await conn.fetchrow(
                f"SELECT {_SELECTED} FROM signing_keys"  # noqa: S608
                " WHERE environment_id = $1 AND status = 'active'"
                " AND (expires_at IS NULL OR expires_at > now())"
                " AND (not_before IS NULL OR not_before <= now())"
                " ORDER BY created_at DESC, id DESC LIMIT 1",
                environment_id,
            )
            return None if row is None else _key(row)

        return await self._db.read(op, timeout=timeout)

    async def pages(
        self,
        *,
        environment_id: str | None = None,
        since: datetime | None = None,
        active_only: bool = False,
        page_size: int = DEFAULT_PAGE_SIZE,
        timeout: float | None = None,
    ) -> AsyncIterator[list[SigningKey]]:
        """Keys (of one environment, if given; updated at or after ``since``, if given),
        oldest change first, in pages: keyset pagination on (updated_at, id), so nothing is
        cut short."""
        cursor: tuple[datetime, str] | None = None
        while True:
            page, _ = await self._page(
                environment_id, since, active_only, page_size, cursor, timeout, None
            )
            if page:
                yield page
            if len(page) < page_size:
                return
            cursor = (page[-1].updated_at, page[-1].id)

    async def changes(
        self,
        *,
        since: datetime | None = None,
        after: tuple[datetime, str] | None = None,
        limit: int | None = None,
        max_data_age: float | None = None,
        timeout: float | None = None,
    ) -> Changes:
        """Every key changed at or after ``since`` (with ``limit``: one page of them, after
        ``after``), from regions whose data is at most ``max_data_age`` old; the age
        reported is the oldest of the pages' (each page is its own read, and may come from
        another region)."""
        if limit is not None:
            page, age = await self._page(None, since, False, limit, after, timeout, max_data_age)
            return Changes(page, age)
        keys: list[SigningKey] = []
        oldest = 0.0
        cursor = after
        while True:
            page, age = await self._page(
                None, since, False, DEFAULT_PAGE_SIZE, cursor, timeout, max_data_age
            )
            keys.extend(page)
            oldest = max(oldest, age)
            if len(page) < DEFAULT_PAGE_SIZE:
                return Changes(keys, oldest)
            cursor = (page[-1].updated_at, page[-1].id)

    async def _page(
        self,
        environment_id: str | None,
        since: datetime | None,
        active_only: bool,
        page_size: int,
        after: tuple[datetime, str] | None,
        timeout: float | None,
        max_data_age: float | None,
    ) -> tuple[list[SigningKey], float]:
        async def op(conn: Any) -> list[SigningKey]:
            rows = await conn.fetch(
                f"SELECT {_SELECTED} FROM signing_keys"  # noqa: S608
                " WHERE ($1::text IS NULL OR environment_id = $1::text)"
                " AND ($2::timestamptz IS NULL OR updated_at >= $2::timestamptz)"
                " AND (NOT $3 OR status = 'active')"
                " AND ($5::timestamptz IS NULL OR (updated_at, id) > ($5::timestamptz, $6::text))"
                " ORDER BY updated_at, id LIMIT $4",
                environment_id,
                since,
                active_only,
                page_size,
                after[0] if after else None,
                after[1] if after else None,
            )
            return [_key(row) for row in rows]

        # A poll since a watermark reads a few rows and bounds how soon a revocation is
        # enforced: hedged, like a point read. A full scan (a snapshot, the first poll) is not.
        return await self._db.read_with_age(
            op, timeout=timeout, max_data_age=max_data_age, hedge=since is not None
        )
