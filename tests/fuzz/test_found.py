"""What the fuzzers found, each pinned by a test that failed before its fix (over the real
HTTP server: the failures were the wire's)."""

from __future__ import annotations

import asyncio
import io

import aiohttp
import pytest

from service.core.requests import CreateKeyRequest, ImportKeyRequest
from service.core.times import EPOCH
from service.server import Server
from tests.support.service import Credentials, errors_logged

pytestmark = pytest.mark.fuzz

KEYS = "/system/v1/signing-keys"


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", KEYS, {"GET", "HEAD", "POST"}),
        ("TRACE", "/healthz", {"GET", "HEAD"}),
        ("PUT", f"{KEYS}/some-key", {"DELETE", "GET", "HEAD", "PATCH"}),
        # Not a look-up of a key named "import": that path is the import route's alone.
        ("GET", f"{KEYS}/import", {"POST"}),
        ("DELETE", f"{KEYS}/import", {"POST"}),
    ],
)
async def test_a_405_lists_the_allowed_methods(
    http: aiohttp.ClientSession, auth: Credentials, method: str, path: str, allowed: set[str]
) -> None:
    """RFC 9110: a 405 carries Allow. The error middleware built a new response for it and
    dropped aiohttp's header; and GET/DELETE of .../import were key look-ups, listed in
    Allow although the API documents only POST there."""
    async with http.request(method, path, headers=auth.headers) as response:
        assert response.status == 405, await response.text()
        assert set(response.headers["Allow"].split(",")) == allowed
        assert (await response.json())["error"]["type"] == "method_not_allowed"


@pytest.mark.parametrize(
    "credentials",
    [b"Basic \xc3\xa3YWJj", b"Basic \xe9", b"Basic YWJj\xff"],
)
async def test_a_non_ascii_basic_credential_is_401_not_500(
    http: aiohttp.ClientSession, credentials: bytes
) -> None:
    """base64.b64decode raises a plain ValueError for a non-ASCII character, which the
    Basic parser did not catch: an unauthenticated 500 and a traceback in the log."""
    # Latin-1: the bytes go on the wire as they are, as a client sends them.
    headers = {"Authorization": credentials.decode("latin-1")}
    async with http.get(KEYS, headers=headers) as response:
        assert response.status == 401, await response.text()
        assert (await response.json())["error"]["type"] == "unauthorized"


def test_a_whole_json_number_is_an_integer_time() -> None:
    """The document says ``expires_at`` is an integer (or a string of digits), and JSON
    Schema's integer includes 1.0: schemathesis sent ``1.0`` and ``1e9`` and got 400."""
    for value in (1893456000.0, 1.8934560e9):
        request = CreateKeyRequest.parse(expires_at=value)
        assert request.spec.expires_at is not None
        assert (request.spec.expires_at - EPOCH).total_seconds() == 1893456000
    imported = ImportKeyRequest.parse(public_key="x", expires_at=4102444800.0)
    assert imported.expires_at is not None
    assert (imported.expires_at - EPOCH).total_seconds() == 4102444800
    for value in (1.5, float("inf"), -1.0, 1e300, True):
        with pytest.raises(ValueError, match="expires_at"):
            CreateKeyRequest.parse(expires_at=value)


async def test_a_malformed_request_head_is_the_clients_mistake_not_an_error_log(
    server: Server, log_stream: io.StringIO
) -> None:
    """aiohttp answers a head it cannot parse with 400 and logs it at error level with a
    traceback whose message quotes the offending header line: any client could fill the
    error log at will, and a bad byte in an Authorization header put its secret there."""
    secret = "s3cr3t-" + "x" * 20
    head = (
        f"GET {KEYS} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer skt_AAAAAAAAAAAAAAAA:{secret}"
        "\x01\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
    try:
        writer.write(head.encode("latin-1"))
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=10)
    finally:
        writer.close()
    assert status_line.split()[1] == b"400"
    logged = log_stream.getvalue()
    assert secret not in logged, logged[-2000:]
    assert errors_logged(log_stream) == []
