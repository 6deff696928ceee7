"""Authentication over HTTP as a hostile client sees it: whatever bytes it sends as
credentials, the answer is 401, never an error of ours."""

from __future__ import annotations

import asyncio
import io

from service.server import Server
from tests.support.service import errors_logged


async def raw_exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` as it is on a fresh connection; the response's status line and
    headers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_a_non_utf8_byte_in_the_secret_is_unauthenticated_not_an_error(
    server: Server, log_stream: io.StringIO
) -> None:
    """Before: 500, and a traceback in the log (the secret could not be encoded to hash)."""
    assert server.http_port is not None
    for credentials in (b"skt_AAAAAAAAAAAAAAAA:\xe9", b"skt_AAAAAAAAAAAAAAAA:\xc3\xa9"):
        head = await raw_exchange(
            server.http_port,
            b"POST /v1/tokens/verify HTTP/1.1\r\nHost: localhost\r\n"
            b"Authorization: Bearer " + credentials + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
        )
        assert head.startswith(b"HTTP/1.1 401 "), head
    assert errors_logged(log_stream) == []
