"""The in-memory ports the core's rule tests run on, on a clock that moves only when told."""

from __future__ import annotations

import pytest

from tests.support.memory import ManualClock, MemoryKeyRecords, MemoryTokenRecords


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def records(clock: ManualClock) -> MemoryKeyRecords:
    return MemoryKeyRecords(clock=clock)


@pytest.fixture
def tokens(clock: ManualClock) -> MemoryTokenRecords:
    return MemoryTokenRecords(clock=clock)
