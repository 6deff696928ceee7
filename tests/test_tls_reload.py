"""A renewed certificate is served without a restart, over HTTP and gRPC, when its files
change the way a Kubernetes Secret volume changes them (a ``..data`` link swapped to a new
directory); a pair that does not load leaves the previous certificate serving."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from cryptography import x509

from harness import LocalTopology
from service.server import Server
from service.settings import Settings
from service.tls import CertificateFiles
from tests.support.service import log_lines, service_env
from tests.support.tls import CertificateAuthority

RELOAD_INTERVAL = 0.05


class SecretVolume:
    """A directory laid out as the kubelet lays out a Secret volume: ``tls.crt`` and
    ``tls.key`` are links through ``..data``, a link to the current version's directory,
    which an update replaces atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.versions = 0
        root.mkdir()
        for name in ("tls.crt", "tls.key"):
            (root / name).symlink_to(f"..data/{name}")

    @property
    def cert_file(self) -> Path:
        return self.root / "tls.crt"

    @property
    def key_file(self) -> Path:
        return self.root / "tls.key"

    def publish(self, cert: Path, key: Path) -> None:
        self.versions += 1
        version = self.root / f"..version-{self.versions}"
        version.mkdir()
        (version / "tls.crt").write_bytes(cert.read_bytes())
        (version / "tls.key").write_bytes(key.read_bytes())
        staged = self.root / "..data_tmp"
        staged.symlink_to(version.name)
        staged.replace(self.root / "..data")


def common_name(der: bytes) -> str:
    certificate = x509.load_der_x509_certificate(der)
    return str(certificate.subject.rfc4514_string())


async def served_name(port: int, ca: CertificateAuthority, *, alpn: str | None = None) -> str:
    """The subject of the certificate a new connection to ``port`` is shown."""
    client = ssl.create_default_context(cafile=str(ca.cert_file))
    if alpn:
        client.set_alpn_protocols([alpn])
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=client, server_hostname="localhost"
    )
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return common_name(der)
    finally:
        writer.close()
        # A gRPC server has sent its HTTP/2 settings by now: closing may meet them.
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"not true within {timeout} s")
        await asyncio.sleep(RELOAD_INTERVAL)


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path, "serving-ca")


@pytest.fixture
def volume(tmp_path: Path, ca: CertificateAuthority) -> SecretVolume:
    volume = SecretVolume(tmp_path / "tls")
    volume.publish(*ca.issue("first", hosts=["localhost", "127.0.0.1"]))
    return volume


@pytest.fixture
async def tls_server(
    migrated_topology: LocalTopology, volume: SecretVolume
) -> AsyncIterator[Server]:
    env = service_env(
        migrated_topology,
        tls_cert_file=str(volume.cert_file),
        tls_key_file=str(volume.key_file),
        tls_reload_interval=str(RELOAD_INTERVAL),
    )
    async with Server(Settings.from_env(env)) as running:
        yield running


async def test_a_rotated_secret_is_served_on_http_and_grpc_without_a_restart(
    tls_server: Server, volume: SecretVolume, ca: CertificateAuthority
) -> None:
    assert tls_server.http_port is not None and tls_server.grpc_port is not None
    http_port, grpc_port = tls_server.http_port, tls_server.grpc_port
    assert await served_name(http_port, ca) == "CN=first"
    assert await served_name(grpc_port, ca, alpn="h2") == "CN=first"

    volume.publish(*ca.issue("second", hosts=["localhost", "127.0.0.1"]))

    async def http_renewed() -> bool:
        return await served_name(http_port, ca) == "CN=second"

    async def grpc_renewed() -> bool:
        return await served_name(grpc_port, ca, alpn="h2") == "CN=second"

    await eventually(http_renewed)
    await eventually(grpc_renewed)


async def test_a_pair_that_does_not_match_leaves_the_previous_certificate_serving(
    log_stream: io.StringIO,
    tls_server: Server,
    volume: SecretVolume,
    ca: CertificateAuthority,
    tmp_path: Path,
) -> None:
    assert tls_server.http_port is not None
    port = tls_server.http_port
    other = CertificateAuthority(tmp_path, "other-ca")
    new_cert, _ = ca.issue("mismatched", hosts=["localhost"])
    _, wrong_key = other.issue("someone-else", hosts=["localhost"])
    volume.publish(new_cert, wrong_key)
    # Several reload intervals: every handshake still completes with the first certificate.
    for _ in range(5):
        assert await served_name(port, ca) == "CN=first"
        await asyncio.sleep(RELOAD_INTERVAL * 2)
    failed = [
        line for line in log_lines(log_stream) if line["event"] == "tls_certificate_reload_failed"
    ]
    assert failed and all(line["level"] == "warning" for line in failed)
    key_text = wrong_key.read_text()
    assert not any(key_text.splitlines()[1] in json.dumps(line) for line in log_lines(log_stream))
    # Then a good pair: served as soon as it is checked.
    volume.publish(*ca.issue("third", hosts=["localhost", "127.0.0.1"]))

    async def renewed() -> bool:
        return await served_name(port, ca) == "CN=third"

    await eventually(renewed)


def test_the_files_are_checked_no_more_often_than_the_interval(
    volume: SecretVolume, ca: CertificateAuthority
) -> None:
    now = [0.0]
    files = CertificateFiles(
        str(volume.cert_file), str(volume.key_file), interval=10.0, clock=lambda: now[0]
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    files.load_into(context)
    volume.publish(*ca.issue("second", hosts=["localhost"]))
    assert files.is_changed()
    probe = ssl.create_default_context().wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO())
    files.on_handshake(probe, None, context)
    assert files.reloads == 0  # not due yet
    now[0] = 10.0
    files.on_handshake(probe, None, context)
    assert files.reloads == 1
    assert not files.is_changed()
