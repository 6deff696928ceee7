"""Schemathesis against the live service: the HTTP app on a real socket, its database the
local topology, the cases generated from the app's own ``/openapi.json``.

Every check schemathesis has (configuration: ``schemathesis.toml``, hooks:
``schemathesis_hooks.py``): no 5xx; every status, content type, header and body as
documented; a request the schema allows is accepted and one it refuses is answered 4xx;
``Allow`` on 405; credentials enforced. Once with an access token holding every scope (so
that the cases reach the handlers, and the stateful phase creates, reads and deletes keys),
once without credentials (schemathesis then also sends made-up ``Authorization`` values).

``make test`` runs a few cases per operation from a fixed seed; ``make fuzz`` runs
``FUZZ_EXAMPLES`` per operation from a fresh one (printed; ``FUZZ_SEED`` replays it).
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pytest

from service.http.openapi import openapi_document
from service.server import Server
from tests.fuzz.budget import FUZZ_EXAMPLES, LONG_RUN, SEED
from tests.support.service import Credentials

pytestmark = pytest.mark.fuzz

HERE = Path(__file__).parent
# Cases per operation in the fuzzing and stateful phases of the bounded run (the coverage
# phase generates its own boundary and negative cases, about 40 per operation, whatever
# this says): every phase reaches every operation, in about 10 s of CPU.
BOUNDED_EXAMPLES = 3


def fuzzed_operations() -> int:
    """What schemathesis tests: every documented operation but the one that serves the
    document it was loaded from."""
    return sum(len(operations) for operations in openapi_document()["paths"].values()) - 1


async def schemathesis(server: Server, directory: Path, *options: str) -> str:
    """Run schemathesis against ``server``; its report, which the test fails with on any
    failure. In ``directory``: schemathesis and Hypothesis keep caches in the working one."""
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(HERE / "schemathesis.toml"),
        "--no-color",
        "run",
        f"http://127.0.0.1:{server.http_port}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(FUZZ_EXAMPLES if LONG_RUN else BOUNDED_EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--request-timeout",
        "30",
        # Deterministic: the same cases every run (it implies no example database).
        *(["--generation-database", "none"] if LONG_RUN else ["--generation-deterministic"]),
        *options,
    ]
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=directory,
        env={**os.environ, "SCHEMATHESIS_HOOKS": str(HERE / "schemathesis_hooks.py")},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    report = output.decode(errors="replace")
    summary = report[report.find("= SUMMARY =") :]
    print(summary)  # the totals, for `make fuzz` (pytest -s) and for a failure's report
    assert process.returncode == 0, report[-12_000:]
    tested = re.search(r"Tested: (\d+)", summary)
    assert tested is not None and int(tested.group(1)) == fuzzed_operations(), summary
    return report


async def test_schemathesis_finds_nothing_with_every_scope(
    server: Server, auth: Credentials, tmp_path: Path
) -> None:
    report = await schemathesis(
        server, tmp_path, "--header", f"Authorization: {auth.headers['Authorization']}"
    )
    assert "Stateful" in report


async def test_schemathesis_finds_nothing_without_credentials(
    server: Server, tmp_path: Path
) -> None:
    # Bounded: the fuzzing phase only (made-up credentials on every operation); the
    # coverage phase's variations of each parameter would all meet the same 401.
    await schemathesis(server, tmp_path, *([] if LONG_RUN else ["--phases", "fuzzing"]))
