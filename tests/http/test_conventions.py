"""The HTTP conventions a generic client relies on: ``Allow`` on every 405, ``Location`` on
201, the environment chosen by ``X-Environment-Id`` on every route that chooses one (and a
header that contradicts the query, body or path refused), a ``WWW-Authenticate`` naming
both schemes, and the request id inside every error body."""

from __future__ import annotations

import base64
import time
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from service.http.openapi import openapi_document
from tests.support.service import Credentials, TokenFactory

KEYS = "/system/v1/signing-keys"
VERIFY = "/v1/tokens/verify"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def concrete(path: str) -> str:
    return path.replace("{id}", "some-key").replace("{environment_id}", "some-env")


@pytest.mark.parametrize("path", sorted(openapi_document()["paths"]))
async def test_every_405_lists_the_documented_methods_in_allow(
    http: aiohttp.ClientSession, path: str
) -> None:
    documented = {method.upper() for method in openapi_document()["paths"][path]}
    # aiohttp answers HEAD wherever GET is served (without a body, as RFC 9110 allows).
    allowed = documented | ({"HEAD"} if "GET" in documented else set())
    for method in set(METHODS) - documented:
        async with http.request(method, concrete(path)) as response:
            assert response.status == 405, (method, path)
            assert set(response.headers["Allow"].split(",")) == allowed
            error = (await response.json())["error"]
            assert error["request_id"] == response.headers["X-Request-Id"]


@pytest.fixture
async def two(issue_token: TokenFactory, environment: str) -> tuple[Credentials, str, str]:
    """A token covering two environments (so that each request must choose one)."""
    other = environment + "-b"
    return await issue_token([environment, other]), environment, other


def in_env(credentials: Credentials, environment: str) -> dict[str, str]:
    return {**credentials.headers, "X-Environment-Id": environment}


async def test_created_and_imported_keys_answer_their_location(
    http: aiohttp.ClientSession, auth: Credentials
) -> None:
    async with http.post(KEYS, headers=auth.headers) as response:
        assert response.status == 201
        created = (await response.json())["data"]
        location = response.headers["Location"]
    assert location == f"{KEYS}/{created['id']}"
    async with http.get(location, headers=auth.headers) as response:
        assert response.status == 200
        assert (await response.json())["data"]["id"] == created["id"]

    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    body = {"public_key": pem.decode()}
    async with http.post(f"{KEYS}/import", headers=auth.headers, json=body) as response:
        assert response.status == 201
        imported = (await response.json())["data"]
        assert response.headers["Location"] == f"{KEYS}/{imported['id']}"


async def test_the_header_chooses_the_environment_on_every_key_route(
    http: aiohttp.ClientSession, two: tuple[Credentials, str, str]
) -> None:
    credentials, first, second = two
    async with http.post(KEYS, headers=in_env(credentials, second)) as response:
        assert response.status == 201
        key = (await response.json())["data"]
    assert key["environment_id"] == second
    async with http.get(KEYS, headers=in_env(credentials, second)) as response:
        assert [k["id"] for k in (await response.json())["data"]] == [key["id"]]
    async with http.get(KEYS, headers=in_env(credentials, first)) as response:
        assert (await response.json())["data"] == []
    for path in (f"{KEYS}/{key['id']}", f"{KEYS}/{key['id']}/public-key"):
        async with http.get(path, headers=in_env(credentials, first)) as response:
            assert response.status == 404, path
        async with http.get(path, headers=in_env(credentials, second)) as response:
            assert response.status == 200, path

    # Verify: the header narrows which keys may have signed the token, as the body's member.
    token = jwt.encode(
        {"exp": int(time.time()) + 300},
        base64.b64decode(key["private_key"]),
        algorithm="RS256",
        headers={"kid": key["id"]},
    )
    verdicts = {}
    for environment in (first, second):
        async with http.post(
            VERIFY, headers=in_env(credentials, environment), json={"token": token}
        ) as response:
            assert response.status == 200
            verdicts[environment] = (await response.json())["data"]
    assert verdicts[second]["valid"] is True
    assert (verdicts[first]["valid"], verdicts[first]["reason"]) == (False, "unknown_key")

    jwks = f"/v1/environments/{second}/jwks.json"
    async with http.get(jwks, headers=in_env(credentials, second)) as response:
        assert response.status == 200
        assert [k["kid"] for k in (await response.json())["keys"]] == [key["id"]]

    async with http.delete(f"{KEYS}/{key['id']}", headers=in_env(credentials, first)) as response:
        assert response.status == 404
    async with http.delete(f"{KEYS}/{key['id']}", headers=in_env(credentials, second)) as response:
        assert response.status == 204


async def refused(response: aiohttp.ClientResponse) -> dict[str, Any]:
    assert response.status == 400, await response.text()
    error: dict[str, Any] = (await response.json())["error"]
    assert "name different environments" in error["messages"][0]
    return error


async def test_a_header_contradicting_the_query_body_or_path_is_refused(
    http: aiohttp.ClientSession, two: tuple[Credentials, str, str]
) -> None:
    credentials, first, second = two
    headers = in_env(credentials, first)
    async with http.post(KEYS, headers=headers, params={"environment_id": second}) as response:
        await refused(response)
    async with http.get(KEYS, headers=headers, params={"environment_id": second}) as response:
        await refused(response)
    body = {"token": "a.b.c", "environment_id": second}
    async with http.post(VERIFY, headers=headers, json=body) as response:
        await refused(response)
    async with http.get(f"/v1/environments/{second}/jwks.json", headers=headers) as response:
        await refused(response)
    # Nothing was created by the refused create; the same name twice is no conflict, and an
    # empty value names nothing.
    async with http.get(KEYS, headers=headers, params={"environment_id": first}) as response:
        assert response.status == 200 and (await response.json())["data"] == []
    async with http.get(KEYS, headers=headers, params={"environment_id": ""}) as response:
        assert response.status == 200


async def test_a_401_challenges_with_both_schemes_and_names_the_request(
    http: aiohttp.ClientSession,
) -> None:
    headers = {"Authorization": "Bearer nobody:wrong", "X-Request-Id": "ticket-4711"}
    async with http.get(KEYS, headers=headers) as response:
        assert response.status == 401
        challenge = response.headers["WWW-Authenticate"]
        error = (await response.json())["error"]
    assert challenge.startswith("Basic realm=") and ', Bearer realm="' in challenge
    assert error["request_id"] == "ticket-4711"


async def test_every_error_body_names_the_request(
    http: aiohttp.ClientSession, auth: Credentials
) -> None:
    for method, path, status in (
        ("GET", f"{KEYS}/no-such-key", 404),
        ("GET", f"{KEYS}?limit=0", 400),
        ("GET", "/no/such/route", 404),
    ):
        async with http.request(method, path, headers=auth.headers) as response:
            assert response.status == status, path
            error = (await response.json())["error"]
            assert error["request_id"] == response.headers["X-Request-Id"], path
