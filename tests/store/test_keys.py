"""The key queries against the real database."""

from __future__ import annotations

import json
import random
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from service.core import crypto, listing
from service.core.requests import ListKeysRequest
from service.server import Server
from service.store import keys as keys_store
from service.store.database import Database
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


# --- Listing by keyset ----------------------------------------------------------------------

T0 = datetime(2030, 6, 1, tzinfo=UTC)


async def put_rows(
    database: Database, environment: str, stamps: list[datetime], *, algorithm: str = "EdDSA"
) -> list[str]:
    """Keys with the given created_at values, written directly: many may share one, as keys
    written in one transaction (``now()`` is its start) or one clock tick do. ``updated_at``
    is the database's ``now()``, as every write stamps it: the change feed's watermark
    follows it, and a row stamped in the future would hold every feed on this (shared)
    database past what is written now."""
    der = crypto.generate_key_pair("EdDSA").public_der
    ids = [secrets.token_urlsafe(12) for _ in stamps]

    async def op(conn: Any) -> None:
        await conn.executemany(
            "INSERT INTO signing_keys (id, environment_id, algorithm, public_key, fingerprint,"
            " status, source, created_at, updated_at) VALUES"
            " ($1, $2, $3, $4, 'f', 'active', 'generated', $5, now())",
            [(i, environment, algorithm, der, stamp) for i, stamp in zip(ids, stamps, strict=True)],
        )

    await database.write(op, idempotent=True)
    return ids


async def revoke_row(database: Database, key_id: str) -> None:
    async def op(conn: Any) -> None:
        await conn.execute(
            "UPDATE signing_keys SET status = 'revoked', revoked_at = now(), updated_at = now()"
            " WHERE id = $1",
            key_id,
        )

    await database.write(op, idempotent=True)


async def test_a_cursor_walk_neither_skips_nor_repeats_across_ties_inserts_and_revocations(
    server: Server, environment: str
) -> None:
    """40 keys on 3 distinct created_at values, walked 3 at a time while, between pages, keys
    are inserted at the cursor's own created_at (a tie), above the walk (newer) and below it
    (older), and keys not yet reached and keys already read are revoked."""
    database = server.database
    records = PostgresKeyRecords(database)
    rng = random.Random(13)
    stamps = [T0 + timedelta(seconds=rng.choice((0, 1, 2))) for _ in range(40)]
    originals = await put_rows(database, environment, stamps)
    request = ListKeysRequest(limit=3)
    seen: list[str] = []
    revoked_unseen: set[str] = set()
    older: list[str] = []
    pages = 0
    while True:
        page = await listing.read_page(records, environment, request)
        pages += 1
        seen.extend(key.id for key in page.keys)
        times = [key.created_at for key in page.keys]
        assert times == sorted(times, reverse=True), "newest first within a page"
        if page.next_cursor is None:
            break
        last = page.keys[-1]
        await put_rows(database, environment, [last.created_at])  # a tie: either side
        await put_rows(database, environment, [T0 + timedelta(days=1)])  # newer: not this walk
        older.extend(await put_rows(database, environment, [T0 - timedelta(seconds=pages)]))
        unseen = [
            key_id for key_id in originals if key_id not in seen and key_id not in revoked_unseen
        ]
        if unseen and pages % 2:
            victim = rng.choice(unseen)
            revoked_unseen.add(victim)
            await revoke_row(database, victim)
        await revoke_row(database, rng.choice(seen))  # already read: changes nothing ahead
        request = ListKeysRequest(limit=3, cursor=page.next_cursor)
    assert len(seen) == len(set(seen)), "no key twice"
    expected = set(originals) - revoked_unseen
    assert expected <= set(seen), f"skipped: {expected - set(seen)}"
    assert not revoked_unseen & set(seen), "a key revoked before it was reached is not listed"
    assert set(older) <= set(seen), "keys created below the cursor meanwhile are reached"
    assert pages >= 14


async def test_every_cursor_page_equals_the_numbered_page(server: Server, environment: str) -> None:
    """With nothing changing, page=1 then cursors read what page=1, 2, 3… read, ties and all."""
    records = PostgresKeyRecords(server.database)
    await put_rows(server.database, environment, [T0] * 7 + [T0 + timedelta(seconds=1)] * 4)
    by_number = [
        [
            key.id
            for key in (
                await listing.read_page(records, environment, ListKeysRequest(limit=4, page=n))
            ).keys
        ]
        for n in (1, 2, 3)
    ]
    by_cursor: list[list[str]] = []
    request = ListKeysRequest(limit=4)
    while True:
        page = await listing.read_page(records, environment, request)
        by_cursor.append([key.id for key in page.keys])
        if page.next_cursor is None:
            break
        request = ListKeysRequest(limit=4, cursor=page.next_cursor)
    assert by_cursor == by_number
    assert [len(page) for page in by_cursor] == [4, 4, 3], "the last page carries no cursor"


async def test_a_keyset_page_is_bounded_by_the_environment_index(
    server: Server, environment: str
) -> None:
    """The keyset bound is an index condition on (environment_id, created_at, id), so a deep
    page reads the same few index entries as the first, not every newer key (as OFFSET)."""
    plan_query = "EXPLAIN (FORMAT JSON) " + keys_store._LIST_AFTER

    async def op(conn: Any) -> Any:
        async with conn.transaction():
            await conn.execute("SET LOCAL enable_seqscan = off")
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            return await conn.fetchval(
                plan_query, environment, 10, 0, "active", None, None, None, T0, "x"
            )

    answer = await server.database.write(op, idempotent=True)
    plan = answer if isinstance(answer, str) else json.dumps(answer)  # asyncpg: json as text
    assert "signing_keys_by_environment" in plan, plan
    index_cond = json.loads(plan)[0]["Plan"]
    while "Index Cond" not in index_cond:
        index_cond = index_cond["Plans"][0]
    assert "created_at" in index_cond["Index Cond"], index_cond
    assert "Backward" in index_cond.get("Scan Direction", ""), "newest first, no sort"
