"""Key reads and JWK Sets over HTTP come from memory while the change feed is fresh, against
the real topology: the database is asked only on a miss, a stale feed or a consistency
token; JWK Sets are rendered once per change and a matching ``If-None-Match`` costs none;
a key's encoded answer is kept while its record and shown status hold."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from service.core import consistency, crypto
from service.core.models import AuditEvent, SigningKey
from service.http.keys import KeyAnswers
from service.server import Server
from tests.support.service import Credentials, TokenFactory

KEYS = "/system/v1/signing-keys"
CONSISTENCY = "X-Consistency-Token"


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            outcome = check()
            if outcome if isinstance(outcome, bool) else await outcome:
                return
            await asyncio.sleep(0.02)


def count_calls(monkeypatch: pytest.MonkeyPatch, target: Any, name: str) -> list[None]:
    """Count the calls of ``target.name`` (one entry per call) and let them through."""
    calls: list[None] = []
    original = getattr(target, name)

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(None)
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, counting)
    return calls


async def create(http: aiohttp.ClientSession, auth: Credentials, **body: Any) -> dict[str, Any]:
    async with http.post(KEYS, headers=auth.headers, json=body or None) as response:
        assert response.status == 201, await response.text()
        data: dict[str, Any] = (await response.json())["data"]
        return data


async def test_gets_under_load_do_not_reach_the_database(
    server: Server,
    http: aiohttp.ClientSession,
    auth: Credentials,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = await create(http, auth, algorithm="EdDSA")
    await eventually(server.changes.is_fresh)
    reads = count_calls(monkeypatch, server.key_records, "get")

    async def get(path: str) -> dict[str, Any]:
        async with http.get(path, headers=auth.headers) as response:
            assert response.status == 200, await response.text()
            data: dict[str, Any] = (await response.json())["data"]
            return data

    paths = [f"{KEYS}/{key['id']}", f"{KEYS}/{key['id']}/public-key"] * 100
    answers = await asyncio.gather(*(get(path) for path in paths))
    assert all(answer["id"] == key["id"] for answer in answers)
    assert answers[0]["public_key"] == key["public_key"]
    assert answers[1]["pem"] == key["public_key"] and answers[1]["jwk"]["kid"] == key["id"]
    # Every one from memory, unless the busy machine let the feed fall stale for a moment.
    assert len(reads) < len(paths) // 4, f"{len(reads)} of {len(paths)} reached the database"


async def test_a_revocation_the_feed_applies_is_seen_and_a_token_reads_past_the_cache(
    server: Server, http: aiohttp.ClientSession, auth: Credentials, environment: str
) -> None:
    key = await create(http, auth)
    path = f"{KEYS}/{key['id']}"
    async with http.get(path, headers=auth.headers) as response:
        assert response.status == 200  # cached here

    async def revoke_elsewhere() -> str:
        """As another instance would: straight to the store, not through this instance's
        key service (so its cache learns it from the feed); the write's token."""
        scope = consistency.bind(None)
        audit = AuditEvent(
            id="evt-" + key["id"][:12], environment_id=environment, key_id=key["id"],
            action="revoke", actor="elsewhere", api="cli", request_id=None,
        )  # fmt: skip
        assert await server.key_records.revoke(environment, key["id"], audit=audit)
        token = scope.token()
        assert token is not None
        return token

    token = await asyncio.create_task(revoke_elsewhere())  # its own consistency scope
    headers = {**auth.headers, CONSISTENCY: token}
    async with http.get(path, headers=headers) as response:
        assert response.status == 404, "with the write's token: never the lagging cache"

    async def gone() -> bool:
        async with http.get(path, headers=auth.headers) as response:
            return response.status == 404

    await eventually(gone)
    await eventually(server.changes.is_fresh)
    cached = server.key_cache.get(key["id"])
    assert cached is not None and cached.record.status == "revoked", "the feed applied it"


async def test_another_environments_cached_key_answers_like_a_missing_one(
    server: Server, http: aiohttp.ClientSession, issue_token: TokenFactory, environment: str
) -> None:
    alice, bob = await issue_token([environment]), await issue_token([environment + "-bob"])
    key = await create(http, alice)
    assert server.key_cache.get(key["id"]) is not None
    await eventually(server.changes.is_fresh)
    answers = []
    for key_id in (key["id"], "no-such-key"):
        async with http.get(f"{KEYS}/{key_id}", headers=bob.headers) as response:
            body = await response.json()
            answers.append((response.status, body["error"]["type"], body["error"]["messages"]))
    assert answers[0] == answers[1] and answers[0][0] == 404


async def test_jwks_is_rendered_once_per_change_and_304_costs_no_render(
    server: Server,
    http: aiohttp.ClientSession,
    auth: Credentials,
    environment: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = f"/v1/environments/{environment}/jwks.json"
    kept = await create(http, auth, algorithm="EdDSA")
    dropped = await create(http, auth, algorithm="ES256")
    await eventually(server.changes.is_fresh)
    documents = server.verifier.jwks_documents
    pages = count_calls(monkeypatch, server.key_records, "pages")
    renders = documents.renders

    async def fetch(**headers: str) -> tuple[int, bytes, str]:
        async with http.get(path, headers={**auth.headers, **headers}) as response:
            return response.status, await response.read(), response.headers["ETag"]

    answers = await asyncio.gather(*(fetch() for _ in range(20)))
    assert {(status, body) for status, body, _ in answers} == {(200, answers[0][1])}
    status, body, etag = answers[0]
    assert sorted(jwk["kid"] for jwk in json.loads(body)["keys"]) == sorted(
        [kept["id"], dropped["id"]]
    )
    assert documents.renders == renders + 1, "one render for twenty requests"
    assert pages == [], "from memory: the store was not read"

    opaque = etag.strip('"')
    for header in (etag, f'W/"{opaque}"', "*", f'"other", {etag}'):
        status, body, answered = await fetch(**{"If-None-Match": header})
        assert (status, body, answered) == (304, b"", etag), header
    assert (await fetch(**{"If-None-Match": '"other"'}))[0] == 200
    assert documents.renders == renders + 1

    async with http.delete(f"{KEYS}/{dropped['id']}", headers=auth.headers) as response:
        assert response.status == 204
    status, body, changed = await fetch(**{"If-None-Match": etag})
    assert status == 200 and changed != etag, "a revocation changes the document"
    assert [jwk["kid"] for jwk in json.loads(body)["keys"]] == [kept["id"]]
    assert documents.renders == renders + 2


def signing_key(**changes: Any) -> SigningKey:
    der = crypto.generate_key_pair("EdDSA").public_der
    fields: dict[str, Any] = {
        "id": "kid-1",
        "environment_id": "env-1",
        "algorithm": "EdDSA",
        "public_key": der,
        "fingerprint": crypto.fingerprint(der),
        "status": "active",
        "source": "generated",
        "name": None,
        "created_at": datetime(2025, 1, 1, tzinfo=UTC),
        "updated_at": datetime(2025, 1, 1, tzinfo=UTC),
        **changes,
    }
    return SigningKey(**fields)


def test_a_remembered_key_answer_shows_the_key_expired_from_its_expiry_on() -> None:
    """Before: the answer encoded while the key was active was served unchanged after its
    expiry (same record), so a GET showed "active" where the list, gRPC and JWKS did not."""
    now = [1_900_000_000.0]
    answers = KeyAnswers(clock=lambda: now[0])
    key = signing_key(expires_at=datetime.fromtimestamp(now[0] + 60, UTC))

    def status() -> str:
        return str(json.loads(answers.body(key))["data"]["status"])

    assert status() == "active"
    assert answers.body(key) is answers.body(key), "encoded once while nothing changes"
    now[0] += 60
    assert status() == "expired"


def test_key_answers_follow_the_record_and_stay_bounded() -> None:
    answers = KeyAnswers(size=2)
    key = signing_key()
    assert json.loads(answers.body(key))["data"]["name"] is None
    renamed = dataclasses.replace(key, name="renamed")
    assert json.loads(answers.body(renamed))["data"]["name"] == "renamed"
    equal = dataclasses.replace(renamed)  # the same record read again: the same answer
    assert answers.body(equal) is answers.body(renamed)
    for kid in ("kid-2", "kid-3"):
        answers.body(signing_key(id=kid))
    assert len(answers) == 2
