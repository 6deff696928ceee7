"""The history's own rules: times on one clock, one completion per operation, region
samples kept only when they change, and a format check on load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.chaos.history import History, Meta, RegionSample


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def new_history(clock: Clock) -> History:
    meta = Meta(
        seed=3,
        seconds=10,
        started_wall=1_700_000_000.0,
        environment="env",
        instances=["a"],
        regions=["a"],
        faults=[],
    )
    return History(meta, clock=clock)


def test_operations_carry_run_times_and_wall_times() -> None:
    clock = Clock()
    history = new_history(clock)
    clock.now = 101.5
    op = history.invoke("writer-a", "create", instance="a", transport="http", key_id=None)
    clock.now = 102.0
    history.complete(op, "ok", key_id="k1", error=None)
    assert (op.invoked, op.completed) == (1.5, 2.0)
    assert op.invoked_wall == 1_700_000_001.5 and op.completed_wall == 1_700_000_002.0
    assert op.args == {} and op.result == {"key_id": "k1"}, "None values are not recorded"
    with pytest.raises(RuntimeError, match="completed already"):
        history.complete(op, "fail")


def test_an_operation_never_completed_ends_at_infinity() -> None:
    history = new_history(Clock())
    op = history.invoke("reader-a", "get", instance="a", transport="grpc")
    assert op.outcome is None and op.end == float("inf") and not op.is_ok


def test_region_samples_are_kept_only_when_they_change() -> None:
    history = new_history(Clock())
    first = RegionSample(t=0.0, region="a", reachable=True, writable=True, timeline=1)
    assert history.observe_region(first)
    assert not history.observe_region(
        RegionSample(t=0.2, region="a", reachable=True, writable=True, timeline=1)
    )
    assert history.observe_region(RegionSample(t=0.4, region="b", reachable=False))
    assert history.observe_region(
        RegionSample(t=0.6, region="a", reachable=True, writable=True, timeline=2)
    )
    assert [sample.t for sample in history.regions] == [0.0, 0.4, 0.6]


def test_a_history_of_another_format_is_refused(tmp_path: Path) -> None:
    history = new_history(Clock())
    path = history.dump(tmp_path / "h.json")
    data = json.loads(path.read_text())
    data["meta"]["format"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="format 99"):
        History.load(path)
