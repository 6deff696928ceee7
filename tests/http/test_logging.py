"""Logs are JSON lines with a request id, and never carry a private key, token or secret."""

from __future__ import annotations

import base64
import io
import json

import aiohttp
import betterproto
import pytest
import structlog
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from harness import LocalTopology
from service.core import crypto
from service.grpc.generated.signingkeys import v1 as pb
from service.server import Server
from service.settings import Settings
from tests.support.service import Credentials, TokenFactory, service_env

KEYS = "/system/v1/signing-keys"


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


async def test_refused_private_key_material_reaches_no_log_line_and_no_row(
    migrated_topology: LocalTopology, environment: str, log_stream: io.StringIO
) -> None:
    """Private material sent in a name or beside a public key, over HTTP and gRPC, on a
    server that logs every request: refused, stored nowhere, logged nowhere."""
    private_pem = crypto.generate_key_pair("EdDSA").private_pem.decode()
    body = "".join(private_pem.splitlines()[1:-1])
    one_line = " ".join(private_pem.split())
    public_pem = crypto.public_key_pem(crypto.generate_key_pair("EdDSA").public_der)
    refused_over_http = [
        (KEYS, {"name": one_line}),
        (KEYS, {"algorithm": one_line}),
        (KEYS + "/import", {"public_key": public_pem, "name": one_line}),
        (KEYS + "/import", {"public_key": public_pem + body + "\n"}),
        (KEYS + "/import", {"public_key": private_pem}),
    ]
    refused_over_grpc: list[tuple[str, betterproto.Message]] = [
        ("create_signing_key", pb.CreateSigningKeyRequest(name=one_line)),
        ("import_signing_key", pb.ImportSigningKeyRequest(pem=public_pem, name=one_line)),
        ("import_signing_key", pb.ImportSigningKeyRequest(pem=public_pem + body + "\n")),
    ]
    settings = Settings.from_env(service_env(migrated_topology, access_log="all"))
    async with Server(settings) as server:
        auth = await TokenFactory(server)([environment])
        base_url = f"http://127.0.0.1:{server.http_port}"
        async with aiohttp.ClientSession(base_url=base_url) as http:
            for path, payload in refused_over_http:
                async with http.post(path, headers=auth.headers, json=payload) as response:
                    assert response.status == 400, payload
                    answer = await response.text()
                assert "invalid_parameters" in answer and body[:24] not in answer
            assert server.grpc_port is not None
            channel = Channel("127.0.0.1", server.grpc_port)
            stub = pb.SigningKeysStub(channel)
            md = {"authorization": auth.headers["Authorization"]}
            try:
                for method, message in refused_over_grpc:
                    with pytest.raises(GRPCError) as refused:
                        await getattr(stub, method)(message, metadata=md)
                    assert refused.value.status is Status.INVALID_ARGUMENT
                    assert body[:24] not in (refused.value.message or "")
            finally:
                channel.close()
            async with http.get(KEYS, headers=auth.headers) as response:
                assert (await response.json())["data"] == [], "nothing was stored"
    output = log_stream.getvalue()
    assert '"route":"/system/v1/signing-keys/import"' in output.replace(" ", ""), "logged"
    for fragment in (body[:24], body[24:48], body[-24:], "PRIVATE KEY"):
        assert fragment not in output


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
