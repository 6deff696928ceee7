"""Authentication's rules, over the in-memory token records (no database): what is stored,
what authenticates, how long a cached credential lives, and last known good."""

from __future__ import annotations

import base64

import pytest

from service.core.auth import Authenticator, hash_secret
from service.core.models import AccessToken, Scope
from service.errors import (
    DependencyError,
    InvalidRequestError,
    RegionUnavailableError,
    UnauthenticatedError,
)
from tests.support.memory import ManualClock, MemoryTokenRecords

CACHE_TTL = 30.0
UNKNOWN_TTL = 0.5
MAX_STALENESS = 300.0


@pytest.fixture
def auth(tokens: MemoryTokenRecords, clock: ManualClock) -> Authenticator:
    return Authenticator(
        tokens,
        cache_ttl=CACHE_TTL,
        cache_size=4,
        unknown_ttl=UNKNOWN_TTL,
        max_staleness=MAX_STALENESS,
        clock=clock.seconds,
    )


async def cached_credential(auth: Authenticator) -> tuple[AccessToken, str]:
    """A reader's token and secret, authenticated once: its record is in the cache now."""
    token, secret = await auth.issue([Scope.READ], ["env-a"])
    await auth.authenticate(token.id, secret, api="http")
    return token, secret


async def test_an_issued_token_is_stored_as_a_hash_and_authenticates(
    auth: Authenticator, tokens: MemoryTokenRecords
) -> None:
    token, secret = await auth.issue([Scope.READ, Scope.VERIFY], ["env-a"], name="ci")
    stored = await tokens.get(token.id)
    assert stored == token and stored.secret_hash == hash_secret(secret)
    assert secret not in repr(stored)
    principal = await auth.authenticate(token.id, secret, api="grpc", request_id="r-1")
    assert (principal.token_id, principal.api, principal.request_id) == (token.id, "grpc", "r-1")
    assert principal.scopes == {Scope.READ, Scope.VERIFY}
    assert principal.environments == {"env-a"}


async def test_issuing_checks_scopes_and_environments_before_storing(
    auth: Authenticator, tokens: MemoryTokenRecords
) -> None:
    for scopes, environments in [([], ["env-a"]), ([Scope.READ], []), ([Scope.READ], ["b a d"])]:
        with pytest.raises(InvalidRequestError):
            await auth.issue(scopes, environments)
    assert tokens.calls["insert"] == 0


async def test_every_wrong_credential_gets_the_same_answer(
    auth: Authenticator, tokens: MemoryTokenRecords
) -> None:
    token, secret = await auth.issue([Scope.READ], ["env-a"])
    other, other_secret = await auth.issue([Scope.READ], ["env-a"])
    tokens.revoke(other.id)
    attempts = [
        (token.id, secret + "x"),  # wrong secret
        (token.id, other_secret),  # another token's secret
        ("skt_" + "A" * 16, secret),  # well-formed, unknown
        ("not-our-shape", secret),
        (other.id, other_secret),  # revoked
    ]
    messages = set()
    for token_id, attempt in attempts:
        with pytest.raises(UnauthenticatedError) as refused:
            await auth.authenticate(token_id, attempt, api="http")
        messages.add(str(refused.value))
    assert messages == {"invalid access token id or secret"}


async def test_ids_not_shaped_like_ours_never_reach_the_records(
    auth: Authenticator, tokens: MemoryTokenRecords
) -> None:
    for token_id in ["admin", "skt_short", "skt_" + "A" * 17, "SKT_" + "A" * 16, "skt_" + "-" * 16]:
        with pytest.raises(UnauthenticatedError):
            await auth.authenticate(token_id, "secret", api="http")
    assert tokens.calls["get"] == 0


async def test_a_credential_is_cached_for_its_ttl_so_a_revocation_takes_that_long(
    auth: Authenticator, tokens: MemoryTokenRecords, clock: ManualClock
) -> None:
    token, secret = await cached_credential(auth)
    tokens.revoke(token.id)
    clock.advance(CACHE_TTL - 1)
    await auth.authenticate(token.id, secret, api="http")  # still the cached record
    assert tokens.calls["get"] == 1
    clock.advance(2)
    with pytest.raises(UnauthenticatedError):
        await auth.authenticate(token.id, secret, api="http")
    assert tokens.calls["get"] == 2


async def test_unknown_ids_are_remembered_briefly_and_apart_from_real_credentials(
    auth: Authenticator, tokens: MemoryTokenRecords, clock: ManualClock
) -> None:
    token, secret = await cached_credential(auth)
    unknown = [f"skt_{i:016d}" for i in range(10)]  # more than the cache holds
    for token_id in unknown + unknown[-1:]:
        with pytest.raises(UnauthenticatedError):
            await auth.authenticate(token_id, "guess", api="http")
    assert tokens.calls["get"] == 1 + 10, "the repeated unknown id was not looked up again"
    await auth.authenticate(token.id, secret, api="http")
    assert tokens.calls["get"] == 11, "the flood did not evict the real credential"
    clock.advance(UNKNOWN_TTL)
    with pytest.raises(UnauthenticatedError):
        await auth.authenticate(unknown[-1], "guess", api="http")
    assert tokens.calls["get"] == 12, "looked up again once its negative entry expired"


async def test_during_an_outage_a_known_credential_lives_until_the_staleness_bound(
    auth: Authenticator, tokens: MemoryTokenRecords, clock: ManualClock
) -> None:
    token, secret = await auth.issue([Scope.VERIFY], ["env-a"])
    never_read, never_read_secret = await auth.issue([Scope.VERIFY], ["env-a"])
    await auth.authenticate(token.id, secret, api="grpc")
    tokens.unavailable = True
    clock.advance(MAX_STALENESS)
    assert (await auth.authenticate(token.id, secret, api="grpc")).token_id == token.id
    with pytest.raises(UnauthenticatedError):
        await auth.authenticate(token.id, "wrong", api="grpc")  # still checked
    with pytest.raises(DependencyError):
        # Not "unauthenticated": the caller may well be right, and should retry.
        await auth.authenticate(never_read.id, never_read_secret, api="grpc")
    clock.advance(1)
    with pytest.raises(RegionUnavailableError):
        await auth.authenticate(token.id, secret, api="grpc")
    tokens.unavailable = False
    assert (await auth.authenticate(token.id, secret, api="grpc")).token_id == token.id


async def test_both_authorization_schemes_reach_the_same_principal(auth: Authenticator) -> None:
    token, secret = await auth.issue([Scope.READ], ["env-a"])
    basic = "Basic " + base64.b64encode(f"{token.id}:{secret}".encode()).decode()
    bearer = f"Bearer {token.id}:{secret}"
    one = await auth.authenticate_header(basic, api="http", request_id="r")
    two = await auth.authenticate_header(bearer, api="http", request_id="r")
    assert one == two and one.token_id == token.id
