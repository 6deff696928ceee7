"""Properties of the token parsers over random and damaged input: the ``Authorization``
header (HTTP and gRPC credentials) and the compact JWS that ``/v1/tokens/verify`` takes.

Each answer is one of the typed outcomes the transports map to a status (credentials or
:class:`UnauthenticatedError`; a :class:`Verification` with one of the documented reasons),
never another exception. And a damaged input is never *more* accepted than the original:
credentials authenticate only as exactly themselves, and a token that differs in any
character from a valid one does not verify (no malleable spelling).
"""

from __future__ import annotations

import asyncio
import base64
import json
import string
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from service.core import crypto
from service.core.auth import Authenticator, parse_authorization
from service.core.changes import ChangeFeed
from service.core.keycache import KeyCache
from service.core.keys import KeyService
from service.core.models import CreatedKey, Principal, Scope
from service.core.requests import CreateKeyRequest, KeySpec, VerifyRequest
from service.core.verify import REASONS, TokenVerifier, Verification
from service.errors import InvalidRequestError, PayloadTooLargeError, UnauthenticatedError
from tests.fuzz.budget import examples
from tests.fuzz.mutations import json_values, mutated_text
from tests.support.memory import ManualClock, MemoryKeyRecords, MemoryTokenRecords

ENVIRONMENT = "env-fuzz"
pytestmark = pytest.mark.fuzz

MAX_TOKEN_BYTES = 8192
CALLER = Principal(
    token_id="skt_fuzzfuzzfuzzfuzz", scopes=frozenset(Scope), environments=frozenset({ENVIRONMENT})
)


def _basic(login: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode("ascii")


@dataclass(frozen=True)
class Issued:
    authenticator: Authenticator
    token_id: str
    secret: str

    @property
    def headers(self) -> list[str]:
        return [f"Bearer {self.token_id}:{self.secret}", _basic(self.token_id, self.secret)]


@pytest.fixture(scope="module")
def issued(runner: asyncio.Runner) -> Iterator[Issued]:
    """An authenticator holding one token (no failure limits: they would turn the answer to
    a burst of bad credentials into 429, which tests/core covers)."""
    authenticator = Authenticator(MemoryTokenRecords(), cache_ttl=3600.0, max_staleness=3600.0)
    runner.run(authenticator.start())
    token, secret = runner.run(authenticator.issue([Scope.READ], [ENVIRONMENT]))
    yield Issued(authenticator, token.id, secret)
    runner.run(authenticator.aclose())


# Headers as they arrive: random text, and valid ones damaged (both schemes, and forms that
# stress the scheme and separator handling).
_HEADER_SEEDS = [
    "Bearer skt_AAAAAAAAAAAAAAAA:c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA",
    _basic("skt_AAAAAAAAAAAAAAAA", "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"),
    "basic   " + base64.b64encode(b"id:se:cret").decode(),
    "BEARER id:secret",
]
headers = st.none() | st.text(max_size=80) | mutated_text(_HEADER_SEEDS)


@given(header=headers)
@examples(bounded=200)
@example(header="Basic \xe3YWJj")  # found: a plain ValueError from b64decode, a 500
def test_an_authorization_header_is_credentials_or_unauthenticated(header: str | None) -> None:
    try:
        token_id, secret = parse_authorization(header)
    except UnauthenticatedError:
        return
    for part in (token_id, secret):
        assert part and part.isascii() and part.isprintable() and " " not in part


@given(data=st.data())
@examples(bounded=150)
def test_only_the_exact_credentials_authenticate(
    issued: Issued, runner: asyncio.Runner, data: st.DataObject
) -> None:
    header = data.draw(headers | mutated_text(issued.headers), label="header")
    try:
        principal = runner.run(issued.authenticator.authenticate_header(header, api="http"))
    except UnauthenticatedError:
        return
    # Another spelling of the same credentials (scheme case, spaces, base64 padding bits)
    # may authenticate; different credentials never do.
    assert parse_authorization(header) == (issued.token_id, issued.secret)
    assert principal.token_id == issued.token_id


@dataclass(frozen=True)
class Verifier:
    verifier: TokenVerifier
    tokens: list[str]


def _sign(created: CreatedKey, now: float, *, kid_in_payload: bool = False) -> str:
    payload: dict[str, Any] = {"exp": int(now) + 3600, "sub": "user-1", "aud": "svc"}
    headers: dict[str, Any] = {}
    if kid_in_payload:
        payload["kid"] = created.key.id
    else:
        headers["kid"] = created.key.id
    return jwt.encode(
        payload, created.private_key_pem, algorithm=created.key.algorithm, headers=headers
    )


@pytest.fixture(scope="module")
def verifier(runner: asyncio.Runner) -> Verifier:
    """A verifier over in-memory keys of each algorithm, and a valid token for each."""
    clock = ManualClock()
    records = MemoryKeyRecords(clock=clock)
    cache = KeyCache(size=100, negative_size=100, negative_ttl=1.0, clock=clock.seconds)
    feed = ChangeFeed(records, cache, poll_interval=0.1, overlap=1.0, clock=clock.seconds)
    verifier = TokenVerifier(
        records,
        cache,
        feed,
        max_token_bytes=MAX_TOKEN_BYTES,
        clock_skew=30.0,
        max_staleness=300.0,
        clock=clock.seconds,
        monotonic=clock.seconds,
    )
    keys = KeyService(records, on_change=cache.put)
    runner.run(feed.poll_once())
    tokens = []
    for algorithm in crypto.ALGORITHMS:
        request = CreateKeyRequest(environment_id=ENVIRONMENT, spec=KeySpec(algorithm=algorithm))
        created = runner.run(keys.create(CALLER, request))
        tokens.append(_sign(created, clock.seconds()))
        tokens.append(_sign(created, clock.seconds(), kid_in_payload=True))
    for token in tokens:
        assert runner.run(verifier.verify(CALLER, VerifyRequest(token=token))).valid
    return Verifier(verifier, tokens)


def _segment(value: object) -> str:
    return crypto.b64url(json.dumps(value).encode())


# Well-formed JOSE around arbitrary JSON: past base64url and the JSON parse, into the rules.
_handmade = st.builds(
    lambda header, payload, signature: f"{_segment(header)}.{_segment(payload)}.{signature}",
    json_values(),
    json_values(),
    st.text(alphabet=string.ascii_letters + string.digits + "-_", max_size=90),
)


@given(data=st.data())
@examples(bounded=200)
def test_any_token_gets_a_verdict_and_only_an_intact_one_is_valid(
    verifier: Verifier, runner: asyncio.Runner, data: st.DataObject
) -> None:
    token = data.draw(
        mutated_text(verifier.tokens) | _handmade | st.text(max_size=200), label="token"
    )
    try:
        request = VerifyRequest.parse(token=token)
        verdict = runner.run(verifier.verifier.verify(CALLER, request))
    except PayloadTooLargeError:
        assert len(token) > MAX_TOKEN_BYTES
        return
    except InvalidRequestError:
        assert token == ""
        return
    assert isinstance(verdict, Verification)
    assert (verdict.reason is None) == verdict.valid
    assert verdict.reason is None or verdict.reason in REASONS
    if token not in verifier.tokens:
        assert not verdict.valid, "a token differing from a signed one verified"
