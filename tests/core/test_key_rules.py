"""The key service's rules, over the in-memory ports (no database): scopes, environment
isolation, idempotency, audit and revocation."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from service.core import crypto
from service.core.keys import KeyService
from service.core.models import Principal, Scope, SigningKey
from service.core.requests import (
    CreateKeyRequest,
    ImportKeyRequest,
    KeyRef,
    KeySpec,
    ListKeysRequest,
)
from service.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
)
from tests.support.memory import ManualClock, MemoryKeyRecords

A, B = "env-a", "env-b"


def principal(*scopes: Scope, environments: tuple[str, ...] = (A,)) -> Principal:
    return Principal(
        token_id="skt_tester",
        scopes=frozenset(scopes or Scope),
        environments=frozenset(environments),
        api="grpc",
        request_id="req-1",
    )


ADMIN = principal(environments=(A, B))


@pytest.fixture
def changed() -> list[SigningKey]:
    return []


@pytest.fixture
def service(records: MemoryKeyRecords, changed: list[SigningKey]) -> KeyService:
    return KeyService(records, on_change=changed.append)


def public_pem(algorithm: crypto.Algorithm = "EdDSA") -> str:
    der = crypto.generate_key_pair(algorithm).public_der
    return crypto.public_key_pem(der)


def create(
    env: str, spec: KeySpec | None = None, *, idempotency_key: str | None = None
) -> CreateKeyRequest:
    return CreateKeyRequest(
        environment_id=env, spec=spec or KeySpec(algorithm="EdDSA"), idempotency_key=idempotency_key
    )


def import_(env: str, pem: str, **options: Any) -> ImportKeyRequest:
    return ImportKeyRequest(environment_id=env, public_key=pem, **options)


def ref(env: str, key_id: str) -> KeyRef:
    return KeyRef(environment_id=env, key_id=key_id)


def page(env: str, *, limit: int = 25, number: int = 1) -> ListKeysRequest:
    return ListKeysRequest(environment_id=env, limit=limit, page=number)


# Creating and importing.


async def test_create_stores_the_public_half_and_returns_the_private_half_once(
    service: KeyService, records: MemoryKeyRecords, changed: list[SigningKey]
) -> None:
    created = await service.create(ADMIN, create(A, KeySpec(algorithm="ES256", name="playback")))
    key = created.key
    private = serialization.load_pem_private_key(created.private_key_pem, password=None)
    assert crypto.public_key_der(private.public_key()) == key.public_key  # type: ignore[arg-type]
    assert (key.environment_id, key.algorithm, key.status, key.source) == (
        A,
        "ES256",
        "active",
        "generated",
    )
    assert key.fingerprint == crypto.fingerprint(key.public_key)
    assert await records.get(key.id, environment_id=A) == key
    assert changed == [key], "the local cache hears of the key at once"
    [audit] = records.audit_trail(key.id)
    assert (audit.action, audit.actor, audit.api, audit.request_id) == (
        "create",
        "skt_tester",
        "grpc",
        "req-1",
    )


async def test_import_stores_a_customer_key_with_the_algorithm_it_implies(
    service: KeyService, records: MemoryKeyRecords
) -> None:
    key = await service.import_key(ADMIN, import_(A, public_pem("ES256"), name="theirs"))
    assert (key.algorithm, key.source, key.name) == ("ES256", "imported", "theirs")
    assert [event.action for event in records.audit_trail(key.id)] == ["import"]
    with pytest.raises(InvalidRequestError, match="does not match"):
        await service.import_key(ADMIN, import_(A, public_pem("ES256"), algorithm="EdDSA"))
    assert len(records) == 1


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "x" * 201},
        {"name": "line\nbreak"},
        {"expires_at": datetime(2031, 1, 1)},  # naive: no time zone
    ],
)
def test_a_key_spec_checks_itself(spec: dict[str, object]) -> None:
    with pytest.raises(InvalidRequestError):
        KeySpec(**spec)  # type: ignore[arg-type]


# Scopes and environments.


@pytest.mark.parametrize(
    ("scopes", "allowed"),
    [
        ((Scope.READ,), {"get", "list"}),
        ((Scope.WRITE,), {"create", "import", "revoke"}),
        ((Scope.VERIFY,), set()),
    ],
)
async def test_each_operation_needs_its_scope(
    service: KeyService, scopes: tuple[Scope, ...], allowed: set[str]
) -> None:
    existing = (await service.create(ADMIN, create(A))).key
    caller = principal(*scopes)
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "create": lambda: service.create(caller, create(A)),
        "import": lambda: service.import_key(caller, import_(A, public_pem())),
        "get": lambda: service.get(caller, ref(A, existing.id)),
        "list": lambda: service.list(caller, page(A)),
        "revoke": lambda: service.revoke(caller, ref(A, existing.id)),
    }
    outcomes = {}
    for name, call in calls.items():
        try:
            await call()
        except PermissionDeniedError:
            outcomes[name] = False
        else:
            outcomes[name] = True
    assert {name for name, ok in outcomes.items() if ok} == allowed


async def test_a_caller_cannot_act_on_an_environment_outside_its_token(
    service: KeyService, records: MemoryKeyRecords
) -> None:
    only_a = principal()
    with pytest.raises(PermissionDeniedError, match="environment"):
        await service.create(only_a, create(B))
    with pytest.raises(PermissionDeniedError, match="environment"):
        await service.list(only_a, page(B))
    assert len(records) == 0


async def test_no_operation_reveals_a_key_of_another_environment(
    service: KeyService, records: MemoryKeyRecords
) -> None:
    """Even a caller entitled to both environments must name the key's own: get and revoke
    in the wrong one answer exactly as for a key that does not exist."""
    key = (await service.create(ADMIN, create(A))).key
    await service.create(ADMIN, create(B))
    with pytest.raises(NotFoundError) as wrong_env:
        await service.get(ADMIN, ref(B, key.id))
    with pytest.raises(NotFoundError) as missing:
        await service.get(ADMIN, ref(B, "no-such-key"))
    assert str(wrong_env.value) == str(missing.value)
    with pytest.raises(NotFoundError):
        await service.revoke(ADMIN, ref(B, key.id))
    assert (await service.get(ADMIN, ref(A, key.id))).is_active, "the wrong revoke changed nothing"
    assert key.id not in [k.id for k in await service.list(ADMIN, page(B))]
    assert [event.action for event in records.audit_trail(key.id)] == ["create"]


@pytest.mark.parametrize("bad", ["", "a b", "x" * 129, "../etc", None, 7])
def test_an_id_that_cannot_be_ours_never_becomes_a_key_ref(bad: object) -> None:
    with pytest.raises(InvalidRequestError, match="signing key id"):
        KeyRef.parse(key_id=bad)


# Listing.


async def test_list_pages_are_one_based_newest_first_and_empty_past_the_end(
    service: KeyService,
) -> None:
    keys = [(await service.import_key(ADMIN, import_(A, public_pem()))).id for _ in range(5)]
    newest = list(reversed(keys))
    assert [k.id for k in await service.list(ADMIN, page(A, limit=2, number=1))] == newest[:2]
    assert [k.id for k in await service.list(ADMIN, page(A, limit=2, number=3))] == newest[4:]
    assert await service.list(ADMIN, page(A, limit=2, number=4)) == []


@pytest.mark.parametrize(("limit", "page"), [(0, 1), (101, 1), (10, 0), (10, 10_001)])
def test_list_bounds_are_checked(limit: int, page: int) -> None:
    with pytest.raises(InvalidRequestError, match="between"):
        ListKeysRequest.parse(limit=limit, page=page)


# Revocation.


async def test_revoking_twice_is_harmless_and_audited_once(
    service: KeyService,
    records: MemoryKeyRecords,
    clock: ManualClock,
    changed: list[SigningKey],
) -> None:
    key = (await service.create(ADMIN, create(A))).key
    revoked = await service.revoke(ADMIN, ref(A, key.id))
    clock.advance(60)
    again = await service.revoke(ADMIN, ref(A, key.id))
    assert revoked.status == again.status == "revoked"
    assert again.revoked_at == revoked.revoked_at, "the first revocation's time stands"
    assert [event.action for event in records.audit_trail(key.id)] == ["create", "revoke"]
    assert changed[1] == revoked
    with pytest.raises(NotFoundError):
        await service.revoke(ADMIN, ref(A, "no-such-key"))


# Idempotency.


async def test_a_repeated_create_names_the_first_key_and_stores_nothing(
    service: KeyService, records: MemoryKeyRecords
) -> None:
    spec = KeySpec(algorithm="EdDSA", name="retry")
    first = await service.create(ADMIN, create(A, spec, idempotency_key="req-42"))
    with pytest.raises(ConflictError) as replay:
        await service.create(ADMIN, create(A, spec, idempotency_key="req-42"))
    assert first.key.id in str(replay.value)
    assert "private key was returned once" in str(replay.value)
    assert len(records) == 1


async def test_an_idempotency_key_reused_for_another_request_is_a_conflict(
    service: KeyService, records: MemoryKeyRecords
) -> None:
    first = await service.create(ADMIN, create(A, idempotency_key="k"))
    for other in [KeySpec(algorithm="ES256"), KeySpec(algorithm="EdDSA", name="renamed")]:
        with pytest.raises(ConflictError, match="another request") as conflict:
            await service.create(ADMIN, create(A, other, idempotency_key="k"))
        assert first.key.id not in str(conflict.value)
    assert len(records) == 1


async def test_an_idempotency_key_belongs_to_one_environment(
    service: KeyService, records: MemoryKeyRecords
) -> None:
    spec = KeySpec(algorithm="EdDSA")
    in_a = await service.create(ADMIN, create(A, spec, idempotency_key="shared"))
    in_b = await service.create(ADMIN, create(B, spec, idempotency_key="shared"))
    assert in_a.key.id != in_b.key.id and len(records) == 2


@pytest.mark.parametrize("bad", ["", "has space", "x" * 256, "naïve", "tab\t", 42])
def test_a_malformed_idempotency_key_never_becomes_a_request(bad: object) -> None:
    with pytest.raises(InvalidRequestError, match="Idempotency-Key"):
        CreateKeyRequest.parse(idempotency_key=bad)
    with pytest.raises(InvalidRequestError, match="Idempotency-Key"):
        ImportKeyRequest.parse(public_key=public_pem(), idempotency_key=bad)


async def test_an_import_is_idempotent_on_the_key_material(
    service: KeyService, records: MemoryKeyRecords
) -> None:
    pem = public_pem()
    first = await service.import_key(ADMIN, import_(A, pem, idempotency_key="imp"))
    with pytest.raises(ConflictError) as replay:
        await service.import_key(ADMIN, import_(A, pem, idempotency_key="imp"))
    assert first.id in str(replay.value)
    with pytest.raises(ConflictError, match="another request"):
        await service.import_key(ADMIN, import_(A, public_pem(), idempotency_key="imp"))
    with pytest.raises(ConflictError, match="another request"):
        await service.create(ADMIN, create(A, idempotency_key="imp"))
    assert len(records) == 1


async def test_an_expiry_is_part_of_the_request_an_idempotency_key_stands_for(
    service: KeyService, clock: ManualClock
) -> None:
    later = clock() + timedelta(days=30)
    await service.create(
        ADMIN, create(A, KeySpec(algorithm="EdDSA", expires_at=later), idempotency_key="e")
    )
    later_still = KeySpec(algorithm="EdDSA", expires_at=later + timedelta(seconds=1))
    with pytest.raises(ConflictError, match="another request"):
        await service.create(ADMIN, create(A, later_still, idempotency_key="e"))
