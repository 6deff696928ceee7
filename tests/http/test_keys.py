"""Key management over HTTP against the real topology, as the reference API's clients use it."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from harness import LocalTopology
from service.core import crypto
from service.core.models import Scope
from service.server import Server
from tests.support.service import Credentials, TokenFactory, rows

KEYS = "/system/v1/signing-keys"


async def create(http: aiohttp.ClientSession, auth: Credentials, **body: Any) -> dict[str, Any]:
    async with http.post(KEYS, headers=auth.headers, json=body or None) as response:
        assert response.status == 201, await response.text()
        data: dict[str, Any] = (await response.json())["data"]
        return data


async def key_count(topology: LocalTopology, environment: str) -> int:
    result = await rows(
        topology, "SELECT count(*) FROM signing_keys WHERE environment_id = $1", environment
    )
    return int(result[0][0])


async def test_create_get_list_revoke_round_trip(
    http: aiohttp.ClientSession, auth: Credentials, environment: str
) -> None:
    created = await create(http, auth)
    assert isinstance(created["created_at"], str) and created["created_at"].isdigit()
    assert abs(int(created["created_at"]) - time.time()) < 120
    assert created["algorithm"] == "RS256" and created["status"] == "active"
    assert created["environment_id"] == environment

    async with http.get(f"{KEYS}/{created['id']}", headers=auth.headers) as response:
        assert response.status == 200
        fetched = (await response.json())["data"]
    assert fetched["id"] == created["id"]
    assert fetched["created_at"] == created["created_at"]
    assert "private_key" not in fetched

    async with http.get(KEYS, headers=auth.headers) as response:
        assert response.status == 200
        listed = (await response.json())["data"]
    assert [key["id"] for key in listed] == [created["id"]]

    async with http.delete(f"{KEYS}/{created['id']}", headers=auth.headers) as response:
        assert response.status == 204
    async with http.delete(f"{KEYS}/{created['id']}", headers=auth.headers) as response:
        assert response.status == 204, "revoking twice is harmless"
    async with http.get(f"{KEYS}/{created['id']}", headers=auth.headers) as response:
        assert response.status == 404, "deleted, as the reference platform answers"
    for status in ("revoked", "all"):
        params = {"status": status}
        async with http.get(f"{KEYS}/{created['id']}", headers=auth.headers, params=params) as r:
            assert r.status == 200
            revoked = (await r.json())["data"]
        assert revoked["status"] == "revoked" and revoked["revoked_at"] is not None
        async with http.get(KEYS, headers=auth.headers, params=params) as response:
            assert [key["id"] for key in (await response.json())["data"]] == [created["id"]]
    async with http.get(KEYS, headers=auth.headers) as response:
        assert (await response.json())["data"] == [], "no longer listed"


async def test_the_reference_sdks_round_trip_ends_with_a_404(
    http: aiohttp.ClientSession, auth: Credentials
) -> None:
    """The reference platform's official Python SDK exercises its signing keys so: create,
    list, get, delete, then get again, which must raise its NotFoundException (a 404). These
    are its requests, headers included: a create is a POST with no body but a JSON content
    type, every call asks for JSON, and list sends no query."""
    sdk = {**auth.headers, "Accept": "application/json", "User-Agent": "OpenAPI-Generator/python"}
    post = {**sdk, "Content-Type": "application/json"}
    async with http.post(KEYS, headers=post) as response:
        assert response.status == 201
        created = (await response.json())["data"]
    assert created["id"] and created["private_key"]
    async with http.get(KEYS, headers=sdk) as response:
        assert response.status == 200
        listed = (await response.json())["data"]
    assert listed[0]["id"] == listed[-1]["id"] == created["id"]
    assert listed[0].get("private_key") is None
    async with http.get(f"{KEYS}/{created['id']}", headers=sdk) as response:
        assert response.status == 200
        assert (await response.json())["data"].get("private_key") is None
    async with http.delete(f"{KEYS}/{created['id']}", headers=sdk) as response:
        assert response.status == 204
        assert await response.read() == b""
    async with http.get(f"{KEYS}/{created['id']}", headers=sdk) as response:
        assert response.status == 404
        assert (await response.json())["error"]["type"] == "not_found"


async def test_a_revoked_key_is_kept_for_its_verdicts_and_its_public_key_on_request(
    http: aiohttp.ClientSession, auth: Credentials
) -> None:
    created = await create(http, auth, algorithm="EdDSA")
    private_pem = base64.b64decode(created["private_key"])
    token = jwt.encode(
        {"exp": int(time.time()) + 60},
        private_pem,
        algorithm="EdDSA",
        headers={"kid": created["id"]},
    )
    async with http.delete(f"{KEYS}/{created['id']}", headers=auth.headers) as response:
        assert response.status == 204
    verify = {"token": token}
    async with http.post("/v1/tokens/verify", headers=auth.headers, json=verify) as response:
        verdict = (await response.json())["data"]
    assert (verdict["reason"], verdict["key_id"]) == ("revoked_key", created["id"])
    public_key = f"{KEYS}/{created['id']}/public-key"
    async with http.get(public_key, headers=auth.headers) as response:
        assert response.status == 404
    async with http.get(public_key, headers=auth.headers, params={"status": "all"}) as response:
        assert response.status == 200
        data = (await response.json())["data"]
    assert data["status"] == "revoked" and data["pem"] == created["public_key"]
    async with http.get(KEYS, headers=auth.headers, params={"status": "gone"}) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["messages"] == ["status must be one of active, revoked, all"]


@pytest.mark.parametrize(
    ("algorithm", "jwt_alg"), [("RS256", "RS256"), ("ES256", "ES256"), ("EdDSA", "EdDSA")]
)
async def test_private_key_signs_tokens_that_verify_with_the_stored_public_key(
    http: aiohttp.ClientSession, auth: Credentials, algorithm: str, jwt_alg: str
) -> None:
    created = await create(http, auth, algorithm=algorithm)
    private_pem = base64.b64decode(created["private_key"])
    assert private_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    token = jwt.encode(
        {"sub": "playback-id", "aud": "v", "exp": int(time.time()) + 60},
        private_pem,
        algorithm=jwt_alg,
        headers={"kid": created["id"]},
    )
    async with http.get(f"{KEYS}/{created['id']}/public-key", headers=auth.headers) as response:
        assert response.status == 200
        public = (await response.json())["data"]
    claims = jwt.decode(token, public["pem"], algorithms=[jwt_alg], audience="v")
    assert claims["sub"] == "playback-id"
    from_jwk = jwt.PyJWK(public["jwk"]).key
    assert jwt.decode(token, from_jwk, algorithms=[jwt_alg], audience="v")["sub"] == "playback-id"
    assert public["jwk"]["kid"] == created["id"] and public["jwk"]["alg"] == jwt_alg


async def test_no_private_key_material_anywhere_in_the_database(
    http: aiohttp.ClientSession, auth: Credentials, migrated_topology: LocalTopology
) -> None:
    created = [await create(http, auth, algorithm=alg) for alg in ("RS256", "ES256", "EdDSA")]
    secrets_seen = []
    for key in created:
        pem = base64.b64decode(key["private_key"])
        private = serialization.load_pem_private_key(pem, password=None)
        der = private.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        secrets_seen += [pem, der, key["private_key"].encode()]
    tables = await rows(
        migrated_topology,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
    )
    assert {"signing_keys", "audit_events", "access_tokens"} <= {t[0] for t in tables}
    for (table,) in tables:
        # Every column as text but bytea, which stays raw bytes: a value the client cannot
        # decode (an expiry of "infinity" another test stores) must not hide the rest.
        columns = await rows(
            migrated_topology,
            "SELECT column_name, data_type FROM information_schema.columns "
            f"WHERE table_schema = 'public' AND table_name = '{table}'",
        )
        selected = ", ".join(
            f'"{name}"' if kind == "bytea" else f'"{name}"::text' for name, kind in columns
        )
        for row in await rows(migrated_topology, f'SELECT {selected} FROM "{table}"'):
            for value in row:
                blob = value if isinstance(value, bytes) else str(value).encode()
                assert b"PRIVATE KEY" not in blob, table
                for secret in secrets_seen:
                    assert secret not in blob, f"private key material in {table}"


async def test_create_accepts_an_empty_body_with_or_without_a_json_content_type(
    http: aiohttp.ClientSession, auth: Credentials
) -> None:
    for headers in ({}, {"Content-Type": "application/json"}):
        async with http.post(KEYS, headers={**auth.headers, **headers}, data=b"") as response:
            assert response.status == 201, await response.text()
    # A bodiless GET/DELETE may carry a JSON content type too (one SDK always sends it).
    async with http.get(
        KEYS, headers={**auth.headers, **{"Content-Type": "application/json"}}
    ) as response:
        assert response.status == 200
        assert len((await response.json())["data"]) == 2


async def test_pages_are_one_based_and_a_page_past_the_end_is_empty(
    http: aiohttp.ClientSession, auth: Credentials
) -> None:
    ids = [(await create(http, auth, algorithm="EdDSA"))["id"] for _ in range(3)]
    seen = []
    for page in (1, 2):
        async with http.get(
            KEYS, headers=auth.headers, params={"limit": 2, "page": page}
        ) as response:
            assert response.status == 200
            seen += [key["id"] for key in (await response.json())["data"]]
    assert sorted(seen) == sorted(ids)
    assert seen[0] == ids[-1], "newest first"
    async with http.get(KEYS, headers=auth.headers, params={"limit": 2, "page": 3}) as response:
        assert response.status == 200
        assert (await response.json()) == {"data": []}


async def test_idempotency_key_makes_a_repeated_create_safe(
    http: aiohttp.ClientSession,
    auth: Credentials,
    environment: str,
    migrated_topology: LocalTopology,
) -> None:
    headers = {"Idempotency-Key": "create-once-123"}
    async with http.post(KEYS, headers={**auth.headers, **headers}) as response:
        assert response.status == 201
        first = (await response.json())["data"]
    async with http.post(KEYS, headers={**auth.headers, **headers}) as response:
        assert response.status == 409
        error = (await response.json())["error"]
    assert error["type"] == "conflict"
    assert error["key_id"] == first["id"], "the key it created, in a field of its own"
    assert error["environment_id"] == environment
    assert first["id"] in error["messages"][0]
    async with http.post(
        KEYS, headers={**auth.headers, **headers}, json={"algorithm": "ES256"}
    ) as response:
        assert response.status == 422, "a different request: not a replay"
        error = (await response.json())["error"]
    assert (error["type"], error["field"]) == ("idempotency_key_mismatch", "idempotency_key")
    assert "different request" in error["messages"][0]
    assert await key_count(migrated_topology, environment) == 1


async def test_an_import_repeated_with_its_idempotency_key_returns_the_stored_key(
    http: aiohttp.ClientSession,
    auth: Credentials,
    environment: str,
    migrated_topology: LocalTopology,
) -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    pem = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    headers = {**auth.headers, "Idempotency-Key": "import-once-1"}
    async with http.post(f"{KEYS}/import", headers=headers, json={"public_key": pem}) as response:
        assert response.status == 201
        first = (await response.json())["data"]
    async with http.post(f"{KEYS}/import", headers=headers, json={"public_key": pem}) as response:
        assert response.status == 200, "nothing new was stored: the stored key, as a success"
        again = (await response.json())["data"]
    assert again == first
    async with http.post(
        f"{KEYS}/import", headers=headers, json={"public_key": pem, "name": "other"}
    ) as response:
        assert response.status == 422
        assert (await response.json())["error"]["key_id"] == first["id"]
    assert await key_count(migrated_topology, environment) == 1


async def test_an_expiry_in_the_past_is_refused_and_a_passed_one_shows_expired(
    http: aiohttp.ClientSession, auth: Credentials, environment: str
) -> None:
    for expires_at in (0, int(time.time()) - 60):
        async with http.post(KEYS, headers=auth.headers, json={"expires_at": expires_at}) as r:
            assert r.status == 400
            error = (await r.json())["error"]
        assert (error["type"], error["field"]) == ("invalid_parameters", "expires_at")
        assert "in the past" in error["messages"][0]
    soon = int(time.time()) + 2
    key = await create(http, auth, expires_at=soon)
    assert key["status"] == "active"
    await asyncio.sleep(max(0.0, soon - time.time()) + 0.1)
    for path in (f"{KEYS}/{key['id']}", f"{KEYS}/{key['id']}/public-key"):
        async with http.get(path, headers=auth.headers) as response:
            assert (await response.json())["data"]["status"] == "expired", path


async def test_import_pem_and_jwk_then_look_up_the_public_key(
    http: aiohttp.ClientSession, auth: Credentials
) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP256R1())
    pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    async with http.post(
        f"{KEYS}/import", headers=auth.headers, json={"public_key": pem}
    ) as response:
        assert response.status == 201, await response.text()
        imported = (await response.json())["data"]
    assert imported["algorithm"] == "ES256" and imported["source"] == "imported"
    async with http.get(f"{KEYS}/{imported['id']}/public-key", headers=auth.headers) as response:
        public = (await response.json())["data"]
    assert public["pem"].strip() == pem.strip()

    # Round trip: the JWK we serve imports back as the same key (same fingerprint).
    jwk = {k: v for k, v in public["jwk"].items() if k in ("kty", "crv", "x", "y")}
    async with http.post(
        f"{KEYS}/import", headers=auth.headers, json={"public_key": jwk}
    ) as response:
        assert response.status == 201
        again = (await response.json())["data"]
    assert again["fingerprint"] == imported["fingerprint"] and again["id"] != imported["id"]

    token = jwt.encode({"exp": int(time.time()) + 60}, private, algorithm="ES256")
    assert jwt.decode(token, public["pem"], algorithms=["ES256"])["exp"] > time.time()


async def test_an_audit_event_records_every_create_import_and_revoke(
    http: aiohttp.ClientSession,
    auth: Credentials,
    environment: str,
    migrated_topology: LocalTopology,
) -> None:
    created = await create(http, auth, algorithm="EdDSA")
    async with http.delete(f"{KEYS}/{created['id']}", headers=auth.headers) as response:
        assert response.status == 204
    async with http.delete(f"{KEYS}/{created['id']}", headers=auth.headers) as response:
        assert response.status == 204
    events = await rows(
        migrated_topology,
        "SELECT action, actor, api, key_id FROM audit_events WHERE environment_id = $1"
        " ORDER BY created_at",
        environment,
    )
    assert [(e[0], e[1], e[2], e[3]) for e in events] == [
        ("create", auth.login, "http", created["id"]),
        ("revoke", auth.login, "http", created["id"]),
    ]


async def test_one_environment_never_sees_or_touches_another_environments_keys(
    http: aiohttp.ClientSession, issue_token: TokenFactory
) -> None:
    alice, bob = await issue_token(["env-alice-x"]), await issue_token(["env-bob-x"])
    key = await create(http, alice)
    for method in ("GET", "DELETE"):
        async with http.request(method, f"{KEYS}/{key['id']}", headers=bob.headers) as response:
            assert response.status == 404, "another environment's key does not exist for bob"
    async with http.get(KEYS, headers=bob.headers) as response:
        assert (await response.json())["data"] == []
    headers = {"X-Environment-Id": "env-alice-x"}
    async with http.get(f"{KEYS}/{key['id']}", headers={**bob.headers, **headers}) as response:
        assert response.status == 403
    async with http.get(f"{KEYS}/{key['id']}", headers=alice.headers) as response:
        assert (await response.json())["data"]["status"] == "active"


async def test_a_token_for_several_environments_must_name_one(
    http: aiohttp.ClientSession, issue_token: TokenFactory
) -> None:
    both = await issue_token(["env-multi-a", "env-multi-b"])
    async with http.post(KEYS, headers=both.headers) as response:
        assert response.status == 400, "a missing argument, not a refusal"
        error = (await response.json())["error"]
        assert (error["type"], error["field"]) == ("environment_required", "environment_id")
        assert "X-Environment-Id" in error["messages"][0]
    headers = {"X-Environment-Id": "env-multi-b"}
    async with http.post(KEYS, headers={**both.headers, **headers}) as response:
        assert response.status == 201
        assert (await response.json())["data"]["environment_id"] == "env-multi-b"
    async with http.get(
        KEYS, headers=both.headers, params={"environment_id": "env-multi-a"}
    ) as response:
        assert (await response.json())["data"] == []


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "error_type", "words"),
    [
        ("POST", KEYS, {"data": b"{nope"}, 400, "invalid_parameters", "not valid JSON"),
        ("POST", KEYS, {"json": [1, 2]}, 400, "invalid_parameters", "JSON object"),
        ("POST", KEYS, {"json": {"algorithm": "HS256"}}, 400, "invalid_parameters", "RS256"),
        ("POST", KEYS, {"json": {"algorithm": "none"}}, 400, "invalid_parameters", "algorithm"),
        ("POST", KEYS, {"json": {"colour": "red"}}, 400, "invalid_parameters", "colour"),
        ("POST", KEYS, {"json": {"name": 5}}, 400, "invalid_parameters", "name"),
        ("POST", KEYS, {"json": {"name": "x" * 201}}, 400, "invalid_parameters", "name"),
        ("POST", KEYS, {"data": b" " * 70_000}, 413, "payload_too_large", "too large"),
        (
            "POST",
            KEYS,
            {"headers": {"Idempotency-Key": "k" * 256}},
            400,
            "invalid_parameters",
            "Idem",
        ),
        ("GET", KEYS, {"params": {"limit": "abc"}}, 400, "invalid_parameters", "limit"),
        ("GET", KEYS, {"params": {"limit": "0"}}, 400, "invalid_parameters", "limit"),
        ("GET", KEYS, {"params": {"limit": "101"}}, 400, "invalid_parameters", "limit"),
        ("GET", KEYS, {"params": {"page": "0"}}, 400, "invalid_parameters", "page"),
        ("GET", KEYS, {"params": {"page": "-3"}}, 400, "invalid_parameters", "page"),
        ("GET", f"{KEYS}/unknownKeyId123", {}, 404, "not_found", "no signing key"),
        ("DELETE", f"{KEYS}/unknownKeyId123", {}, 404, "not_found", "no signing key"),
        ("GET", f"{KEYS}/bad%20id!", {}, 400, "invalid_parameters", "signing key id"),
        ("POST", f"{KEYS}/import", {"json": {}}, 400, "invalid_parameters", "public_key"),
        (
            "POST",
            f"{KEYS}/import",
            {"json": {"public_key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"}},
            400,
            "invalid_parameters",
            "PEM",
        ),
        (
            "POST",
            f"{KEYS}/import",
            {"json": {"public_key": "-----BEGIN PRIVATE KEY-----\nAA\n-----END PRIVATE KEY-----"}},
            400,
            "invalid_parameters",
            "never a private one",
        ),
        (
            "POST",
            f"{KEYS}/import",
            {"json": {"public_key": {"kty": "oct", "k": "c2VjcmV0"}}},
            400,
            "invalid_parameters",
            "private key (it has the member k)",
        ),
        ("POST", KEYS, {"data": b"[" * 1000}, 400, "invalid_parameters", "not valid JSON"),
        ("POST", KEYS, {"data": b'{"a": NaN}'}, 400, "invalid_parameters", "not valid JSON"),
        # A lone surrogate has no UTF-8 form: the decoder refuses it (it once became a key).
        ("POST", KEYS, {"data": b'{"\\ud800": 1}'}, 400, "invalid_parameters", "not valid JSON"),
        ("POST", KEYS, {"json": {"name": "a\u0000b"}}, 400, "invalid_parameters", "printable"),
        (
            "GET",
            KEYS,
            {"headers": {"X-Environment-Id": "bad env"}},
            400,
            "invalid_parameters",
            "environment id",
        ),
        (
            "POST",
            KEYS,
            {"json": {"expires_at": 1}},
            400,
            "invalid_parameters",
            "expires_at is in the past",
        ),
        ("GET", "/system/v1/nothing-here", {}, 404, "not_found", "GET"),
        ("PUT", KEYS, {}, 405, "method_not_allowed", "PUT"),
    ],
)
async def test_bad_input_gets_a_clear_error_and_changes_nothing(
    http: aiohttp.ClientSession,
    auth: Credentials,
    environment: str,
    migrated_topology: LocalTopology,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
    error_type: str,
    words: str,
) -> None:
    headers = {**auth.headers, **kwargs.pop("headers", {})}
    async with http.request(method, path, headers=headers, **kwargs) as response:
        assert response.status == status, await response.text()
        body = await response.json()
    assert body["error"]["type"] == error_type
    assert any(words in message for message in body["error"]["messages"]), body
    assert await key_count(migrated_topology, environment) == 0


async def test_credentials_missing_wrong_or_insufficient(
    http: aiohttp.ClientSession, issue_token: TokenFactory, environment: str
) -> None:
    async with http.get(KEYS) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Basic")
        assert (await response.json())["error"]["type"] == "unauthorized"
    good = await issue_token([environment], [Scope.READ])
    for bad in (
        Credentials(good.login, "wrong-secret"),
        Credentials("skt_unknown", "whatever"),
    ):
        async with http.get(KEYS, headers=bad.headers) as response:
            assert response.status == 401
    for header in ("Basic !!!notbase64", "Digest abc", "Bearer no-colon"):
        async with http.get(KEYS, headers={"Authorization": header}) as response:
            assert response.status == 401
    async with http.get(KEYS, headers=good.headers) as response:
        assert response.status == 200
    bearer = {"Authorization": f"Bearer {good.login}:{good.password}"}
    async with http.get(KEYS, headers=bearer) as response:
        assert response.status == 200
    async with http.post(KEYS, headers=good.headers) as response:
        assert response.status == 403, "read scope cannot create"
        assert "write" in (await response.json())["error"]["messages"][0]
    other = await issue_token(["env-someone-else"], [Scope.READ, Scope.WRITE])
    async with http.get(
        KEYS, headers={**other.headers, **{"X-Environment-Id": environment}}
    ) as response:
        assert response.status == 403


async def test_key_generation_runs_off_the_event_loop_thread(
    http: aiohttp.ClientSession, auth: Credentials, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RSA generation takes 30-160 ms here: it must never run on the event loop's thread."""
    threads: list[int] = []
    real = crypto.generate_key_pair

    def recording(algorithm: crypto.Algorithm) -> crypto.KeyPair:
        threads.append(threading.get_ident())
        return real(algorithm)

    monkeypatch.setattr(crypto, "generate_key_pair", recording)
    await asyncio.gather(*(create(http, auth) for _ in range(3)))
    assert len(threads) == 3
    assert threading.get_ident() not in threads


async def test_hostile_credentials_never_reach_the_database_or_region_health(
    http: aiohttp.ClientSession, server: Server
) -> None:
    """Bytes asyncpg cannot encode once made a token id look like a dead connection."""
    hostile = [
        "Bearer clos\xff:x",  # decoded by aiohttp as a lone surrogate
        "Basic " + base64.b64encode(b"\x00:x").decode(),
        "Bearer skt_" + "A" * 200 + ":x",
    ]
    for _ in range(5):
        for header in hostile:
            async with http.get(KEYS, headers={"Authorization": header}) as response:
                assert response.status == 401, header
    regions = server.database.status().to_dict()["regions"]
    assert all(region["state"] == "up" for region in regions)
    assert all(region["last_error"] is None for region in regions), regions


async def test_the_audit_trail_records_the_request_id_the_response_carries(
    http: aiohttp.ClientSession,
    auth: Credentials,
    environment: str,
    migrated_topology: LocalTopology,
) -> None:
    async with http.post(KEYS, headers=auth.headers) as response:
        served_id = response.headers["X-Request-Id"]
    events = await rows(
        migrated_topology,
        "SELECT request_id FROM audit_events WHERE environment_id = $1",
        environment,
    )
    assert events == [(served_id,)]


# --- Cursors, filters, batch get ------------------------------------------------------------


async def list_json(
    http: aiohttp.ClientSession, auth: Credentials, url: str
) -> tuple[int, dict[str, Any], str | None]:
    async with http.get(url, headers=auth.headers) as response:
        return response.status, await response.json(), response.headers.get("Link")


async def test_a_cursor_walk_follows_link_rel_next_and_matches_the_numbered_pages(
    http: aiohttp.ClientSession, auth: Credentials
) -> None:
    ids = [(await create(http, auth, algorithm="EdDSA"))["id"] for _ in range(5)]
    status, first, link = await list_json(http, auth, f"{KEYS}?limit=2&algorithm=EdDSA")
    assert status == 200 and link is not None
    walked = [key["id"] for key in first["data"]]
    pages = 1
    while link is not None:
        assert link.endswith('>; rel="next"') and link.startswith(f"<{KEYS}?")
        target = link[1 : link.index(">")]
        assert "limit=2" in target and "algorithm=EdDSA" in target and "page=" not in target
        status, body, link = await list_json(http, auth, target)
        assert status == 200
        walked.extend(key["id"] for key in body["data"])
        pages += 1
        assert ("next_cursor" in body) == (link is not None)
    assert walked == ids[::-1] and pages == 3, "newest first, no empty last page"
    numbered: list[str] = []
    for page in (1, 2, 3):
        _, body, _ = await list_json(http, auth, f"{KEYS}?limit=2&page={page}")
        numbered.extend(key["id"] for key in body["data"])
    assert numbered == walked, "Mux's pages unchanged, and in the same order"


async def test_list_filters_and_their_mistakes(
    http: aiohttp.ClientSession, auth: Credentials
) -> None:
    rs = await create(http, auth, algorithm="RS256", expires_at=4_000_000_000)
    ed = await create(http, auth, algorithm="EdDSA")

    async def ids(query: str) -> list[str]:
        status, body, _ = await list_json(http, auth, f"{KEYS}?{query}")
        assert status == 200, body
        return [key["id"] for key in body["data"]]

    assert await ids("algorithm=RS256") == [rs["id"]]
    assert await ids("source=generated") == [ed["id"], rs["id"]]
    assert await ids("source=imported") == []
    assert await ids("expires_before=4000000001") == [rs["id"]]
    assert await ids("expires_before=4000000000") == []
    for query, words in (
        ("algorithm=HS256", "algorithm must be one of"),
        ("source=stolen", "source must be one of"),
        ("expires_before=soon", "expires_before must be Unix seconds"),
        ("cursor=%%%", "cursor is malformed"),
        ("cursor=eyJ2IjoxfQ", "cursor is malformed"),
        ("page=2&cursor=abc", "page and cursor cannot be combined"),
    ):
        status, body, _ = await list_json(http, auth, f"{KEYS}?{query}")
        assert status == 400, query
        assert body["error"]["type"] == "invalid_parameters"
        assert any(words in message for message in body["error"]["messages"]), (query, body)


async def test_a_cursor_is_refused_for_other_filters(
    http: aiohttp.ClientSession, auth: Credentials
) -> None:
    for _ in range(2):
        await create(http, auth, algorithm="EdDSA")
    _, body, _ = await list_json(http, auth, f"{KEYS}?limit=1&algorithm=EdDSA")
    cursor = body["next_cursor"]
    assert isinstance(cursor, str)
    status, _, _ = await list_json(http, auth, f"{KEYS}?limit=1&algorithm=EdDSA&cursor={cursor}")
    assert status == 200
    for changed in ("", "&algorithm=RS256", "&status=all", "&source=generated"):
        base = f"{KEYS}?limit=1&cursor={cursor}"
        status, body, _ = await list_json(
            http, auth, base + (changed or "&algorithm=EdDSA&expires_before=1")
        )
        assert status == 400, changed
        assert "other filters" in body["error"]["messages"][0]


async def test_batch_get_reports_other_environments_keys_as_not_found(
    http: aiohttp.ClientSession, auth: Credentials, issue_token: TokenFactory, environment: str
) -> None:
    mine = [(await create(http, auth, algorithm="EdDSA"))["id"] for _ in range(2)]
    other = await issue_token([environment + "-other"])
    theirs = await create(http, other, algorithm="EdDSA")
    async with http.delete(f"{KEYS}/{mine[1]}", headers=auth.headers) as response:
        assert response.status == 204
    missing = "no-such-key"
    wanted = [theirs["id"], mine[1], missing, mine[0]]
    url = f"{KEYS}:batchGet?ids={','.join(wanted)}"
    status, body, _ = await list_json(http, auth, url)
    assert status == 200
    assert [key["id"] for key in body["data"]] == [mine[0]]
    assert body["not_found"] == [theirs["id"], mine[1], missing], "in the order asked"
    assert "private_key" not in body["data"][0]
    _, body, _ = await list_json(http, auth, url + "&status=all")
    assert [key["id"] for key in body["data"]] == [mine[1], mine[0]]
    repeated = f"{KEYS}:batchGet?ids={mine[0]}&ids={mine[0]}"
    _, body, _ = await list_json(http, auth, repeated)
    assert [key["id"] for key in body["data"]] == [mine[0]], "a repeated id is read once"
    for query in ("", "?ids=", "?ids=a/b", "?ids=" + ",".join(f"k{i}" for i in range(101))):
        status, body, _ = await list_json(http, auth, f"{KEYS}:batchGet{query}")
        assert status == 400, (query, body)


AUDIT = "/system/v1/audit-events"


async def test_audit_events_filtered_and_paged_with_no_secret(
    http: aiohttp.ClientSession, auth: Credentials, issue_token: TokenFactory, environment: str
) -> None:
    first = await create(http, auth, algorithm="EdDSA")
    second = await create(http, auth, algorithm="EdDSA")
    async with http.delete(f"{KEYS}/{first['id']}", headers=auth.headers) as response:
        assert response.status == 204
    other = await issue_token([environment + "-other"])
    await create(http, other, algorithm="EdDSA")

    status, body, link = await list_json(http, auth, f"{AUDIT}?limit=2")
    assert status == 200 and link is not None
    assert [(e["action"], e["key_id"]) for e in body["data"]] == [
        ("revoke", first["id"]),
        ("create", second["id"]),
    ]
    event = body["data"][0]
    assert event["actor"] == auth.login and event["api"] == "http"
    assert event["created_at"].isdigit() and event["environment_id"] == environment
    assert auth.password not in json.dumps(body) and "private" not in json.dumps(body)
    status, rest, link = await list_json(http, auth, link[1 : link.index(">")])
    assert [(e["action"], e["key_id"]) for e in rest["data"]] == [("create", first["id"])]
    assert link is None and "next_cursor" not in rest, "the other environment's is not here"

    status, body, _ = await list_json(http, auth, f"{AUDIT}?key_id={first['id']}&action=create")
    assert [e["key_id"] for e in body["data"]] == [first["id"]]
    status, body, _ = await list_json(http, auth, f"{AUDIT}?actor=skt_nobody")
    assert body["data"] == []
    now = int(time.time())
    status, body, _ = await list_json(http, auth, f"{AUDIT}?since={now + 120}")
    assert body["data"] == []
    status, body, _ = await list_json(http, auth, f"{AUDIT}?until={now + 120}&since={now - 120}")
    assert len(body["data"]) == 3
    for query in ("action=delete", "since=yesterday", "key_id=a/b", "cursor=zz", "limit=0"):
        status, body, _ = await list_json(http, auth, f"{AUDIT}?{query}")
        assert status == 400, query
