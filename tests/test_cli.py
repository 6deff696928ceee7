"""The ``signing-keys`` command line, run as an operator would (a real process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from harness import LocalTopology
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
