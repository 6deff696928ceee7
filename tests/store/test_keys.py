"""The key queries against the real database."""

from __future__ import annotations

import aiohttp

from service.server import Server
from service.store.keys import PostgresKeyRecords
from tests.support.service import Credentials


async def test_key_pages_pages_through_every_key_in_change_order(
    server: Server, http: aiohttp.ClientSession, auth: Credentials, environment: str
) -> None:
    created = []
    for _ in range(5):
        async with http.post(
            "/system/v1/signing-keys", headers=auth.headers, json={"algorithm": "EdDSA"}
        ) as response:
            created.append((await response.json())["data"]["id"])
    pages = [
        [key.id for key in page]
        async for page in PostgresKeyRecords(server.database).pages(
            environment_id=environment, page_size=2
        )
    ]
    assert [len(page) for page in pages] == [2, 2, 1]
    assert [key_id for page in pages for key_id in page] == created
