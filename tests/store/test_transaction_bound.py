"""The write transaction bound, on the real PostgreSQL topology (issue 10).

``updated_at = now()`` is a transaction's start; the change feed re-reads an overlap window
behind the newest stamp it has seen. A transaction held open longer than that window and
committed after faster, later ones would be invisible to it for ever. With every write
transaction bounded below the overlap on the server, such a transaction is either delivered
or refused (rolled back, never visible).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from harness import LocalTopology
from service.core import crypto
from service.core.changes import ChangeFeed
from service.core.keycache import KeyCache
from service.errors import DeadlineExceededError, DependencyError
from service.store.keys import PostgresKeyRecords
from service.store.routing import RoutedDatabase
from tests.locality.rig import running
from tests.support.service import rows

BOUND = 1.0
OVERLAP = 1.5
POLL = 0.1
CLIENT_TIMEOUT = 10.0  # far past the bound: only the server's bound acts
_PAIR = crypto.generate_key_pair("EdDSA")


@pytest.fixture
async def database(migrated_topology: LocalTopology) -> AsyncIterator[RoutedDatabase]:
    async with running(migrated_topology) as router:
        yield RoutedDatabase(router, write_bound=BOUND)


def new_feed(database: RoutedDatabase) -> ChangeFeed:
    cache = KeyCache(size=100_000, negative_size=10, negative_ttl=0.0)
    return ChangeFeed(PostgresKeyRecords(database), cache, poll_interval=POLL, overlap=OVERLAP)


async def insert_key(conn: Any, environment: str) -> str:
    """A key row as the store writes it: stamped with the transaction's start."""
    key_id = "bound-" + secrets.token_hex(8)
    await conn.execute(
        "INSERT INTO signing_keys (id, environment_id, algorithm, public_key, fingerprint,"
        " status, source, name, created_at, updated_at)"
        " VALUES ($1, $2, 'EdDSA', $3, $4, 'active', 'generated', NULL, now(), now())",
        key_id,
        environment,
        _PAIR.public_der,
        crypto.fingerprint(_PAIR.public_der),
    )
    return key_id


async def stored(topology: LocalTopology, key_id: str) -> bool:
    found = await rows(topology, "SELECT 1 FROM signing_keys WHERE id = $1", key_id)
    return bool(found)


def seen_by(feed: ChangeFeed, environment: str) -> set[str]:
    return {key.id for key in feed._recent.values() if key.environment_id == environment}


@pytest.mark.parametrize("hold", [0.3, 2.5], ids=["within-bound", "past-overlap"])
async def test_a_slow_write_committing_after_later_ones_is_delivered_or_refused(
    migrated_topology: LocalTopology, database: RoutedDatabase, environment: str, hold: float
) -> None:
    """A transaction holds its row open for ``hold`` seconds while fast writes commit and the
    feed polls; afterwards the feed has every fast key, and the slow key too unless the
    bound refused it — in which case it is nowhere in the database."""
    feed = new_feed(database)
    await feed.poll_once()
    inserted = asyncio.Event()
    release = asyncio.Event()
    slow_ids: list[str] = []

    async def slow(conn: Any) -> str:
        key_id = await insert_key(conn, environment)
        if not slow_ids:  # the first attempt holds; a retry (a new transaction) does not
            slow_ids.append(key_id)
            inserted.set()
            await release.wait()
        return key_id

    slow_write = asyncio.create_task(database.write(slow, idempotent=True, timeout=CLIENT_TIMEOUT))
    await asyncio.wait_for(inserted.wait(), 5.0)
    fast_ids: list[str] = []
    deadline = time.monotonic() + hold
    while time.monotonic() < deadline:
        fast_ids.append(
            await database.write(lambda conn: insert_key(conn, environment), idempotent=True)
        )
        await feed.poll_once()
        await asyncio.sleep(POLL)
    release.set()
    try:
        await slow_write
        refused = False
    except DependencyError:
        refused = True
    for _ in range(3):
        await feed.poll_once()
        await asyncio.sleep(POLL)

    seen = seen_by(feed, environment)
    assert set(fast_ids) <= seen
    if hold < BOUND:
        assert not refused, "a write within the bound commits"
    slow_id = slow_ids[0]
    if await stored(migrated_topology, slow_id):
        assert slow_id in seen, "a slow write that became visible must reach the feed"
    else:
        assert hold > BOUND, "only a write past the bound is refused"


async def run_write(database: RoutedDatabase, op: Callable[[Any], Awaitable[str]]) -> float:
    """Run ``op`` as a write; how long until it was refused (it must be)."""
    started = time.monotonic()
    with pytest.raises(DependencyError):
        await database.write(op, idempotent=True, timeout=CLIENT_TIMEOUT)
    return time.monotonic() - started


async def test_a_statement_outrunning_the_bound_is_cancelled_and_rolled_back(
    migrated_topology: LocalTopology, database: RoutedDatabase, environment: str
) -> None:
    written: list[str] = []

    async def slow_statement(conn: Any) -> str:
        written.append(await insert_key(conn, environment))
        await conn.execute("SELECT pg_sleep($1)", BOUND * 2)
        return written[-1]

    took = await run_write(database, slow_statement)
    assert took < BOUND + 1.0
    assert not await stored(migrated_topology, written[0])


async def test_short_statements_adding_up_past_the_bound_are_refused_at_commit(
    migrated_topology: LocalTopology, database: RoutedDatabase, environment: str
) -> None:
    written: list[str] = []

    async def many(conn: Any) -> str:
        written.append(await insert_key(conn, environment))
        for _ in range(3):
            await conn.execute("SELECT pg_sleep($1)", BOUND * 0.45)
        return written[-1]

    with pytest.raises(DeadlineExceededError, match="bound"):
        await database.write(many, idempotent=True, timeout=CLIENT_TIMEOUT)
    assert not await stored(migrated_topology, written[0])


async def test_a_client_silent_past_the_bound_loses_its_transaction(
    migrated_topology: LocalTopology, database: RoutedDatabase, environment: str
) -> None:
    """The client stalls mid-transaction: the server ends the session (idle in transaction)
    and nothing it wrote commits; the router's retry is a new transaction."""
    attempts: list[str] = []

    async def stalls(conn: Any) -> str:
        key_id = await insert_key(conn, environment)
        attempts.append(key_id)
        if len(attempts) == 1:
            await asyncio.sleep(BOUND * 1.5)
            await conn.execute("SELECT 1")  # the session is gone by now
        raise DeadlineExceededError("the retry stops here")

    await run_write(database, stalls)
    assert len(attempts) == 2, "the first attempt failed as a lost connection and was retried"
    assert not await stored(migrated_topology, attempts[0])
