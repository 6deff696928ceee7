"""The fault proxy, proven with real TCP: an echo server first, then PostgreSQL via asyncpg."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import pytest

from harness import FaultProxy, LocalTopology, ProxyError

pytestmark = pytest.mark.fault

# What asyncpg puts on the wire when `async with conn.transaction()` commits: a simple-query
# ('Q') message, int32 length 12, the text "COMMIT;" and its NUL.
ASYNCPG_COMMIT = b"Q\x00\x00\x00\x0cCOMMIT;\x00"


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0) -> None:
    """Poll ``check`` until it holds; fail with a clear message after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"condition still false after {timeout} s")
        await asyncio.sleep(0.01)


class Upstream:
    """A TCP echo server that records, per connection, what it received and how it ended."""

    def __init__(self) -> None:
        self.received: list[bytearray] = []
        self.ended: list[str] = []  # "eof" or "reset", per connection, once it ended
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = bytearray()
        self.received.append(data)
        try:
            while chunk := await reader.read(65536):
                data.extend(chunk)
                writer.write(chunk)
                await writer.drain()
            self.ended.append("eof")
        except ConnectionResetError:
            self.ended.append("reset")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                await writer.wait_closed()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    server = Upstream()
    await server.start()
    yield server
    await server.aclose()


@pytest.fixture
def proxy(upstream: Upstream) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", upstream.port, name="echo") as running:
        yield running


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
async def connect(proxy: FaultProxy) -> AsyncIterator[Callable[[], Awaitable[Stream]]]:
    opened: list[asyncio.StreamWriter] = []

    async def open_one() -> Stream:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        opened.append(writer)
        return reader, writer

    yield open_one
    for writer in opened:
        writer.close()
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            await writer.wait_closed()


async def read_exactly(reader: asyncio.StreamReader, size: int, timeout: float = 5.0) -> bytes:
    return await asyncio.wait_for(reader.readexactly(size), timeout)


async def assert_reset(reader: asyncio.StreamReader) -> None:
    """The connection was cut with a RST (never a clean end, never data)."""
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(1), 5.0)


async def assert_new_connection_reset(port: int) -> None:
    """A new connection is accepted and then cut with a RST (the RST may even beat the
    client's own view of its connect, which then fails with ECONNRESET)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionResetError:
        return
    try:
        await assert_reset(reader)
    finally:
        writer.close()


# -- echo server ------------------------------------------------------------------------------


async def test_pass_through_forwards_both_ways_and_the_end_of_stream(
    proxy: FaultProxy, upstream: Upstream, connect: Callable[[], Awaitable[Stream]]
) -> None:
    reader, writer = await connect()
    writer.write(b"hello")
    assert await read_exactly(reader, 5) == b"hello"
    assert proxy.connection_count == 1
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 5.0) == b""  # the server's close came back
    await eventually(lambda: upstream.ended == ["eof"])
    await eventually(lambda: proxy.connection_count == 0)
    assert proxy.accepted == 1


async def test_delay_adds_latency_in_each_direction_and_keeps_order(
    proxy: FaultProxy, connect: Callable[[], Awaitable[Stream]]
) -> None:
    reader, writer = await connect()
    proxy.delay(0.15)
    started = time.monotonic()
    writer.write(b"x")
    assert await read_exactly(reader, 1) == b"x"
    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 2.0, elapsed  # 0.15 s there and 0.15 s back

    chunks = [f"<{i}>".encode() for i in range(60)]
    for chunk in chunks:
        writer.write(chunk)
        await writer.drain()
    expected = b"".join(chunks)
    assert await read_exactly(reader, len(expected)) == expected

    proxy.pass_through()
    round_trips = []
    for _ in range(3):
        started = time.monotonic()
        writer.write(b"y")
        assert await read_exactly(reader, 1) == b"y"
        round_trips.append(time.monotonic() - started)
    assert min(round_trips) < 0.3, round_trips  # the delay is gone (noise aside)


async def test_blackhole_swallows_existing_and_new_connections_without_closing(
    proxy: FaultProxy, upstream: Upstream, connect: Callable[[], Awaitable[Stream]]
) -> None:
    old_reader, old_writer = await connect()
    old_writer.write(b"before")
    assert await read_exactly(old_reader, 6) == b"before"

    proxy.blackhole()
    old_writer.write(b"lost")
    new_reader, new_writer = await connect()  # the TCP connect itself succeeds
    new_writer.write(b"lost too")
    for reader in (old_reader, new_reader):
        with pytest.raises(TimeoutError):  # no answer, and no close either
            await asyncio.wait_for(reader.read(1), 0.3)
    assert bytes(upstream.received[0]) == b"before"
    assert len(upstream.received) == 1  # the new connection never reached the server
    assert proxy.connection_count == 2

    proxy.pass_through()
    await assert_reset(old_reader)  # a swallowed stream cannot resume: it is cut now
    reader, writer = await connect()
    writer.write(b"after")
    assert await read_exactly(reader, 5) == b"after"


async def test_reset_aborts_existing_connections_and_every_new_one(
    proxy: FaultProxy, upstream: Upstream, connect: Callable[[], Awaitable[Stream]]
) -> None:
    reader, writer = await connect()
    writer.write(b"ping")
    assert await read_exactly(reader, 4) == b"ping"

    proxy.reset()
    assert proxy.connection_count == 0  # in effect when reset() returns
    await assert_reset(reader)
    await eventually(lambda: upstream.ended == ["reset"])
    await assert_new_connection_reset(proxy.port)

    proxy.pass_through()
    reader, writer = await connect()
    writer.write(b"pong")
    assert await read_exactly(reader, 4) == b"pong"


async def test_reset_on_forward_delivers_the_chunk_then_cuts_the_client(
    proxy: FaultProxy, upstream: Upstream, connect: Callable[[], Awaitable[Stream]]
) -> None:
    proxy.reset_on(b"COMMIT")
    reader, writer = await connect()
    writer.write(b"xx COM")  # the pattern straddles two chunks
    assert await read_exactly(reader, 6) == b"xx COM"
    writer.write(b"MIT; yy")
    await assert_reset(reader)  # the client never sees the echo of its COMMIT
    await eventually(lambda: upstream.ended == ["eof"])  # the server got it all, then a FIN
    assert bytes(upstream.received[0]) == b"xx COMMIT; yy"
    assert proxy.hits == 1

    reader, writer = await connect()  # once=True: disarmed after the first hit
    writer.write(b"COMMIT")
    assert await read_exactly(reader, 6) == b"COMMIT"
    assert proxy.hits == 1


async def test_reset_on_without_forward_drops_the_chunk_and_cuts_both_sides(
    proxy: FaultProxy, upstream: Upstream, connect: Callable[[], Awaitable[Stream]]
) -> None:
    proxy.reset_on(b"COMMIT", forward=False)
    reader, writer = await connect()
    writer.write(b"xx COM")
    assert await read_exactly(reader, 6) == b"xx COM"
    writer.write(b"MIT; yy")
    await assert_reset(reader)
    await eventually(lambda: upstream.ended == ["reset"])
    assert bytes(upstream.received[0]) == b"xx COM"
    assert proxy.hits == 1


async def test_reset_on_after_bytes_counts_from_arming_and_can_repeat(
    proxy: FaultProxy, upstream: Upstream, connect: Callable[[], Awaitable[Stream]]
) -> None:
    reader, writer = await connect()
    writer.write(b"012345")  # before arming: not counted
    assert await read_exactly(reader, 6) == b"012345"

    proxy.reset_on(after_bytes=10, forward=False, once=False)
    writer.write(b"abcdef")
    assert await read_exactly(reader, 6) == b"abcdef"
    writer.write(b"ghijkl")  # 12 bytes since arming: cut, this chunk dropped
    await assert_reset(reader)

    reader, writer = await connect()  # still armed (once=False): fires again
    writer.write(b"0123456789")
    await assert_reset(reader)
    assert proxy.hits == 2
    await eventually(lambda: len(upstream.ended) == 2)
    assert bytes(upstream.received[0]) == b"012345abcdef"


async def test_a_dead_upstream_cuts_the_client_at_once(upstream: Upstream) -> None:
    await upstream.aclose()  # nothing listens there any more
    with FaultProxy("127.0.0.1", upstream.port) as proxy:
        await assert_new_connection_reset(proxy.port)


def test_misuse_is_refused() -> None:
    proxy = FaultProxy("127.0.0.1", 9)
    with pytest.raises(ValueError, match="pattern or after_bytes"):
        proxy.reset_on()
    with pytest.raises(ValueError, match="delay"):
        proxy.delay(-1)
    proxy.start()
    proxy.stop()
    proxy.stop()  # idempotent
    with pytest.raises(ProxyError):
        proxy.blackhole()
    with pytest.raises(ProxyError):
        proxy.start()


# -- PostgreSQL through the proxy -------------------------------------------------------------


@pytest.fixture
def pg_proxy(topology: LocalTopology) -> Iterator[FaultProxy]:
    """A proxy of this test's own in front of the shared primary."""
    primary = topology.region(topology.primary)
    with FaultProxy("127.0.0.1", primary.server_port, name="pg-test") as running:
        yield running


@pytest.fixture
def dsn(topology: LocalTopology, pg_proxy: FaultProxy) -> str:
    direct = topology.region(topology.primary).direct_dsn
    return direct.replace(
        f":{topology.region(topology.primary).server_port}/", f":{pg_proxy.port}/"
    )


async def rows_on_primary(topology: LocalTopology, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    return await asyncio.to_thread(topology.query, topology.primary, sql, *args)


async def backend_gone(topology: LocalTopology, application_name: str) -> bool:
    found = await rows_on_primary(
        topology, "SELECT 1 FROM pg_stat_activity WHERE application_name = $1", application_name
    )
    return not found


@pytest.mark.parametrize("forward", [True, False])
async def test_reset_on_commit_decides_whether_the_server_committed(
    topology: LocalTopology, pg_proxy: FaultProxy, dsn: str, table: str, forward: bool
) -> None:
    """The client sees a broken connection either way; only the server knows the outcome."""
    marker = secrets.token_hex(8)
    app = f"reset-on-{marker}"
    conn = await asyncpg.connect(dsn, server_settings={"application_name": app})
    try:
        pg_proxy.reset_on(ASYNCPG_COMMIT, forward=forward)  # the exact bytes asyncpg sends
        with pytest.raises((ConnectionError, asyncpg.exceptions.ConnectionDoesNotExistError)):
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {table} VALUES ($1)", marker)
    finally:
        conn.terminate()
    assert pg_proxy.hits == 1

    await eventually(lambda: backend_gone(topology, app))  # the server has finished with it
    committed = await rows_on_primary(
        topology, f"SELECT marker FROM {table} WHERE marker = $1", marker
    )
    assert committed == ([(marker,)] if forward else [])


async def test_blackhole_hangs_queries_and_connects_until_pass_through(
    pg_proxy: FaultProxy, dsn: str
) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT 1") == 1
        pg_proxy.blackhole()
        with pytest.raises(TimeoutError):
            await conn.fetchval("SELECT 2", timeout=0.3)
        with pytest.raises(TimeoutError):
            await asyncpg.connect(dsn, timeout=0.3)
    finally:
        conn.terminate()
    pg_proxy.pass_through()
    conn = await asyncpg.connect(dsn, timeout=5.0)
    try:
        assert await conn.fetchval("SELECT 3") == 3
    finally:
        await conn.close()


async def test_delay_slows_every_round_trip(pg_proxy: FaultProxy, dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        pg_proxy.delay(0.1)
        started = time.monotonic()
        assert await conn.fetchval("SELECT 1") == 1
        assert 0.2 <= time.monotonic() - started < 2.0
    finally:
        pg_proxy.pass_through()
        await conn.close()


async def test_reset_breaks_an_open_connection(pg_proxy: FaultProxy, dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        pg_proxy.reset()
        with pytest.raises((ConnectionError, asyncpg.exceptions.ConnectionDoesNotExistError)):
            await conn.fetchval("SELECT 1", timeout=5.0)
        with pytest.raises(ConnectionError):
            await asyncpg.connect(dsn, timeout=5.0)
    finally:
        conn.terminate()


async def test_retarget_cuts_existing_connections_and_sends_new_ones_elsewhere(
    upstream: Upstream,
) -> None:
    other = Upstream()
    await other.start()
    try:
        with FaultProxy("127.0.0.1", upstream.port) as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(b"first")
            assert await reader.readexactly(5) == b"first"
            proxy.retarget(other.port)
            assert proxy.upstream_port == other.port
            with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
                await asyncio.wait_for(reader.readexactly(1), 5.0)
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(b"second")
            assert await reader.readexactly(6) == b"second"
            writer.close()
        assert bytes(upstream.received[0]) == b"first"
        assert bytes(other.received[0]) == b"second"
    finally:
        await other.aclose()
