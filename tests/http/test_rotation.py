"""Safe rotation over HTTP against the real topology: not_before on create and import, the
rotate route, PATCH (rename, shorten) and the current key, with tokens verified by the
service and the JWK Set read as a relying party does."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import aiohttp
import jwt

from service.core import crypto
from tests.support.service import Credentials

KEYS = "/system/v1/signing-keys"


async def create(http: aiohttp.ClientSession, auth: Credentials, **body: Any) -> dict[str, Any]:
    async with http.post(KEYS, headers=auth.headers, json=body or None) as response:
        assert response.status == 201, await response.text()
        data: dict[str, Any] = (await response.json())["data"]
        return data


async def verify(http: aiohttp.ClientSession, auth: Credentials, key: dict[str, Any]) -> Any:
    token = jwt.encode(
        {"exp": int(time.time()) + 600, "sub": "s"},
        base64.b64decode(key["private_key"]),
        algorithm=key["algorithm"],
        headers={"kid": key["id"]},
    )
    async with http.post("/v1/tokens/verify", headers=auth.headers, json={"token": token}) as r:
        assert r.status == 200, await r.text()
        return (await r.json())["data"]


async def jwks_ids(http: aiohttp.ClientSession, auth: Credentials, environment: str) -> set[str]:
    async with http.get(
        f"/v1/environments/{environment}/jwks.json", headers=auth.headers
    ) as response:
        assert response.status == 200
        return {key["kid"] for key in (await response.json())["keys"]}


async def current(http: aiohttp.ClientSession, auth: Credentials) -> tuple[int, Any]:
    async with http.get(KEYS + ":current", headers=auth.headers) as response:
        return response.status, await response.json()


async def test_a_key_with_a_future_not_before_is_published_but_does_not_verify(
    http: aiohttp.ClientSession, auth: Credentials, environment: str
) -> None:
    start = int(time.time()) + 3600
    later = await create(http, auth, algorithm="EdDSA", not_before=start)
    assert later["not_before"] == str(start) and later["rotated_to"] is None
    assert later["id"] in await jwks_ids(http, auth, environment)
    verdict = await verify(http, auth, later)
    assert (verdict["valid"], verdict["reason"]) == (False, "key_not_yet_valid")
    async with http.get(f"{KEYS}/{later['id']}", headers=auth.headers) as response:
        assert (await response.json())["data"]["not_before"] == str(start)
    pem = crypto.public_key_pem(crypto.generate_key_pair("EdDSA").public_der)
    async with http.post(
        KEYS + "/import", headers=auth.headers, json={"public_key": pem, "not_before": start}
    ) as response:
        assert response.status == 201
        assert (await response.json())["data"]["not_before"] == str(start)
    async with http.post(
        KEYS, headers=auth.headers, json={"not_before": start, "expires_at": start}
    ) as response:
        assert response.status == 400


async def test_rotate_then_the_current_key_and_verification_follow(
    http: aiohttp.ClientSession, auth: Credentials, environment: str
) -> None:
    old = await create(http, auth, algorithm="ES256")
    status, body = await current(http, auth)
    assert (status, body["data"]["id"]) == (200, old["id"])
    async with http.post(
        f"{KEYS}/{old['id']}/rotate",
        headers={**auth.headers, "Idempotency-Key": "rotate-1"},
        json={"grace_period_seconds": 600},
    ) as response:
        assert response.status == 201, await response.text()
        assert response.headers["X-Consistency-Token"]
        rotated = (await response.json())["data"]
        assert response.headers["Location"] == f"{KEYS}/{rotated['id']}"
    previous = rotated.pop("previous_key")
    assert rotated["algorithm"] == "ES256" and rotated["private_key"]
    assert previous["id"] == old["id"] and previous["rotated_to"] == rotated["id"]
    expiry = int(previous["expires_at"])
    assert abs(expiry - (time.time() + 600)) < 60
    assert (await verify(http, auth, rotated))["valid"]
    assert (await verify(http, auth, old))["valid"], "the old key verifies during the grace"
    status, body = await current(http, auth)
    assert (status, body["data"]["id"]) == (200, rotated["id"])
    assert {old["id"], rotated["id"]} <= await jwks_ids(http, auth, environment)

    # Replayed with its idempotency key: names the key it created; stores nothing more.
    async with http.post(
        f"{KEYS}/{old['id']}/rotate",
        headers={**auth.headers, "Idempotency-Key": "rotate-1"},
        json={"grace_period_seconds": 600},
    ) as response:
        assert response.status == 409
        assert rotated["id"] in await response.text()
    # Rotated once: another rotation of the old key is refused, naming its successor.
    async with http.post(f"{KEYS}/{old['id']}/rotate", headers=auth.headers) as response:
        assert response.status == 409
        assert rotated["id"] in await response.text()
    async with http.get(KEYS + "?status=all&limit=100", headers=auth.headers) as response:
        assert len((await response.json())["data"]) == 2


async def test_rotating_a_revoked_or_missing_key_is_refused(
    http: aiohttp.ClientSession, auth: Credentials
) -> None:
    key = await create(http, auth, algorithm="EdDSA")
    async with http.delete(f"{KEYS}/{key['id']}", headers=auth.headers) as response:
        assert response.status == 204
    async with http.post(f"{KEYS}/{key['id']}/rotate", headers=auth.headers) as response:
        assert response.status == 409
    async with http.post(f"{KEYS}/nope/rotate", headers=auth.headers) as response:
        assert response.status == 404
    for body in ({"grace_period_seconds": 1}, {"grace_period_seconds": "x"}, {"bogus": 1}):
        async with http.post(
            f"{KEYS}/{key['id']}/rotate", headers=auth.headers, json=body
        ) as response:
            assert response.status == 400, body


async def test_patch_renames_and_shortens_and_the_verifier_sees_it(
    http: aiohttp.ClientSession, auth: Credentials
) -> None:
    far = int(time.time()) + 86400
    key = await create(http, auth, algorithm="EdDSA", name="a", expires_at=far)
    async with http.patch(
        f"{KEYS}/{key['id']}", headers=auth.headers, json={"name": "b", "expires_at": far - 60}
    ) as response:
        assert response.status == 200, await response.text()
        assert response.headers["X-Consistency-Token"]
        updated = (await response.json())["data"]
    assert (updated["name"], updated["expires_at"]) == ("b", str(far - 60))
    async with http.patch(
        f"{KEYS}/{key['id']}", headers=auth.headers, json={"expires_at": far}
    ) as response:
        assert response.status == 400, "never lengthened"
    async with http.patch(
        f"{KEYS}/{key['id']}", headers=auth.headers, json={"expires_at": None}
    ) as response:
        assert response.status == 400, "removing the expiry would lengthen it to never"
        assert (await response.json())["error"]["field"] == "expires_at"
    async with http.patch(
        f"{KEYS}/{key['id']}", headers=auth.headers, json={"name": None}
    ) as response:
        assert (await response.json())["data"]["name"] is None
    # Shortened to a moment just ahead: the verifier refuses the key once it passes.
    soon = int(time.time()) + 2
    async with http.patch(
        f"{KEYS}/{key['id']}", headers=auth.headers, json={"expires_at": soon}
    ) as response:
        assert response.status == 200
    while time.time() < soon + 1:
        await asyncio.sleep(0.2)
    assert (await verify(http, auth, key))["reason"] == "revoked_key"


async def test_the_current_route_is_not_a_key_id(
    http: aiohttp.ClientSession, auth: Credentials
) -> None:
    status, body = await current(http, auth)
    assert status == 404, body
    # "current" as a key id is still just a key id.
    async with http.get(f"{KEYS}/current", headers=auth.headers) as response:
        assert response.status == 404
