"""Logs are JSON lines with a request id, and never carry a private key, token or secret."""

from __future__ import annotations

import base64
import io
import json

import aiohttp
import structlog

from tests.support.service import Credentials, TokenFactory


async def test_no_private_key_or_secret_reaches_a_log_line(
    http: aiohttp.ClientSession,
    issue_token: TokenFactory,
    environment: str,
    log_stream: io.StringIO,
) -> None:
    auth = await issue_token([environment])
    async with http.post("/system/v1/signing-keys", headers=auth.headers) as response:
        assert response.status == 201
        private_key_b64 = (await response.json())["data"]["private_key"]
    async with http.get("/system/v1/signing-keys/missingKey", headers=auth.headers) as response:
        assert response.status == 404
    async with http.get("/nope", headers={"Authorization": f"Bearer {auth.login}:wrong"}) as r:
        assert r.status == 404

    output = log_stream.getvalue()
    lines = [json.loads(line) for line in output.splitlines()]
    assert any(line.get("event") == "signing_key_stored" for line in lines)
    assert all("timestamp" in line and "level" in line for line in lines)
    private_pem = base64.b64decode(private_key_b64).decode()
    body = private_pem.split("-----")[2].strip().splitlines()[1]
    for secret in (auth.password, private_key_b64, body, "PRIVATE KEY", "wrong"):
        assert secret not in output


async def test_a_request_id_is_bound_to_every_line_logged_while_serving(
    http: aiohttp.ClientSession, auth: Credentials, log_stream: io.StringIO
) -> None:
    headers = {"X-Request-Id": "req-trace-42"}
    async with http.post(
        "/system/v1/signing-keys", headers={**auth.headers, **headers}
    ) as response:
        assert response.status == 201
    stored = [
        json.loads(line)
        for line in log_stream.getvalue().splitlines()
        if "signing_key_stored" in line
    ]
    assert stored and stored[0]["request_id"] == "req-trace-42"


def test_sensitive_fields_are_redacted_whatever_a_caller_binds(log_stream: io.StringIO) -> None:
    structlog.get_logger("test").info("oops", secret="hunter2", dsn="postgresql://u:pw@h/db")
    line = json.loads(log_stream.getvalue().splitlines()[-1])
    assert line["secret"] == "[redacted]" and line["dsn"] == "[redacted]"
    assert "hunter2" not in log_stream.getvalue() and "pw@" not in log_stream.getvalue()
