"""Attacks on today's surfaces (batchGet, audit events, cursors, rotate, update, current), over
the in-memory store: each test names the README promise it checks.

Promise 1: no tenant sees another's keys; another environment's key answers as a missing one.
Promise 2: bad input gets a clear 4xx and changes nothing.
"""

from __future__ import annotations

import base64
import json

import pytest

from service.core import times
from service.core.keys import KeyService
from service.core.models import Principal, Scope
from service.core.requests import (
    BatchGetKeysRequest,
    CreateKeyRequest,
    KeyRef,
    ListAuditEventsRequest,
    ListKeysRequest,
    RotateKeyRequest,
    UpdateKeyRequest,
)
from service.errors import (
    ConflictError,
    IdempotencyKeyMismatchError,
    InvalidRequestError,
    NotFoundError,
    ServiceError,
)
from tests.support.memory import ManualClock, MemoryKeyRecords

A, B = "env-a", "env-b"


def principal(*environments: str) -> Principal:
    return Principal(
        token_id="skt_attacker",
        scopes=frozenset(Scope),
        environments=frozenset(environments or (A,)),
        api="http",
        request_id="req-1",
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def records(clock: ManualClock) -> MemoryKeyRecords:
    return MemoryKeyRecords(clock=clock)


@pytest.fixture
def service(records: MemoryKeyRecords) -> KeyService:
    return KeyService(records)


async def create(service: KeyService, env: str, **fields: object) -> str:
    created = await service.create(
        principal(env), CreateKeyRequest.parse(environment_id=env, algorithm="EdDSA", **fields)
    )
    return created.key.id


def answer(exc: ServiceError) -> tuple[type[ServiceError], str]:
    return type(exc), str(exc)


# Promise 2 (BROKE): the audit trail records `rotate` and `update` events (README, "Safe
# rotation": "Both changes are audited (`rotate` on the old key ...)"; PATCH "audited as
# `update`"), but the `action` filter refused both names with 400, so they could not be
# asked for. Fixed: the filter accepts every action the trail records.
@pytest.mark.parametrize("action", ["rotate", "update"])
async def test_audit_events_can_be_filtered_by_every_recorded_action(
    service: KeyService, clock: ManualClock, action: str
) -> None:
    old = await create(service, A)
    await service.rotate(principal(A), RotateKeyRequest.parse(key_id=old, environment_id=A))
    await service.update(
        principal(A),
        UpdateKeyRequest.parse(key_id=old, environment_id=A, name_given=True, name="renamed"),
    )
    page = await service.audit_events(
        principal(A), ListAuditEventsRequest.parse(environment_id=A, action=action)
    )
    assert [(event.action, event.key_id) for event in page.events] == [(action, old)]


# Promise 2 (BROKE): create, import and rotate refuse `expires_at` at or before `not_before`
# ("`not_before` must be before `expires_at`"), but PATCH brought a not-yet-valid key's
# expiry to before its not_before: accepted (200), stored, a key that can never verify.
# Fixed: PATCH refuses it (400) and changes nothing.
async def test_patch_cannot_bring_expiry_before_not_before(
    service: KeyService, records: MemoryKeyRecords, clock: ManualClock
) -> None:
    now = int(clock.seconds())
    key_id = await create(service, A, not_before=str(now + 3600), expires_at=str(now + 7200))
    for expiry in (now + 1800, now + 3600):
        with pytest.raises(InvalidRequestError, match="not_before"):
            await service.update(
                principal(A),
                UpdateKeyRequest.parse(key_id=key_id, environment_id=A, expires_at=str(expiry)),
            )
    stored = await records.get(key_id, environment_id=A)
    assert stored is not None and times.unix_seconds(stored.expires_at) == str(now + 7200)
    assert [event.action for event in records.audit_trail(key_id)] == ["create"]


# Promise 1 (holds): rotate, update and batchGet of another environment's key answer exactly
# as for a key that does not exist, and change nothing there.
async def test_other_environments_key_is_answered_as_missing(
    service: KeyService, records: MemoryKeyRecords
) -> None:
    theirs = await create(service, B)
    await create(service, A)
    answers = []
    for key_id in (theirs, "no-such-key"):
        seen = []
        for call in (
            service.rotate(principal(A), RotateKeyRequest.parse(key_id=key_id, environment_id=A)),
            service.update(
                principal(A),
                UpdateKeyRequest.parse(key_id=key_id, environment_id=A, name_given=True, name="x"),
            ),
            service.update(
                principal(A),
                UpdateKeyRequest.parse(
                    key_id=key_id, environment_id=A, expires_at=str(4_000_000_000)
                ),
            ),
        ):
            with pytest.raises(NotFoundError) as raised:
                await call
            seen.append(answer(raised.value))
        answers.append(seen)
    assert answers[0] == answers[1]
    batch = await service.batch_get(
        principal(A), BatchGetKeysRequest.parse(key_ids=[theirs, "no-such-key"], environment_id=A)
    )
    assert (batch.keys, batch.not_found) == ([], [theirs, "no-such-key"])
    stored = await records.get(theirs, environment_id=B)
    assert stored is not None and stored.rotated_to is None and stored.name is None
    assert [event.action for event in records.audit_trail(theirs)] == ["create"]


# Promise 2 (holds): a cursor is bound to its environment and filters, and a forged one is
# refused with 400 rather than moving a walk into another environment.
async def test_cursors_do_not_cross_environments_or_filters(service: KeyService) -> None:
    both = principal(A, B)
    for _ in range(3):
        await create(service, A)
        await create(service, B)
    page = await service.list_page(both, ListKeysRequest.parse(environment_id=A, limit=1))
    assert page.next_cursor is not None
    for request in (
        ListKeysRequest.parse(environment_id=B, limit=1, cursor=page.next_cursor),
        ListKeysRequest.parse(environment_id=A, limit=1, cursor=page.next_cursor, status="all"),
        ListKeysRequest.parse(
            environment_id=A, limit=1, cursor=page.next_cursor, algorithm="ES256"
        ),
    ):
        with pytest.raises(InvalidRequestError, match="another environment or other filters"):
            await service.list_page(both, request)
    body = json.loads(base64.urlsafe_b64decode(page.next_cursor + "=="))
    for forged in (
        {**body, "t": 10**30},
        {**body, "t": -(10**30)},
        {**body, "t": True},
        {**body, "i": "../x"},
        {**body, "v": 2},
        [body],
    ):
        token = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
        with pytest.raises(InvalidRequestError, match="malformed"):
            await service.list_page(
                both, ListKeysRequest.parse(environment_id=A, limit=1, cursor=token)
            )
    audit = await service.audit_events(
        both, ListAuditEventsRequest.parse(environment_id=A, limit=1)
    )
    assert audit.next_cursor is not None
    with pytest.raises(InvalidRequestError, match="another environment or other filters"):
        await service.list_page(
            both, ListKeysRequest.parse(environment_id=A, limit=1, cursor=audit.next_cursor)
        )


# Promise 2 (holds): rotating a revoked, expired or already-rotated key is refused and stores
# nothing; an idempotency key a create took is refused for a rotation.
async def test_refused_rotations_change_nothing(
    service: KeyService, records: MemoryKeyRecords, clock: ManualClock
) -> None:
    revoked = await create(service, A)
    await service.revoke(principal(A), _ref(revoked))
    expiring = await create(service, A, expires_at=str(int(clock.seconds()) + 10))
    rotated = await create(service, A)
    await service.rotate(principal(A), RotateKeyRequest.parse(key_id=rotated, environment_id=A))
    clock.advance(20)
    before = len(records)
    for key_id in (revoked, expiring, rotated):
        with pytest.raises(ConflictError):
            await service.rotate(
                principal(A), RotateKeyRequest.parse(key_id=key_id, environment_id=A)
            )
    await service.create(
        principal(A),
        CreateKeyRequest.parse(environment_id=A, algorithm="EdDSA", idempotency_key="idem-1"),
    )
    fresh = await create(service, A)
    with pytest.raises(IdempotencyKeyMismatchError):
        await service.rotate(
            principal(A),
            RotateKeyRequest.parse(key_id=fresh, environment_id=A, idempotency_key="idem-1"),
        )
    assert len(records) == before + 2
    stored = await records.get(fresh, environment_id=A)
    assert stored is not None and stored.rotated_to is None
    with pytest.raises(InvalidRequestError, match="grace_period_seconds"):
        RotateKeyRequest.parse(key_id=fresh, grace_period_seconds=59)


def _ref(key_id: str) -> KeyRef:
    return KeyRef.parse(key_id=key_id, environment_id=A)
