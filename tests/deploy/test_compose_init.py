"""``deploy/compose-init.sh`` under ``bash`` with a fake ``cockroach`` on PATH: it waits until
every region has joined before it creates anything (``migrate``'s ``ADD REGION`` fails for a
region none of whose nodes has joined), gives up naming the missing region, creates the DDL
and data roles, and never puts the licence on a command line."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.support import REGIONS, REPO

INIT_SCRIPT = REPO / "deploy" / "compose-init.sh"

# The fake: every call appends its arguments (and what it read on stdin) to $FAKE_LOG.
# `SHOW REGIONS FROM CLUSTER` lists one more region per call, up to $FAKE_JOINED_MAX.
FAKE_COCKROACH = r"""#!/usr/bin/env bash
set -euo pipefail
stdin=""
if [[ ! -t 0 ]]; then stdin="$(cat)"; fi
printf 'ARGS %s\n' "$*" >>"${FAKE_LOG}"
if [[ -n "${stdin}" ]]; then printf 'STDIN %s\n' "${stdin//$'\n'/ }" >>"${FAKE_LOG}"; fi
case "$1" in
init) echo "Cluster successfully initialized"; exit 0 ;;
esac
if [[ "$*" == *"SHOW REGIONS FROM CLUSTER]"* ]]; then
    calls=$(( $(cat "${FAKE_STATE}" 2>/dev/null || echo 0) + 1 ))
    echo "${calls}" >"${FAKE_STATE}"
    joined=$(( calls < FAKE_JOINED_MAX ? calls : FAKE_JOINED_MAX ))
    echo "region"
    IFS=',' read -r -a all <<<"${FAKE_REGIONS}"
    for ((i = 0; i < joined; i++)); do echo "${all[i]}"; done
    printf 'JOINED %s\n' "${joined}" >>"${FAKE_LOG}"
fi
exit 0
"""


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    log: list[str]

    def index(self, prefix: str, containing: str = "") -> int:
        return next(
            i for i, line in enumerate(self.log) if line.startswith(prefix) and containing in line
        )


def run_init(tmp_path: Path, *, joined_max: int, licence: str = "") -> Run:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "cockroach"
    fake.write_text(FAKE_COCKROACH)
    fake.chmod(0o755)
    log = tmp_path / "calls.log"
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_LOG": str(log),
        "FAKE_STATE": str(tmp_path / "calls"),
        "FAKE_JOINED_MAX": str(joined_max),
        "FAKE_REGIONS": ",".join(REGIONS),
        "COCKROACH_HOST": "crdb-aws-us-east-1:26257",
        "COCKROACH_DATABASE": "signing_keys",
        "COCKROACH_REGIONS": ",".join(REGIONS),
        "COCKROACH_LICENSE": licence,
        "INIT_ATTEMPTS": "8",
        "INIT_INTERVAL": "0",
    }
    done = subprocess.run(
        ["bash", str(INIT_SCRIPT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    lines = log.read_text().splitlines() if log.exists() else []
    return Run(done.returncode, done.stdout, done.stderr, lines)


def test_nothing_is_created_before_every_region_has_joined(tmp_path: Path) -> None:
    run = run_init(tmp_path, joined_max=len(REGIONS))
    assert run.code == 0, run.stderr
    all_joined = run.index("JOINED", str(len(REGIONS)))
    created = run.index("STDIN", "CREATE DATABASE")
    assert all_joined < created
    # It asked again while regions were missing, rather than going on after one answer.
    assert sum(line.startswith("JOINED") for line in run.log) == len(REGIONS)


def test_a_region_that_never_joins_fails_init_naming_it(tmp_path: Path) -> None:
    run = run_init(tmp_path, joined_max=len(REGIONS) - 1)
    assert run.code == 1
    assert list(REGIONS)[-1] in run.stderr
    assert not any("CREATE DATABASE" in line for line in run.log)


def test_the_serving_role_gets_data_privileges_only(tmp_path: Path) -> None:
    run = run_init(tmp_path, joined_max=len(REGIONS))
    (script,) = [line for line in run.log if "CREATE DATABASE" in line]
    assert "CREATE USER IF NOT EXISTS signing_keys_migrator" in script
    assert "GRANT admin TO signing_keys_migrator" in script
    assert (
        "ALTER DEFAULT PRIVILEGES FOR ROLE signing_keys_migrator IN SCHEMA public"
        "     GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO signing_keys_app" in script
    )
    assert "GRANT admin TO signing_keys_app" not in script
    assert "GRANT ALL" not in script


@pytest.mark.parametrize("licence", ["", "crl-0-secret'licence"])
def test_the_licence_never_reaches_a_command_line_and_its_absence_is_explained(
    tmp_path: Path, licence: str
) -> None:
    run = run_init(tmp_path, joined_max=len(REGIONS), licence=licence)
    assert run.code == 0, run.stderr
    args = [line for line in run.log if line.startswith("ARGS")]
    if licence:
        assert all("crl-0-secret" not in line for line in args)
        assert any("crl-0-secret''licence" in line for line in run.log)  # quoted, on stdin
        assert "licence applied" in run.stdout
    else:
        assert "7-day grace period" in run.stdout and "docker compose down -v" in run.stdout
