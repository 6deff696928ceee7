"""The readiness decision: a pure function of two facts, read live by :class:`Readiness`."""

from __future__ import annotations

import pytest

from service.core.readiness import Readiness, ReadinessState, decide


@pytest.mark.parametrize(
    ("can_read", "can_verify", "state"),
    [
        (True, True, "ready"),
        (True, False, "ready"),  # reads work: the feed catches up on its next poll
        (False, True, "degraded"),
        (False, False, "unavailable"),
    ],
)
def test_the_state_follows_from_the_two_facts(
    can_read: bool, can_verify: bool, state: ReadinessState
) -> None:
    assert decide(can_read=can_read, can_verify=can_verify) == state


def test_readiness_reads_both_facts_on_every_report() -> None:
    facts = {"read": True, "verify": True}
    readiness = Readiness(can_read=lambda: facts["read"], can_verify=lambda: facts["verify"])
    report = readiness.report()
    assert (report.state, report.is_serving, report.is_degraded) == ("ready", True, False)

    facts["read"] = False
    assert readiness.state() == "degraded"
    assert readiness.is_serving() and readiness.is_degraded()
    assert repr(readiness) == "<Readiness degraded can_read=False can_verify=True>"

    facts["verify"] = False
    report = readiness.report()
    assert (report.state, report.can_read, report.can_verify) == ("unavailable", False, False)
    assert not readiness.is_serving() and not readiness.is_degraded()
