"""TLS to the database: a region's DSN with ``sslmode=verify-full`` and ``sslrootcert`` (and
``sslcert``/``sslkey`` when the server asks for a client certificate) connects the service,
with a home directory that holds no ``~/.postgresql`` (the image's is ``/nonexistent``); a
wrong host name or a wrong CA fails with an error that says so and carries no password.

The PostgreSQL server is one of this module's own, serving TLS with a throw-away CA, started
with the harness's server classes.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from harness.cluster import default_parent_dir
from harness.postgres import PostgresBinaries, PostgresServer, free_port, quote_conf
from service.server import Server
from service.settings import Settings, SettingsError
from tests.support.service import log_lines
from tests.support.tls import CertificateAuthority

PASSWORD = "tls-test-password-d41d8cd9"
ROLE = "signing_keys"
DATABASE = "signing_keys"
REGION = "aws-us-east-1"
DSN_VARIABLE = "SIGNING_KEYS_DSN_AWS_US_EAST_1"


@dataclass(frozen=True)
class TlsPostgres:
    """A running PostgreSQL that serves only TLS and asks clients for a certificate."""

    port: int
    ca: CertificateAuthority
    client_cert: Path
    client_key: Path
    stranger_ca: CertificateAuthority

    def dsn(self, host: str = "localhost", **params: str) -> str:
        query = "&".join(f"{key}={value}" for key, value in params.items())
        return f"postgresql://{ROLE}:{PASSWORD}@{host}:{self.port}/{DATABASE}?{query}"

    def verify_full(self, host: str = "localhost", *, ca: Path | None = None) -> str:
        return self.dsn(
            host,
            sslmode="verify-full",
            sslrootcert=str(ca or self.ca.cert_file),
            sslcert=str(self.client_cert),
            sslkey=str(self.client_key),
        )


@pytest.fixture(scope="module")
def tls_postgres() -> Iterator[TlsPostgres]:
    binaries = PostgresBinaries.find()
    base = Path(tempfile.mkdtemp(prefix="sk-tls-", dir=default_parent_dir()))
    binaries.give(base)
    try:
        certificates = base / "certificates"
        certificates.mkdir()
        ca = CertificateAuthority(certificates, "database-ca")
        server_cert, server_key = ca.issue("server", hosts=["localhost"])
        client_cert, client_key = ca.issue(ROLE, client=True)
        stranger_ca = CertificateAuthority(certificates, "stranger-ca")
        server = PostgresServer(
            "tls",
            binaries=binaries,
            data_dir=base / "data",
            port=free_port(),
            log_path=base / "postgres.log",
        )
        server.initdb()
        for name, source in (("server.crt", server_cert), ("server.key", server_key)):
            shutil.copy(source, server.data_dir / name)
        shutil.copy(ca.cert_file, server.data_dir / "ca.crt")
        (server.data_dir / "server.key").chmod(0o600)
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(server.port),
            "unix_socket_directories": "",
            "ssl": "on",
            "ssl_cert_file": "server.crt",
            "ssl_key_file": "server.key",
            "ssl_ca_file": "ca.crt",
            "password_encryption": "scram-sha-256",
            "fsync": "off",
        }
        with (server.data_dir / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{key} = {quote_conf(value)}\n" for key, value in settings.items())
        (server.data_dir / "pg_hba.conf").write_text(
            "hostssl all postgres 127.0.0.1/32 trust\n"
            "hostssl all all 127.0.0.1/32 scram-sha-256 clientcert=verify-ca\n"
        )
        binaries.give(*(server.data_dir / name for name in ("server.crt", "server.key", "ca.crt")))
        binaries.give(server.data_dir / "pg_hba.conf")
        server.start()
        try:
            asyncio.run(_bootstrap(server.port, ca.cert_file))
            yield TlsPostgres(server.port, ca, client_cert, client_key, stranger_ca)
        finally:
            server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


async def _bootstrap(port: int, ca_file: Path) -> None:
    conn = await asyncpg.connect(
        f"postgresql://postgres@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={ca_file}"
    )
    try:
        await conn.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
        await conn.execute(f"CREATE DATABASE {DATABASE} OWNER {ROLE}")
    finally:
        await conn.close()


@pytest.fixture
def no_home(monkeypatch: pytest.MonkeyPatch) -> None:
    """The image's home directory: nothing under it, no ~/.postgresql."""
    monkeypatch.setenv("HOME", "/nonexistent")
    for variable in ("PGSSLROOTCERT", "PGSSLCERT", "PGSSLKEY", "PGSSLMODE"):
        monkeypatch.delenv(variable, raising=False)


def env(dsn: str) -> dict[str, str]:
    return {
        "SIGNING_KEYS_REGIONS": f"{REGION}:aws",
        "SIGNING_KEYS_LOCAL_REGION": REGION,
        DSN_VARIABLE: dsn,
        "SIGNING_KEYS_HTTP_HOST": "127.0.0.1",
        "SIGNING_KEYS_HTTP_PORT": "0",
        "SIGNING_KEYS_GRPC_ENABLED": "false",
        "SIGNING_KEYS_PROBE_INTERVAL": "0.05",
        "SIGNING_KEYS_ACCESS_LOG": "off",
    }


async def test_verify_full_with_the_dsn_s_files_connects_without_a_home_directory(
    tls_postgres: TlsPostgres, no_home: None
) -> None:
    async with Server(Settings.from_env(env(tls_postgres.verify_full()))) as server:
        assert await server.database.wait_ready(writable=True, timeout=10)

        async def encryption(conn: asyncpg.Connection) -> tuple[bool, str]:
            row = await conn.fetchrow(
                "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            )
            return bool(row["ssl"]), str(row["version"])

        encrypted, version = await server.database.read(encryption)
        assert encrypted and version.startswith("TLS")


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong host name", "mismatch, certificate is not valid for '127.0.0.1'"),
        ("wrong CA", "certificate verify failed"),
        ("no client certificate", "requires a valid client certificate"),
    ],
)
async def test_a_failing_verification_is_named_and_carries_no_password(
    tls_postgres: TlsPostgres, no_home: None, log_stream: io.StringIO, case: str, expected: str
) -> None:
    dsn = {
        # The certificate names localhost only.
        "wrong host name": tls_postgres.verify_full("127.0.0.1"),
        "wrong CA": tls_postgres.verify_full(ca=tls_postgres.stranger_ca.cert_file),
        "no client certificate": tls_postgres.dsn(
            sslmode="verify-full", sslrootcert=str(tls_postgres.ca.cert_file)
        ),
    }[case]
    async with Server(Settings.from_env(env(dsn))) as server:
        assert not await server.database.wait_ready(writable=False, timeout=1)
        async with asyncio.timeout(10):
            while not (error := server.database.status().regions[0].last_error):
                await asyncio.sleep(0.02)
        print(f"\n{case}: {error}")
        assert expected in error, error
        assert not server.database.can_read()
    assert PASSWORD not in error
    assert all(PASSWORD not in str(line) for line in log_lines(log_stream))


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"sslmode": "verify-full"}, "sslrootcert"),
        ({"sslmode": "verify-ca"}, "sslrootcert"),
        ({"sslmode": "verify-full", "sslrootcert": "/nonexistent/root.crt"}, "/nonexistent/root"),
        ({"sslmode": "require", "sslcert": "/nonexistent/client.crt"}, "sslcert"),
    ],
)
def test_tls_files_the_dsn_needs_are_checked_at_start_up(
    tls_postgres: TlsPostgres, no_home: None, params: dict[str, str], named: str
) -> None:
    """Not at the first connection, with asyncpg's hint about ~/.postgresql/root.crt."""
    with pytest.raises(SettingsError) as refused:
        Settings.from_env(env(tls_postgres.dsn(**params)))
    message = str(refused.value)
    assert DSN_VARIABLE in message and named in message
    assert PASSWORD not in message


def files_env(postgres: TlsPostgres) -> dict[str, str]:
    """The chart's way: the DSN says only ``sslmode``; the mounted Secret's files come from
    ``SIGNING_KEYS_DB_*_FILE``, one setting for every region."""
    return {
        **env(postgres.dsn(sslmode="verify-full")),
        "SIGNING_KEYS_DB_CA_FILE": str(postgres.ca.cert_file),
        "SIGNING_KEYS_DB_CERT_FILE": str(postgres.client_cert),
        "SIGNING_KEYS_DB_KEY_FILE": str(postgres.client_key),
    }


async def test_verify_full_with_the_database_file_settings_connects_without_a_home_directory(
    tls_postgres: TlsPostgres, no_home: None
) -> None:
    async with Server(Settings.from_env(files_env(tls_postgres))) as server:
        assert await server.database.wait_ready(writable=True, timeout=10)
        encrypted = await server.database.read(
            lambda conn: conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        )
        assert encrypted is True


def test_a_file_the_dsn_names_wins_over_the_database_file_settings(
    tls_postgres: TlsPostgres, no_home: None
) -> None:
    own_ca = str(tls_postgres.stranger_ca.cert_file)
    settings = Settings.from_env(
        {
            **files_env(tls_postgres),
            DSN_VARIABLE: tls_postgres.dsn(sslmode="verify-full", sslrootcert=own_ca),
        }
    )
    query = settings.regions[0].dsn.split("?", 1)[1].split("&")
    assert f"sslrootcert={own_ca}" in query
    assert f"sslcert={tls_postgres.client_cert}" in query
    assert sum(item.startswith("sslrootcert=") for item in query) == 1


def test_a_database_ca_file_that_cannot_be_read_is_refused_at_start_up(
    tls_postgres: TlsPostgres, no_home: None
) -> None:
    with pytest.raises(SettingsError, match=r"sslrootcert file '/nonexistent/ca\.crt'"):
        Settings.from_env(
            {**files_env(tls_postgres), "SIGNING_KEYS_DB_CA_FILE": "/nonexistent/ca.crt"}
        )
