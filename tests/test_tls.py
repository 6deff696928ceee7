"""The one server-side TLS recipe: off without a certificate, ALPN only when asked."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

from service.settings import Settings
from service.tls import server_context
from tests.support.tls import write_self_signed

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
