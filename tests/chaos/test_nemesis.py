"""The fault table: names, the set the CI run uses, and feature detection of optional faults."""

from __future__ import annotations

import random
from typing import Any, cast

import pytest

from harness.chaos.history import History, Meta
from harness.chaos.nemesis import FAULTS, HANDLED, Nemesis, World, select
from harness.cluster import LocalTopology


class FakeTopology:
    """Only what feature detection looks at; no fault is applied in these tests."""

    region_names = ("a", "b")
    regions: tuple[Any, ...] = ()


class PausableTopology(FakeTopology):
    def pause(self, name: str) -> None:
        raise NotImplementedError

    def resume(self, name: str) -> None:
        raise NotImplementedError


def world(topology: object) -> World:
    history = History(
        Meta(
            seed=1,
            seconds=1,
            started_wall=0.0,
            environment="e",
            instances=[],
            regions=[],
            faults=[],
        )
    )
    return World(cast(LocalTopology, topology), {}, history)


def test_every_fault_of_the_table_is_handled_and_the_sets_select_as_named() -> None:
    # The last four gaps (paused server, cut replication link, rogue promotion, unfenced
    # old primary) have their cures; a new fault without one would enter unhandled.
    assert set(HANDLED) == set(FAULTS)
    assert {"unfenced-old-primary", "rogue-promotion", "replication-cut"} <= set(HANDLED)
    assert [fault.name for fault in select(["handled"])] == list(HANDLED)
    assert [fault.name for fault in select(["all", "failover"])] == list(FAULTS)


def test_an_unknown_fault_name_is_refused() -> None:
    with pytest.raises(ValueError, match="no fault 'meteor'"):
        select(["meteor"])


def test_optional_faults_activate_only_when_the_topology_offers_them() -> None:
    plain = Nemesis(world(FakeTopology()), select(["all"]), random.Random(1))
    assert {"server-pause", "rogue-promotion", "replication-cut"} <= set(plain.unavailable)
    pausable = Nemesis(world(PausableTopology()), select(["all"]), random.Random(1))
    assert "server-pause" in [fault.name for fault in pausable.faults]
    assert "server-pause" not in pausable.unavailable
    assert "rogue-promotion" in pausable.unavailable


def test_the_nemesis_deals_every_kind_of_fault_before_repeating_one() -> None:
    nemesis = Nemesis(world(FakeTopology()), select(["handled"]), random.Random(5))
    # What this topology offers: the optional faults it lacks are never dealt.
    offered = [fault.name for fault in nemesis.faults]
    every = set(offered)
    first_round = [nemesis.deal(every) for _ in offered]
    assert sorted(first_round) == sorted(offered)
    assert nemesis.deal({"failover"}) == "failover", "only what can strike now is dealt"
    again = Nemesis(world(FakeTopology()), select(["handled"]), random.Random(5))
    assert [again.deal(every) for _ in offered] == first_round, "the seed decides the order"
