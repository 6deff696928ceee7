"""Authentication's rules, over the in-memory token records (no database): what is stored,
what authenticates, that checking a credential never reads the records, how a change
reaches the credential table, last known good, and the limits on failed attempts."""

from __future__ import annotations

import base64
import statistics
import time

import pytest

from service.core import auth as auth_module
from service.core.auth import (
    CLIENT_ADDRESS,
    Authenticator,
    FailureLimits,
    VerifiedCredentials,
    hash_secret,
)
from service.core.metrics import CoreMetrics
from service.core.models import Scope
from service.errors import (
    InvalidRequestError,
    RegionUnavailableError,
    TooManyRequestsError,
    UnauthenticatedError,
)
from tests.support.memory import ManualClock, MemoryTokenRecords

CACHE_TTL = 30.0
POLL_INTERVAL = 0.2
OVERLAP = 5.0
MAX_STALENESS = 300.0
FAILURES = 3.0  # a second, per client address and per token id
GUESS = "a-guessed-secret-as-long-as-a-real-one-xxxx"


async def authenticator(
    tokens: MemoryTokenRecords,
    clock: ManualClock,
    *,
    limits: FailureLimits | None = None,
    metrics: CoreMetrics | None = None,
    loaded: bool = True,
) -> Authenticator:
    """An authenticator whose credential table has read the records once (as its start
    does), unless ``loaded`` is false; its later polls are the test's to make."""
    auth = Authenticator(
        tokens,
        cache_ttl=CACHE_TTL,
        max_staleness=MAX_STALENESS,
        poll_interval=POLL_INTERVAL,
        overlap=OVERLAP,
        limits=limits,
        metrics=metrics,
        clock=clock.seconds,
    )
    if loaded:
        await auth.credentials.poll_once()
    return auth


@pytest.fixture
async def auth(tokens: MemoryTokenRecords, clock: ManualClock) -> Authenticator:
    return await authenticator(tokens, clock)


async def poll(auth: Authenticator, clock: ManualClock) -> None:
    """One poll interval passes, and the credential table polls."""
    clock.advance(POLL_INTERVAL)
    await auth.credentials.poll_once()


async def test_an_issued_token_is_stored_as_a_hash_and_authenticates(
    auth: Authenticator, tokens: MemoryTokenRecords
) -> None:
    token, secret = await auth.issue([Scope.READ, Scope.VERIFY], ["env-a"], name="ci")
    stored = await tokens.get(token.id)
    assert stored is not None and stored.secret_hash == hash_secret(secret)
    assert (stored.id, stored.scopes, stored.environments, stored.name) == (
        token.id,
        token.scopes,
        token.environments,
        "ci",
    )
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
    auth: Authenticator, tokens: MemoryTokenRecords, clock: ManualClock
) -> None:
    token, secret = await auth.issue([Scope.READ], ["env-a"])
    other, other_secret = await auth.issue([Scope.READ], ["env-a"])
    tokens.revoke(other.id)
    await poll(auth, clock)
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


async def test_checking_credentials_never_reads_the_records_whether_or_not_the_id_exists(
    tokens: MemoryTokenRecords, clock: ManualClock
) -> None:
    """Before: every unknown id of the right shape cost a database read."""
    metrics = CoreMetrics()
    auth = await authenticator(tokens, clock, metrics=metrics)
    token, secret = await auth.issue([Scope.READ], ["env-a"])
    reads = sum(tokens.calls.values())
    for i in range(1000):
        with pytest.raises(UnauthenticatedError):
            await auth.authenticate(f"skt_{i:016d}", "guess", api="http")
        with pytest.raises(UnauthenticatedError):
            await auth.authenticate(token.id, f"guess{i}", api="http")
    await auth.authenticate(token.id, secret, api="http")
    assert sum(tokens.calls.values()) == reads, "no credential check read the records"
    failures = metrics.value("signing_keys_auth_failures_total", reason="unknown_token")
    assert failures == 1000
    assert metrics.value("signing_keys_auth_failures_total", reason="wrong_secret") == 1000


async def test_an_unknown_id_takes_as_long_as_a_wrong_secret(
    tokens: MemoryTokenRecords, clock: ManualClock
) -> None:
    """The same steps either way (a dummy hash stands in for the unknown id's): medians of
    many interleaved tries agree within a margin far wider than noise and far narrower than
    a database read (about a millisecond)."""
    auth = await authenticator(tokens, clock)
    token, _ = await auth.issue([Scope.READ], ["env-a"])
    unknown: list[float] = []
    wrong: list[float] = []
    for i in range(2000):
        for token_id, sink in ((f"skt_{i:016d}", unknown), (token.id, wrong)):
            started = time.perf_counter()
            with pytest.raises(UnauthenticatedError):
                await auth.authenticate(token_id, GUESS, api="http")
            sink.append(time.perf_counter() - started)
    difference = abs(statistics.median(unknown) - statistics.median(wrong))
    assert difference < 100e-6, (statistics.median(unknown), statistics.median(wrong))


async def test_a_token_issued_elsewhere_works_after_the_next_poll(
    tokens: MemoryTokenRecords, clock: ManualClock
) -> None:
    here = await authenticator(tokens, clock)
    elsewhere = await authenticator(tokens, clock)
    await here.credentials.poll_once()
    token, secret = await elsewhere.issue([Scope.READ], ["env-a"])
    with pytest.raises(UnauthenticatedError):
        await here.authenticate(token.id, secret, api="http")
    await poll(here, clock)
    assert (await here.authenticate(token.id, secret, api="http")).token_id == token.id


async def test_a_revocation_reaches_the_table_within_a_poll_or_at_worst_a_resync(
    auth: Authenticator, tokens: MemoryTokenRecords, clock: ManualClock
) -> None:
    stamped, stamped_secret = await auth.issue([Scope.READ], ["env-a"])
    unstamped, unstamped_secret = await auth.issue([Scope.READ], ["env-a"])
    deleted, deleted_secret = await auth.issue([Scope.READ], ["env-a"])
    clock.advance(2 * OVERLAP)
    await auth.issue([Scope.READ], ["env-a"])  # later: the watermark moves past the overlap
    await poll(auth, clock)
    tokens.revoke(stamped.id)  # as the port asks: revoked_at and updated_at
    tokens.revoke(unstamped.id, stamp=False)  # an operator who forgot updated_at
    tokens.delete(deleted.id)
    await poll(auth, clock)
    with pytest.raises(UnauthenticatedError):
        await auth.authenticate(stamped.id, stamped_secret, api="http")
    await auth.authenticate(unstamped.id, unstamped_secret, api="http")  # not seen yet
    await auth.authenticate(deleted.id, deleted_secret, api="http")
    clock.advance(CACHE_TTL)
    await auth.credentials.poll_once()  # a resync: every record read again
    for token_id, secret in ((unstamped.id, unstamped_secret), (deleted.id, deleted_secret)):
        with pytest.raises(UnauthenticatedError):
            await auth.authenticate(token_id, secret, api="http")


async def test_during_an_outage_known_credentials_live_until_the_staleness_bound(
    auth: Authenticator, tokens: MemoryTokenRecords, clock: ManualClock
) -> None:
    token, secret = await auth.issue([Scope.VERIFY], ["env-a"])
    await poll(auth, clock)
    tokens.unavailable = True
    clock.advance(MAX_STALENESS - 1)
    with pytest.raises(RegionUnavailableError):
        await auth.credentials.poll_once()
    assert (await auth.authenticate(token.id, secret, api="grpc")).token_id == token.id
    with pytest.raises(UnauthenticatedError):
        await auth.authenticate(token.id, "wrong", api="grpc")  # still checked
    with pytest.raises(UnauthenticatedError):
        await auth.authenticate("skt_" + "B" * 16, secret, api="grpc")  # still no read
    clock.advance(2)
    assert not auth.can_serve()
    with pytest.raises(RegionUnavailableError):
        await auth.authenticate(token.id, secret, api="grpc")  # fails closed
    tokens.unavailable = False
    await auth.credentials.poll_once()
    assert (await auth.authenticate(token.id, secret, api="grpc")).token_id == token.id


async def test_before_the_first_read_nothing_authenticates(
    tokens: MemoryTokenRecords, clock: ManualClock
) -> None:
    elsewhere = await authenticator(tokens, clock)
    token, secret = await elsewhere.issue([Scope.READ], ["env-a"])
    fresh = await authenticator(tokens, clock, loaded=False)
    with pytest.raises(RegionUnavailableError):
        await fresh.authenticate(token.id, secret, api="http")
    await fresh.credentials.poll_once()
    assert (await fresh.authenticate(token.id, secret, api="http")).token_id == token.id


async def test_a_client_address_past_its_failures_is_refused_before_any_check(
    tokens: MemoryTokenRecords, clock: ManualClock
) -> None:
    metrics = CoreMetrics()
    limits = FailureLimits(per_client=FAILURES, per_token=100, clock=clock.seconds)
    auth = await authenticator(tokens, clock, limits=limits, metrics=metrics)
    token, secret = await auth.issue([Scope.READ], ["env-a"])
    attacker = CLIENT_ADDRESS.set("192.0.2.7")
    try:
        for i in range(int(FAILURES)):
            with pytest.raises(UnauthenticatedError):
                await auth.authenticate(f"skt_{i:016d}", "guess", api="http")
        with pytest.raises(TooManyRequestsError) as refused:
            await auth.authenticate_header(f"Bearer {token.id}:{secret}", api="http")
        assert 0 < (refused.value.retry_after or 0) <= 1 / FAILURES
        with pytest.raises(TooManyRequestsError):
            await auth.authenticate_header("Bearer nonsense", api="http")
    finally:
        CLIENT_ADDRESS.reset(attacker)
    neighbour = CLIENT_ADDRESS.set("192.0.2.8")
    try:
        assert (await auth.authenticate(token.id, secret, api="http")).token_id == token.id
    finally:
        CLIENT_ADDRESS.reset(neighbour)
    clock.advance(1 / FAILURES + 0.001)  # the clock counts whole microseconds
    attacker = CLIENT_ADDRESS.set("192.0.2.7")
    try:
        await auth.authenticate(token.id, secret, api="http")  # refilled
    finally:
        CLIENT_ADDRESS.reset(attacker)
    assert metrics.value("signing_keys_limited_total", limit="auth_client") == 2


async def test_ipv6_clients_are_limited_by_their_slash_64(
    tokens: MemoryTokenRecords, clock: ManualClock
) -> None:
    limits = FailureLimits(per_client=FAILURES, per_token=100, clock=clock.seconds)
    auth = await authenticator(tokens, clock, limits=limits)
    for i in range(int(FAILURES)):
        address = CLIENT_ADDRESS.set(f"2001:db8:1:2::{i + 1:x}")
        try:
            with pytest.raises(UnauthenticatedError):
                await auth.authenticate("skt_" + "C" * 16, "guess", api="http")
        finally:
            CLIENT_ADDRESS.reset(address)
    address = CLIENT_ADDRESS.set("2001:db8:1:2:ffff::1")
    try:
        with pytest.raises(TooManyRequestsError):
            await auth.authenticate("skt_" + "C" * 16, "guess", api="http")
    finally:
        CLIENT_ADDRESS.reset(address)


async def test_a_token_id_past_its_failures_answers_429_but_never_locks_its_owner_out(
    tokens: MemoryTokenRecords, clock: ManualClock
) -> None:
    metrics = CoreMetrics()
    limits = FailureLimits(per_client=1000, per_token=FAILURES, clock=clock.seconds)
    auth = await authenticator(tokens, clock, limits=limits, metrics=metrics)
    token, secret = await auth.issue([Scope.READ], ["env-a"])
    unknown = "skt_" + "D" * 16
    answers: dict[str, list[str]] = {token.id: [], unknown: []}
    for i in range(int(FAILURES) + 2):
        for token_id in answers:
            address = CLIENT_ADDRESS.set(f"198.51.100.{i}")  # a distributed guesser
            try:
                await auth.authenticate(token_id, "guess", api="http")
            except (UnauthenticatedError, TooManyRequestsError) as exc:
                answers[token_id].append(exc.type)
            finally:
                CLIENT_ADDRESS.reset(address)
    expected = ["unauthorized"] * int(FAILURES) + ["too_many_requests"] * 2
    assert answers == {token.id: expected, unknown: expected}, "no tell for existing ids"
    assert (await auth.authenticate(token.id, secret, api="http")).token_id == token.id
    assert metrics.value("signing_keys_limited_total", limit="auth_token") == 4


async def test_both_authorization_schemes_reach_the_same_principal(auth: Authenticator) -> None:
    token, secret = await auth.issue([Scope.READ], ["env-a"])
    basic = "Basic " + base64.b64encode(f"{token.id}:{secret}".encode()).decode()
    bearer = f"Bearer {token.id}:{secret}"
    one = await auth.authenticate_header(basic, api="http", request_id="r")
    two = await auth.authenticate_header(bearer, api="http", request_id="r")
    assert one == two and one.token_id == token.id


async def test_malformed_and_missing_credentials_are_counted_as_failures(
    tokens: MemoryTokenRecords, clock: ManualClock
) -> None:
    metrics = CoreMetrics()
    auth = await authenticator(tokens, clock, metrics=metrics)
    for header in (None, "Bearer x", "Bearer skt_AAAAAAAAAAAAAAAA:\udce9"):
        with pytest.raises(UnauthenticatedError):
            await auth.authenticate_header(header, api="http")
    assert metrics.value("signing_keys_auth_failures_total", reason="missing") == 1
    assert metrics.value("signing_keys_auth_failures_total", reason="malformed") == 2


async def test_issuing_on_a_table_never_read_reads_it_so_the_token_works_at_once(
    tokens: MemoryTokenRecords, clock: ManualClock
) -> None:
    """As ``make run`` does: the service starts before the schema exists, then issues."""
    auth = await authenticator(tokens, clock, loaded=False)
    token, secret = await auth.issue([Scope.READ], ["env-a"])
    assert (await auth.authenticate(token.id, secret, api="http")).token_id == token.id


# --- Credentials that authenticated, remembered --------------------------------------------


def counting_hashes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count full credential checks: each hashes the presented secret once."""
    calls = [0]

    def counted(secret: str) -> bytes:
        calls[0] += 1
        return hash_secret(secret)

    monkeypatch.setattr(auth_module, "hash_secret", counted)
    return calls


async def test_a_credential_that_authenticated_is_not_checked_in_full_again(
    auth: Authenticator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: every request parsed, hashed and compared its credentials."""
    token, secret = await auth.issue([Scope.READ], ["env-a"])
    header = f"Bearer {token.id}:{secret}"
    hashes = counting_hashes(monkeypatch)
    first = await auth.authenticate_header(header, api="http", request_id="r1")
    again = await auth.authenticate_header(header, api="grpc", request_id="r2")
    assert hashes[0] == 1, "the second request was answered from what the first proved"
    assert (again.token_id, again.scopes, again.environments) == (
        first.token_id,
        first.scopes,
        first.environments,
    )
    assert (again.api, again.request_id) == ("grpc", "r2"), "the principal is the request's"


async def test_a_remembered_credential_is_refused_once_the_table_reads_its_revocation(
    auth: Authenticator, tokens: MemoryTokenRecords, clock: ManualClock
) -> None:
    revoked, revoked_secret = await auth.issue([Scope.READ], ["env-a"])
    deleted, deleted_secret = await auth.issue([Scope.READ], ["env-a"])
    headers = {
        revoked.id: f"Bearer {revoked.id}:{revoked_secret}",
        deleted.id: f"Bearer {deleted.id}:{deleted_secret}",
    }
    for _ in range(2):
        for header in headers.values():
            await auth.authenticate_header(header, api="http")
    await poll(auth, clock)  # re-reads both records (within the overlap): still good
    for header in headers.values():
        await auth.authenticate_header(header, api="http")
    tokens.revoke(revoked.id)
    await poll(auth, clock)
    with pytest.raises(UnauthenticatedError):
        await auth.authenticate_header(headers[revoked.id], api="http")
    tokens.delete(deleted.id)
    clock.advance(CACHE_TTL)
    await auth.credentials.poll_once()  # a resync: the deleted row is gone from the table
    with pytest.raises(UnauthenticatedError):
        await auth.authenticate_header(headers[deleted.id], api="http")


async def test_a_wrong_secret_never_authenticates_after_the_right_one(
    auth: Authenticator, monkeypatch: pytest.MonkeyPatch
) -> None:
    token, secret = await auth.issue([Scope.READ], ["env-a"])
    await auth.authenticate_header(f"Bearer {token.id}:{secret}", api="http")
    basic = base64.b64encode(f"{token.id}:{secret}x".encode()).decode()
    wrong = [f"Bearer {token.id}:{secret[:-1]}", f"Bearer {token.id}:{secret}x", f"Basic {basic}"]
    for attempt in range(300):
        with pytest.raises(UnauthenticatedError):
            await auth.authenticate_header(wrong[attempt % 3], api="http")
    with pytest.raises(UnauthenticatedError):
        await auth.authenticate_header(f"Bearer {token.id}:{GUESS}{attempt}", api="http")
    assert len(auth.verified) == 1, "failures are never remembered: a flood adds nothing"


async def test_remembered_credentials_are_bounded_and_expire(
    tokens: MemoryTokenRecords, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth = await authenticator(tokens, clock)
    auth.verified = VerifiedCredentials(ttl=CACHE_TTL, size=4, clock=clock.seconds)
    token, secret = await auth.issue([Scope.READ], ["env-a"])
    # Spellings of one credential are distinct values: each is remembered on its own.
    spellings = [f"Bearer {token.id}:{secret}", f"Bearer  {token.id}:{secret}"] + [
        f"Bearer {token.id}:{secret}" + " " * n for n in range(1, 9)
    ]
    for header in spellings:
        await auth.authenticate_header(header, api="http")
    assert len(auth.verified) == 4
    hashes = counting_hashes(monkeypatch)
    await auth.authenticate_header(spellings[-1], api="http")
    assert hashes[0] == 0
    clock.advance(CACHE_TTL)
    await auth.authenticate_header(spellings[-1], api="http")
    assert hashes[0] == 1, "past the TTL the credential is checked in full again"


async def test_a_remembered_credential_fails_closed_past_the_staleness_bound(
    auth: Authenticator, tokens: MemoryTokenRecords, clock: ManualClock
) -> None:
    token, secret = await auth.issue([Scope.VERIFY], ["env-a"])
    header = f"Bearer {token.id}:{secret}"
    await auth.authenticate_header(header, api="grpc")
    tokens.unavailable = True
    clock.advance(MAX_STALENESS + 1)
    with pytest.raises(RegionUnavailableError):
        await auth.authenticate_header(header, api="grpc")
