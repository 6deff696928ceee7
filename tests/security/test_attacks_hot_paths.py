"""Attacks on today's hot-path caches and sweeps (issue 12): the promises they must keep at
their edges."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import aiohttp
import asyncpg
import pytest
from grpclib.const import Status

from harness import LocalTopology
from service.core import times
from service.core.auth import VerifiedCredentials, new_access_token
from service.core.changes import ChangeFeed
from service.core.credentials import CredentialTable
from service.core.keycache import KeyCache
from service.core.keys import KeyService
from service.core.models import AccessToken, AuditEvent, Scope, SigningKey
from service.core.requests import JwksRequest, KeyRef, choose_request_id
from service.errors import InvalidRequestError
from service.grpc.generated.signingkeys import v1 as pb
from service.grpc.generated.signingkeys.v1 import signing_keys_pb2 as pb2
from service.grpc.messages import KeyReplies
from service.http.keys import KeyAnswers
from service.server import Server
from service.store.keys import _REVOKE
from tests.core.test_change_feed_bound import ADMIN, A, import_keys
from tests.core.test_change_feed_rules import signing_key
from tests.grpc.test_limits import _prefix, _raw_call
from tests.http.test_key_reads import KEYS, create
from tests.http.test_tokens import new_key, sign, verify
from tests.support.memory import ManualClock, MemoryKeyRecords, MemoryTokenRecords
from tests.support.service import Credentials, closed_by_server, guarded_server
from tests.support.service import connections_dropped as dropped

HEADER_TIMEOUT = 1.0
IDLE_TIMEOUT = 30.0  # far beyond the header timeout: a close within it is the head rule's
SLACK = 3.0
HEAD = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n"


@pytest.fixture
async def guarded(migrated_topology: LocalTopology) -> AsyncIterator[Server]:
    async with guarded_server(
        migrated_topology, header_timeout=HEADER_TIMEOUT, idle_timeout=IDLE_TIMEOUT
    ) as running:
        yield running


@pytest.mark.xfail(
    strict=True,
    reason="known, not fixed: the guard cannot see a partial head aiohttp's parser holds; "
    "such a connection is closed at the idle timeout, as an idle keep-alive one is",
)
async def test_a_pipelined_next_head_that_stalls_is_cut_off_at_the_header_timeout(
    guarded: Server,
) -> None:
    """The first byte of the next request head arrives with the previous request (one
    packet), then nothing: the connection holds a partial head, and the head rule should cut
    it, not the idle timeout. The guard restarts a head's clock at a byte that arrives
    between two requests; this one arrived before the response, and aiohttp's parser keeps
    it where the guard cannot see it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", guarded.http_port)
    try:
        writer.write(HEAD + b"\r\n" + b"G")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 "), head
        with contextlib.suppress(TimeoutError):
            await closed_by_server(reader, HEADER_TIMEOUT + SLACK)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert dropped(guarded, "header_timeout") == 1


# --- remembered credentials -------------------------------------------------------------


class Table:
    """The credential table as VerifiedCredentials reads it: records by id."""

    def __init__(self) -> None:
        self.tokens: dict[str, AccessToken] = {}

    def get(self, token_id: str) -> AccessToken | None:
        return self.tokens.get(token_id)


def access_token(token_id: str = "skt_a", **changes: Any) -> AccessToken:
    fields: dict[str, Any] = {
        "id": token_id,
        "secret_hash": hashlib.sha256(token_id.encode()).digest(),
        "scopes": frozenset({Scope.READ}),
        "environments": frozenset({"env-a"}),
        "updated_at": datetime(2026, 1, 1, tzinfo=UTC),
    }
    return AccessToken(**(fields | changes))


def test_a_remembered_credential_stops_at_revocation_deletion_and_its_ttl() -> None:
    now = [100.0]
    remembered = VerifiedCredentials(ttl=5.0, size=8, clock=lambda: now[0])
    table = Table()
    view = cast(CredentialTable, table)
    token = table.tokens["skt_a"] = access_token()
    digest = remembered.digest("Bearer skt_a.secret")
    remembered.put(digest, token)
    assert remembered.get(digest, view) is token
    # Re-read, equal: still remembered. Revoked (a new record): forgotten for good, even if
    # an equal copy of the old record came back (revocation is final).
    table.tokens["skt_a"] = replace(token)
    assert remembered.get(digest, view) is not None
    table.tokens["skt_a"] = replace(token, revoked_at=datetime(2026, 1, 2, tzinfo=UTC))
    assert remembered.get(digest, view) is None
    table.tokens["skt_a"] = token
    assert remembered.get(digest, view) is None, "a full check must decide again"
    remembered.put(digest, token)
    del table.tokens["skt_a"]  # deleted
    assert remembered.get(digest, view) is None
    table.tokens["skt_a"] = token
    remembered.put(digest, token)
    now[0] += 5.0  # the ttl has passed, to the microsecond
    assert remembered.get(digest, view) is None
    assert len(remembered) == 0


def test_a_remembered_credential_is_the_whole_header_and_its_bound_holds() -> None:
    remembered = VerifiedCredentials(ttl=60.0, size=3, clock=lambda: 0.0)
    table = Table()
    view = cast(CredentialTable, table)
    token = table.tokens["skt_a"] = access_token()
    header = "Bearer skt_a." + "s" * 40
    remembered.put(remembered.digest(header), token)
    for other in (header[:-1], header + "s", header + "\x00", header[:-1] + "S", " " + header):
        assert remembered.get(remembered.digest(other), view) is None, other
    # Another instance keys its digests differently: no digest carries over.
    other_instance = VerifiedCredentials(ttl=60.0, size=3, clock=lambda: 0.0)
    assert other_instance.digest(header) != remembered.digest(header)
    assert remembered.digest(header) == remembered.digest(header), "copies, not one state"
    for n in range(10):
        remembered.put(remembered.digest(f"Bearer {n}"), token)
    assert len(remembered) == 3
    assert remembered.get(remembered.digest(header), view) is None, "least recent evicted"


# --- answers remembered by key ----------------------------------------------------------

EXPIRES = datetime(2026, 6, 1, 12, 0, 0, 500_000, tzinfo=UTC)  # a fraction of a second


def keyed(environment_id: str = "env-a", **changes: Any) -> SigningKey:
    key = signing_key(environment_id, at=datetime(2026, 1, 1, tzinfo=UTC))
    return replace(key, id="k1", expires_at=EXPIRES, **changes)


def test_a_remembered_http_answer_shows_expired_from_the_expiry_on() -> None:
    expiry = times.seconds(EXPIRES)
    now = [expiry - 0.001]
    answers = KeyAnswers(size=4, clock=lambda: now[0])
    key = keyed()
    assert json.loads(answers.body(key))["data"]["status"] == "active"
    now[0] = expiry  # status_at: expired at the very instant
    assert json.loads(answers.body(key))["data"]["status"] == "expired"
    now[0] = expiry + 3600
    assert json.loads(answers.body(key))["data"]["status"] == "expired"


def test_a_remembered_http_answer_follows_its_record_and_never_crosses_environments() -> None:
    answers = KeyAnswers(size=4, clock=lambda: 0.0)
    key = keyed()
    assert json.loads(answers.body(key))["data"]["status"] == "active"
    revoked = replace(key, status="revoked", updated_at=key.updated_at + timedelta(seconds=1))
    assert json.loads(answers.body(revoked))["data"]["status"] == "revoked"
    renamed = replace(key, name="renamed")
    assert json.loads(answers.body(renamed))["data"]["name"] == "renamed"
    # One id in two environments (ids are unique; a hand-made row): each its own.
    elsewhere = replace(key, environment_id="env-b")
    assert json.loads(answers.body(elsewhere))["data"]["environment_id"] == "env-b"
    assert json.loads(answers.body(key))["data"]["environment_id"] == "env-a"


def test_a_remembered_grpc_reply_shows_expired_from_the_expiry_on_and_follows_its_record() -> None:
    expiry = times.seconds(EXPIRES)
    now = [expiry - 0.001]
    replies = KeyReplies(size=4, clock=lambda: now[0])
    key = keyed()
    assert replies.reply(key).key.status == pb2.KEY_STATUS_ACTIVE
    now[0] = expiry
    assert replies.reply(key).key.status == pb2.KEY_STATUS_EXPIRED
    revoked = replace(key, status="revoked", updated_at=key.updated_at + timedelta(seconds=1))
    assert replies.reply(revoked).key.status == pb2.KEY_STATUS_REVOKED
    assert replies.reply(replace(key, environment_id="env-b")).key.environment_id == "env-b"
    assert replies.reply(key).key.environment_id == "env-a"
    for n in range(10):
        replies.reply(replace(key, id=f"k{n + 2}"))
    assert len(replies) == 4


def test_a_parsed_key_reference_is_its_own_tenants_and_a_refusal_is_never_kept() -> None:
    a = KeyRef.parse(key_id="k1", environment_id="env-a")
    b = KeyRef.parse(key_id="k1", environment_id="env-b")
    assert (a.environment_id, b.environment_id) == ("env-a", "env-b")
    assert KeyRef.parse(key_id="k1").environment_id is None
    assert KeyRef.parse(key_id="k1", environment_id="env-a", status="all").status == "all"
    assert JwksRequest.parse(environment_id="env-a").environment_id == "env-a"
    assert JwksRequest.parse(environment_id="env-b").environment_id == "env-b"
    for _ in range(2):
        with pytest.raises(InvalidRequestError):
            KeyRef.parse(key_id="k1", environment_id="env-a", status="bogus")
        with pytest.raises(InvalidRequestError):
            KeyRef.parse(key_id="", environment_id="env-a")


# --- request ids ------------------------------------------------------------------------


def test_request_ids_are_echoed_when_well_formed_else_fresh_and_distinct() -> None:
    assert choose_request_id("abc-123_X.y") == "abc-123_X.y"
    for offered in ("", "a" * 65, "a b", "ü", "a\r\nX-Evil: 1", None, 12, b"abc"):
        fresh = choose_request_id(offered)
        assert fresh != offered and len(fresh) == 16 and int(fresh, 16) >= 0
    ids = {choose_request_id(None) for _ in range(100_000)}
    assert len(ids) == 100_000


def test_generated_request_ids_tell_nothing_of_the_module_generator() -> None:
    """Ids a client sees come from a generator of their own: the module's (which samples the
    access log and jitters retries) cannot be recovered from them, nor they from it."""
    random.seed(7)
    module_draws = [f"{random.getrandbits(64):016x}" for _ in range(8)]
    random.seed(7)
    assert not {choose_request_id(None) for _ in range(8)} & set(module_draws)


# --- gRPC: the one gate per handler -----------------------------------------------------


async def test_every_grpc_method_refuses_an_oversized_message_from_its_prefix_and_echoes_its_id(
    server: Server, md: dict[str, str]
) -> None:
    """Including the streaming Watch: each handler is wrapped once, when the server is built;
    a method left out of the wrapping would wait for the body (no answer within the
    timeout)."""
    assert server.grpc_port is not None
    limit = server.settings.max_body_bytes
    headers = [(k.encode(), v.encode()) for k, v in md.items()]
    methods = [name for name in pb.SigningKeysBase().__mapping__() if "/signingkeys." in name]
    assert any(name.endswith("/WatchSigningKeys") for name in methods)
    for name in methods:
        (exchange,) = await asyncio.wait_for(
            _raw_call(
                server.grpc_port,
                name,
                _prefix(limit + 1) + b"a" * 100,
                end_stream=False,
                headers=[*headers, (b"x-request-id", b"atk-size-1")],
            ),
            5,
        )
        assert exchange.grpc_status is Status.RESOURCE_EXHAUSTED, (name, exchange)
        assert exchange.headers.get("x-request-id") == "atk-size-1", (name, exchange)


# --- the answer caches against the real service ------------------------------------------


async def test_remembered_answers_show_an_update_a_revocation_and_an_expiry_in_time(
    server: Server,
    http: aiohttp.ClientSession,
    stub: pb.SigningKeysStub,
    auth: Credentials,
    md: dict[str, str],
    environment: str,
) -> None:
    """Every view warmed first (HTTP's KeyAnswers, gRPC's KeyReplies, the loaded keys),
    then the key changes under them: a rename through the API, a revocation straight in the
    store (as another instance writes it), an expiry by the clock alone."""
    soon = int(time.time()) + 2
    key_id, private_pem, _ = await new_key(http, auth)
    expiring = await create(http, auth, expires_at=soon)
    path = f"{KEYS}/{key_id}"
    token = sign(private_pem, {"sub": "x"}, kid=key_id)
    get = pb.GetSigningKeyRequest(id=key_id, status="all")

    async def views() -> tuple[dict[str, Any], pb.SigningKey, dict[str, Any]]:
        async with http.get(path, params={"status": "all"}, headers=auth.headers) as response:
            assert response.status == 200, await response.text()
            shown = (await response.json())["data"]
        reply = (await stub.get_signing_key(get, metadata=md)).key
        return shown, reply, await verify(http, auth, token)

    for _ in range(3):
        shown, reply, verdict = await views()
    assert (shown["status"], reply.status, verdict["valid"]) == ("active", 1, True)

    async with http.patch(path, headers=auth.headers, json={"name": "renamed"}) as response:
        assert response.status == 200, await response.text()
    shown, reply, _ = await views()  # read-your-writes: at once, here
    assert (shown["name"], reply.name) == ("renamed", "renamed")

    audit = AuditEvent(
        id="evt-" + key_id[:12], environment_id=environment, key_id=key_id,
        action="revoke", actor="elsewhere", api="cli", request_id=None,
    )  # fmt: skip
    revoked_at = time.monotonic()
    assert await server.key_records.revoke(environment, key_id, audit=audit)
    while True:
        shown, reply, verdict = await views()
        revoked = shown["status"] == "revoked" and reply.status == pb.KeyStatus.REVOKED
        if revoked and not verdict["valid"]:
            break
        assert time.monotonic() - revoked_at < 1.0, (shown["status"], reply.status, verdict)
        await asyncio.sleep(0.02)
    assert verdict["reason"] == "revoked_key", verdict

    expiring_get = pb.GetSigningKeyRequest(id=expiring["id"])
    assert (await stub.get_signing_key(expiring_get, metadata=md)).key.status == 1
    await asyncio.sleep(max(0.0, soon - time.time()) + 0.05)
    async with http.get(f"{KEYS}/{expiring['id']}", headers=auth.headers) as response:
        assert (await response.json())["data"]["status"] == "expired"
    reply = (await stub.get_signing_key(expiring_get, metadata=md)).key
    assert reply.status == pb.KeyStatus.EXPIRED


# --- the change feed's bounded memory ---------------------------------------------------


async def test_revocations_in_a_burst_larger_than_the_feeds_memory_reach_a_full_cache() -> None:
    """A cache full and incomplete, a feed that remembers three changes, and a burst at one
    overlap (twelve imports, then every key revoked; the poll and the overlap's re-read):
    each cached key ends revoked, and a key the cache dropped reads as revoked from the
    database rather than as active from memory."""
    clock = ManualClock()  # a millisecond a write: all of them within the overlap
    records = MemoryKeyRecords(clock=clock)
    cache = KeyCache(size=4, negative_size=10, negative_ttl=60.0, clock=clock.seconds)
    feed = ChangeFeed(
        records,
        cache,
        poll_interval=0.05,
        overlap=1.0,
        clock=clock.seconds,
        wall=clock.seconds,
        recent_size=3,
        page_size=2,
    )
    keys = await import_keys(records, 6)
    await feed.poll_once()
    assert len(cache) == 4 and not cache.complete
    cached = [key.id for key in keys if cache.peek(key.id) is not None]
    writer = KeyService(records)
    await import_keys(records, 12)  # the burst
    for key in keys:
        await writer.revoke(ADMIN, KeyRef(environment_id=A, key_id=key.id))
    for _ in range(2):
        await feed.poll_once()
        assert feed.remembered <= 3
        for key_id in cached:
            record = cache.peek(key_id)
            assert record is None or record.status == "revoked", key_id
    for key in keys:
        stored = await records.get(key.id, environment_id=A)
        assert stored is not None and stored.status == "revoked"
        record = cache.peek(key.id)
        assert record is None or record.status == "revoked", key.id


async def test_a_revocation_stamped_before_a_concurrent_update_still_reaches_the_cache(
    migrated_topology: LocalTopology,
    server: Server,
    http: aiohttp.ClientSession,
    auth: Credentials,
    environment: str,
) -> None:
    """PostgreSQL's now() is its transaction's start: a revoke whose transaction began
    before a rename committed (a round trip between BEGIN and UPDATE under load, or a
    writer whose clock is behind after a failover) stamps the revoked row earlier than the
    rename's. The feed and the cache both take a row no newer than the one they hold for a
    re-read or a straggler and drop it: the revoked key would verify for as long as it stays
    cached. A row's stamp must therefore never go backwards."""
    key_id, private_pem, _ = await new_key(http, auth)
    token = sign(private_pem, {"sub": "x"}, kid=key_id)
    assert (await verify(http, auth, token))["valid"]
    dsn = migrated_topology.region(migrated_topology.primary).direct_dsn
    conn = await asyncpg.connect(dsn)
    try:
        revoke = conn.transaction()
        await revoke.start()  # now() is fixed here
        await conn.fetchval("SELECT now()")
        await asyncio.sleep(0.05)
        async with http.patch(
            f"{KEYS}/{key_id}", headers=auth.headers, json={"name": "renamed"}
        ) as response:
            assert response.status == 200, await response.text()
        deadline = time.monotonic() + 5
        while (cached := server.key_cache.peek(key_id)) is None or cached.name != "renamed":
            assert time.monotonic() < deadline, "the feed never applied the rename"
            await asyncio.sleep(0.02)
        assert await conn.fetchrow(_REVOKE, key_id, environment) is not None
        await revoke.commit()
    finally:
        await conn.close()
    deadline = time.monotonic() + 2.0
    while (verdict := await verify(http, auth, token))["valid"]:
        assert time.monotonic() < deadline, "a revoked key still verifies from the cache"
        await asyncio.sleep(0.05)
    assert verdict["reason"] == "revoked_key", verdict


async def test_a_token_revoked_with_an_earlier_stamp_stops_authenticating_at_the_resync() -> None:
    """A token issued on a primary whose clock ran ahead, revoked by hand after a failover
    to one whose clock is behind: the revoked row's stamp is earlier than the active one the
    table holds. The resync (the revocation bound) must still take it: revocation is final,
    whatever the stamps say."""
    clock = ManualClock()
    tokens = MemoryTokenRecords(clock=clock)
    table = CredentialTable(
        tokens, poll_interval=0.2, overlap=5.0, resync_interval=30.0, clock=clock.seconds
    )
    issued, _ = new_access_token([Scope.READ], ["env-a"])
    await tokens.insert(issued)
    await table.poll_once()
    active = table.get(issued.id)
    assert active is not None and active.updated_at is not None
    tokens._tokens[issued.id] = replace(
        active,
        revoked_at=active.updated_at - timedelta(seconds=0.05),
        updated_at=active.updated_at - timedelta(seconds=0.05),
    )
    clock.advance(0.2)
    await table.poll_once()  # a poll of changes
    clock.advance(30.0)
    await table.poll_once()  # and a resync
    current = table.get(issued.id)
    assert current is not None and current.revoked_at is not None


async def test_a_revocation_stamped_before_the_version_the_feed_holds_still_reaches_the_cache() -> (
    None
):
    """A rename the feed applied from the old primary is lost in a failover (asynchronous
    replication), and the key is revoked on the new primary, whose clock is behind: the
    revoked row is stamped earlier than the rename the feed and the cache hold. Revocation
    is final: it must win whatever the stamps."""
    clock = ManualClock()
    records = MemoryKeyRecords(clock=clock)
    cache = KeyCache(size=8, negative_size=8, negative_ttl=60.0, clock=clock.seconds)
    feed = ChangeFeed(
        records, cache, poll_interval=0.05, overlap=1.0, clock=clock.seconds, wall=clock.seconds
    )
    (key,) = await import_keys(records, 1)
    await feed.poll_once()
    renamed = replace(key, name="renamed", updated_at=key.updated_at + timedelta(seconds=0.2))
    records._rows[key.id] = renamed  # the old primary's write, read by the feed
    clock.advance(0.2)
    await feed.poll_once()
    assert (cached := cache.peek(key.id)) is not None and cached.name == "renamed"
    moment = key.updated_at + timedelta(seconds=0.1)  # the new primary's clock
    records._rows[key.id] = replace(key, status="revoked", revoked_at=moment, updated_at=moment)
    clock.advance(0.1)
    await feed.poll_once()
    assert (cached := cache.peek(key.id)) is not None and cached.status == "revoked"
    records._rows[key.id] = renamed  # a straggler's re-read of the lost write: too late
    clock.advance(0.1)
    await feed.poll_once()
    assert (cached := cache.peek(key.id)) is not None and cached.status == "revoked"
