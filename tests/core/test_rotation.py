"""Safe rotation over the in-memory ports: a key's not_before (published early, refused
before it), RotateSigningKey, update (rename, shorten) and the current key, with tokens
signed by PyJWT and checked by the verifier as a customer's would be."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from service.core.changes import ChangeFeed
from service.core.keycache import KeyCache
from service.core.models import CreatedKey, Scope
from service.core.requests import (
    DEFAULT_GRACE_SECONDS,
    CreateKeyRequest,
    CurrentKeyRequest,
    KeyRef,
    KeySpec,
    RotateKeyRequest,
    UpdateKeyRequest,
)
from service.errors import (
    ConflictError,
    IdempotencyKeyMismatchError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
)
from tests.core.test_verdicts import CALLER, OURS, SKEW, World, build, principal

A = "env-a"


@pytest.fixture
async def world() -> World:
    world = build()
    await world.feed.poll_once()
    return world


def at(world: World, seconds: float) -> datetime:
    return datetime.fromtimestamp(int(world.now() + seconds), UTC)


async def create_later(world: World, seconds: float) -> CreatedKey:
    spec = KeySpec(algorithm="EdDSA", not_before=at(world, seconds))
    return await world.keys.create(CALLER, CreateKeyRequest(environment_id=A, spec=spec))


async def jwks_ids(world: World) -> set[str]:
    document = await world.verifier.jwks(CALLER, OURS)
    return {key["kid"] for key in json.loads(document.body)["keys"]}


async def advance(world: World, seconds: float) -> None:
    """Let time pass, and the change feed poll (or the verifier would call its keys stale)."""
    world.clock.advance(seconds)
    await world.feed.poll_once()


def rotation(key_id: str, **options: object) -> RotateKeyRequest:
    return RotateKeyRequest.parse(key_id=key_id, environment_id=A, **options)


# not_before


async def test_a_key_is_published_before_its_not_before_but_signs_nothing_until_then(
    world: World,
) -> None:
    later = await create_later(world, 600)
    assert later.key.not_before == at(world, 600)
    assert later.key.id in await jwks_ids(world), "verifiers fetch it ahead of time"
    early = await world.verify(world.sign(later))
    assert (early.valid, early.reason, early.key_id) == (False, "key_not_yet_valid", later.key.id)
    await advance(world, 601)
    assert (await world.verify(world.sign(later))).valid


async def test_no_leeway_before_not_before_but_iat_gets_the_skew(world: World) -> None:
    later = await create_later(world, 10)
    # Within the clock-skew leeway of not_before, still refused: no signer may use it yet.
    await advance(world, 10 - SKEW / 2)
    assert (await world.verify(world.sign(later))).reason == "key_not_yet_valid"
    await advance(world, SKEW)
    start = world.now() - SKEW / 2
    # A token that says it was signed before not_before (beyond the skew) is refused.
    backdated = world.sign(later, {"iat": start - 10 - SKEW - 1})
    assert (await world.verify(backdated)).reason == "key_not_yet_valid"
    assert (await world.verify(world.sign(later, {"iat": world.now()}))).valid


async def test_not_before_must_come_before_expires_at() -> None:
    with pytest.raises(InvalidRequestError, match="later than not_before"):
        CreateKeyRequest.parse(not_before="2000000000", expires_at="2000000000")
    assert CreateKeyRequest.parse(not_before="1900000000").spec.not_before is not None


# rotation


async def test_a_rotation_creates_the_next_key_and_expires_the_old_after_the_grace(
    world: World,
) -> None:
    old = await world.key("ES256")
    rotated = await world.keys.rotate(CALLER, rotation(old.key.id, grace_period_seconds=3600))
    new = rotated.created
    assert new.key.algorithm == "ES256", "the old key's algorithm by default"
    assert rotated.old.rotated_to == new.key.id
    assert (await world.verify(world.sign(new))).valid
    assert (await world.verify(world.sign(old))).valid, "within the grace"
    await advance(world, 3601)
    assert (await world.verify(world.sign(old))).reason == "revoked_key"
    assert old.key.id not in await jwks_ids(world)
    assert (await world.verify(world.sign(new))).valid
    trail = [event.action for event in world.records.audit_trail(old.key.id)]
    assert trail == ["create", "rotate"]


async def test_the_default_grace_is_a_day_and_grace_is_bounded(world: World) -> None:
    old = await world.key()
    rotated = await world.keys.rotate(CALLER, rotation(old.key.id))
    assert rotated.old.expires_at is not None
    grace = rotated.old.expires_at - rotated.old.updated_at
    assert abs(grace - timedelta(seconds=DEFAULT_GRACE_SECONDS)) < timedelta(seconds=1)
    for bad in (0, 59, 30 * 24 * 3600 + 1, "1h", True):
        with pytest.raises(InvalidRequestError):
            rotation(old.key.id, grace_period_seconds=bad)


async def test_a_rotation_with_a_not_before_hands_over_then(world: World) -> None:
    old = await world.key()
    current = CurrentKeyRequest(environment_id=A)
    rotated = await world.keys.rotate(
        CALLER,
        rotation(
            old.key.id,
            algorithm="RS256",
            not_before=int(world.now() + 600),
            grace_period_seconds=60,
        ),
    )
    new = rotated.created
    assert new.key.algorithm == "RS256"
    assert new.key.id in await jwks_ids(world), "published at once"
    assert (await world.keys.current(CALLER, current)).id == old.key.id
    assert (await world.verify(world.sign(new))).reason == "key_not_yet_valid"
    await advance(world, 601)
    assert (await world.keys.current(CALLER, current)).id == new.key.id
    assert (await world.verify(world.sign(new))).valid
    assert (await world.verify(world.sign(old))).valid, "the grace runs from the hand-over"
    await advance(world, 61)
    assert (await world.verify(world.sign(old))).reason == "revoked_key"


async def test_a_key_rotates_once_and_a_revoked_key_not_at_all(world: World) -> None:
    old = await world.key()
    rotated = await world.keys.rotate(CALLER, rotation(old.key.id))
    with pytest.raises(ConflictError, match=rotated.created.key.id):
        await world.keys.rotate(CALLER, rotation(old.key.id))
    revoked = await world.key()
    await world.keys.revoke(CALLER, KeyRef(environment_id=A, key_id=revoked.key.id))
    with pytest.raises(ConflictError, match="revoked"):
        await world.keys.rotate(CALLER, rotation(revoked.key.id))
    with pytest.raises(NotFoundError):
        await world.keys.rotate(CALLER, rotation("no-such-key"))


async def test_a_replayed_rotation_names_its_new_key(world: World) -> None:
    old = await world.key()
    first = await world.keys.rotate(CALLER, rotation(old.key.id, idempotency_key="rot-1"))
    with pytest.raises(ConflictError, match=first.created.key.id):
        await world.keys.rotate(CALLER, rotation(old.key.id, idempotency_key="rot-1"))
    with pytest.raises(IdempotencyKeyMismatchError, match="a different request"):
        await world.keys.rotate(
            CALLER, rotation(old.key.id, idempotency_key="rot-1", grace_period_seconds=120)
        )


async def test_rotation_needs_write_on_the_keys_environment(world: World) -> None:
    old = await world.key()
    reader = principal(Scope.READ, Scope.VERIFY)
    with pytest.raises(PermissionDeniedError):
        await world.keys.rotate(reader, rotation(old.key.id))
    outsider = principal(environments=("env-b",))
    with pytest.raises(PermissionDeniedError):
        await world.keys.rotate(outsider, rotation(old.key.id))
    with pytest.raises(NotFoundError):
        await world.keys.rotate(
            outsider, RotateKeyRequest.parse(key_id=old.key.id, environment_id="env-b")
        )


# update


async def test_a_shortened_expiry_reaches_another_instance_through_the_change_feed(
    world: World,
) -> None:
    created = await world.key()
    # A second instance: its own cache, fed only by polling the same records.
    cache = KeyCache(size=10, negative_size=10, negative_ttl=1.0, clock=world.clock.seconds)
    feed = ChangeFeed(world.records, cache, poll_interval=0.1, overlap=1.0)
    await feed.poll_once()
    cached = cache.get(created.key.id)
    assert cached is not None and cached.record.expires_at is None
    soon = at(world, 120)
    updated = await world.keys.update(
        CALLER,
        UpdateKeyRequest.parse(
            key_id=created.key.id,
            environment_id=A,
            name_given=True,
            name="k",
            expires_at=int(soon.timestamp()),
        ),
    )
    assert (updated.name, updated.expires_at, updated.status) == ("k", soon, "active")
    await feed.poll_once()
    cached = cache.get(created.key.id)
    assert cached is not None and cached.record.expires_at == soon
    await advance(world, 121)
    assert (await world.verify(world.sign(created))).reason == "revoked_key"
    assert [event.action for event in world.records.audit_trail(created.key.id)] == [
        "create",
        "update",
    ]


async def test_an_update_never_lengthens_an_expiry(world: World) -> None:
    spec = KeySpec(algorithm="EdDSA", expires_at=at(world, 3600))
    created = await world.keys.create(CALLER, CreateKeyRequest(environment_id=A, spec=spec))

    def later(seconds: int) -> UpdateKeyRequest:
        return UpdateKeyRequest.parse(
            key_id=created.key.id, environment_id=A, expires_at=int(world.now() + seconds)
        )

    with pytest.raises(InvalidRequestError, match="brought forward"):
        await world.keys.update(CALLER, later(7200))
    with pytest.raises(InvalidRequestError, match="revoke"):
        await world.keys.update(CALLER, later(-10))
    assert (await world.keys.update(CALLER, later(60))).expires_at == at(world, 60)


async def test_an_empty_update_changes_nothing(world: World) -> None:
    created = await world.key()
    same = await world.keys.update(
        CALLER, UpdateKeyRequest.parse(key_id=created.key.id, environment_id=A)
    )
    assert same == created.key
    assert [event.action for event in world.records.audit_trail(created.key.id)] == ["create"]
    with pytest.raises(NotFoundError):
        await world.keys.update(CALLER, UpdateKeyRequest.parse(key_id="nope", environment_id=A))
    assert UpdateKeyRequest.parse(key_id="k", name_given=True).name is None


async def test_an_environment_without_keys_has_no_current_key(world: World) -> None:
    with pytest.raises(NotFoundError):
        await world.keys.current(CALLER, CurrentKeyRequest(environment_id=A))
