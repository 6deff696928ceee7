"""What the fuzzers found, each pinned by a test that failed before its fix (over the real
HTTP server: the failures were the wire's)."""

from __future__ import annotations

import aiohttp
import pytest

from service.core.requests import CreateKeyRequest, ImportKeyRequest
from service.core.times import EPOCH
from tests.support.service import Credentials

pytestmark = pytest.mark.fuzz

KEYS = "/system/v1/signing-keys"


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", KEYS, {"GET", "HEAD", "POST"}),
        ("TRACE", "/healthz", {"GET", "HEAD"}),
        ("PATCH", f"{KEYS}/some-key", {"DELETE", "GET", "HEAD"}),
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
    imported = ImportKeyRequest.parse(public_key="x", expires_at=0.0)
    assert imported.expires_at == EPOCH
    for value in (1.5, float("inf"), -1.0, 1e300, True):
        with pytest.raises(ValueError, match="expires_at"):
            CreateKeyRequest.parse(expires_at=value)
