"""The anonymous JWK Set: opt-in per environment, 404 alike for every other environment,
cache headers for shared caches, strong ETags with W/ and * handled, HEAD, the opt-out
bound, and the per-client limit."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import jwt

from service.core.models import Scope
from service.server import Server
from tests.http.test_tokens import new_key, sign
from tests.support.service import Credentials, TokenFactory

KEYS = "/system/v1/signing-keys"


def public_path(environment: str) -> str:
    return f"/v1/public/environments/{environment}/jwks.json"


async def opt(
    http: aiohttp.ClientSession, auth: Credentials, environment: str, public: bool
) -> None:
    async with http.put(
        f"/v1/environments/{environment}/settings",
        headers=auth.headers,
        json={"public_jwks": public},
    ) as response:
        assert response.status == 200, await response.text()
        assert (await response.json())["data"] == {
            "environment_id": environment,
            "public_jwks": public,
        }


async def answer(
    http: aiohttp.ClientSession, path: str, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    """Status and body with the request id taken out (it is the only thing allowed to differ)."""
    async with http.get(path, headers={"X-Request-Id": "probe", **(headers or {})}) as response:
        return response.status, await response.text()


async def test_an_environment_not_opted_in_answers_exactly_like_a_missing_one(
    http: aiohttp.ClientSession, auth: Credentials, environment: str
) -> None:
    await new_key(http, auth, "EdDSA")  # it exists, and has keys
    private = await answer(http, public_path(environment))
    missing = await answer(http, public_path("env-that-exists-nowhere"))
    malformed = await answer(http, public_path("bad%20id"))
    # Credentials do not open it either: the route never looks at them.
    with_credentials = await answer(http, public_path(environment), auth.headers)
    assert private == missing == malformed == with_credentials
    assert private[0] == 404
    async with http.get(public_path(environment)) as response:
        assert response.headers["Cache-Control"] == "no-store", "no CDN keeps the 404"
    await opt(http, auth, environment, False)  # a row saying no is still no
    assert await answer(http, public_path(environment)) == missing


async def test_an_opted_in_environment_is_served_without_credentials_with_public_cache_headers(
    http: aiohttp.ClientSession, auth: Credentials, environment: str, server: Server
) -> None:
    kid, private_pem, _ = await new_key(http, auth, "EdDSA")
    await opt(http, auth, environment, True)
    async with http.get(public_path(environment)) as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        cache_control = response.headers["Cache-Control"]
        etag = response.headers["ETag"]
        body = await response.read()
        document = await response.json()
    settings = server.settings
    assert cache_control == (
        f"public, max-age={settings.public_jwks_max_age}, "
        f"stale-if-error={settings.public_jwks_stale_if_error}"
    )
    assert etag.startswith('"') and not etag.startswith("W/")
    assert [key["kid"] for key in document["keys"]] == [kid]
    token = sign(private_pem, {"sub": "x"}, kid=kid, algorithm="EdDSA")
    assert jwt.decode(token, jwt.PyJWK(document["keys"][0]).key, algorithms=["EdDSA"])["sub"]
    # Nothing but public key members.
    assert set(document["keys"][0]) <= {"kty", "crv", "x", "kid", "alg", "use", "n", "e", "y"}
    # The same bytes and ETag as the authenticated route.
    async with http.get(
        f"/v1/environments/{environment}/jwks.json", headers=auth.headers
    ) as response:
        assert (await response.read(), response.headers["ETag"]) == (body, etag)
    async with http.head(public_path(environment)) as response:
        assert response.status == 200
        assert response.headers["ETag"] == etag
        assert await response.read() == b""


async def test_if_none_match_strong_weak_star_and_stale(
    http: aiohttp.ClientSession, auth: Credentials, environment: str
) -> None:
    await new_key(http, auth, "ES256")
    await opt(http, auth, environment, True)
    path = public_path(environment)
    async with http.get(path) as response:
        etag = response.headers["ETag"]
    for header in (etag, "W/" + etag, "*", f'"other", {etag}'):
        async with http.get(path, headers={"If-None-Match": header}) as response:
            assert response.status == 304, header
            assert response.headers["ETag"] == etag
            assert response.headers["Cache-Control"].startswith("public")
            assert await response.read() == b""
    for header in ('"other"', 'W/"other"', "garbage"):
        async with http.get(path, headers={"If-None-Match": header}) as response:
            assert response.status == 200, header
    # `*` matches only a resource that exists: not opted in is 404, not 304.
    async with http.get(public_path("env-nowhere"), headers={"If-None-Match": "*"}) as response:
        assert response.status == 404
    # A change of keys changes the ETag: the old one no longer answers 304.
    await new_key(http, auth, "EdDSA")
    async with http.get(path, headers={"If-None-Match": etag}) as response:
        assert response.status == 200
        assert response.headers["ETag"] != etag
        assert len((await response.json())["keys"]) == 2


async def test_never_another_environments_keys(
    http: aiohttp.ClientSession, issue_token: TokenFactory, environment: str
) -> None:
    other = environment + "-other"
    mine, theirs = await issue_token([environment]), await issue_token([other])
    my_kid, _, _ = await new_key(http, mine, "EdDSA")
    their_kid, _, _ = await new_key(http, theirs, "EdDSA")
    await opt(http, mine, environment, True)
    async with http.get(public_path(environment)) as response:
        assert [key["kid"] for key in (await response.json())["keys"]] == [my_kid]
    assert (await answer(http, public_path(other)))[0] == 404, "the other did not opt in"
    # Only a token with write on an environment may opt it in.
    async with http.put(
        f"/v1/environments/{other}/settings", headers=mine.headers, json={"public_jwks": True}
    ) as response:
        assert response.status == 403
    reader = await issue_token([other], [Scope.READ, Scope.VERIFY])
    async with http.put(
        f"/v1/environments/{other}/settings", headers=reader.headers, json={"public_jwks": True}
    ) as response:
        assert response.status == 403
    assert (await answer(http, public_path(other)))[0] == 404
    assert their_kid not in (await answer(http, public_path(environment)))[1]


async def test_settings_body_is_checked(
    http: aiohttp.ClientSession, auth: Credentials, environment: str
) -> None:
    for body in ({}, {"public_jwks": "yes"}, {"public_jwks": 1}, {"public_jwks": True, "x": 1}):
        async with http.put(
            f"/v1/environments/{environment}/settings", headers=auth.headers, json=body
        ) as response:
            assert response.status == 400, body


async def test_opting_out_stops_serving_within_the_bound(
    http: aiohttp.ClientSession, auth: Credentials, environment: str, server: Server
) -> None:
    """Another instance records the opt-out (here: straight to the database, past this
    instance's cache): this one stops serving within setting TTL + max data age."""
    await new_key(http, auth, "EdDSA")
    await opt(http, auth, environment, True)
    assert (await answer(http, public_path(environment)))[0] == 200
    records = server.public_jwks._records
    await records.set_public_jwks(environment, False)
    started = time.monotonic()
    bound = server.public_jwks.opt_out_bound
    while (await answer(http, public_path(environment)))[0] == 200:
        assert time.monotonic() - started < bound + 3.0, "still served past the bound"
        await asyncio.sleep(0.05)
    elapsed = time.monotonic() - started
    print(f"opt-out seen after {elapsed:.2f} s (bound {bound:.2f} s)")
    assert elapsed <= bound + 3.0
    # And the instance that records an opt-out stops at once.
    await opt(http, auth, environment, True)
    assert (await answer(http, public_path(environment)))[0] == 200
    await opt(http, auth, environment, False)
    assert (await answer(http, public_path(environment)))[0] == 404


async def test_anonymous_requests_are_limited_per_client_address(
    http: aiohttp.ClientSession, auth: Credentials, environment: str, server: Server
) -> None:
    await opt(http, auth, environment, True)
    limit = int(server.settings.public_jwks_per_client)
    statuses = []
    for _ in range(limit * 4):
        async with http.get(public_path(environment)) as response:
            statuses.append(response.status)
            if response.status == 429:
                assert float(response.headers["Retry-After"]) > 0
                break
    assert statuses[-1] == 429 and statuses[0] == 200
