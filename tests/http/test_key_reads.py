"""Key reads and JWK Sets over HTTP come from memory while the change feed is fresh, against
the real topology: the database is asked only on a miss, a stale feed or a consistency
token; JWK Sets are rendered once per change and a matching ``If-None-Match`` costs none."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from service.core import consistency
from service.core.models import AuditEvent
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
