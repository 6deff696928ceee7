"""Fuzzing: schemathesis against the live HTTP API, and Hypothesis properties of the parsers
that take untrusted bytes (credentials, tokens, imported keys, gRPC messages).

Two sizes (:mod:`tests.fuzz.budget`). Under ``make test`` each property runs a fixed,
derandomized number of examples and schemathesis a fixed seed, so that a failure reproduces
and the run stays short. Under ``make fuzz`` (``FUZZ_EXAMPLES`` set) every property and every
API operation runs that many examples, from a fresh seed (``FUZZ_SEED`` replays one).
Every test here is marked ``fuzz`` (``pytest -m fuzz``).
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis.configuration import set_hypothesis_home_dir

# Hypothesis keeps caches (its Unicode tables) in ./.hypothesis by default: not in the
# worktree. The example database is off (tests.fuzz.budget), so nothing else is stored.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "signing-keys-hypothesis")


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    """One event loop for every example of a module's properties (a new loop per example
    costs more than the parse under test)."""
    with asyncio.Runner() as runner:
        yield runner
