"""The ``signing-keys`` command line, run as an operator would (a real process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from harness import LocalTopology
from service.cli import format_status
from service.locality.status import RegionStatus, RouterStatus
from tests.support.service import service_env


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env={**os.environ, **env, "SIGNING_KEYS_LOG_LEVEL": "warning"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_migrate_token_create_and_status(migrated_topology: LocalTopology) -> None:
    env = service_env(migrated_topology)
    migrated = run_cli("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert json.loads(migrated.stdout) == {"applied": []}, "already migrated: nothing to do"

    issued = run_cli("token", "create", "--environment", "env-cli", "--scopes", "read", env=env)
    assert issued.returncode == 0, issued.stderr
    token = json.loads(issued.stdout)
    assert token["id"].startswith("skt_") and token["scopes"] == ["read"]
    assert token["secret"] not in issued.stderr, "the secret is printed once, never logged"

    status = run_cli("status", env=env)
    assert status.returncode == 0, status.stderr
    regions = json.loads(status.stdout)
    assert regions["local_region"] == "aws-us-east-1"
    assert regions["write_region"] == migrated_topology.primary
    assert {region["name"] for region in regions["regions"]} == set(migrated_topology.region_names)
    assert all(region["state"] == "up" for region in regions["regions"])
    assert "signing_keys:" not in status.stdout, "no DSN (with its password) in the output"
    # Fencing and data age are shown: the cluster's timeline, each region's, and why not.
    assert regions["timeline"] == 1
    assert regions["writes_refused"] is None
    for region in regions["regions"]:
        assert (region["timeline"], region["fenced"], region["fence_reason"]) == (1, False, None)
    table = run_cli("status", "--table", env=env)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "REGION",
        "CLOUD",
        "STATE",
        "ROLE",
        "TIMELINE",
        "DATA",
        "AGE",
        "RTT",
        "NOTES",
    ]
    assert {line.split()[0] for line in lines[1:]} == set(migrated_topology.region_names)
    assert "signing_keys:" not in table.stdout


def test_a_bad_setting_stops_the_command_with_a_message_naming_it() -> None:
    done = run_cli("serve", env={"SIGNING_KEYS_REGIONS": "aws-us-east-1:aws"})
    assert done.returncode == 2
    assert "SIGNING_KEYS_DSN_AWS_US_EAST_1" in done.stderr
    bad_scope = run_cli(
        "token",
        "create",
        "--environment",
        "e",
        "--scopes",
        "admin",
        env={
            "SIGNING_KEYS_REGIONS": "aws-us-east-1:aws",
            "SIGNING_KEYS_LOCAL_REGION": "aws-us-east-1",
            "SIGNING_KEYS_DSN_AWS_US_EAST_1": "postgresql://u:p@127.0.0.1:1/db",
        },
    )
    assert bad_scope.returncode == 2
    assert "--scopes" in bad_scope.stderr


def test_the_status_table_says_which_region_is_fenced_and_why_writes_are_refused() -> None:
    def region(name: str, **fields: object) -> RegionStatus:
        base: dict[str, object] = {
            "name": name,
            "cloud": "aws",
            "state": "up",
            "writable": False,
            "engine": "postgresql",
            "rtt_ms": 1.25,
            "lag_seconds": 0.05,
            "in_flight": 0,
            "last_error": None,
            "since": 0.0,
            "timeline": 2,
            "data_age_source": "heartbeat",
            "receiver": "streaming",
        }
        return RegionStatus(**{**base, **fields})  # type: ignore[arg-type]

    status = RouterStatus(
        regions=(
            region(
                "aws-us-east-1",
                writable=True,
                fenced=True,
                fence_reason="old_timeline",
                timeline=1,
                lag_seconds=None,
                data_age_source=None,
                receiver=None,
            ),
            region("aws-eu-west-1", receiver="waiting"),
            region("gcp-us-central1", state="down", last_error="TimeoutError", rtt_ms=None),
        ),
        read_region="aws-eu-west-1",
        write_region=None,
        local_region="aws-us-east-1",
        timeline=2,
        writes_refused="aws-us-east-1 writable on a timeline older than 2",
    )
    lines = format_status(status).splitlines()
    assert lines[1].split()[:6] == ["aws-us-east-1", "aws", "up", "fenced", "1", "-"]
    assert lines[1].endswith("local, fenced: old_timeline")
    assert lines[2].endswith("reads, walreceiver waiting")
    assert "0.050 s" in lines[2]
    assert lines[3].endswith("TimeoutError")
    assert lines[-1] == "writes refused: aws-us-east-1 writable on a timeline older than 2"
