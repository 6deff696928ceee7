"""Ninety seconds of chaos (issue 10) with the faults the service handles.

Three service instances (real processes, one per region) under mixed load while the nemesis
applies the ``handled`` faults of the table at random, with a fixed seed; the checker must
find no violation. Every fault of the table is handled today, the paused server, the cut
replication link, the rogue promotion and the unfenced old primary included.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.chaos.nemesis import HANDLED
from harness.chaos.report import format_report
from harness.chaos.runner import RunOptions, run

SEED = 20261202

pytestmark = [pytest.mark.fault, pytest.mark.timeout(260)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_ninety_seconds_of_handled_faults_leave_no_violation(tmp_path: Path) -> None:
    options = RunOptions(
        # A round of the deck deals every kind once; the two that must hold 6-9 s (a rogue
        # promotion, an unfenced old primary) make a round last about 70 s.
        seconds=90,
        seed=SEED,
        faults=("handled",),
        out=tmp_path / "history.json",
        quiet=2.0,
        final_reads=50,
        # Shorter than make chaos's, so that every kind of fault is dealt within the run.
        nemesis_gap=(0.5, 2.0),
        nemesis_duration=(1.5, 4.0),
    )
    history, report = await run(options)
    table = format_report(history, report)
    print(table)
    assert report.ok, f"{table}\nreplay: python -m harness.chaos check {options.out}"

    summary = report.summary
    assert set(summary.faults) == set(HANDLED), f"a handled fault was never applied:\n{table}"
    for kind in ("create", "revoke", "get", "verify"):
        done = sum(
            counts["ok"] for label, counts in summary.operations.items() if label.startswith(kind)
        )
        assert done >= 20, f"too few successful {kind} operations to mean anything:\n{table}"
    assert history.final.complete and history.final.replicas

    pids = [event.pid for event in history.instances if event.pid is not None]
    assert pids and not any(_alive(pid) for pid in pids), "a service instance outlived the run"
    assert len(history.meta.scratch) == 2
    assert not any(Path(path).exists() for path in history.meta.scratch), "a temp dir is left"
