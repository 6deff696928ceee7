"""Parsing credentials and principals' permissions (pure, no database)."""

from __future__ import annotations

import base64

import pytest

from service.core.auth import hash_secret, new_access_token, parse_authorization
from service.core.models import Principal, Scope
from service.errors import (
    EnvironmentRequiredError,
    InvalidRequestError,
    PermissionDeniedError,
    UnauthenticatedError,
)


def test_basic_and_bearer_forms_carry_the_same_credentials() -> None:
    basic = "Basic " + base64.b64encode(b"skt_abc:s3cret:with:colons").decode()
    assert parse_authorization(basic) == ("skt_abc", "s3cret:with:colons")
    assert parse_authorization("Bearer skt_abc:s3cret") == ("skt_abc", "s3cret")


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Basic",
        "Basic %%%",
        "Token x:y",
        "Bearer :secret",
        "Bearer id:",
        "B" * 600,
        # What aiohttp makes of a non-UTF-8 byte (a surrogate), and what gRPC's Latin-1 makes.
        "Bearer skt_AAAAAAAAAAAAAAAA:\udce9",
        "Bearer skt_AAAAAAAAAAAAAAAA:\xe9",
        "Bearer skt_AAAAAAAA\x00AAAAAAA:secret",
        "Basic " + base64.b64encode("skt_AAAAAAAAAAAAAAAA:sécret".encode()).decode(),
        "Basic " + base64.b64encode(b"skt_AAAAAAAAAAAAAAAA:\xe9").decode(),
    ],
)
def test_malformed_credentials_are_unauthenticated(header: str | None) -> None:
    with pytest.raises(UnauthenticatedError):
        parse_authorization(header)


def test_new_tokens_store_only_a_hash_of_their_secret() -> None:
    token, secret = new_access_token([Scope.READ], ["env-1"])
    assert token.secret_hash == hash_secret(secret) and secret.encode() not in token.secret_hash
    assert len(secret) >= 43 and token.id.startswith("skt_")
    with pytest.raises(InvalidRequestError):
        new_access_token([], ["env-1"])
    with pytest.raises(InvalidRequestError):
        new_access_token([Scope.READ], [])


def test_a_principal_needs_both_the_scope_and_the_environment() -> None:
    principal = Principal(
        token_id="skt_x", scopes=frozenset({Scope.READ}), environments=frozenset({"a", "b"})
    )
    principal.require(Scope.READ, "a")
    with pytest.raises(PermissionDeniedError, match="write"):
        principal.require(Scope.WRITE, "a")
    with pytest.raises(PermissionDeniedError, match="environment"):
        principal.require(Scope.READ, "c")
    assert principal.default_environment("b") == "b"
    with pytest.raises(EnvironmentRequiredError, match="several") as missing:
        principal.default_environment(None)
    assert (missing.value.type, missing.value.field) == ("environment_required", "environment_id")
    assert not isinstance(missing.value, PermissionDeniedError), "a missing argument: 400"
