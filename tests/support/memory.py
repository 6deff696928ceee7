"""In-memory implementations of the core's ports, for fast tests of the core's own rules.

They keep the semantics of the SQL in ``service.store`` (the contract test in
``tests/store/test_records_contract.py`` runs the same checks against both):

- keys are stored ``active`` with the store's own ``created_at`` / ``updated_at``; a repeated
  insert (same key id) stores nothing new, and an audit event lands once per event id;
- an idempotency claim is taken per environment, and names the first key that took it;
- revoking a revoked key returns it unchanged and records no second audit event;
- reads by environment never return another environment's key;
- change pages are ordered by ``(updated_at, id)`` and paged by keyset, re-reading the
  current rows for each page.

Time comes from an injectable clock. As in PostgreSQL, where ``updated_at`` is the start of
the writing transaction, a write can be *held*: stamped now, visible only when the test
commits it — the slow writer whose row appears after rows stamped later than it.

>>> clock = ManualClock()
>>> records = MemoryKeyRecords(clock=clock)
>>> slow = records.hold_next_write()
>>> await records.insert(key, audit=event)  # stamped now, not visible yet
>>> clock.advance(2.0)
>>> slow.commit()
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from service.core.listing import AuditFilter, KeyFilter, Position
from service.core.models import AccessToken, AuditEvent, KeyStatus, SigningKey
from service.core.ports import (
    DEFAULT_PAGE_SIZE,
    Changes,
    IdempotencyClaim,
    InsertOutcome,
    RotateOutcome,
    UpdateOutcome,
)
from service.errors import RegionUnavailableError

DEFAULT_START = datetime(2030, 1, 1, tzinfo=UTC)


class ManualClock:
    """Wall-clock time that moves only when told, plus ``tick`` each time it is called for a
    timestamp (so that two writes get distinct stamps, as two transactions do, unless a test
    sets ``tick=0``).

    ``seconds()`` reads the same time as a float without moving it, for the core's
    ``clock=`` / ``monotonic=`` options.
    """

    def __init__(self, start: datetime = DEFAULT_START, *, tick: float = 0.001) -> None:
        self._now = start
        self._tick = timedelta(seconds=tick)

    def __repr__(self) -> str:
        return f"<ManualClock {self._now.isoformat()}>"

    def __call__(self) -> datetime:
        now = self._now
        self._now += self._tick
        return now

    def seconds(self) -> float:
        return self._now.timestamp()

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)


class _Outage:
    """Counts calls per method (``calls``), and makes every call fail as if no region could
    answer while ``unavailable`` is set."""

    unavailable: bool = False
    calls: collections.Counter[str]

    def _check(self, method: str) -> None:
        self.calls[method] += 1
        if self.unavailable:
            raise RegionUnavailableError("no region is reachable (in-memory outage)")


@dataclass(eq=False)
class HeldWrite:
    """A write that has been stamped but not committed; :meth:`commit` makes it visible."""

    records: MemoryKeyRecords
    rows: list[SigningKey] = field(default_factory=list)
    events: list[AuditEvent] = field(default_factory=list)
    committed: bool = False

    def commit(self) -> None:
        self.committed = True
        for row in self.rows:
            self.records._rows[row.id] = row
        for event in self.events:
            self.records._record(event)


class MemoryKeyRecords(_Outage):
    """:class:`~service.core.ports.KeyRecords` (and so a ``ChangeSource``) in a dict."""

    def __init__(self, *, clock: Callable[[], datetime] | None = None) -> None:
        self._clock = clock or ManualClock()
        self._rows: dict[str, SigningKey] = {}
        self._claims: dict[tuple[str, str], tuple[bytes, str]] = {}
        self._audit: dict[str, AuditEvent] = {}
        self._hold_next = False
        self._held: list[HeldWrite] = []
        self.calls = collections.Counter()
        # How old the data this copy serves is (seconds): a lagging region's, when set.
        self.data_age = 0.0

    def __repr__(self) -> str:
        pending = sum(not held.committed for held in self._held)
        return f"<MemoryKeyRecords keys={len(self._rows)} held={pending}>"

    @classmethod
    def holding(cls, keys: Iterable[SigningKey]) -> MemoryKeyRecords:
        """Records holding ``keys`` as they are (stamps, status): a region's copy, however far
        behind, for tests that script what a read finds."""
        records = cls()
        records._rows = {key.id: key for key in keys}
        return records

    # What tests look at and control, beyond the port.

    def audit_trail(self, key_id: str) -> list[AuditEvent]:
        """The audit events recorded for ``key_id``, in the order they were recorded."""
        return [event for event in self._audit.values() if event.key_id == key_id]

    def __len__(self) -> int:
        return len(self._rows)

    def hold_next_write(self) -> HeldWrite:
        """The next write is stamped when it runs but stays invisible until committed."""
        held = HeldWrite(self)
        self._hold_next = True
        self._held.append(held)
        return held

    # The port.

    async def insert(
        self,
        key: SigningKey,
        *,
        audit: AuditEvent,
        idempotency: IdempotencyClaim | None = None,
        timeout: float | None = None,
    ) -> InsertOutcome:
        self._check("insert")
        if idempotency is not None:
            # Taken at once: in PostgreSQL a second claimant waits on the unique index for
            # the first to commit and then sees its claim, which is the answer given here.
            request_hash, key_id = self._claims.setdefault(
                (key.environment_id, idempotency.key), (idempotency.request_hash, key.id)
            )
            if key_id != key.id:
                return InsertOutcome(
                    key=None,
                    replayed_key_id=key_id,
                    request_matches=request_hash == idempotency.request_hash,
                )
        stored = self._rows.get(key.id)
        if stored is not None:
            self._write([], [replace(audit, created_at=stored.updated_at)])
            return InsertOutcome(key=stored)
        now = self._clock()
        stored = replace(key, status="active", created_at=now, updated_at=now, revoked_at=None)
        self._write([stored], [replace(audit, created_at=now)])
        return InsertOutcome(key=stored)

    async def get(
        self, key_id: str, *, environment_id: str | None = None, timeout: float | None = None
    ) -> SigningKey | None:
        self._check("get")
        key = self._rows.get(key_id)
        if key is None or (environment_id is not None and key.environment_id != environment_id):
            return None
        return key

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
        self._check("list_page")
        filters = filters or KeyFilter()
        keys = [
            key
            for key in self._rows.values()
            if key.environment_id == environment_id
            and (status is None or key.status == status)
            and filters.matches(key)
            and (after is None or (key.created_at, key.id) < (after.created_at, after.key_id))
        ]
        keys.sort(key=lambda key: (key.created_at, key.id), reverse=True)
        return keys[offset : offset + limit]

    async def audit_page(
        self,
        environment_id: str,
        *,
        limit: int,
        filters: AuditFilter,
        after: Position | None = None,
        timeout: float | None = None,
    ) -> list[AuditEvent]:
        self._check("audit_page")
        events = [
            event
            for event in self._audit.values()
            if event.environment_id == environment_id
            and filters.matches(event)
            and (after is None or _position(event) < (after.created_at, after.key_id))
        ]
        events.sort(key=_position, reverse=True)
        return events[:limit]

    async def get_many(
        self, key_ids: Sequence[str], *, environment_id: str, timeout: float | None = None
    ) -> list[SigningKey]:
        self._check("get_many")
        found = (self._rows.get(key_id) for key_id in dict.fromkeys(key_ids))
        return [key for key in found if key is not None and key.environment_id == environment_id]

    async def revoke(
        self,
        environment_id: str,
        key_id: str,
        *,
        audit: AuditEvent,
        timeout: float | None = None,
    ) -> SigningKey | None:
        self._check("revoke")
        key = self._rows.get(key_id)
        if key is None or key.environment_id != environment_id:
            return None
        if not key.is_active:
            return key
        now = self._clock()
        revoked = replace(key, status="revoked", revoked_at=now, updated_at=now)
        self._write([revoked], [replace(audit, created_at=now)])
        return revoked

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
        self._check("rotate")
        old = self._rows.get(key_id)
        if idempotency is not None:
            held = self._claims.get((environment_id, idempotency.key))
            if held is not None and held[1] != new_key.id:
                return RotateOutcome(
                    replayed_key_id=held[1], request_matches=held[0] == idempotency.request_hash
                )
        if old is None or old.environment_id != environment_id:
            return RotateOutcome(refusal="not_found")
        now = self._clock()
        if old.rotated_to is not None and old.rotated_to != new_key.id:
            return RotateOutcome(refusal="rotated", rotated_to=old.rotated_to)
        if old.rotated_to is None:
            if not old.is_active:
                return RotateOutcome(refusal="revoked")
            if old.expires_at is not None and old.expires_at <= now:
                return RotateOutcome(refusal="expired")
            start = new_key.not_before
            if old.expires_at is not None and start is not None and old.expires_at <= start:
                return RotateOutcome(refusal="gap")
        if idempotency is not None:
            self._claims[(environment_id, idempotency.key)] = (
                idempotency.request_hash,
                new_key.id,
            )
        new = self._rows.get(new_key.id) or replace(
            new_key, status="active", created_at=now, updated_at=now, revoked_at=None
        )
        takeover = max(now, new_key.not_before or now)
        expiry = takeover + timedelta(seconds=grace_seconds)
        if old.expires_at is not None and old.expires_at < expiry:
            expiry = old.expires_at
        rotated = replace(old, rotated_to=new_key.id, expires_at=expiry, updated_at=now)
        # Stamped as the database stamps them (created_at defaults to now()).
        self._write([new, rotated], [replace(audit, created_at=now) for audit in audits])
        return RotateOutcome(old=rotated, new=new)

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
        self._check("update")
        key = self._rows.get(key_id)
        if key is None or key.environment_id != environment_id:
            return UpdateOutcome(refusal="not_found")
        now = self._clock()
        if expires_at is not None:
            if key.expires_at is not None and expires_at > key.expires_at:
                return UpdateOutcome(refusal="lengthens")
            if expires_at <= now:
                return UpdateOutcome(refusal="past")
            if key.not_before is not None and expires_at <= key.not_before:
                return UpdateOutcome(refusal="before_start")
        updated = replace(
            key,
            name=name if name_given else key.name,
            expires_at=expires_at or key.expires_at,
            updated_at=now,
        )
        self._write([updated], [replace(audit, created_at=now)])
        return UpdateOutcome(key=updated)

    async def current(
        self, environment_id: str, *, timeout: float | None = None
    ) -> SigningKey | None:
        self._check("current")
        now = self._clock()
        keys = [
            key
            for key in self._rows.values()
            if key.environment_id == environment_id
            and key.is_active
            and (key.expires_at is None or key.expires_at > now)
            and (key.not_before is None or key.not_before <= now)
        ]
        return max(keys, key=lambda key: (key.created_at, key.id), default=None)

    async def pages(
        self,
        *,
        environment_id: str | None = None,
        since: datetime | None = None,
        active_only: bool = False,
        page_size: int = DEFAULT_PAGE_SIZE,
        timeout: float | None = None,
    ) -> AsyncIterator[list[SigningKey]]:
        cursor: tuple[datetime, str] | None = None
        while True:
            page = self._page(environment_id, since, active_only, page_size, cursor)
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
        if max_data_age is not None and self.data_age > max_data_age:
            self.calls["changes"] += 1
            raise RegionUnavailableError(f"no region has data younger than {max_data_age} s")
        if limit is not None:
            return Changes(self._page(None, since, False, limit, after), self.data_age)
        keys = [key async for page in self.pages(since=since) for key in page]
        return Changes(keys, self.data_age)

    def _page(
        self,
        environment_id: str | None,
        since: datetime | None,
        active_only: bool,
        page_size: int,
        after: tuple[datetime, str] | None,
    ) -> list[SigningKey]:
        self._check("pages")
        keys = [
            key
            for key in self._rows.values()
            if (environment_id is None or key.environment_id == environment_id)
            and (since is None or key.updated_at >= since)
            and (not active_only or key.is_active)
            and (after is None or (key.updated_at, key.id) > after)
        ]
        keys.sort(key=lambda key: (key.updated_at, key.id))
        return keys[:page_size]

    def _write(self, rows: list[SigningKey], events: list[AuditEvent]) -> None:
        if self._hold_next:
            self._hold_next = False
            held = self._held[-1]
            held.rows.extend(rows)
            held.events.extend(events)
            return
        for row in rows:
            self._rows[row.id] = row
        for event in events:
            self._record(event)

    def _record(self, event: AuditEvent) -> None:
        self._audit.setdefault(event.id, event)  # ON CONFLICT (id) DO NOTHING


def _position(event: AuditEvent) -> tuple[datetime, str]:
    assert event.created_at is not None  # stamped when recorded
    return (event.created_at, event.id)


class MemoryTokenRecords(_Outage):
    """:class:`~service.core.ports.TokenRecords` in a dict, stamped by the store's clock."""

    def __init__(self, *, clock: Callable[[], datetime] | None = None) -> None:
        self._clock = clock or ManualClock()
        self._tokens: dict[str, AccessToken] = {}
        self.calls = collections.Counter()
        self.data_age = 0.0  # how old the data a read sees is (a lagging region: more)

    def __repr__(self) -> str:
        return f"<MemoryTokenRecords tokens={len(self._tokens)}>"

    def revoke(self, token_id: str, *, stamp: bool = True) -> None:
        """Mark a token revoked (an operator's act; the service itself has no such write).
        ``stamp=False``: an operator who forgot to set ``updated_at`` as well."""
        token = self._tokens[token_id]
        now = self._clock()
        self._tokens[token_id] = replace(
            token, revoked_at=now, updated_at=now if stamp else token.updated_at
        )

    def delete(self, token_id: str) -> None:
        """Remove a token's row altogether (an operator's act, which no poll of changes sees)."""
        del self._tokens[token_id]

    async def insert(self, token: AccessToken, *, timeout: float | None = None) -> None:
        self._check("insert")
        if token.id not in self._tokens:
            self._tokens[token.id] = replace(token, updated_at=self._clock())

    async def get(self, token_id: str, *, timeout: float | None = None) -> AccessToken | None:
        self._check("get")
        return self._tokens.get(token_id)

    async def pages(
        self,
        *,
        since: datetime | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        timeout: float | None = None,
        max_data_age: float | None = None,
    ) -> AsyncIterator[list[AccessToken]]:
        cursor: tuple[datetime, str] | None = None
        while True:
            self._check("pages")
            if max_data_age is not None and self.data_age > max_data_age:
                raise RegionUnavailableError(f"no region has data younger than {max_data_age} s")
            tokens = sorted(
                (
                    token
                    for token in self._tokens.values()
                    if token.updated_at is not None
                    and (since is None or token.updated_at >= since)
                    and (cursor is None or (token.updated_at, token.id) > cursor)
                ),
                key=lambda token: (token.updated_at, token.id),
            )
            page = tokens[:page_size]
            if page:
                yield page
            if len(page) < page_size:
                return
            last = page[-1]
            assert last.updated_at is not None
            cursor = (last.updated_at, last.id)
