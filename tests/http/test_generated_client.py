"""A Python client generated (by openapi-python-client, as a platform team would) from the
document the live service serves, driving that service over a socket: create → JWKS →
verify → revoke → verify again. What breaks here breaks every generated client: a schema
the generator cannot read, a response the generated parser refuses, an operation without a
usable name.

Rotation is not part of the round trip: the service has no rotate operation yet.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import jwt
import pytest

from service.server import Server
from tests.support.service import Credentials

PACKAGE = "signing_keys_client"
# No formatter run after generation (ruff need not be on PATH); the package name fixed, so
# that the test imports what it generated and nothing else.
CONFIG = f"package_name_override: {PACKAGE}\nproject_name_override: {PACKAGE}\npost_hooks: []\n"


async def generate(document: dict[str, Any], directory: Path) -> None:
    """Run openapi-python-client on ``document``; the package lands in ``directory``."""
    (directory / "openapi.json").write_text(json.dumps(document))
    (directory / "config.yaml").write_text(CONFIG)
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("openapi-python-client")),
        "generate",
        "--path",
        str(directory / "openapi.json"),
        "--config",
        str(directory / "config.yaml"),
        "--meta",
        "none",
        "--output-path",
        str(directory / PACKAGE),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    report = output.decode(errors="replace")
    assert process.returncode == 0, report
    # A schema it cannot read is skipped with a warning, and the client silently lacks it.
    assert "Warning" not in report, report


@pytest.fixture
def client_path(tmp_path: Path) -> Iterator[Path]:
    sys.path.insert(0, str(tmp_path))
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        for name in [name for name in sys.modules if name.split(".")[0] == PACKAGE]:
            del sys.modules[name]


def module(name: str) -> ModuleType:
    return importlib.import_module(f"{PACKAGE}.{name}")


async def test_a_generated_client_creates_rotates_publishes_verifies_and_revokes_a_key(
    server: Server,
    http: aiohttp.ClientSession,
    auth: Credentials,
    environment: str,
    client_path: Path,
) -> None:
    async with http.get("/openapi.json") as response:
        await generate(await response.json(), client_path)
    client_module = module("client")
    create = module("api.signing_keys.create_signing_key")
    revoke = module("api.signing_keys.revoke_signing_key")
    rotate = module("api.signing_keys.rotate_signing_key")
    get_jwks = module("api.tokens.get_jwks")
    verify = module("api.tokens.verify_token")
    models = module("models")

    client = client_module.AuthenticatedClient(
        base_url=f"http://127.0.0.1:{server.http_port}",
        token=f"{auth.login}:{auth.password}",  # the bearer scheme takes id:secret
        raise_on_unexpected_status=True,
    )
    async with client:
        created = await create.asyncio_detailed(
            client=client,
            body=models.CreateSigningKeyRequest(algorithm="EdDSA", name="generated-client"),
            x_environment_id=environment,
        )
        assert created.status_code == 201, created.content
        key = created.parsed.data
        assert isinstance(key, models.CreatedSigningKey)
        assert (key.status, key.algorithm, key.environment_id) == ("active", "EdDSA", environment)

        # Finding 3 of the issue: a newer service's answer (a new member, a new status, a new
        # algorithm) parses in a client generated today.
        newer = {**key.to_dict(), "status": "expired", "algorithm": "ES384", "usage": "1"}
        read = models.CreatedSigningKey.from_dict(newer)
        assert (read.status, read.algorithm) == ("expired", "ES384")
        assert read.additional_properties == {"usage": "1"}

        # Rotate: the next key (the old one's algorithm), the old one expiring after a grace.
        rotated = await rotate.asyncio_detailed(
            key.id,
            client=client,
            body=models.RotateSigningKeyRequest(grace_period_seconds=600),
            x_environment_id=environment,
        )
        assert rotated.status_code == 201, rotated.content
        old, key = key, rotated.parsed.data
        assert isinstance(key, models.RotatedSigningKey) and key.algorithm == "EdDSA"
        assert (key.previous_key.id, key.previous_key.rotated_to) == (old.id, key.id)

        jwks = await get_jwks.asyncio_detailed(environment, client=client)
        assert jwks.status_code == 200
        assert isinstance(jwks.parsed, models.JwkSet)
        assert sorted(jwk.kid for jwk in jwks.parsed.keys) == sorted([old.id, key.id])
        assert jwks.parsed.keys[0].crv == "Ed25519"

        token = jwt.encode(
            {"sub": "build-42", "exp": int(time.time()) + 300},
            base64.b64decode(key.private_key),
            algorithm="EdDSA",
            headers={"kid": key.id},
        )
        request = models.VerifyTokenRequest(token=token, environment_id=environment)
        verdict = (await verify.asyncio_detailed(client=client, body=request)).parsed.data
        assert (verdict.valid, verdict.key_id) == (True, key.id)
        assert verdict.claims.additional_properties["sub"] == "build-42"

        revoked = await revoke.asyncio_detailed(key.id, client=client, x_environment_id=environment)
        assert revoked.status_code == 204

        after = (await verify.asyncio_detailed(client=client, body=request)).parsed.data
        assert (after.valid, after.reason) == (False, "revoked_key")


async def test_a_generated_client_reads_an_error_body(
    server: Server, http: aiohttp.ClientSession, auth: Credentials, client_path: Path
) -> None:
    async with http.get("/openapi.json") as response:
        await generate(await response.json(), client_path)
    client = module("client").AuthenticatedClient(
        base_url=f"http://127.0.0.1:{server.http_port}", token="nobody:wrong"
    )
    async with client:
        answer = await module("api.signing_keys.get_signing_key").asyncio_detailed(
            "no-such-key", client=client
        )
    assert answer.status_code == 401
    assert isinstance(answer.parsed, module("models").ErrorResponse)
    assert answer.parsed.error.type_ == "unauthorized"
