"""``python -m harness run`` (what ``make run`` runs), as a developer uses it: the banner, the
printed example answering, and Ctrl-C leaving no server and no directory behind."""

from __future__ import annotations

import base64
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.cluster import DIR_PREFIX, default_parent_dir

REPO = Path(__file__).resolve().parents[2]
BANNER_END = "Ctrl-C stops everything."
START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0


def wait_for_banner(proc: subprocess.Popen[bytes], stdout: Path) -> str:
    deadline = time.monotonic() + START_TIMEOUT
    while BANNER_END not in (text := stdout.read_text()):
        if proc.poll() is not None:
            pytest.fail(
                f"python -m harness run exited ({proc.returncode}) before its banner:\n"
                + stderr_tail(stdout.with_name("stderr"))
            )
        if time.monotonic() > deadline:
            pytest.fail(f"no banner after {START_TIMEOUT} s:\n{text}")
        time.sleep(0.1)
    return text


def stderr_tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def owned_topology(pid: int) -> Path:
    """The topology directory the process started (each one records its owner's pid)."""
    owned = [
        base
        for base in default_parent_dir().glob(f"{DIR_PREFIX}*")
        if (base / "owner.pid").is_file() and (base / "owner.pid").read_text().strip() == str(pid)
    ]
    assert len(owned) == 1, f"process {pid} owns {owned}"
    return owned[0]


def server_pids(base: Path) -> list[int]:
    return [int(pid.read_text().split()[0]) for pid in base.glob("*/postmaster.pid")]


def serves(pid: int, base: Path) -> bool:
    """Whether ``pid`` is still a PostgreSQL server of the topology in ``base``."""
    try:
        return str(base) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def curl(line: str) -> tuple[int, object]:
    """Do what one printed ``curl -s [-u id:secret] [-X METHOD] URL`` line asks, without curl."""
    argv = shlex.split(line)
    assert argv[:2] == ["curl", "-s"], line
    options = dict(zip(argv[2:-1:2], argv[3:-1:2], strict=True))
    assert set(options) <= {"-u", "-X"}, line
    request = urllib.request.Request(argv[-1], method=options.get("-X", "GET"))
    if "-u" in options:
        credentials = base64.b64encode(options["-u"].encode()).decode()
        request.add_header("Authorization", f"Basic {credentials}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


def listed_until(listing: str, key_id: str, timeout: float = 2.0) -> list[str]:
    """The listed key ids, once ``key_id`` is among them. From a standby's region the list
    may trail the create by the replication lag (reads there are not yet read-your-writes)."""
    deadline = time.monotonic() + timeout
    while True:
        status, listed = curl(listing)
        assert status == 200 and isinstance(listed, dict)
        ids = [key["id"] for key in listed["data"]]
        if key_id in ids or time.monotonic() > deadline:
            return ids
        time.sleep(0.05)


@pytest.fixture(params=[None, "gcp-us-central1"], ids=["default-region", "standby-region"])
def dev_run(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path, str]]:
    """``python -m harness run`` on free ports, in a session of its own (so that the signal
    reaches it alone); stopped with SIGTERM, then SIGKILL, if a test leaves it running. Run
    once as is, once with a standby's region as the local one (``SIGNING_KEYS_LOCAL_REGION``)."""
    stdout, stderr = tmp_path / "stdout", tmp_path / "stderr"
    env = {**os.environ, "SIGNING_KEYS_HTTP_PORT": "0", "SIGNING_KEYS_GRPC_PORT": "0"}
    env.pop("SIGNING_KEYS_LOCAL_REGION", None)
    if request.param is not None:
        env["SIGNING_KEYS_LOCAL_REGION"] = request.param
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "harness", "run", "--environment", "env-dev-run"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    try:
        yield proc, stdout, stderr, request.param or "aws-us-east-1"
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_run_prints_a_working_example_and_ctrl_c_cleans_everything_up(
    dev_run: tuple[subprocess.Popen[bytes], Path, Path, str],
) -> None:
    proc, stdout, stderr, expected_region = dev_run
    banner = wait_for_banner(proc, stdout)
    fields = dict(line.split(": ", 1) for line in banner.splitlines() if ": " in line)
    local_region = fields["local region"]
    assert local_region == expected_region
    assert fields["http"].startswith("http://127.0.0.1:")
    assert fields["grpc"].startswith("127.0.0.1:")
    assert fields["token id"].startswith("skt_") and fields["token secret"]

    examples = [line.strip() for line in banner.splitlines() if line.strip().startswith("curl")]
    create, listing, regions = examples
    status, created = curl(create)
    assert status == 201
    assert isinstance(created, dict) and created["data"]["environment_id"] == "env-dev-run"
    listed_ids = listed_until(listing, created["data"]["id"])
    assert listed_ids == [created["data"]["id"]]
    status, region_status = curl(regions)
    assert status == 200
    assert isinstance(region_status, dict)
    assert region_status["data"]["write_region"] == "aws-us-east-1"
    assert region_status["data"]["local_region"] == local_region
    assert region_status["data"]["read_region"] == local_region

    base = owned_topology(proc.pid)
    servers = server_pids(base)
    assert len(servers) == 3 and all(serves(pid, base) for pid in servers)

    os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C sends
    assert proc.wait(STOP_TIMEOUT) == 0, stderr.read_text()
    assert "stopping" in stderr.read_text()
    assert not base.exists(), f"{base} left behind"
    assert not [pid for pid in servers if serves(pid, base)], "servers left running"


def test_a_local_region_the_topology_lacks_is_refused_before_anything_starts() -> None:
    env = {**os.environ, "SIGNING_KEYS_LOCAL_REGION": "mars-north-1"}
    done = subprocess.run(
        [sys.executable, "-m", "harness", "run"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "mars-north-1" in done.stderr and "aws-us-east-1" in done.stderr
