"""Rotation, update and the current key: the ports' contract, on the in-memory implementation
and on PostgreSQL (the shared local topology, through the router's write path). The
rotation is one transaction; these try to break it: two rotations of one key at once, a
rotation replayed with the same idempotency key (before and after the old key expired), a
rotation repeated by the router after an ambiguous commit, and rotations of keys that must
not rotate."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime, timedelta

from service.core.models import AuditEvent, SigningKey
from service.core.ports import IdempotencyClaim, RotateOutcome, UpdateOutcome
from tests.store import test_records_contract as contract
from tests.store.test_records_contract import Backend, event, insert, new_key

# The contract's fixtures: each check runs on memory and on PostgreSQL, in a fresh environment.
postgres = contract.postgres
backend = contract.backend
env = contract.env

FAR = datetime(2100, 1, 1, tzinfo=UTC)
PAST = datetime(2020, 1, 1, tzinfo=UTC)
GRACE = 3600


def audits(old: SigningKey, new: SigningKey) -> tuple[AuditEvent, AuditEvent]:
    return event(old, "rotate"), event(new, "create")


async def rotate(
    backend: Backend,
    old: SigningKey,
    new: SigningKey | None = None,
    *,
    claim: IdempotencyClaim | None = None,
    grace: int = GRACE,
) -> RotateOutcome:
    new = new or new_key(old.environment_id)
    return await backend.keys.rotate(
        old.environment_id,
        old.id,
        new,
        grace_seconds=grace,
        audits=audits(old, new),
        idempotency=claim,
    )


async def test_a_rotation_stores_the_new_key_and_schedules_the_old_ones_expiry(
    backend: Backend, env: str
) -> None:
    old = await insert(backend, new_key(env))
    new = new_key(env, name="next")
    outcome = await rotate(backend, old, new)
    assert outcome.refusal is None and outcome.new is not None and outcome.old is not None
    assert outcome.new.id == new.id and outcome.new.status == "active"
    assert outcome.old.rotated_to == new.id and outcome.old.status == "active"
    assert outcome.old.expires_at is not None
    # The grace counts from the transaction's now (the new key takes over at once).
    grace = outcome.old.expires_at - outcome.old.updated_at
    assert timedelta(seconds=GRACE - 1) <= grace <= timedelta(seconds=GRACE + 1)
    assert outcome.old.updated_at > old.updated_at, "the change feed must see the old key"
    assert await backend.keys.get(new.id) == outcome.new
    assert await backend.keys.get(old.id) == outcome.old
    assert await backend.audit_actions(old.id) == ["create", "rotate"]
    assert await backend.audit_actions(new.id) == ["create"]


async def test_a_rotation_never_lengthens_the_old_keys_expiry(backend: Backend, env: str) -> None:
    soon = datetime.now(UTC) + timedelta(days=3650)
    late = await insert(backend, new_key(env, expires_at=FAR))
    early = await insert(backend, new_key(env, expires_at=soon))
    lengthened = await rotate(backend, late, grace=60)
    kept = await rotate(backend, early, grace=30 * 24 * 3600)
    assert lengthened.old is not None and lengthened.old.expires_at is not None
    assert lengthened.old.expires_at < FAR, "brought forward"
    assert kept.old is not None and kept.old.expires_at is not None
    # A grace that ends after the old expiry leaves the expiry (the memory clock is 2030).
    assert kept.old.expires_at <= max(soon, early.expires_at or soon)


async def test_the_grace_runs_from_a_future_not_before(backend: Backend, env: str) -> None:
    old = await insert(backend, new_key(env))
    start = datetime(2090, 1, 1, tzinfo=UTC)
    outcome = await rotate(backend, old, new_key(env, not_before=start))
    assert outcome.new is not None and outcome.new.not_before == start
    assert outcome.old is not None and outcome.old.expires_at == start + timedelta(seconds=GRACE)


async def test_a_not_before_after_the_old_expiry_is_refused_and_stores_nothing(
    backend: Backend, env: str
) -> None:
    old = await insert(backend, new_key(env, expires_at=datetime(2080, 1, 1, tzinfo=UTC)))
    new = new_key(env, not_before=datetime(2090, 1, 1, tzinfo=UTC))
    outcome = await rotate(backend, old, new)
    assert outcome.refusal == "gap"
    assert await backend.keys.get(new.id) is None
    assert await backend.keys.get(old.id) == old


async def test_revoked_expired_missing_and_foreign_keys_do_not_rotate(
    backend: Backend, env: str
) -> None:
    revoked = await insert(backend, new_key(env))
    await backend.keys.revoke(env, revoked.id, audit=event(revoked, "revoke"))
    expired = await insert(backend, new_key(env, expires_at=PAST))
    for old, refusal in ((revoked, "revoked"), (expired, "expired")):
        new = new_key(env)
        outcome = await rotate(backend, old, new)
        assert outcome.refusal == refusal and outcome.new is None
        assert await backend.keys.get(new.id) is None, "nothing stored"
    foreign = await insert(backend, new_key(env + "-other"))
    outcome = await backend.keys.rotate(
        env, foreign.id, new_key(env), grace_seconds=GRACE, audits=audits(foreign, foreign)
    )
    assert outcome.refusal == "not_found"
    assert (await rotate(backend, new_key(env))).refusal == "not_found"
    assert await backend.audit_actions(revoked.id) == ["create", "revoke"]


async def test_a_key_is_rotated_once(backend: Backend, env: str) -> None:
    old = await insert(backend, new_key(env))
    first = await rotate(backend, old)
    assert first.new is not None
    second = await rotate(backend, old)
    assert (second.refusal, second.rotated_to) == ("rotated", first.new.id)


async def test_two_rotations_of_one_key_at_once_store_one_new_key(
    backend: Backend, env: str
) -> None:
    old = await insert(backend, new_key(env))
    candidates = [new_key(env) for _ in range(4)]
    outcomes = await asyncio.gather(*(rotate(backend, old, new) for new in candidates))
    winners = [outcome for outcome in outcomes if outcome.refusal is None]
    assert len(winners) == 1, outcomes
    assert winners[0].new is not None
    winner = winners[0].new.id
    assert all(
        (outcome.refusal, outcome.rotated_to) == ("rotated", winner)
        for outcome in outcomes
        if outcome is not winners[0]
    )
    stored = [await backend.keys.get(new.id) for new in candidates]
    assert [key.id for key in stored if key is not None] == [winner]
    current = await backend.keys.get(old.id)
    assert current is not None and current.rotated_to == winner
    assert await backend.audit_actions(old.id) == ["create", "rotate"]


async def test_a_rotation_replayed_with_its_idempotency_key_names_the_first_new_key(
    backend: Backend, env: str
) -> None:
    old = await insert(backend, new_key(env))
    claim = IdempotencyClaim("rotate-" + secrets.token_hex(4), b"\x01" * 32)
    first = await rotate(backend, old, claim=claim)
    assert first.new is not None
    replay = await rotate(backend, old, claim=claim)
    assert (replay.replayed_key_id, replay.request_matches) == (first.new.id, True)
    other = await rotate(backend, old, claim=IdempotencyClaim(claim.key, b"\x02" * 32))
    assert (other.replayed_key_id, other.request_matches) == (first.new.id, False)
    # The claim is read before the old key's state: a replay after the key was revoked is
    # still answered as a replay, not as a refusal.
    await backend.keys.revoke(env, old.id, audit=event(old, "revoke"))
    late = await rotate(backend, old, claim=claim)
    assert late.replayed_key_id == first.new.id
    # And a create with the same idempotency key is a replay of the rotation's new key.
    created = new_key(env)
    clash = await backend.keys.insert(created, audit=event(created), idempotency=claim)
    assert clash.replayed_key_id == first.new.id and clash.key is None


async def test_two_rotations_with_one_idempotency_key_at_once_store_one_key(
    backend: Backend, env: str
) -> None:
    old = await insert(backend, new_key(env))
    claim = IdempotencyClaim("rotate-" + secrets.token_hex(4), b"\x03" * 32)
    candidates = [new_key(env) for _ in range(3)]
    outcomes = await asyncio.gather(*(rotate(backend, old, new, claim=claim) for new in candidates))
    winners = [outcome.new.id for outcome in outcomes if outcome.new is not None]
    assert len(winners) == 1
    assert all(outcome.replayed_key_id == winners[0] for outcome in outcomes if outcome.new is None)


async def test_repeating_a_rotation_lands_it_once(backend: Backend, env: str) -> None:
    """What the router does after an ambiguous commit: the same ids, the same claim."""
    old = await insert(backend, new_key(env))
    new = new_key(env)
    claim = IdempotencyClaim("rotate-" + secrets.token_hex(4), b"\x04" * 32)
    events = audits(old, new)
    first = await backend.keys.rotate(
        env, old.id, new, grace_seconds=GRACE, audits=events, idempotency=claim
    )
    again = await backend.keys.rotate(
        env, old.id, new, grace_seconds=GRACE, audits=events, idempotency=claim
    )
    assert again.refusal is None and again.new == first.new
    assert again.old is not None and first.old is not None
    assert again.old.expires_at == first.old.expires_at, "the expiry is not pushed out"
    assert await backend.audit_actions(old.id) == ["create", "rotate"]
    assert await backend.audit_actions(new.id) == ["create"]


async def test_an_update_renames_and_only_shortens(backend: Backend, env: str) -> None:
    stored = await insert(backend, new_key(env, name="old", expires_at=FAR))

    async def update(
        *, name: str | None = None, rename: bool = False, expires_at: datetime | None = None
    ) -> UpdateOutcome:
        return await backend.keys.update(
            env,
            stored.id,
            name_given=rename,
            name=name,
            expires_at=expires_at,
            audit=event(stored, "update"),
        )

    renamed = (await update(rename=True, name="new")).key
    assert renamed is not None and (renamed.name, renamed.expires_at) == ("new", FAR)
    assert renamed.updated_at > stored.updated_at, "the change feed polls updated_at"
    sooner = FAR - timedelta(days=1)
    shortened = (await update(expires_at=sooner)).key
    assert shortened is not None and (shortened.name, shortened.expires_at) == ("new", sooner)
    assert shortened.updated_at > renamed.updated_at
    assert (await update(expires_at=FAR)).refusal == "lengthens"
    assert (await update(expires_at=PAST)).refusal == "past"
    cleared = (await update(rename=True)).key
    assert cleared is not None and (cleared.name, cleared.expires_at) == (None, sooner)
    elsewhere = await backend.keys.update(
        env + "-x", stored.id, name_given=True, name="x", expires_at=None, audit=event(stored)
    )
    assert elsewhere.refusal == "not_found"
    assert await backend.audit_actions(stored.id) == ["create", "update", "update", "update"]


async def test_an_update_never_unrevokes(backend: Backend, env: str) -> None:
    stored = await insert(backend, new_key(env))
    await backend.keys.revoke(env, stored.id, audit=event(stored, "revoke"))
    outcome = await backend.keys.update(
        env, stored.id, name_given=True, name="n", expires_at=None, audit=event(stored, "update")
    )
    assert outcome.key is not None and outcome.key.status == "revoked"


async def test_the_current_key_is_the_newest_that_may_sign(backend: Backend, env: str) -> None:
    assert await backend.keys.current(env) is None
    first = await insert(backend, new_key(env))
    assert (await backend.keys.current(env)) == first
    await insert(backend, new_key(env, not_before=FAR))
    assert await backend.keys.current(env) == first, "not before its not_before"
    await insert(backend, new_key(env, expires_at=PAST))
    assert await backend.keys.current(env) == first, "not once expired"
    second = await insert(backend, new_key(env, not_before=PAST))
    assert await backend.keys.current(env) == second
    await backend.keys.revoke(env, second.id, audit=event(second, "revoke"))
    assert await backend.keys.current(env) == first, "not once revoked"
    await insert(backend, new_key(env + "-other"))
    assert await backend.keys.current(env) == first, "only the environment's own"


async def test_a_rotation_racing_a_revocation_leaves_a_consistent_pair(
    backend: Backend, env: str
) -> None:
    """Whichever commits first, the old key ends revoked, and a new key exists exactly when
    the rotation reports one (never a rotation half applied, nor an un-revoked key)."""
    for _ in range(5):
        old = await insert(backend, new_key(env))
        new = new_key(env)
        rotated, revoked = await asyncio.gather(
            rotate(backend, old, new), backend.keys.revoke(env, old.id, audit=event(old, "revoke"))
        )
        assert revoked is not None
        final = await backend.keys.get(old.id)
        assert final is not None and final.status == "revoked"
        stored = await backend.keys.get(new.id)
        if rotated.refusal is None:
            assert stored is not None and final.rotated_to == new.id
            assert await backend.audit_actions(old.id) == ["create", "rotate", "revoke"]
        else:
            assert rotated.refusal == "revoked" and stored is None and final.rotated_to is None
            assert await backend.audit_actions(old.id) == ["create", "revoke"]


async def test_an_update_never_ends_a_key_before_it_starts(backend: Backend, env: str) -> None:
    """An expiry at or before the key's not_before would store a key that can never verify:
    refused under the row lock (where not_before is read), nothing changed, no audit row."""
    start = FAR - timedelta(days=30)
    stored = await insert(backend, new_key(env, not_before=start, expires_at=FAR))
    for expires_at in (start, start - timedelta(days=1)):
        outcome = await backend.keys.update(
            env,
            stored.id,
            name_given=False,
            name=None,
            expires_at=expires_at,
            audit=event(stored, "update"),
        )
        assert outcome.refusal == "before_start", expires_at
    unchanged = await backend.keys.get(stored.id, environment_id=env)
    assert unchanged is not None and unchanged.expires_at == FAR
    assert await backend.audit_actions(stored.id) == ["create"]
    later = await backend.keys.update(
        env,
        stored.id,
        name_given=False,
        name=None,
        expires_at=start + timedelta(days=1),
        audit=event(stored, "update"),
    )
    assert later.refusal is None and later.key is not None
