"""Fencing, the pure decision: which PostgreSQL regions the router must not trust."""

from __future__ import annotations

from service.locality.choice import ChoicePolicy, RegionView, read_order, write_order
from service.locality.fencing import Identity, Lineage, decide

SYSTEM = "7414556198713098213"
OTHER = "7414556198713099999"
POLICY = ChoicePolicy(local_region="a", hold_down=3.0, max_replica_lag=5.0, slow_margin=0.1)


def primary(name: str, timeline: int, system: str | None = SYSTEM) -> Identity:
    return Identity(name=name, writable=True, system_identifier=system, timeline=timeline)


def standby(name: str, timeline: int | None, system: str | None = SYSTEM) -> Identity:
    return Identity(name=name, writable=False, system_identifier=system, timeline=timeline)


def test_one_primary_and_its_standbys_on_one_timeline_are_all_trusted() -> None:
    verdict = decide([primary("a", 1), standby("b", 1), standby("c", 1)], Lineage())
    assert verdict.fences == {}
    assert verdict.lineage == Lineage(SYSTEM, 1)


def test_the_highest_timeline_wins_and_an_old_primary_still_up_is_fenced() -> None:
    """The rogue promotion: b was promoted while a, local and reachable, stayed writable."""
    verdict = decide([primary("a", 1), primary("b", 2), standby("c", 2)], Lineage(SYSTEM, 1))
    assert verdict.fences == {"a": "old_timeline"}
    assert verdict.lineage == Lineage(SYSTEM, 2)


def test_a_standby_that_follows_the_old_timeline_is_fenced_too() -> None:
    verdict = decide([primary("a", 1), primary("b", 2), standby("c", 1)], Lineage())
    assert verdict.fences == {"a": "old_timeline", "c": "follows_old_timeline"}


def test_a_standby_on_the_new_timeline_is_enough_to_fence_the_old_primary() -> None:
    """The new primary is out of sight, but a standby that follows it says it exists."""
    verdict = decide([primary("a", 1), standby("c", 2)], Lineage())
    assert verdict.fences == {"a": "old_timeline"}


def test_the_highest_timeline_is_remembered_when_the_new_primary_goes_out_of_sight() -> None:
    seen = decide([primary("a", 1), primary("b", 2)], Lineage()).lineage
    verdict = decide([primary("a", 1)], seen)
    assert verdict.fences == {"a": "old_timeline"}
    assert verdict.lineage == Lineage(SYSTEM, 2)


def test_the_old_primary_is_trusted_again_once_it_is_a_standby_of_the_current_timeline() -> None:
    known = Lineage(SYSTEM, 2)
    assert decide([primary("a", 1), primary("b", 2)], known).fences == {"a": "old_timeline"}
    assert decide([standby("a", 2), primary("b", 2)], known).fences == {}
    # Rejoined, but not on the new timeline yet: still not read.
    assert decide([standby("a", 1), primary("b", 2)], known).fences == {"a": "follows_old_timeline"}


def test_two_writable_regions_on_one_timeline_take_no_writes() -> None:
    verdict = decide([primary("a", 2), primary("b", 2), standby("c", 2)], Lineage(SYSTEM, 2))
    assert verdict.fences == {"a": "split_brain", "b": "split_brain"}
    assert verdict.split_brain() == ("a", "b")


def test_a_split_brain_on_an_old_timeline_is_fenced_not_split() -> None:
    verdict = decide([primary("a", 1), primary("b", 1), primary("c", 2)], Lineage())
    assert verdict.fences == {"a": "old_timeline", "b": "old_timeline"}
    assert verdict.split_brain() == ()


def test_a_region_of_another_system_is_never_used_even_on_a_higher_timeline() -> None:
    verdict = decide(
        [primary("a", 1), standby("b", 1), primary("x", 9, system=OTHER)], Lineage(SYSTEM, 1)
    )
    assert verdict.fences == {"x": "foreign_system"}
    assert verdict.lineage == Lineage(SYSTEM, 1)  # x's timeline means nothing here


def test_the_system_most_regions_share_is_the_cluster_ties_going_to_the_first_listed() -> None:
    majority = decide([primary("x", 1, system=OTHER), standby("a", 1), standby("b", 1)], Lineage())
    assert majority.fences == {"x": "foreign_system"}
    tie = decide([standby("a", 1), primary("x", 1, system=OTHER)], Lineage())
    assert tie.fences == {"x": "foreign_system"}
    assert tie.lineage.system_identifier == SYSTEM


def test_a_new_system_starts_its_own_lineage() -> None:
    """The whole cluster was rebuilt: the old system's timeline means nothing to the new."""
    verdict = decide([primary("a", 1, system=OTHER)], Lineage(SYSTEM, 5))
    assert verdict.fences == {}
    assert verdict.lineage == Lineage(OTHER, 1)


def test_regions_never_identified_take_no_part() -> None:
    unknown = Identity(name="z", writable=False, system_identifier=None, timeline=None)
    assert decide([unknown], Lineage()) == decide([], Lineage())
    assert decide([unknown, primary("a", 1)], Lineage()).fences == {}
    assert decide([standby("s", None), primary("a", 3)], Lineage()).fences == {}


def views(identities: list[Identity], known: Lineage) -> list[RegionView]:
    """What the router hands the choice: each region with its fence applied."""
    verdict = decide(identities, known)
    return [
        RegionView(
            name=identity.name,
            cloud="aws",
            up=True,
            writable=identity.writable,
            rtt=0.001,
            data_age=0.0,
            age_is_bound=True,
            fenced=verdict.reason(identity.name) not in (None, "split_brain"),
            split_brain=verdict.reason(identity.name) == "split_brain",
        )
        for identity in identities
    ]


def test_with_two_writable_postgresql_regions_the_local_old_primary_gets_nothing() -> None:
    """The reverse of the router's old behaviour: the local region says it is writable and
    is on the lower timeline; reads and writes go to the new timeline."""
    regions = views([primary("a", 1), primary("b", 2), standby("c", 2)], Lineage())
    assert write_order(regions, POLICY, 0.0) == ("b",)
    assert "a" not in read_order(regions, POLICY, 0.0)


def test_with_two_writable_postgresql_regions_on_one_timeline_nothing_takes_writes() -> None:
    regions = views([primary("a", 2), primary("b", 2), standby("c", 2)], Lineage())
    assert write_order(regions, POLICY, 0.0) == ()
    assert read_order(regions, POLICY, 0.0)[0] == "a"
