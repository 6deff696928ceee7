"""Token verification and JWKS over HTTP: every reason code and rule, with tokens made by
independent JOSE libraries (PyJWT, joserfc)."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import hashes, hmac
from joserfc import jwk as joserfc_jwk
from joserfc import jwt as joserfc_jwt

from service.core.models import Scope
from tests.support.service import Credentials, TokenFactory

KEYS = "/system/v1/signing-keys"
VERIFY = "/v1/tokens/verify"
JS_SIGNER = Path(__file__).resolve().parents[1] / "js" / "sign.mjs"
JWT_ALG = {"RS256": "RS256", "ES256": "ES256", "EdDSA": "EdDSA"}


async def new_key(
    http: aiohttp.ClientSession, auth: Credentials, algorithm: str = "RS256"
) -> tuple[str, bytes, dict[str, Any]]:
    async with http.post(KEYS, headers=auth.headers, json={"algorithm": algorithm}) as response:
        assert response.status == 201
        data = (await response.json())["data"]
    return data["id"], base64.b64decode(data["private_key"]), data


def sign(
    private_pem: bytes,
    claims: dict[str, Any],
    *,
    kid: str | None,
    algorithm: str = "RS256",
    kid_in_payload: bool = False,
) -> str:
    payload = {"exp": int(time.time()) + 300, **claims}
    headers = {}
    if kid_in_payload:
        payload["kid"] = kid
    elif kid is not None:
        headers["kid"] = kid
    return jwt.encode(payload, private_pem, algorithm=JWT_ALG[algorithm], headers=headers)


async def verify(
    http: aiohttp.ClientSession, auth: Credentials, token: str, **expectations: str
) -> dict[str, Any]:
    async with http.post(
        VERIFY, headers=auth.headers, json={"token": token, **expectations}
    ) as response:
        assert response.status == 200, await response.text()
        data: dict[str, Any] = (await response.json())["data"]
        return data


def b64(value: bytes) -> str:
    return base64.urlsafe_b64encode(value).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    parts = [json.dumps(header).encode(), json.dumps(payload).encode()]
    return ".".join([*map(b64, parts), b64(signature)])


@pytest.mark.parametrize("algorithm", ["RS256", "ES256", "EdDSA"])
async def test_tokens_from_pyjwt_verify_with_their_claims(
    http: aiohttp.ClientSession, auth: Credentials, environment: str, algorithm: str
) -> None:
    kid, private, _ = await new_key(http, auth, algorithm)
    token = sign(private, {"sub": "p1", "aud": "v"}, kid=kid, algorithm=algorithm)
    verdict = await verify(http, auth, token, audience="v", subject="p1")
    assert verdict["valid"] is True and verdict["reason"] is None
    assert verdict["key_id"] == kid and verdict["environment_id"] == environment
    assert verdict["claims"]["sub"] == "p1" and verdict["claims"]["aud"] == "v"


@pytest.mark.parametrize(("algorithm", "jose_alg"), [("RS256", "RS256"), ("ES256", "ES256")])
async def test_tokens_from_joserfc_verify(
    http: aiohttp.ClientSession, auth: Credentials, algorithm: str, jose_alg: str
) -> None:
    kid, private, _ = await new_key(http, auth, algorithm)
    key = joserfc_jwk.import_key(private.decode(), "RSA" if algorithm == "RS256" else "EC")
    token = joserfc_jwt.encode(
        {"alg": jose_alg, "kid": kid}, {"exp": int(time.time()) + 60, "sub": "s"}, key
    )
    assert (await verify(http, auth, token))["valid"] is True


async def test_kid_may_come_from_the_payload_as_the_reference_sdk_signs(
    http: aiohttp.ClientSession, auth: Credentials
) -> None:
    kid, private, _ = await new_key(http, auth)
    token = sign(private, {"sub": "playback", "aud": "t"}, kid=kid, kid_in_payload=True)
    assert jwt.get_unverified_header(token).get("kid") is None
    verdict = await verify(http, auth, token, audience="t")
    assert verdict["valid"] is True and verdict["key_id"] == kid


async def test_every_reason_code(
    http: aiohttp.ClientSession, auth: Credentials, environment: str
) -> None:
    kid, private, _ = await new_key(http, auth)
    other_kid, other_private, _ = await new_key(http, auth)
    now = int(time.time())
    cases: list[tuple[str, str, dict[str, str]]] = [
        ("malformed", "not-a-jwt", {}),
        ("malformed", "a.b.c", {}),
        ("malformed", forge({"alg": "RS256"}, {"exp": now + 60}), {}),  # no kid anywhere
        ("malformed", sign(private, {"exp": None}, kid=kid), {}),  # exp is required
        ("malformed", sign(private, {"exp": "tomorrow"}, kid=kid), {}),
        ("unknown_key", sign(private, {}, kid="noSuchKeyId"), {}),
        ("expired", sign(private, {"exp": now - 120}, kid=kid), {}),
        ("not_yet_valid", sign(private, {"nbf": now + 600}, kid=kid), {}),
        ("bad_signature", sign(other_private, {}, kid=kid), {}),
        ("wrong_audience", sign(private, {"aud": "t"}, kid=kid), {"audience": "v"}),
        ("wrong_audience", sign(private, {}, kid=kid), {"audience": "v"}),
        ("wrong_subject", sign(private, {"sub": "a"}, kid=kid), {"subject": "b"}),
        ("algorithm_mismatch", forge({"alg": "none", "kid": kid}, {"exp": now + 60}), {}),
        ("malformed", forge({"alg": [], "kid": kid}, {"exp": now + 60}), {}),
        ("malformed", f"{b64(b'[' * 1000)}.e30.AAAA", {}),
        ("malformed", sign(private, {"exp": 10**400}, kid=kid), {}),
        ("unknown_key", sign(private, {}, kid="no such kid!"), {}),
        ("algorithm_mismatch", forge({"alg": "ES256", "kid": kid}, {"exp": now + 60}), {}),
    ]
    for reason, token, expectations in cases:
        verdict = await verify(http, auth, token, **expectations)
        assert verdict["valid"] is False, (reason, token)
        assert verdict["reason"] == reason, (reason, verdict)
        assert verdict["claims"] is None
    # Within the clock-skew leeway (30 s by default), a just-expired token still verifies.
    assert (await verify(http, auth, sign(private, {"exp": now - 5}, kid=kid)))["valid"] is True
    async with http.delete(f"{KEYS}/{other_kid}", headers=auth.headers) as response:
        assert response.status == 204
    revoked = await verify(http, auth, sign(other_private, {}, kid=other_kid))
    assert revoked["reason"] == "revoked_key" and revoked["key_id"] == other_kid


async def test_a_signature_respelled_in_its_unused_bits_is_malformed(
    http: aiohttp.ClientSession, auth: Credentials
) -> None:
    """A 256-byte RS256 signature ends in a character with four unused bits: fifteen other
    spellings decode to the same bytes, and none of them may verify."""
    kid, private, _ = await new_key(http, auth)
    token = sign(private, {}, kid=kid)
    assert (await verify(http, auth, token))["valid"] is True
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(token[-1])
    for flipped in (last | 0b0001, last | 0b1000, last | 0b1111):
        respelled = token[:-1] + alphabet[flipped]
        assert respelled != token
        verdict = await verify(http, auth, respelled)
        assert (verdict["valid"], verdict["reason"]) == (False, "malformed")


async def test_hs256_signed_with_the_public_key_is_refused(
    http: aiohttp.ClientSession, auth: Credentials
) -> None:
    """The classic confusion: an HMAC 'signature' keyed with the (public) PEM."""
    kid, _, data = await new_key(http, auth)
    header, payload = {"alg": "HS256", "kid": kid}, {"exp": int(time.time()) + 60}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    mac = hmac.HMAC(data["public_key"].encode(), hashes.SHA256())
    mac.update(signing_input.encode())
    token = f"{signing_input}.{b64(mac.finalize())}"
    assert (await verify(http, auth, token))["reason"] == "algorithm_mismatch"


async def test_a_key_of_another_environment_never_verifies(
    http: aiohttp.ClientSession,
    issue_token: TokenFactory,
    auth: Credentials,
    environment: str,
) -> None:
    kid, private, _ = await new_key(http, auth)
    token = sign(private, {}, kid=kid)
    stranger = await issue_token(["env-stranger"], [Scope.VERIFY])
    verdict = await verify(http, stranger, token)
    assert verdict == {
        "valid": False,
        "reason": "unknown_key",
        "key_id": None,
        "environment_id": None,
        "claims": None,
    }, "another environment's key looks exactly like a missing one"
    async with http.post(
        VERIFY, headers=stranger.headers, json={"token": token, "environment_id": environment}
    ) as response:
        assert response.status == 403, "naming an environment the token does not cover"


async def test_verify_needs_the_verify_scope_and_bounds_the_token(
    http: aiohttp.ClientSession, issue_token: TokenFactory, environment: str
) -> None:
    reader = await issue_token([environment], [Scope.READ])
    async with http.post(VERIFY, headers=reader.headers, json={"token": "a.b.c"}) as response:
        assert response.status == 403
    verifier = await issue_token([environment], [Scope.VERIFY])
    async with http.post(VERIFY, headers=verifier.headers, json={"token": "a" * 9000}) as response:
        assert response.status == 413
    for body in ({}, {"token": 5}, {"token": "x", "audience": 7}, {"token": "x", "extra": 1}):
        async with http.post(VERIFY, headers=verifier.headers, json=body) as response:
            assert response.status == 400, body
            assert (await response.json())["error"]["type"] == "invalid_parameters"


async def test_jwks_lists_active_keys_with_etag_and_304(
    http: aiohttp.ClientSession, auth: Credentials, environment: str
) -> None:
    path = f"/v1/environments/{environment}/jwks.json"
    first, _, _ = await new_key(http, auth, "ES256")
    second, second_private, _ = await new_key(http, auth, "EdDSA")
    async with http.get(path, headers=auth.headers) as response:
        assert response.status == 200
        etag = response.headers["ETag"]
        assert "max-age" in response.headers["Cache-Control"]
        assert "private" in response.headers["Cache-Control"], "authenticated: no shared cache"
        document = await response.json()
    assert sorted(key["kid"] for key in document["keys"]) == sorted([first, second])
    assert all(key["use"] == "sig" and key["alg"] for key in document["keys"])
    jwk = next(key for key in document["keys"] if key["kid"] == second)
    token = sign(second_private, {"sub": "x"}, kid=second, algorithm="EdDSA")
    assert jwt.decode(token, jwt.PyJWK(jwk).key, algorithms=["EdDSA"])["sub"] == "x"

    async with http.get(path, headers={**auth.headers, **{"If-None-Match": etag}}) as response:
        assert response.status == 304
    async with http.delete(f"{KEYS}/{first}", headers=auth.headers) as response:
        assert response.status == 204
    async with http.get(path, headers={**auth.headers, **{"If-None-Match": etag}}) as response:
        assert response.status == 200, "a revocation changes the document and its ETag"
        assert response.headers["ETag"] != etag
        assert [key["kid"] for key in (await response.json())["keys"]] == [second]
    async with http.get(
        "/v1/environments/env-not-mine/jwks.json", headers=auth.headers
    ) as response:
        assert response.status == 403


def _sign_with_node(alg: str, pem: bytes, kid: str, *, kid_in_payload: bool) -> str:
    """Sign with panva/jose under Node.js (installed by `make test` into tests/js)."""
    request = {
        "alg": alg,
        "pem": pem.decode(),
        "kid": kid,
        "claims": {"exp": int(time.time()) + 60, "sub": "js"},
        "kidInPayload": kid_in_payload,
    }
    completed = subprocess.run(
        ["node", str(JS_SIGNER)],
        input=json.dumps(request).encode(),
        capture_output=True,
        check=True,
        timeout=30,
    )
    return completed.stdout.decode()


@pytest.mark.parametrize(
    ("algorithm", "kid_in_payload"), [("RS256", True), ("ES256", False), ("EdDSA", False)]
)
async def test_tokens_from_javascripts_jose_verify(
    http: aiohttp.ClientSession, auth: Credentials, algorithm: str, kid_in_payload: bool
) -> None:
    kid, private, _ = await new_key(http, auth, algorithm)
    token = await asyncio.to_thread(
        _sign_with_node, algorithm, private, kid, kid_in_payload=kid_in_payload
    )
    verdict = await verify(http, auth, token, subject="js")
    assert verdict["valid"] is True, verdict
    assert verdict["key_id"] == kid
