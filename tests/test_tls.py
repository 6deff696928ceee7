"""The one server-side TLS recipe: off without a certificate, ALPN only when asked; and
mutual TLS over HTTP and gRPC: a certificate from the configured CA, and a token."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from harness import LocalTopology
from service.grpc.generated.signingkeys import v1 as pb
from service.server import Server
from service.settings import Settings, SettingsError
from service.tls import CERTIFICATE_REQUIRED, server_context
from tests.support.service import TokenFactory, service_env
from tests.support.tls import CertificateAuthority, write_self_signed

BASE = {
    "SIGNING_KEYS_REGIONS": "aws-us-east-1:aws",
    "SIGNING_KEYS_LOCAL_REGION": "aws-us-east-1",
    "SIGNING_KEYS_DSN_AWS_US_EAST_1": "postgresql://u:p@a/db",
}


def _settings(**tls: str) -> Settings:
    return Settings.from_env({**BASE, **{f"SIGNING_KEYS_{k.upper()}": v for k, v in tls.items()}})


async def _negotiated(context: ssl.SSLContext, cert_file: Path) -> str | None:
    """The protocol a client offering h2 and http/1.1 ends up with."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
    try:
        port = server.sockets[0].getsockname()[1]
        client = ssl.create_default_context(cafile=str(cert_file))
        client.set_alpn_protocols(["h2", "http/1.1"])
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client, server_hostname="localhost"
        )
        protocol: str | None = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        writer.close()
        await writer.wait_closed()
        return protocol
    finally:
        server.close()
        await server.wait_closed()


def test_no_certificate_means_no_tls() -> None:
    assert server_context(_settings()) is None


async def test_the_same_context_serves_http_and_grpc_with_its_alpn(tmp_path: Path) -> None:
    cert_file, key_file = write_self_signed(tmp_path)
    settings = _settings(tls_cert_file=str(cert_file), tls_key_file=str(key_file))
    http = server_context(settings)
    grpc = server_context(settings, alpn=("h2",))
    assert http is not None and grpc is not None
    assert http.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert await _negotiated(http, cert_file) is None
    assert await _negotiated(grpc, cert_file) == "h2"


def test_a_client_ca_needs_tls_served() -> None:
    with pytest.raises(SettingsError, match="SIGNING_KEYS_TLS_CLIENT_CA_FILE"):
        _settings(tls_client_ca_file="/ca.pem")


# --- mutual TLS against a running service, HTTP and gRPC --------------------------------------


@dataclass(frozen=True)
class Pki:
    """The service's CA (its server certificate, its clients'), and a stranger's CA."""

    ca: CertificateAuthority
    client: tuple[Path, Path]
    stranger: tuple[Path, Path]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = CertificateAuthority(tmp_path, "signing-keys-ca")
    stranger = CertificateAuthority(tmp_path, "stranger-ca")
    return Pki(
        ca=ca,
        client=ca.issue("client-1", client=True),
        stranger=stranger.issue("client-2", client=True),
    )


@pytest.fixture
async def mtls_server(migrated_topology: LocalTopology, pki: Pki) -> AsyncIterator[Server]:
    cert_file, key_file = pki.ca.issue("server", hosts=["localhost", "127.0.0.1"])
    env = service_env(
        migrated_topology,
        tls_cert_file=str(cert_file),
        tls_key_file=str(key_file),
        tls_client_ca_file=str(pki.ca.cert_file),
    )
    async with Server(Settings.from_env(env)) as running:
        yield running


def client_context(
    pki: Pki, certificate: tuple[Path, Path] | None, *, h2: bool = False
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca.cert_file))
    if certificate is not None:
        context.load_cert_chain(*map(str, certificate))
    if h2:
        context.set_alpn_protocols(["h2"])
    return context


async def http_get(
    server: Server, context: ssl.SSLContext, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    connector = aiohttp.TCPConnector(ssl=context)
    async with aiohttp.ClientSession(connector=connector) as http:
        url = f"https://127.0.0.1:{server.http_port}{path}"
        async with http.get(url, headers=headers or {}) as response:
            return response.status, await response.json()


async def test_http_needs_a_client_certificate_from_the_ca_and_a_token(
    mtls_server: Server, pki: Pki, environment: str
) -> None:
    token = await TokenFactory(mtls_server)([environment])
    jwks = f"/v1/environments/{environment}/jwks.json"
    # No certificate: the probes answer; everything else is 401, whatever the token.
    no_cert = client_context(pki, None)
    assert (await http_get(mtls_server, no_cert, "/healthz"))[0] == 200
    status, body = await http_get(mtls_server, no_cert, jwks, token.headers)
    assert status == 401 and body["error"]["messages"] == [CERTIFICATE_REQUIRED]
    # A certificate from another CA: refused at the handshake.
    with pytest.raises(aiohttp.ClientError):
        await http_get(mtls_server, client_context(pki, pki.stranger), "/healthz")
    # The CA's certificate: the token still decides.
    ours = client_context(pki, pki.client)
    assert (await http_get(mtls_server, ours, jwks, token.headers))[0] == 200
    assert (await http_get(mtls_server, ours, jwks))[0] == 401


async def test_grpc_needs_a_client_certificate_from_the_ca_and_a_token(
    mtls_server: Server, pki: Pki, environment: str
) -> None:
    token = await TokenFactory(mtls_server)([environment])
    md = {"authorization": token.headers["Authorization"]}
    request = pb.ListSigningKeysRequest(environment_id=environment)
    port = mtls_server.grpc_port
    assert port is not None
    async with Channel("127.0.0.1", port, ssl=client_context(pki, None, h2=True)) as channel:
        health = await HealthStub(channel).Check(HealthCheckRequest(service=""))
        assert health.status == HealthCheckResponse.SERVING, "probes need no certificate"
        with pytest.raises(GRPCError) as refused:
            await pb.SigningKeysStub(channel).list_signing_keys(request, metadata=md)
        assert refused.value.status is Status.UNAUTHENTICATED
        assert refused.value.message == CERTIFICATE_REQUIRED
    stranger = client_context(pki, pki.stranger, h2=True)
    async with Channel("127.0.0.1", port, ssl=stranger) as channel:
        with pytest.raises((OSError, GRPCError, StreamTerminatedError)):
            await pb.SigningKeysStub(channel).list_signing_keys(request, metadata=md)
    ours = client_context(pki, pki.client, h2=True)
    async with Channel("127.0.0.1", port, ssl=ours) as channel:
        stub = pb.SigningKeysStub(channel)
        assert (await stub.list_signing_keys(request, metadata=md)).keys == []
        with pytest.raises(GRPCError) as no_token:
            await stub.list_signing_keys(request)
        assert no_token.value.status is Status.UNAUTHENTICATED
