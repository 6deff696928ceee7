"""The ports' contract, checked against both implementations: the in-memory one the core's
unit tests use, and the PostgreSQL one (on the shared local topology). A check that passes
on one and fails on the other means the fake has drifted from the SQL."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from service.cli import open_database
from service.core import crypto
from service.core.auth import new_access_token
from service.core.listing import AuditFilter, KeyFilter, Position
from service.core.models import AuditEvent, Scope, SigningKey
from service.core.ports import IdempotencyClaim, KeyRecords, TokenRecords
from service.settings import Settings
from service.store.keys import PostgresKeyRecords
from service.store.tokens import PostgresTokenRecords
from tests.support.memory import MemoryKeyRecords, MemoryTokenRecords
from tests.support.service import service_env

# A caller's placeholder timestamps, which the store must replace with its own.
PLACEHOLDER = datetime(2001, 1, 1, tzinfo=UTC)
PUBLIC_DER = crypto.generate_key_pair("EdDSA").public_der


@dataclass(frozen=True)
class Backend:
    """One implementation of the ports, and how to read its audit trail (not a port: only
    the database and the tests read it)."""

    keys: KeyRecords
    tokens: TokenRecords
    audit_actions: Callable[[str], Awaitable[list[str]]]


@pytest.fixture(params=["memory", "postgres"])
def postgres(request: pytest.FixtureRequest) -> Settings | None:
    """Settings to reach the shared topology, or ``None`` for the in-memory implementation
    (which then needs no topology at all)."""
    if request.param == "memory":
        return None
    return Settings.from_env(service_env(request.getfixturevalue("migrated_topology")))


@pytest.fixture
async def backend(postgres: Settings | None) -> AsyncIterator[Backend]:
    if postgres is None:
        memory = MemoryKeyRecords()

        async def memory_audit(key_id: str) -> list[str]:
            return [event.action for event in memory.audit_trail(key_id)]

        yield Backend(memory, MemoryTokenRecords(), memory_audit)
        return
    async with open_database(postgres, writable=True) as database:

        async def postgres_audit(key_id: str) -> list[str]:
            async def op(conn: Any) -> list[str]:
                rows = await conn.fetch(
                    "SELECT action FROM audit_events WHERE key_id = $1 ORDER BY created_at, id",
                    key_id,
                )
                return [row["action"] for row in rows]

            return await database.read(op)

        yield Backend(PostgresKeyRecords(database), PostgresTokenRecords(database), postgres_audit)


@pytest.fixture
def env() -> str:
    """A fresh environment per test: the PostgreSQL database is shared by the whole run."""
    return "env-" + secrets.token_hex(6)


def new_key(environment_id: str, **changes: Any) -> SigningKey:
    fields: dict[str, Any] = {
        "id": secrets.token_urlsafe(24),
        "environment_id": environment_id,
        "algorithm": "EdDSA",
        "public_key": PUBLIC_DER,
        "fingerprint": crypto.fingerprint(PUBLIC_DER),
        "status": "active",
        "source": "generated",
        "name": None,
        "created_at": PLACEHOLDER,
        "updated_at": PLACEHOLDER,
    }
    fields.update(changes)
    return SigningKey(**fields)


def event(key: SigningKey, action: str = "create") -> AuditEvent:
    return AuditEvent(
        id=secrets.token_urlsafe(16),
        environment_id=key.environment_id,
        key_id=key.id,
        action=action,  # type: ignore[arg-type]
        actor="skt_contract",
        api="cli",
        request_id=None,
    )


async def insert(backend: Backend, key: SigningKey) -> SigningKey:
    outcome = await backend.keys.insert(key, audit=event(key))
    assert outcome.key is not None
    return outcome.key


async def test_an_insert_stores_an_active_key_stamped_by_the_store(
    backend: Backend, env: str
) -> None:
    key = new_key(env, name="k", expires_at=PLACEHOLDER + timedelta(days=9000))
    stored = await insert(backend, key)
    assert stored.status == "active" and stored.revoked_at is None
    assert stored.created_at == stored.updated_at != PLACEHOLDER
    assert (stored.id, stored.name, stored.expires_at) == (key.id, "k", key.expires_at)
    assert stored.public_key == PUBLIC_DER
    assert await backend.keys.get(key.id) == stored
    assert await backend.keys.get(key.id, environment_id=env) == stored
    assert await backend.keys.get(key.id, environment_id=env + "-other") is None
    assert await backend.keys.get("no-such-key") is None


async def test_repeating_an_insert_lands_it_once(backend: Backend, env: str) -> None:
    """What the router does after an ambiguous commit: the same key, the same event."""
    key = new_key(env)
    audit = event(key)
    first = await backend.keys.insert(key, audit=audit)
    again = await backend.keys.insert(key, audit=audit)
    assert again.key == first.key and again.replayed_key_id is None
    assert await backend.audit_actions(key.id) == ["create"]


async def test_an_idempotency_claim_names_the_first_key_per_environment(
    backend: Backend, env: str
) -> None:
    claim = IdempotencyClaim("retry-me", b"\x01" * 32)
    first = new_key(env)
    stored = (await backend.keys.insert(first, audit=event(first), idempotency=claim)).key
    assert stored is not None

    retried = await backend.keys.insert(first, audit=event(first), idempotency=claim)
    assert retried.key == stored and retried.replayed_key_id is None, "its own claim"

    second = new_key(env)
    replay = await backend.keys.insert(second, audit=event(second), idempotency=claim)
    assert (replay.key, replay.replayed_key_id, replay.request_matches) == (None, first.id, True)
    changed = IdempotencyClaim("retry-me", b"\x02" * 32)
    conflict = await backend.keys.insert(second, audit=event(second), idempotency=changed)
    assert (conflict.replayed_key_id, conflict.request_matches) == (first.id, False)
    assert await backend.keys.get(second.id) is None, "a replayed claim stores nothing"
    assert await backend.audit_actions(second.id) == []

    elsewhere = new_key(env + "-b")
    other = await backend.keys.insert(elsewhere, audit=event(elsewhere), idempotency=claim)
    assert other.key is not None and other.replayed_key_id is None, "claims are per environment"


async def test_revoke_stamps_once_and_only_within_the_environment(
    backend: Backend, env: str
) -> None:
    stored = await insert(backend, new_key(env))
    assert await backend.keys.revoke(env + "-other", stored.id, audit=event(stored)) is None
    assert await backend.keys.revoke(env, "no-such-key", audit=event(stored)) is None
    still = await backend.keys.get(stored.id)
    assert still is not None and still.status == "active"

    revoked = await backend.keys.revoke(env, stored.id, audit=event(stored, "revoke"))
    assert revoked is not None and revoked.status == "revoked"
    assert revoked.revoked_at is not None and revoked.revoked_at == revoked.updated_at
    assert revoked.updated_at > stored.updated_at and revoked.created_at == stored.created_at
    again = await backend.keys.revoke(env, stored.id, audit=event(stored, "revoke"))
    assert again == revoked, "revoking a revoked key changes nothing"
    assert await backend.audit_actions(stored.id) == ["create", "revoke"]


async def test_a_list_page_is_newest_first_within_one_environment(
    backend: Backend, env: str
) -> None:
    keys = [await insert(backend, new_key(env)) for _ in range(3)]
    await insert(backend, new_key(env + "-other"))
    await backend.keys.revoke(env, keys[1].id, audit=event(keys[1], "revoke"))
    newest_first = [key.id for key in reversed(keys)]

    async def ids(**options: Any) -> list[str]:
        return [key.id for key in await backend.keys.list_page(env, **options)]

    assert await ids(limit=10, offset=0) == newest_first, "revocation does not reorder"
    assert await ids(limit=2, offset=0) == newest_first[:2]
    assert await ids(limit=2, offset=2) == newest_first[2:]
    assert await ids(limit=2, offset=4) == []
    assert await ids(limit=10, offset=0, status="active") == [keys[2].id, keys[0].id]
    assert await ids(limit=10, offset=0, status="revoked") == [keys[1].id]


async def test_a_list_filters_by_algorithm_source_and_expiry(backend: Backend, env: str) -> None:
    soon = datetime(2031, 1, 1, tzinfo=UTC)
    rs = await insert(backend, new_key(env, algorithm="RS256"))
    imported = await insert(backend, new_key(env, source="imported", expires_at=soon))
    later = await insert(backend, new_key(env, expires_at=soon + timedelta(days=1)))
    await insert(backend, new_key(env + "-other", algorithm="RS256"))

    async def ids(**filters: Any) -> set[str]:
        found = await backend.keys.list_page(env, limit=10, offset=0, filters=KeyFilter(**filters))
        return {key.id for key in found}

    assert await ids(algorithm="RS256") == {rs.id}
    assert await ids(algorithm="EdDSA") == {imported.id, later.id}
    assert await ids(source="imported") == {imported.id}
    assert await ids(expires_before=soon + timedelta(seconds=1)) == {imported.id}
    assert await ids(expires_before=soon) == set(), "strictly before; no expiry never matches"
    assert await ids(source="imported", algorithm="RS256") == set()


async def test_a_keyset_page_continues_below_a_position_across_equal_times(
    backend: Backend, env: str
) -> None:
    keys = [await insert(backend, new_key(env)) for _ in range(5)]
    order = await backend.keys.list_page(env, limit=10, offset=0)
    assert {key.id for key in order} == {key.id for key in keys}
    for cut in range(len(order)):
        below = await backend.keys.list_page(env, limit=10, offset=0, after=Position.of(order[cut]))
        assert below == order[cut + 1 :], "the store's own order, continued"
    # A position between two keys of the same created_at: only the id decides.
    tie = Position(order[2].created_at, order[2].id)
    assert await backend.keys.list_page(env, limit=1, offset=0, after=tie) == [order[3]]


async def test_audit_pages_are_newest_first_filtered_and_keyset_paged(
    backend: Backend, env: str
) -> None:
    keys = [await insert(backend, new_key(env)) for _ in range(3)]
    await backend.keys.revoke(env, keys[0].id, audit=event(keys[0], "revoke"))
    await insert(backend, new_key(env + "-other"))

    async def page(**options: Any) -> list[AuditEvent]:
        filters = AuditFilter(**options.pop("filters", {}))
        return await backend.keys.audit_page(env, limit=10, filters=filters, **options)

    everything = await page()
    assert (everything[0].action, everything[0].key_id) == ("revoke", keys[0].id)
    assert len(everything) == 4 and all(e.environment_id == env for e in everything)
    stamps = [(e.created_at, e.id) for e in everything]
    assert stamps == sorted(stamps, reverse=True)
    assert [e.action for e in await page(filters={"key_id": keys[0].id})] == [
        "revoke",
        "create",
    ]
    assert len(await page(filters={"action": "create"})) == 3
    assert await page(filters={"actor": "skt_nobody"}) == []
    first = everything[0]
    assert first.created_at is not None
    assert await page(filters={"since": first.created_at + timedelta(seconds=1)}) == []
    assert len(await page(filters={"until": first.created_at + timedelta(seconds=1)})) == 4
    for cut in range(4):
        mark = everything[cut]
        assert mark.created_at is not None
        below = await page(after=Position(mark.created_at, mark.id))
        assert below == everything[cut + 1 :]


async def test_get_many_finds_only_the_environments_keys(backend: Backend, env: str) -> None:
    mine = [await insert(backend, new_key(env)) for _ in range(2)]
    theirs = await insert(backend, new_key(env + "-other"))
    found = await backend.keys.get_many(
        [mine[1].id, theirs.id, "no-such-key", mine[0].id, mine[1].id], environment_id=env
    )
    assert sorted(key.id for key in found) == sorted(key.id for key in mine)


async def test_change_pages_follow_updated_at_then_id(backend: Backend, env: str) -> None:
    keys = [await insert(backend, new_key(env)) for _ in range(4)]
    await insert(backend, new_key(env + "-other"))
    revoked = await backend.keys.revoke(env, keys[0].id, audit=event(keys[0], "revoke"))
    assert revoked is not None

    pages = [
        [key.id for key in page]
        async for page in backend.keys.pages(environment_id=env, page_size=2)
    ]
    assert pages == [[keys[1].id, keys[2].id], [keys[3].id, keys[0].id]], "a revoke moves last"

    since = [
        key.id
        async for page in backend.keys.pages(environment_id=env, since=keys[3].updated_at)
        for key in page
    ]
    assert since == [keys[3].id, keys[0].id], "since is inclusive"
    active = [
        key.id
        async for page in backend.keys.pages(environment_id=env, active_only=True)
        for key in page
    ]
    assert active == [keys[1].id, keys[2].id, keys[3].id]


async def test_a_key_changed_between_pages_is_read_again_not_skipped(
    backend: Backend, env: str
) -> None:
    keys = [await insert(backend, new_key(env)) for _ in range(3)]
    seen: list[SigningKey] = []
    async for page in backend.keys.pages(environment_id=env, page_size=2):
        if not seen:
            await backend.keys.revoke(env, keys[0].id, audit=event(keys[0], "revoke"))
        seen.extend(page)
    assert [key.id for key in seen] == [keys[0].id, keys[1].id, keys[2].id, keys[0].id]
    assert seen[-1].status == "revoked"


async def test_changes_come_a_page_at_a_time_after_a_keyset_position(
    backend: Backend, env: str
) -> None:
    """The change feed reads a large change (the first load of a large table) in pages, so
    that it never holds it whole: ``limit`` keys after ``after``, in the order of
    :meth:`pages`, until a page comes back short."""
    first = await insert(backend, new_key(env))
    since = first.updated_at
    keys = [first, *[await insert(backend, new_key(env)) for _ in range(4)]]
    everything = await backend.keys.changes(since=since)
    ours = [key.id for key in everything.keys if key.environment_id == env]
    assert sorted(ours) == sorted(key.id for key in keys)

    read: list[str] = []
    after: tuple[datetime, str] | None = None
    while True:
        page = await backend.keys.changes(since=since, after=after, limit=2)
        assert len(page.keys) <= 2
        read.extend(key.id for key in page.keys)
        if len(page.keys) < 2:
            break
        after = (page.keys[-1].updated_at, page.keys[-1].id)
    assert [key_id for key_id in read if key_id in ours] == ours, "the same keys, in order"
    assert len(read) == len(everything.keys), "none twice, none skipped"


async def test_keys_read_share_their_repeated_words(backend: Backend, env: str) -> None:
    """One string per environment, algorithm, status and source however many keys are
    read: before, each key read held its own copies (about 230 bytes a key)."""
    for _ in range(2):
        await insert(backend, new_key(env))
    changes = await backend.keys.changes(since=PLACEHOLDER)
    one, two = [key for key in changes.keys if key.environment_id == env]
    for name in ("environment_id", "algorithm", "status", "source"):
        assert getattr(one, name) is getattr(two, name), name


async def test_tokens_are_stored_once_and_read_back_whole(backend: Backend, env: str) -> None:
    token, _ = new_access_token([Scope.READ, Scope.VERIFY], [env, env + "-b"], name="ci")
    await backend.tokens.insert(token)
    stored = await backend.tokens.get(token.id)
    await backend.tokens.insert(token)  # a retried write
    assert stored is not None and stored.updated_at is not None, "stamped by the store"
    assert replace(stored, updated_at=None) == token
    assert await backend.tokens.get(token.id) == stored, "the retry changed nothing"
    assert await backend.tokens.get("skt_" + "x" * 16) is None


async def test_token_pages_follow_updated_at_then_id(backend: Backend, env: str) -> None:
    tokens = []
    for _ in range(3):
        token, _ = new_access_token([Scope.READ], [env])
        await backend.tokens.insert(token)
        stored = await backend.tokens.get(token.id)
        assert stored is not None and stored.updated_at is not None
        tokens.append(stored)

    async def read(**options: Any) -> list[str]:
        mine = {token.id for token in tokens}
        return [
            token.id
            async for page in backend.tokens.pages(**options)
            for token in page
            if token.id in mine  # the PostgreSQL database is shared by the whole run
        ]

    in_order = sorted(tokens, key=lambda t: (t.updated_at, t.id))
    assert await read() == [token.id for token in in_order]
    assert await read(page_size=1) == [token.id for token in in_order], "keyset pages"
    since = in_order[-1].updated_at
    assert since is not None
    assert await read(since=since) == [
        token.id for token in in_order if token.updated_at and token.updated_at >= since
    ], "since is inclusive"
