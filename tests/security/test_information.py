"""What the service tells about its database: region states to anyone, the kind of a
region's failure to a ``read`` token, and the driver's own words (hosts, ports, names) only
to whoever holds the DSNs, at their terminal (``signing-keys status --raw-errors``)."""

from __future__ import annotations

import json
import re
import socket

import aiohttp
import pytest

from harness import LocalTopology
from service.cli import format_status
from service.core.models import Scope
from service.http.ops import redact_error
from service.locality.status import RegionStatus, RouterStatus
from service.server import Server
from service.settings import Settings
from tests.locality.traffic import eventually
from tests.support.service import Credentials, service_env
from tests.test_cli import run_cli

DOWN_REGION = "gcp-us-central1"

# Messages as asyncpg, PostgreSQL and the operating system word them, once the router has
# stripped DSNs and passwords (service.locality.failures.describe_error).
DRIVER_MESSAGES = [
    "ConnectionRefusedError: [Errno 111] Connect call failed ('10.20.30.40', 5432)",
    "OSError: Multiple exceptions: [Errno 111] Connect call failed ('::1', 5433, 0, 0), "
    "[Errno 111] Connect call failed ('127.0.0.1', 5433)",
    'CannotConnectNowError: connection to server at "db1.eu-west-1.rds.example.com" '
    "(10.1.2.3), port 26257 failed: FATAL:  the database system is starting up",
    'InvalidPasswordError: password authentication failed for user "signing_owner"',
    "OSError: [Errno 113] Connect call failed ('fd00:1:2::7', 6432)",
    "ConnectionError: could not connect to db-primary.internal:5432",
    "OSError: could not connect to [fe80::1%eth0]:5432",
    "FileNotFoundError: [Errno 2] No such file or directory: /run/postgresql/.s.PGSQL.5432",
    "PostgresConnectionError: connection is closed host=10.0.0.1 port=5432",
]
SECRETS_IN_THEM = [
    "10.20.30.40",
    "5432",
    "5433",
    "::1",
    "127.0.0.1",
    "db1.eu-west-1",
    "example.com",
    "10.1.2.3",
    "26257",
    "signing_owner",
    "fd00:1:2::7",
    "6432",
    "db-primary",
    "fe80::1",
    "/run/postgresql",
    "10.0.0.1",
]


@pytest.mark.parametrize("message", DRIVER_MESSAGES)
def test_redaction_keeps_the_kind_of_failure_and_drops_every_host_port_and_name(
    message: str,
) -> None:
    redacted = redact_error(message)
    assert redacted is not None
    assert redacted.split(":")[0] == message.split(":")[0], "the exception's class stays"
    leaked = [secret for secret in SECRETS_IN_THEM if secret in redacted]
    assert not leaked, f"{redacted!r} still names {leaked}"


def test_redaction_leaves_messages_without_addresses_alone() -> None:
    for message in (
        "TimeoutError",
        "InterfaceError: connection is closed",
        "QueryCanceledError: canceling statement due to statement timeout",
        "probe failed",
    ):
        assert redact_error(message) == message
    assert redact_error(None) is None


def down_region(error: str) -> RouterStatus:
    region = RegionStatus(
        name=DOWN_REGION,
        cloud="gcp",
        state="down",
        writable=False,
        engine=None,
        rtt_ms=None,
        lag_seconds=None,
        in_flight=0,
        last_error=error,
        since=0.0,
    )
    return RouterStatus(regions=(region,), read_region=None, write_region=None, local_region="x")


def test_the_status_table_redacts_the_driver_message_unless_asked_for_it() -> None:
    error = DRIVER_MESSAGES[0]
    assert "10.20.30.40" not in format_status(down_region(error))
    assert "ConnectionRefusedError" in format_status(down_region(error))
    assert error in format_status(down_region(error), raw_errors=True)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def unreachable_region_env(topology: LocalTopology) -> tuple[dict[str, str], int]:
    """The service's settings with one standby's DSN pointing at a closed port: the router
    records a driver message naming 127.0.0.1 and that port as the region's last error."""
    port = closed_port()
    env = service_env(topology)
    variable = "SIGNING_KEYS_DSN_" + DOWN_REGION.upper().replace("-", "_")
    env[variable] = re.sub(r"@[^/]+/", f"@127.0.0.1:{port}/", env[variable])
    return env, port


def test_signing_keys_status_prints_no_database_host_or_port(
    migrated_topology: LocalTopology,
) -> None:
    """The finding: ``signing-keys status`` printed a driver message with the database's host
    and port. Now the JSON and the table say what failed, not where; ``--raw-errors`` (for
    whoever holds the DSNs already) shows the driver's words."""
    env, port = unreachable_region_env(migrated_topology)
    shown = run_cli("status", env=env)
    assert shown.returncode == 0, shown.stderr
    region = next(r for r in json.loads(shown.stdout)["regions"] if r["name"] == DOWN_REGION)
    assert region["state"] == "down" and region["last_error"], region
    table = run_cli("status", "--table", env=env)
    assert table.returncode == 0, table.stderr
    for output in (shown.stdout, table.stdout):
        assert str(port) not in output and "127.0.0.1" not in output
    raw = run_cli("status", "--raw-errors", env=env)
    assert str(port) in raw.stdout, "an operator can still see where it failed"


async def test_region_errors_reach_a_read_token_redacted_and_anonymous_callers_not_at_all(
    migrated_topology: LocalTopology, environment: str
) -> None:
    env, port = unreachable_region_env(migrated_topology)
    async with Server(Settings.from_env(env)) as server:
        token, secret = await server.authenticator.issue([Scope.READ], [environment])
        reader = Credentials(token.id, secret)
        await eventually(
            lambda: server.database.status().region(DOWN_REGION).state == "down", timeout=10
        )
        base = f"http://127.0.0.1:{server.http_port}"
        async with aiohttp.ClientSession(base_url=base) as http:
            for headers in ({}, reader.headers):
                async with http.get("/v1/regions", headers=headers) as response:
                    assert response.status == 200
                    text = await response.text()
                assert str(port) not in text and "127.0.0.1" not in text, text
            region = next(
                r for r in json.loads(text)["data"]["regions"] if r["name"] == DOWN_REGION
            )
            assert region["state"] == "down"
            assert region["last_error"], "a reader learns what failed"
            async with http.get("/v1/regions") as response:
                anonymous = (await response.json())["data"]
            assert set(anonymous) == {"local_region", "read_region", "write_region", "regions"}
            assert all(
                set(r) == {"name", "cloud", "state", "role"} for r in anonymous["regions"]
            ), "states only"
