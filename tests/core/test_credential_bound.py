"""Access tokens obey the revocation bound when replication misbehaves: the credential table
reads only data younger than ``CHANGE_MAX_DATA_AGE``, as the change feed does, so a standby
that still answers from frozen data cannot keep a deleted token working."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from harness import LocalTopology
from service.errors import TooManyRequestsError, UnauthenticatedError
from service.server import Server
from service.settings import Settings
from tests.support.service import Credentials, TokenFactory, known_everywhere, service_env

PRIMARY, STANDBY = "aws-us-east-1", "gcp-us-central1"
RESYNC = 1.0  # CREDENTIAL_CACHE_TTL: a deleted row is seen at the next resync
# A resync, the data age a read may have (0.6 s), a poll of slack, and room for a loaded
# machine; the old table read the frozen standby until MAX_REPLICA_LAG (30 s here).
BOUND = 4.0


@pytest.fixture
def standby_frozen(migrated_topology: LocalTopology) -> Iterator[LocalTopology]:
    """The shared topology; the test may freeze the standby's walreceiver, which is undone
    afterwards whatever happens."""
    yield migrated_topology
    migrated_topology.resume(STANDBY)


@pytest.fixture
async def writer_and_reader(
    standby_frozen: LocalTopology,
) -> AsyncIterator[tuple[Server, Server]]:
    """An instance in the primary's region and one in the standby's region, whose router
    would read its local standby until its data is 30 s old."""
    options = {"credential_cache_ttl": str(RESYNC), "max_replica_lag": "30"}
    writer = Server(Settings.from_env(service_env(standby_frozen, PRIMARY, **options)))
    reader = Server(Settings.from_env(service_env(standby_frozen, STANDBY, **options)))
    async with writer, reader:
        yield writer, reader


async def authenticates(server: Server, credentials: Credentials) -> bool:
    try:
        await server.authenticator.authenticate(credentials.login, credentials.password, api="http")
    except (UnauthenticatedError, TooManyRequestsError):
        return False
    return True


@pytest.mark.fault
async def test_a_deleted_token_stops_working_on_an_instance_whose_standby_is_frozen(
    writer_and_reader: tuple[Server, Server], standby_frozen: LocalTopology, environment: str
) -> None:
    """The reader's local standby answers every query from data that no longer moves (its
    walreceiver is stopped). A token deleted on the primary must stop authenticating on the
    reader within a resync plus the data-age bound: its credential polls leave the frozen
    standby for the primary. Before, they kept reading the standby (plain reads may, until
    MAX_REPLICA_LAG) and the deleted token went on working."""
    writer, reader = writer_and_reader
    credentials = await TokenFactory(writer)([environment])
    await known_everywhere([reader], credentials)
    await asyncio.to_thread(standby_frozen.wait_replayed)
    standby_frozen.pause(STANDBY, "walreceiver")
    conn = await asyncpg.connect(standby_frozen.region(PRIMARY).admin_dsn)
    try:
        deleted = await conn.execute("DELETE FROM access_tokens WHERE id = $1", credentials.login)
    finally:
        await conn.close()
    assert deleted == "DELETE 1"
    started = time.monotonic()
    while await authenticates(reader, credentials):
        elapsed = time.monotonic() - started
        assert elapsed < BOUND, f"the deleted token still authenticates after {elapsed:.1f} s"
        await asyncio.sleep(0.02)
    assert reader.database.status().read_region == STANDBY, "plain reads may stay local"
    assert reader.authenticator.credentials.is_fresh()
