"""The key service's rules, over the in-memory ports (no database): scopes, environment
isolation, idempotency, audit and revocation."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from service.core import crypto
from service.core.keys import KeyService
from service.core.models import Principal, Scope, SigningKey
from service.core.requests import (
    CreateKeyRequest,
    ImportKeyRequest,
    KeyRef,
    KeySpec,
    KeyStatusFilter,
    ListKeysRequest,
)
from service.errors import (
    ConflictError,
    IdempotencyKeyMismatchError,
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
    key = (await service.import_key(ADMIN, import_(A, public_pem("ES256"), name="theirs"))).key
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
    keys = [(await service.import_key(ADMIN, import_(A, public_pem()))).key.id for _ in range(5)]
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


async def test_reads_find_a_revoked_key_only_when_they_ask_for_it(
    service: KeyService, records: MemoryKeyRecords
) -> None:
    """As the reference platform answers after a delete: 404 and not listed. The record
    stays (audit, the revoked_key verdict) and is read with status revoked or all."""
    kept = (await service.create(ADMIN, create(A))).key
    gone = (await service.create(ADMIN, create(A))).key
    await service.revoke(ADMIN, ref(A, gone.id))

    async def listed(status: KeyStatusFilter) -> list[str]:
        request = ListKeysRequest(environment_id=A, status=status)
        return [key.id for key in await service.list(ADMIN, request)]

    assert ListKeysRequest.parse().status == KeyRef.parse(key_id="k").status == "active"
    assert await listed("active") == [kept.id]
    assert await listed("revoked") == [gone.id]
    assert await listed("all") == [gone.id, kept.id]
    with pytest.raises(NotFoundError, match="status=all"):
        await service.get(ADMIN, ref(A, gone.id))
    for status in ("revoked", "all"):
        found = await service.get(ADMIN, KeyRef(environment_id=A, key_id=gone.id, status=status))
        assert found.status == "revoked"
    with pytest.raises(NotFoundError, match="no revoked signing key"):
        await service.get(ADMIN, KeyRef(environment_id=A, key_id=kept.id, status="revoked"))
    assert records.audit_trail(gone.id)[-1].action == "revoke", "the record stays"


@pytest.mark.parametrize("status", ["", "deleted", "Active", 1, ["all"]])
def test_a_status_is_one_of_three_words(status: object) -> None:
    with pytest.raises(InvalidRequestError, match="status must be one of active, revoked, all"):
        ListKeysRequest.parse(status=status)
    with pytest.raises(InvalidRequestError, match="status must be one of active, revoked, all"):
        KeyRef.parse(key_id="k", status=status)


# Idempotency.


async def test_a_repeated_create_names_the_first_key_and_stores_nothing(
    service: KeyService, records: MemoryKeyRecords
) -> None:
    spec = KeySpec(algorithm="EdDSA", name="retry")
    first = await service.create(ADMIN, create(A, spec, idempotency_key="req-42"))
    with pytest.raises(ConflictError) as replay:
        await service.create(ADMIN, create(A, spec, idempotency_key="req-42"))
    assert replay.value.type == "conflict"
    assert replay.value.metadata == {"key_id": first.key.id, "environment_id": A}, (
        "the key is named in a field, not only in the words"
    )
    assert first.key.id in str(replay.value)
    assert "private key was returned once" in str(replay.value)
    assert len(records) == 1


async def test_an_idempotency_key_reused_for_another_request_is_a_conflict(
    service: KeyService, records: MemoryKeyRecords
) -> None:
    first = await service.create(ADMIN, create(A, idempotency_key="k"))
    for other in [KeySpec(algorithm="ES256"), KeySpec(algorithm="EdDSA", name="renamed")]:
        with pytest.raises(IdempotencyKeyMismatchError, match="different request") as mismatch:
            await service.create(ADMIN, create(A, other, idempotency_key="k"))
        assert mismatch.value.type == "idempotency_key_mismatch"
        assert mismatch.value.field == "idempotency_key"
        assert mismatch.value.metadata["key_id"] == first.key.id
        assert first.key.id not in str(mismatch.value)
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
    assert not first.replayed
    replay = await service.import_key(ADMIN, import_(A, pem, idempotency_key="imp"))
    assert replay.replayed and replay.key == first.key, "the stored key, as a success"
    with pytest.raises(IdempotencyKeyMismatchError, match="different request"):
        await service.import_key(ADMIN, import_(A, public_pem(), idempotency_key="imp"))
    with pytest.raises(IdempotencyKeyMismatchError, match="different request"):
        await service.create(ADMIN, create(A, idempotency_key="imp"))
    assert len(records) == 1
    assert [event.action for event in records.audit_trail(first.key.id)] == ["import"]


async def test_an_expiry_is_part_of_the_request_an_idempotency_key_stands_for(
    service: KeyService, clock: ManualClock
) -> None:
    later = clock() + timedelta(days=30)
    await service.create(
        ADMIN, create(A, KeySpec(algorithm="EdDSA", expires_at=later), idempotency_key="e")
    )
    later_still = KeySpec(algorithm="EdDSA", expires_at=later + timedelta(seconds=1))
    with pytest.raises(IdempotencyKeyMismatchError, match="different request"):
        await service.create(ADMIN, create(A, later_still, idempotency_key="e"))


# Private key material, wherever it hides.


def _private_pem(algorithm: crypto.Algorithm = "EdDSA") -> str:
    return crypto.generate_key_pair(algorithm).private_pem.decode()


def _body(pem: str) -> str:
    """The base64 body of a PEM block, without its markers."""
    return "".join(line for line in pem.splitlines() if not line.startswith("-----"))


def _rsa_private_jwk_without_d() -> dict[str, str]:
    """An RSA private key as a JWK with its CRT members (p, q, dp, dq, qi) but no ``d``: the
    private key all the same, since p and q give d."""
    numbers = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_numbers()
    public = numbers.public_numbers

    def b64(value: int) -> str:
        return crypto.b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))

    members = {"n": public.n, "e": public.e, "p": numbers.p, "q": numbers.q}
    members |= {"dp": numbers.dmp1, "dq": numbers.dmq1, "qi": numbers.iqmp}
    return {"kty": "RSA", **{name: b64(value) for name, value in members.items()}}


PRIVATE_PEM = _private_pem()
PUBLIC_PEM = public_pem()
HIDING_PLACES: dict[str, dict[str, object]] = {
    "name: a private key on one line": {"name": " ".join(PRIVATE_PEM.split())},
    "name: an RSA private key marker": {"name": "copy of -----BEGIN RSA PRIVATE KEY-----"},
    "algorithm: a private key": {"algorithm": " ".join(PRIVATE_PEM.split())},
    "expires_at: a private key": {"expires_at": PRIVATE_PEM},
    "public_key: a private PEM": {"public_key": PRIVATE_PEM},
    "public_key: a public PEM, then a private one": {"public_key": PUBLIC_PEM + PRIVATE_PEM},
    "public_key: a private PEM, then a public one": {"public_key": PRIVATE_PEM + PUBLIC_PEM},
    "public_key: a private key's body after a public PEM": {
        "public_key": PUBLIC_PEM + _body(PRIVATE_PEM) + "\n"
    },
    "public_key: a private key's body before a public PEM": {
        "public_key": _body(PRIVATE_PEM) + "\n" + PUBLIC_PEM
    },
    "public_key: an RSA JWK with p, q, dp, dq, qi and no d": {
        "public_key": _rsa_private_jwk_without_d()
    },
    "public_key: an EC JWK with d": {
        "public_key": {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "d": "AA"}
    },
    "public_key: a symmetric JWK": {"public_key": {"kty": "oct", "k": "c2VjcmV0"}},
    "public_key: a JWK with other primes": {"public_key": {"kty": "RSA", "oth": []}},
    "public_key: a JWK carrying a private PEM in a member": {
        "public_key": {"kty": "OKP", "crv": "Ed25519", "x": "A" * 43, "x5c": [PRIVATE_PEM]}
    },
}


@pytest.mark.parametrize("fields", HIDING_PLACES.values(), ids=HIDING_PLACES.keys())
async def test_private_key_material_is_refused_wherever_it_hides_and_never_echoed(
    service: KeyService, records: MemoryKeyRecords, fields: dict[str, object]
) -> None:
    fragments = {_body(PRIVATE_PEM)[i : i + 16] for i in range(0, 48, 16)}
    attempts: list[Callable[[], Awaitable[object]]] = [
        lambda: service.import_key(
            ADMIN, ImportKeyRequest.parse(environment_id=A, **{"public_key": PUBLIC_PEM, **fields})
        )
    ]
    if "public_key" not in fields:
        attempts.append(
            lambda: service.create(ADMIN, CreateKeyRequest.parse(environment_id=A, **fields))
        )
    for attempt in attempts:
        # A bare body cannot be told from any other text: it is refused for being there.
        with pytest.raises(InvalidRequestError, match=r"private|exactly one PEM block") as refused:
            await attempt()
        message = str(refused.value)
        assert not any(fragment in message for fragment in fragments), message
        assert "BEGIN PRIVATE" not in message
    assert len(records) == 0


def test_a_key_spec_built_in_code_refuses_a_private_key_in_its_name() -> None:
    with pytest.raises(InvalidRequestError, match="name carries a private key"):
        KeySpec(algorithm="EdDSA", name="-----BEGIN PRIVATE KEY----- MC4CAQAw")


@pytest.mark.parametrize(
    "pem",
    [
        PUBLIC_PEM,
        "\n  " + PUBLIC_PEM.replace("\n", "\r\n") + "\r\n\n",
        PUBLIC_PEM.rstrip("\n"),
    ],
    ids=["plain", "crlf-and-blank-lines-around", "no-final-newline"],
)
async def test_one_public_pem_block_with_whitespace_around_it_is_still_a_key(
    service: KeyService, pem: str
) -> None:
    imported = await service.import_key(
        ADMIN, ImportKeyRequest.parse(environment_id=A, public_key=pem)
    )
    assert crypto.public_key_pem(imported.key.public_key) == PUBLIC_PEM


@pytest.mark.parametrize(
    "pem",
    [
        PUBLIC_PEM + PUBLIC_PEM,
        "my key:\n" + PUBLIC_PEM,
        PUBLIC_PEM + "thanks",
        PUBLIC_PEM.replace(
            "-----BEGIN PUBLIC KEY-----", "-----BEGIN PUBLIC KEY-----\nProc-Type: 4"
        ),
    ],
    ids=["two-blocks", "text-before", "text-after", "pem-headers"],
)
def test_anything_beside_one_public_pem_block_is_refused(pem: str) -> None:
    with pytest.raises(InvalidRequestError, match="exactly one PEM block"):
        crypto.parse_customer_public_key(pem)


# Expiry: never stored already passed, shown as passed.


@pytest.mark.parametrize("expires_at", [0, "1", 1_000_000_000, "-5"])
def test_an_expiry_in_the_past_is_refused_naming_the_field(expires_at: object) -> None:
    for parse in (
        lambda: CreateKeyRequest.parse(expires_at=expires_at),
        lambda: ImportKeyRequest.parse(public_key=public_pem(), expires_at=expires_at),
    ):
        with pytest.raises(InvalidRequestError, match="expires_at") as refused:
            parse()
        assert refused.value.field == "expires_at"


def test_a_future_expiry_is_taken() -> None:
    later = int(datetime.now().timestamp()) + 3600
    spec = CreateKeyRequest.parse(expires_at=later).spec
    assert spec.expires_at is not None and int(spec.expires_at.timestamp()) == later


async def test_an_active_key_past_its_expiry_is_shown_expired(
    service: KeyService, clock: ManualClock
) -> None:
    soon = clock() + timedelta(seconds=10)
    key = (await service.create(ADMIN, create(A, KeySpec(expires_at=soon)))).key
    assert key.status_at(soon.timestamp() - 1) == "active"
    assert key.status_at(soon.timestamp()) == "expired"
    revoked = await service.revoke(ADMIN, ref(A, key.id))
    assert revoked.status_at(soon.timestamp() + 1) == "revoked", "revocation says more"
    forever = (await service.create(ADMIN, create(A))).key
    assert forever.status_at(1e12) == "active"


@pytest.mark.parametrize(
    ("parse", "field"),
    [
        (lambda: CreateKeyRequest.parse(algorithm="HS256"), "algorithm"),
        (lambda: CreateKeyRequest.parse(name="n" * 201), "name"),
        (lambda: CreateKeyRequest.parse(idempotency_key="has space"), "idempotency_key"),
        (lambda: CreateKeyRequest.parse(environment_id="a/b"), "environment_id"),
        (lambda: ImportKeyRequest.parse(public_key=""), "public_key"),
        (lambda: KeyRef.parse(key_id="a/b"), "id"),
        (lambda: ListKeysRequest.parse(limit="0"), "limit"),
        (lambda: ListKeysRequest.parse(status="gone"), "status"),
    ],
)
def test_a_refused_request_names_the_field_at_fault(
    parse: Callable[[], object], field: str
) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        parse()
    assert refused.value.field == field
