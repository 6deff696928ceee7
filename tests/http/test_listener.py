"""The HTTP listener against real slow sockets: a request head that trickles in (slowloris),
a connection that never speaks, one that idles after its answer, and a client that opens
too many connections."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from harness import LocalTopology
from service.server import Server
from service.settings import Settings
from tests.support.service import closed_by_server, guarded_server, service_env
from tests.support.service import connections_dropped as dropped

HEADER_TIMEOUT = 1.0
SLACK = 3.0  # a loaded machine may be late to close; a missing timeout is never this early
HEAD = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n"


@pytest.fixture
async def guarded(migrated_topology: LocalTopology) -> AsyncIterator[Server]:
    async with guarded_server(
        migrated_topology, header_timeout=HEADER_TIMEOUT, idle_timeout=2
    ) as running:
        yield running


async def connect(server: Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.http_port)


async def get_health(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(HEAD + b"\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    await asyncio.wait_for(reader.readexactly(length), 5)
    return head


async def test_a_request_head_that_trickles_in_is_cut_off_at_the_header_timeout(
    migrated_topology: LocalTopology,
) -> None:
    """Before: 50 slowloris connections were all still open after 20 s."""
    env = service_env(migrated_topology, http_header_timeout=str(HEADER_TIMEOUT))
    async with Server(Settings.from_env(env)) as server:

        async def slowloris() -> float:
            started = time.monotonic()  # before the connection: the server's clock starts later
            reader, writer = await connect(server)
            writer.write(HEAD)

            async def trickle() -> None:
                for i in range(1000):
                    await asyncio.sleep(0.2)
                    writer.write(b"X-Slow-%d: 1\r\n" % i)

            trickling = asyncio.create_task(trickle())
            try:
                return await closed_by_server(reader, HEADER_TIMEOUT + SLACK, since=started)
            finally:
                trickling.cancel()
                writer.close()

        lifetimes = await asyncio.gather(*(slowloris() for _ in range(20)))
        print(f"\nslowloris connections closed after {min(lifetimes):.2f}-{max(lifetimes):.2f} s")
        assert min(lifetimes) >= HEADER_TIMEOUT
        assert dropped(server, "header_timeout") == 20
        reader, writer = await connect(server)
        assert (await get_health(reader, writer)).startswith(b"HTTP/1.1 200 ")
        writer.close()


async def test_a_connection_that_never_speaks_is_closed_at_the_header_timeout(
    guarded: Server,
) -> None:
    started = time.monotonic()
    reader, writer = await connect(guarded)
    lifetime = await closed_by_server(reader, HEADER_TIMEOUT + SLACK, since=started)
    writer.close()
    assert lifetime >= HEADER_TIMEOUT


async def test_an_idle_connection_lives_past_the_header_timeout_until_the_idle_timeout(
    guarded: Server,
) -> None:
    reader, writer = await connect(guarded)
    started = time.monotonic()  # before the request: its answer starts the idle clock
    assert (await get_health(reader, writer)).startswith(b"HTTP/1.1 200 ")
    lifetime = await closed_by_server(reader, 2 + SLACK, since=started)
    writer.close()
    assert lifetime >= 2, "an idle keep-alive connection is not a slow head"
    assert dropped(guarded, "header_timeout") == 0


async def test_one_client_address_holds_at_most_its_connections(guarded: Server) -> None:
    held = [await connect(guarded) for _ in range(5)]
    for reader, writer in held:
        assert (await get_health(reader, writer)).startswith(b"HTTP/1.1 200 ")
    reader, writer = await connect(guarded)
    await closed_by_server(reader, SLACK)  # closed as soon as accepted
    writer.close()
    assert dropped(guarded, "too_many_from_client") == 1
    for reader, writer in held[1:]:
        assert (await get_health(reader, writer)).startswith(b"HTTP/1.1 200 "), "still served"
    held[0][1].close()
    async with asyncio.timeout(5):
        while guarded.http_connections.open_connections > 4:
            await asyncio.sleep(0.01)
    reader, writer = await connect(guarded)
    assert (await get_health(reader, writer)).startswith(b"HTTP/1.1 200 "), "a place freed"
    for _, other in (*held[1:], (reader, writer)):
        other.close()


async def test_the_next_request_head_has_the_header_timeout_from_its_first_byte(
    guarded: Server,
) -> None:
    """An answered connection's clock restarts at its next request's first byte, not at
    its opening or at the last answer: a keep-alive connection that starts a head and stalls
    is cut off like a new one."""
    reader, writer = await connect(guarded)
    assert (await get_health(reader, writer)).startswith(b"HTTP/1.1 200 ")
    await asyncio.sleep(HEADER_TIMEOUT * 0.75)  # idle: not a slow head
    started = time.monotonic()
    writer.write(HEAD)  # and never the blank line that ends it
    lifetime = await closed_by_server(reader, HEADER_TIMEOUT + SLACK, since=started)
    writer.close()
    assert lifetime >= HEADER_TIMEOUT
    assert dropped(guarded, "header_timeout") == 1


async def test_a_request_being_served_is_not_cut_off_by_the_header_timeout(
    guarded: Server,
) -> None:
    """The head arrived: a body sent slowly is the body timeout's (longer here), not the
    head's."""
    reader, writer = await connect(guarded)
    writer.write(
        b"POST /v1/tokens/verify HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{"
    )
    await writer.drain()
    await asyncio.sleep(HEADER_TIMEOUT * 2)
    writer.write(b"}")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 401 "), head  # answered (no credentials), not dropped
    assert dropped(guarded, "header_timeout") == 0
