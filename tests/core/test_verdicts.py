"""Every verdict of the token verifier, over the in-memory ports (no database): each of the
ten reasons, the leeway at their edges, environment isolation, what a verdict reveals,
cache misses, JWKS, and the last-known-good / fail-closed rules.

Tokens are signed by PyJWT with keys the key service generated, as customers sign them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicNumbers
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_private_key

from service.core import consistency, crypto
from service.core.changes import ChangeFeed
from service.core.consistency import CommitPosition, encode_token
from service.core.keycache import KeyCache
from service.core.keys import KeyService
from service.core.metrics import CoreMetrics
from service.core.models import AuditEvent, CreatedKey, Principal, Scope
from service.core.requests import CreateKeyRequest, JwksRequest, KeyRef, KeySpec, VerifyRequest
from service.core.verify import REASONS, Reason, TokenVerifier, Verification
from service.errors import (
    KeyUnavailableError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RegionUnavailableError,
    TooManyRequestsError,
)
from tests.support.memory import ManualClock, MemoryKeyRecords

A, B = "env-a", "env-b"
SKEW = 30.0
MAX_STALENESS = 300.0


def principal(*scopes: Scope, environments: tuple[str, ...] = (A,)) -> Principal:
    return Principal(
        token_id="skt_verifier",
        scopes=frozenset(scopes or Scope),
        environments=frozenset(environments),
    )


CALLER = principal()
OURS, THEIRS = JwksRequest(environment_id=A), JwksRequest(environment_id=B)


@dataclass
class World:
    """One instance's core, wired to in-memory ports, with one manual clock for everything."""

    clock: ManualClock
    records: MemoryKeyRecords
    cache: KeyCache
    feed: ChangeFeed
    keys: KeyService
    verifier: TokenVerifier
    metrics: CoreMetrics

    def lookups(self) -> float:
        """Database look-ups of kids the cache did not hold."""
        return self.metrics.value("signing_keys_key_lookups_total")

    def now(self) -> int:
        return int(self.clock.seconds())

    async def key(self, algorithm: crypto.Algorithm = "EdDSA", env: str = A) -> CreatedKey:
        request = CreateKeyRequest(environment_id=env, spec=KeySpec(algorithm=algorithm))
        return await self.keys.create(principal(environments=(env,)), request)

    def sign(
        self,
        created: CreatedKey,
        claims: dict[str, Any] | None = None,
        *,
        kid_in: str = "header",
        private_pem: bytes | None = None,
        algorithm: str | None = None,
    ) -> str:
        payload: dict[str, Any] = {"exp": self.now() + 60, **(claims or {})}
        headers: dict[str, Any] = {}
        if kid_in == "header":
            headers["kid"] = created.key.id
        else:
            payload["kid"] = created.key.id
        return jwt.encode(
            payload,
            private_pem or created.private_key_pem,
            algorithm=algorithm or created.key.algorithm,
            headers=headers,
        )

    async def verify(self, token: str, **expected: Any) -> Verification:
        return await self.verifier.verify(CALLER, VerifyRequest(token=token, **expected))


def build(*, cache_size: int = 100, tick: float = 0.001) -> World:
    clock = ManualClock(tick=tick)
    records = MemoryKeyRecords(clock=clock)
    cache = KeyCache(size=cache_size, negative_size=100, negative_ttl=1.0, clock=clock.seconds)
    feed = ChangeFeed(records, cache, poll_interval=0.1, overlap=1.0, clock=clock.seconds)
    metrics = CoreMetrics()
    verifier = TokenVerifier(
        records,
        cache,
        feed,
        max_token_bytes=8192,
        clock_skew=SKEW,
        max_staleness=MAX_STALENESS,
        miss_budget=2,
        metrics=metrics,
        clock=clock.seconds,
        monotonic=clock.seconds,
    )
    keys = KeyService(records, on_change=cache.put)
    return World(clock, records, cache, feed, keys, verifier, metrics)


@pytest.fixture
async def world() -> World:
    world = build()
    await world.feed.poll_once()  # started: every key (none yet) is known
    return world


def segment(value: dict[str, Any]) -> str:
    return crypto.b64url(json.dumps(value).encode())


def handmade(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"sig") -> str:
    return f"{segment(header)}.{segment(payload)}.{crypto.b64url(signature)}"


# One case per reason: (token, expectations) for a world holding the key ``created``.
Case = Callable[[World, CreatedKey], Awaitable[tuple[str, dict[str, Any]]]]


async def _malformed(world: World, created: CreatedKey) -> tuple[str, dict[str, Any]]:
    return world.sign(created, {"exp": None}), {}  # exp is required


async def _unknown_key(world: World, created: CreatedKey) -> tuple[str, dict[str, Any]]:
    other = await world.key(env=B)  # exists, but not in the caller's environment
    return world.sign(other), {}


async def _revoked_key(world: World, created: CreatedKey) -> tuple[str, dict[str, Any]]:
    await world.keys.revoke(CALLER, KeyRef(environment_id=A, key_id=created.key.id))
    return world.sign(created), {}


async def _expired(world: World, created: CreatedKey) -> tuple[str, dict[str, Any]]:
    return world.sign(created, {"exp": world.now() - SKEW - 1}), {}


async def _not_yet_valid(world: World, created: CreatedKey) -> tuple[str, dict[str, Any]]:
    return world.sign(created, {"nbf": world.now() + SKEW + 5}), {}


async def _bad_signature(world: World, created: CreatedKey) -> tuple[str, dict[str, Any]]:
    impostor = crypto.generate_key_pair(created.key.algorithm).private_pem
    return world.sign(created, private_pem=impostor), {}


async def _wrong_audience(world: World, created: CreatedKey) -> tuple[str, dict[str, Any]]:
    return world.sign(created, {"aud": "t"}), {"audience": "v"}


async def _wrong_subject(world: World, created: CreatedKey) -> tuple[str, dict[str, Any]]:
    return world.sign(created, {"sub": "playback-1"}), {"subject": "playback-2"}


async def _algorithm_mismatch(world: World, created: CreatedKey) -> tuple[str, dict[str, Any]]:
    es256 = crypto.generate_key_pair("ES256").private_pem
    return world.sign(created, private_pem=es256, algorithm="ES256"), {}


async def store_by_hand(world: World, der: bytes, *, algorithm: crypto.Algorithm) -> str:
    """Store a key through the port, past every rule of the key service (as a key stored
    before a rule existed), and let the change feed bring it into the cache."""
    record = replace(
        (await world.key()).key, id="by-hand", algorithm=algorithm, public_key=der,
        fingerprint=crypto.fingerprint(der),
    )  # fmt: skip
    event = AuditEvent(
        id="e-by-hand", environment_id=A, key_id=record.id, action="import", actor="a",
        api="cli", request_id=None,
    )  # fmt: skip
    await world.records.insert(record, audit=event)
    await world.feed.poll_once()
    return record.id


def costly_rsa_key() -> tuple[bytes, bytes]:
    """A real RSA key's private PEM, and its public half stored with a 2^2040 exponent: an
    RSA key the import rules now refuse, which made each verification ten times dearer."""
    pair = crypto.generate_key_pair("RS256")
    n = load_der_public_key(pair.public_der).public_numbers().n  # type: ignore[union-attr]
    costly = RSAPublicNumbers((1 << 2040) + 1, n).public_key()
    return pair.private_pem, crypto.public_key_der(costly)


async def _unsupported_key(world: World, created: CreatedKey) -> tuple[str, dict[str, Any]]:
    private_pem, der = costly_rsa_key()
    key_id = await store_by_hand(world, der, algorithm="RS256")
    stored = CreatedKey(key=replace(created.key, id=key_id), private_key_pem=private_pem)
    return world.sign(stored, algorithm="RS256"), {}


async def _key_not_yet_valid(world: World, created: CreatedKey) -> tuple[str, dict[str, Any]]:
    start = datetime.fromtimestamp(world.now() + 3600, UTC)
    spec = KeySpec(algorithm="EdDSA", not_before=start)
    later = await world.keys.create(CALLER, CreateKeyRequest(environment_id=A, spec=spec))
    return world.sign(later), {}


CASES: dict[Reason, Case] = {
    "malformed": _malformed,
    "unknown_key": _unknown_key,
    "revoked_key": _revoked_key,
    "expired": _expired,
    "not_yet_valid": _not_yet_valid,
    "bad_signature": _bad_signature,
    "wrong_audience": _wrong_audience,
    "wrong_subject": _wrong_subject,
    "algorithm_mismatch": _algorithm_mismatch,
    "unsupported_key": _unsupported_key,
    "key_not_yet_valid": _key_not_yet_valid,
}


def test_every_reason_the_verifier_can_give_has_a_case() -> None:
    assert set(CASES) == set(REASONS) and len(REASONS) == 11


@pytest.mark.parametrize("reason", REASONS)
async def test_each_reason_is_reported(world: World, reason: Reason) -> None:
    created = await world.key()
    token, expected = await CASES[reason](world, created)
    verdict = await world.verify(token, **expected)
    assert (verdict.valid, verdict.reason, verdict.claims) == (False, reason, None)


@pytest.mark.parametrize("algorithm", crypto.ALGORITHMS)
async def test_a_good_token_is_valid_for_every_algorithm(
    world: World, algorithm: crypto.Algorithm
) -> None:
    created = await world.key(algorithm)
    token = world.sign(created, {"aud": ["v", "t"], "sub": "playback-1"})
    verdict = await world.verify(token, audience="t", subject="playback-1")
    assert verdict.valid and verdict.reason is None
    assert (verdict.key_id, verdict.environment_id) == (created.key.id, A)
    assert verdict.claims is not None and verdict.claims["sub"] == "playback-1"


async def test_the_kid_may_travel_in_the_payload(world: World) -> None:
    """The reference platform's current SDK puts ``kid`` among the claims."""
    created = await world.key("RS256")
    assert (await world.verify(world.sign(created, kid_in="payload"))).valid


async def test_ed25519_is_accepted_as_a_name_for_eddsa(world: World) -> None:
    created = await world.key("EdDSA")
    header = {"alg": "Ed25519", "kid": created.key.id}
    payload = {"exp": world.now() + 60}
    signing_input = f"{segment(header)}.{segment(payload)}".encode()
    key = load_pem_private_key(created.private_key_pem, password=None)
    assert isinstance(key, Ed25519PrivateKey)
    signature = key.sign(signing_input)
    token = f"{signing_input.decode()}.{crypto.b64url(signature)}"
    assert (await world.verify(token)).valid


# The edges of the time checks.


@pytest.fixture
async def still_world() -> World:
    """A world whose clock stands still on a whole second, for the exact edges."""
    world = build(tick=0)
    await world.feed.poll_once()
    return world


async def test_expiry_allows_the_clock_skew_and_not_a_second_more(still_world: World) -> None:
    world = still_world
    created = await world.key()
    now = world.now()
    assert now == world.clock.seconds()
    assert (await world.verify(world.sign(created, {"exp": now - SKEW + 1}))).valid
    at_edge = await world.verify(world.sign(created, {"exp": now - SKEW}))
    assert at_edge.reason == "expired"


async def test_not_before_allows_the_clock_skew_and_not_a_second_more(
    still_world: World,
) -> None:
    world = still_world
    created = await world.key()
    now = world.now()
    assert now == world.clock.seconds()
    assert (await world.verify(world.sign(created, {"nbf": now + SKEW}))).valid
    early = await world.verify(world.sign(created, {"nbf": now + SKEW + 1}))
    assert early.reason == "not_yet_valid"


async def test_a_key_past_its_expiry_verifies_nothing(world: World) -> None:
    expires = world.clock() + timedelta(seconds=10)
    spec = KeySpec(algorithm="EdDSA", expires_at=expires)
    created = await world.keys.create(CALLER, CreateKeyRequest(environment_id=A, spec=spec))
    token = world.sign(created, {"exp": world.now() + 3600})
    assert (await world.verify(token)).valid
    world.clock.advance(11)
    assert (await world.verify(token)).reason == "revoked_key"


@pytest.mark.parametrize(
    ("algorithm", "der"),
    [
        ("RS256", costly_rsa_key()[1]),
        ("RS256", crypto.generate_key_pair("EdDSA").public_der),  # not the row's algorithm
        ("EdDSA", b"not a key"),
    ],
    ids=["huge-exponent", "algorithm-of-another-key", "not-a-key"],
)
async def test_a_stored_key_outside_the_rules_is_never_used_nor_published(
    world: World, algorithm: crypto.Algorithm, der: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The verdict is ``unsupported_key`` (the key exists and the caller may see it, so
    ``unknown_key`` would mislead) and comes before any signature check."""
    key_id = await store_by_hand(world, der, algorithm=algorithm)

    def no_signature_check(*args: object) -> bool:
        raise AssertionError("a key outside the rules reached the signature check")

    monkeypatch.setattr("service.core.verify._signature_ok", no_signature_check)
    token = handmade({"alg": algorithm, "kid": key_id}, {"exp": world.now() + 60}, b"x" * 256)
    verdict = await world.verify(token)
    assert (verdict.valid, verdict.reason, verdict.key_id) == (False, "unsupported_key", key_id)
    document = json.loads((await world.verifier.jwks(CALLER, OURS)).body)
    assert key_id not in {jwk["kid"] for jwk in document["keys"]}


@pytest.mark.parametrize(
    ("expires_at", "reason"), [(datetime.min, "revoked_key"), (datetime.max, None)]
)
async def test_a_stored_expiry_beyond_any_renderable_year_still_gets_a_verdict(
    world: World, expires_at: datetime, reason: Reason | None
) -> None:
    """A row written before expiries were range-checked (year 1, which the database keeps as
    ``-infinity`` and asyncpg returns as the naive ``datetime.min``; or ``+infinity``): the
    verdict and the JWK Set come out as for any past or far-future expiry."""
    pair = crypto.generate_key_pair("EdDSA")
    key = replace((await world.key()).key, id="stored-by-hand", public_key=pair.public_der)
    event = AuditEvent(
        id="e1", environment_id=A, key_id=key.id, action="import", actor="a", api="cli",
        request_id=None,
    )  # fmt: skip
    await world.records.insert(replace(key, expires_at=expires_at), audit=event)
    await world.feed.poll_once()
    created = CreatedKey(key=key, private_key_pem=pair.private_pem)
    verdict = await world.verify(world.sign(created))
    assert (verdict.reason, verdict.key_id) == (reason, key.id)
    document = json.loads((await world.verifier.jwks(CALLER, OURS)).body)
    assert (key.id in {jwk["kid"] for jwk in document["keys"]}) is (reason is None)


# Malformed tokens and algorithm confusion.


@pytest.mark.parametrize(
    "build_token",
    [
        lambda kid, now: "not-a-token",
        lambda kid, now: "a.b",
        lambda kid, now: "%%%.e30.sig",
        lambda kid, now: handmade({"alg": "EdDSA"}, {"exp": now + 60}),  # no kid
        lambda kid, now: handmade({"alg": "EdDSA", "kid": ""}, {"exp": now + 60}),
        lambda kid, now: handmade({"alg": "EdDSA", "kid": 7}, {"exp": now + 60}),
        lambda kid, now: f"{crypto.b64url(b'[1]')}.{segment({'exp': now})}.c2ln",
        lambda kid, now: handmade({"alg": "EdDSA", "kid": kid, "crit": ["b64"]}, {"exp": 1}),
        lambda kid, now: handmade({"kid": kid}, {"exp": now + 60}),  # no alg
    ],
    ids=[
        "one-segment",
        "two-segments",
        "not-base64url",
        "no-kid",
        "empty-kid",
        "kid-not-a-string",
        "header-not-an-object",
        "critical-extension",
        "no-alg",
    ],
)
async def test_malformed_tokens_say_so(
    world: World, build_token: Callable[[str, int], str]
) -> None:
    created = await world.key()
    verdict = await world.verify(build_token(created.key.id, world.now()))
    assert verdict.reason == "malformed"


def respell(segment: str) -> str:
    """The same bytes with the last character's unused low bits set: a non-canonical
    spelling that a lax decoder reads as the same value."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    unused = {2: 0b1111, 3: 0b11}[len(segment) % 4]
    return segment[:-1] + alphabet[alphabet.index(segment[-1]) | unused]


@pytest.mark.parametrize("algorithm", crypto.ALGORITHMS)
@pytest.mark.parametrize(
    "tamper",
    [
        lambda h, p, s: (h, p, respell(s)),
        lambda h, p, s: (respell(h) if len(h) % 4 else h + "=", p, s),
        lambda h, p, s: (h, respell(p) if len(p) % 4 else p + "=", s),
        lambda h, p, s: (h, p, s + "=" * (-len(s) % 4)),
        lambda h, p, s: (h, p, s.replace("-", "+").replace("_", "/") + "+"),
        lambda h, p, s: (" " + h, p, s),
        lambda h, p, s: (h, p, s + "\n"),
    ],
    ids=[
        "signature-bits",
        "header-bits",
        "payload-bits",
        "padding",
        "standard-alphabet",
        "leading-space",
        "trailing-newline",
    ],
)
async def test_a_token_has_one_spelling_and_any_other_is_malformed(
    world: World,
    algorithm: crypto.Algorithm,
    tamper: Callable[[str, str, str], tuple[str, str, str]],
) -> None:
    created = await world.key(algorithm)
    token = world.sign(created)
    assert (await world.verify(token)).valid
    header, payload, signature = token.split(".")
    tampered = ".".join(tamper(header, payload, signature))
    assert tampered != token
    assert (await world.verify(tampered)).reason == "malformed"


@pytest.mark.parametrize(
    "claims",
    [{"exp": None}, {"exp": "tomorrow"}, {"exp": True}, {"exp": 10**400}, {"nbf": "now"}],
)
async def test_signed_claims_of_the_wrong_type_are_malformed(
    world: World, claims: dict[str, Any]
) -> None:
    created = await world.key()
    verdict = await world.verify(world.sign(created, claims))
    assert (verdict.reason, verdict.key_id) == ("malformed", created.key.id)


async def test_a_kid_that_cannot_be_ours_is_unknown_without_a_lookup(world: World) -> None:
    token = handmade({"alg": "EdDSA", "kid": "../../etc/passwd"}, {"exp": world.now() + 60})
    assert (await world.verify(token)).reason == "unknown_key"
    assert world.records.calls["get"] == 0


@pytest.mark.parametrize("alg", ["none", "HS256", "RS256", "ES256", "PS256"])
async def test_no_algorithm_but_the_keys_own_is_tried(world: World, alg: str) -> None:
    """``none`` and HMAC over the public key are refused before any signature check."""
    created = await world.key("EdDSA")
    header = {"alg": alg, "kid": created.key.id}
    payload = {"exp": world.now() + 60}
    signing_input = f"{segment(header)}.{segment(payload)}"
    public_pem = crypto.public_key_pem(created.key.public_key).encode()
    forged = {
        "none": b"",
        "HS256": hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest(),
    }.get(alg, b"x" * 64)
    token = f"{signing_input}.{crypto.b64url(forged) if forged else ''}"
    assert (await world.verify(token)).reason == "algorithm_mismatch"


async def test_a_tampered_payload_fails_the_signature(world: World) -> None:
    created = await world.key("ES256")
    header, _, signature = world.sign(created, {"sub": "a"}).split(".")
    forged = segment({"exp": world.now() + 60, "sub": "admin"})
    assert (await world.verify(f"{header}.{forged}.{signature}")).reason == "bad_signature"


# Environments, and what a verdict reveals.


async def test_a_key_of_another_environment_is_unknown_and_revealed_nowhere(
    world: World,
) -> None:
    theirs = await world.key(env=B)
    verdict = await world.verify(world.sign(theirs))
    assert verdict == Verification(valid=False, reason="unknown_key")
    nowhere = handmade({"alg": "EdDSA", "kid": "neverExisted"}, {"exp": world.now() + 60})
    assert await world.verify(nowhere) == verdict, "indistinguishable from a missing key"


async def test_naming_an_environment_pins_the_key_to_it(world: World) -> None:
    both = principal(environments=(A, B))
    ours = await world.key(env=A)
    token = world.sign(ours)
    assert (await world.verifier.verify(both, VerifyRequest(token=token, environment_id=A))).valid
    pinned = await world.verifier.verify(both, VerifyRequest(token=token, environment_id=B))
    assert pinned.reason == "unknown_key" and pinned.key_id is None
    assert (await world.verifier.verify(both, VerifyRequest(token=token))).valid, (
        "unpinned: any of the caller's"
    )


async def test_a_failed_check_on_a_visible_key_names_it(world: World) -> None:
    created = await world.key()
    verdict = await world.verify(world.sign(created, {"exp": world.now() - 3600}))
    assert (verdict.reason, verdict.key_id, verdict.environment_id) == (
        "expired",
        created.key.id,
        A,
    )


# Who may verify.


async def test_verifying_needs_the_verify_scope_and_the_environment(world: World) -> None:
    token = world.sign(await world.key())
    with pytest.raises(PermissionDeniedError, match="verify"):
        await world.verifier.verify(principal(Scope.READ, Scope.WRITE), VerifyRequest(token=token))
    with pytest.raises(PermissionDeniedError, match="environment"):
        await world.verifier.verify(CALLER, VerifyRequest(token=token, environment_id=B))


async def test_an_oversized_token_is_refused_before_it_is_parsed(world: World) -> None:
    with pytest.raises(PayloadTooLargeError):
        await world.verify("a" * 8193)


# Cache misses.


async def test_while_every_key_is_cached_a_miss_costs_no_lookup(world: World) -> None:
    assert world.cache.complete
    for i in range(5):
        token = handmade({"alg": "EdDSA", "kid": f"missing{i}"}, {"exp": world.now() + 60})
        assert (await world.verify(token)).reason == "unknown_key"
    assert world.records.calls["get"] == 0 and world.lookups() == 0


async def test_when_the_cache_cannot_hold_every_key_a_miss_is_looked_up_once() -> None:
    world = build(cache_size=2)
    created = [await world.key() for _ in range(3)]
    await world.feed.poll_once()
    assert not world.cache.complete, "three keys, room for two"
    evicted = created[0]
    assert world.cache.get(evicted.key.id) is None
    token = world.sign(evicted)
    assert (await world.verify(token)).valid
    assert (await world.verify(token)).valid
    assert world.lookups() == 1, "then served from the cache"
    missing = handmade({"alg": "EdDSA", "kid": "notThere"}, {"exp": world.now() + 60})
    assert (await world.verify(missing)).reason == "unknown_key"
    assert (await world.verify(missing)).reason == "unknown_key"
    assert world.lookups() == 2, "an unknown kid is remembered briefly"


async def test_a_caller_flooding_unknown_kids_runs_out_of_lookups_and_hears_retry_later() -> None:
    """Past the caller's miss budget the verifier cannot tell whether the key exists: it
    says "too many requests, retry after …" (429 / RESOURCE_EXHAUSTED), never
    ``unknown_key``, and never ``valid``."""
    world = build(cache_size=1)
    created = [await world.key(), await world.key()]
    await world.feed.poll_once()
    assert not world.cache.complete
    [evicted] = [key for key in created if world.cache.get(key.key.id) is None]
    for i in range(2):
        token = handmade({"alg": "EdDSA", "kid": f"flood{i}"}, {"exp": world.now() + 60})
        assert (await world.verify(token)).reason == "unknown_key"
    assert world.lookups() == 2, "the miss budget: two a second"
    for i in range(3):
        token = handmade({"alg": "EdDSA", "kid": f"more{i}"}, {"exp": world.now() + 60})
        with pytest.raises(TooManyRequestsError) as limited:
            await world.verify(token)
        assert limited.value.retry_after is not None and 0 < limited.value.retry_after <= 1
    with pytest.raises(TooManyRequestsError):  # nor is a real key answered unknown
        await world.verify(world.sign(evicted))
    assert world.lookups() == 2
    world.clock.advance(1.0)
    token = handmade({"alg": "EdDSA", "kid": "later"}, {"exp": world.now() + 60})
    assert (await world.verify(token)).reason == "unknown_key"
    assert world.lookups() == 3


# Last known good, then fail closed.


async def test_during_an_outage_cached_keys_verify_until_the_staleness_bound(
    world: World,
) -> None:
    created = await world.key()
    token = world.sign(created, {"exp": world.now() + 3600})
    world.records.unavailable = True
    world.clock.advance(MAX_STALENESS - 1)
    with pytest.raises(RegionUnavailableError):
        await world.feed.poll_once()
    assert world.verifier.can_serve()
    assert (await world.verify(token)).valid, "last known good"
    world.clock.advance(2)
    assert not world.verifier.can_serve()
    with pytest.raises(RegionUnavailableError):
        await world.verify(token)
    world.records.unavailable = False
    await world.feed.poll_once()
    assert (await world.verify(token)).valid, "a successful poll serves again"


async def test_before_the_first_successful_poll_nothing_verifies() -> None:
    world = build()
    created = await world.key()
    with pytest.raises(RegionUnavailableError):
        await world.verify(world.sign(created))


async def test_an_outage_during_a_cache_miss_says_retry_not_unknown_key() -> None:
    """No region answers the look-up: ``key_unavailable`` (503 / UNAVAILABLE, with a retry
    hint), since the key may well exist; it used to be ``unknown_key``."""
    world = build(cache_size=1)
    first = await world.key()
    await world.key()
    await world.feed.poll_once()
    assert world.cache.get(first.key.id) is None
    world.records.unavailable = True
    with pytest.raises(KeyUnavailableError) as unavailable:
        await world.verify(world.sign(first))
    assert unavailable.value.type == "key_unavailable" and unavailable.value.retry_after
    world.records.unavailable = False
    assert (await world.verify(world.sign(first))).valid, "and once a region answers, valid"


async def test_a_key_created_on_another_instance_since_the_last_poll_verifies() -> None:
    """The cache holds every key it has heard of, but a key created moments ago on another
    instance arrives only with the next poll: a token issued since then (``iat``) is looked
    up rather than answered ``unknown_key`` from the cache (which it used to be)."""
    world = build()
    await world.feed.poll_once()
    assert world.cache.complete
    elsewhere = KeyService(world.records)  # another instance: this cache hears nothing
    request = CreateKeyRequest(environment_id=A, spec=KeySpec(algorithm="EdDSA"))
    created = await elsewhere.create(principal(), request)
    assert world.cache.get(created.key.id) is None
    fresh = world.sign(created, {"iat": world.now()})
    assert (await world.verify(fresh)).valid
    assert world.lookups() == 1
    forged = handmade(
        {"alg": "EdDSA", "kid": "neverMade"}, {"exp": world.now() + 60, "iat": world.now()}
    )
    assert (await world.verify(forged)).reason == "unknown_key", "the database is the truth"
    old = handmade(
        {"alg": "EdDSA", "kid": "neverMade2"}, {"exp": world.now() + 60, "iat": world.now() - 600}
    )
    assert (await world.verify(old)).reason == "unknown_key"
    assert world.lookups() == 2, "a token issued before the cache's data: no look-up"


async def test_a_fresh_token_whose_key_cannot_be_looked_up_is_unavailable() -> None:
    """The same miss with no region answering: retry later, not ``unknown_key``."""
    world = build()
    await world.feed.poll_once()
    created = await KeyService(world.records).create(
        principal(), CreateKeyRequest(environment_id=A, spec=KeySpec(algorithm="EdDSA"))
    )
    world.records.unavailable = True
    with pytest.raises(KeyUnavailableError):
        await world.verify(world.sign(created, {"iat": world.now()}))


# JWKS.


async def test_jwks_lists_the_environments_usable_keys_and_its_etag_follows_them(
    world: World,
) -> None:
    keep = await world.key("RS256")
    drop = await world.key("ES256")
    soon = world.clock() + timedelta(seconds=5)
    expiring = await world.keys.create(
        CALLER,
        CreateKeyRequest(environment_id=A, spec=KeySpec(algorithm="EdDSA", expires_at=soon)),
    )
    await world.key(env=B)
    rendered = await world.verifier.jwks(CALLER, OURS)
    document, etag = json.loads(rendered.body), rendered.etag
    assert {jwk["kid"] for jwk in document["keys"]} == {
        keep.key.id,
        drop.key.id,
        expiring.key.id,
    }
    assert [jwk["kid"] for jwk in document["keys"]] == sorted(
        jwk["kid"] for jwk in document["keys"]
    )
    assert (await world.verifier.jwks(CALLER, OURS)).etag == etag, "stable while nothing changes"
    await world.keys.revoke(CALLER, KeyRef(environment_id=A, key_id=drop.key.id))
    world.clock.advance(6)
    rendered = await world.verifier.jwks(CALLER, OURS)
    document, changed = json.loads(rendered.body), rendered.etag
    assert [jwk["kid"] for jwk in document["keys"]] == [keep.key.id]
    assert changed != etag
    jwk = document["keys"][0]
    assert (jwk["alg"], jwk["use"], jwk["kty"]) == ("RS256", "sig", "RSA")


async def test_jwks_needs_read_or_verify_on_the_environment(world: World) -> None:
    await world.verifier.jwks(principal(Scope.VERIFY), OURS)
    await world.verifier.jwks(principal(Scope.READ), OURS)
    with pytest.raises(PermissionDeniedError):
        await world.verifier.jwks(principal(Scope.WRITE), OURS)
    with pytest.raises(PermissionDeniedError):
        await world.verifier.jwks(CALLER, THEIRS)


def test_forged_segments_are_base64url_json() -> None:
    """The handmade tokens above are well-formed where they mean to be."""
    header = handmade({"alg": "EdDSA", "kid": "k"}, {"exp": 1}).split(".")[0]
    assert json.loads(base64.urlsafe_b64decode(header + "==")) == {"alg": "EdDSA", "kid": "k"}


async def test_a_token_whose_write_no_region_can_show_is_unavailable_not_unknown(
    world: World,
) -> None:
    """With a consistency token the verifier asks the database, not the cache; when no
    region can answer at or past the token, the caller hears "try again" (503), not
    ``unknown_key`` for a key it knows was written (the chaos checker saw exactly that)."""
    created = await world.key()
    token = world.sign(created)
    consistency.bind(encode_token(CommitPosition("7301234567890123456", 1, 1)))
    world.records.unavailable = True
    with pytest.raises(RegionUnavailableError):
        await world.verify(token)
    consistency.bind(None)  # without a token the cache answers, as before
    assert (await world.verify(token)).valid
