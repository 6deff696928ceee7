"""The pure choice function: which regions an operation tries, in which order."""

from __future__ import annotations

import math

import pytest

from service.locality.choice import (
    ChoicePolicy,
    HoldDownCause,
    RegionView,
    bounded_data_age,
    data_age,
    read_order,
    write_order,
)

POLICY = ChoicePolicy(
    local_region="aws-us-east-1", hold_down=3.0, max_replica_lag=5.0, slow_margin=0.1
)
NOW = 1000.0


def view(
    name: str,
    cloud: str,
    *,
    up: bool = True,
    writable: bool = False,
    rtt: float | None = 0.001,
    age: float | None = 0.0,
    age_at: float | None = None,
    bound: bool = True,
    priority: int = 0,
    recovered_at: float | None = None,
    recovered_from: HoldDownCause = "failure",
    slow: bool = False,
    fenced: bool = False,
    split_brain: bool = False,
) -> RegionView:
    return RegionView(
        name=name,
        cloud=cloud,
        up=up,
        writable=writable,
        rtt=rtt,
        data_age=age,
        data_age_at=age_at,
        age_is_bound=bound,
        priority=priority,
        recovered_at=recovered_at,
        recovered_from=recovered_from,
        slow=slow,
        fenced=fenced,
        split_brain=split_brain,
    )


def topology(**overrides: dict[str, object]) -> list[RegionView]:
    """The three-region shape of the local topology, with per-region overrides."""
    base: dict[str, dict[str, object]] = {
        "aws-us-east-1": {"cloud": "aws", "writable": True, "rtt": 0.001},
        "gcp-us-central1": {"cloud": "gcp", "rtt": 0.020},
        "aws-eu-west-1": {"cloud": "aws", "rtt": 0.070},
    }
    regions = []
    for name, fields in base.items():
        merged = {**fields, **overrides.get(name.replace("-", "_"), {})}
        cloud = str(merged.pop("cloud"))
        regions.append(view(name, cloud, **merged))  # type: ignore[arg-type]
    return regions


def test_reads_prefer_local_then_same_cloud_then_other_clouds_even_when_those_are_faster() -> None:
    assert read_order(topology(), POLICY, NOW) == (
        "aws-us-east-1",
        "aws-eu-west-1",
        "gcp-us-central1",
    )


def test_within_a_tier_regions_are_ordered_by_round_trip_time() -> None:
    regions = [
        view("local", "aws", writable=True),
        view("gcp-b", "gcp", rtt=0.030),
        view("gcp-a", "gcp", rtt=0.050),
        view("gcp-c", "gcp", rtt=None),
    ]
    policy = ChoicePolicy(local_region="local", hold_down=3.0, max_replica_lag=5.0, slow_margin=1)
    assert read_order(regions, policy, NOW) == ("local", "gcp-b", "gcp-a", "gcp-c")


def test_priority_overrides_round_trip_time_within_a_tier() -> None:
    regions = topology(
        aws_eu_west_1={"priority": -1, "rtt": 0.080},
        aws_us_east_1={"up": False},
    )
    regions.append(view("aws-ap-south-1", "aws", rtt=0.010))
    assert read_order(regions, POLICY, NOW) == (
        "aws-eu-west-1",
        "aws-ap-south-1",
        "gcp-us-central1",
    )


def test_down_regions_are_never_candidates() -> None:
    regions = topology(aws_us_east_1={"up": False}, aws_eu_west_1={"up": False})
    assert read_order(regions, POLICY, NOW) == ("gcp-us-central1",)
    assert write_order(regions, POLICY, NOW) == ()


def test_no_region_up_gives_no_candidate() -> None:
    regions = [
        view(name, "aws", up=False, writable=True) for name in ("aws-us-east-1", "aws-eu-west-1")
    ]
    assert read_order(regions, POLICY, NOW) == ()
    assert write_order(regions, POLICY, NOW) == ()


def test_writes_go_only_to_writable_regions() -> None:
    assert write_order(topology(), POLICY, NOW) == ("aws-us-east-1",)
    promoted = topology(
        aws_us_east_1={"up": False, "writable": False},
        gcp_us_central1={"writable": True},
    )
    assert write_order(promoted, POLICY, NOW) == ("gcp-us-central1",)


def test_several_writable_regions_that_fencing_trusts_follow_locality_as_on_cockroachdb() -> None:
    """Every CockroachDB region takes writes: fencing leaves them alone. (Two writable
    PostgreSQL regions never reach the choice unfenced: see test_fencing.py.)"""
    regions = topology(
        gcp_us_central1={"writable": True, "age": None},
        aws_eu_west_1={"writable": True, "age": None},
    )
    assert write_order(regions, POLICY, NOW) == (
        "aws-us-east-1",
        "aws-eu-west-1",
        "gcp-us-central1",
    )


def test_a_lagging_standby_is_skipped_while_a_fresher_region_is_up() -> None:
    regions = topology(aws_eu_west_1={"age": 6.0})
    assert read_order(regions, POLICY, NOW) == ("aws-us-east-1", "gcp-us-central1")


def test_a_standby_at_the_lag_bound_is_still_fresh() -> None:
    regions = topology(aws_eu_west_1={"age": 5.0})
    assert "aws-eu-west-1" in read_order(regions, POLICY, NOW)


def test_lagging_standbys_serve_reads_freshest_first_when_nothing_fresher_is_up() -> None:
    regions = topology(
        aws_us_east_1={"up": False},
        aws_eu_west_1={"age": 30.0},
        gcp_us_central1={"age": 9.0},
    )
    assert read_order(regions, POLICY, NOW) == ("gcp-us-central1", "aws-eu-west-1")


def test_a_writable_region_is_never_considered_lagging() -> None:
    regions = topology(aws_us_east_1={"age": 60.0})
    assert read_order(regions, POLICY, NOW)[0] == "aws-us-east-1"


def test_a_standbys_data_age_keeps_growing_after_its_last_measurement() -> None:
    """Measured 4 s old one second ago, with nothing newer seen since: 5 s old now. The
    local standby is skipped the moment its age passes the bound, not at its next probe."""
    regions = topology(aws_us_east_1={"up": False}, aws_eu_west_1={"age": 4.0, "age_at": NOW})
    assert data_age(regions[2], NOW + 1.0) == pytest.approx(5.0)
    assert read_order(regions, POLICY, NOW + 0.999)[0] == "aws-eu-west-1"
    assert read_order(regions, POLICY, NOW + 1.001) == ("gcp-us-central1",)


def test_the_writers_data_age_is_zero_and_a_split_brains_is_unknown() -> None:
    writer = view("w", "aws", writable=True, age=None)
    assert data_age(writer, NOW) == 0.0
    assert bounded_data_age(writer, NOW) == 0.0
    torn = view("w", "aws", writable=True, split_brain=True)
    assert data_age(torn, NOW) is None
    estimated = view("s", "aws", age=1.0, bound=False)
    assert data_age(estimated, NOW) == 1.0
    assert bounded_data_age(estimated, NOW) is None


def test_a_bounded_read_uses_only_regions_known_to_be_fresh_enough_in_the_usual_order() -> None:
    regions = topology(
        aws_us_east_1={"writable": False, "age": 0.5, "age_at": NOW - 0.4},  # 0.9 s now
        aws_eu_west_1={"age": 0.2, "bound": False},  # an estimate, not a bound
        gcp_us_central1={"writable": True},
    )
    assert read_order(regions, POLICY, NOW, max_data_age=1.0) == (
        "aws-us-east-1",
        "gcp-us-central1",
    )
    assert read_order(regions, POLICY, NOW, max_data_age=0.8) == ("gcp-us-central1",)
    assert read_order(regions, POLICY, NOW, max_data_age=0.0) == ("gcp-us-central1",)


def test_a_bounded_read_finds_nothing_when_no_region_is_fresh_enough() -> None:
    regions = topology(
        aws_us_east_1={"up": False}, aws_eu_west_1={"age": 2.0}, gcp_us_central1={"age": 1.5}
    )
    assert read_order(regions, POLICY, NOW, max_data_age=1.0) == ()
    assert read_order(regions, POLICY, NOW) != ()  # an unbounded read still has candidates


def test_fenced_regions_serve_neither_reads_nor_writes() -> None:
    regions = topology(aws_us_east_1={"fenced": True}, gcp_us_central1={"writable": True})
    assert read_order(regions, POLICY, NOW) == ("aws-eu-west-1", "gcp-us-central1")
    assert write_order(regions, POLICY, NOW) == ("gcp-us-central1",)
    assert read_order(regions, POLICY, NOW, max_data_age=math.inf) == (
        "aws-eu-west-1",
        "gcp-us-central1",
    )


def test_writable_regions_in_a_split_brain_serve_reads_but_no_writes() -> None:
    regions = topology(
        aws_us_east_1={"split_brain": True},
        gcp_us_central1={"writable": True, "split_brain": True},
    )
    assert write_order(regions, POLICY, NOW) == ()
    assert read_order(regions, POLICY, NOW)[0] == "aws-us-east-1"
    # Their data age is unknown: a bounded read goes to the standby that has one.
    assert read_order(regions, POLICY, NOW, max_data_age=1.0) == ("aws-eu-west-1",)


def test_a_recovered_local_region_is_held_down_until_the_period_passes() -> None:
    regions = topology(aws_us_east_1={"recovered_at": NOW - 1.0})
    assert read_order(regions, POLICY, NOW) == (
        "aws-eu-west-1",
        "gcp-us-central1",
        "aws-us-east-1",
    )
    assert read_order(regions, POLICY, NOW - 1.0 + 2.999)[0] == "aws-eu-west-1"
    assert read_order(regions, POLICY, NOW - 1.0 + 3.0)[0] == "aws-us-east-1"


def test_a_held_down_region_still_serves_when_it_is_the_only_candidate() -> None:
    regions = topology(
        aws_us_east_1={"recovered_at": NOW},
        gcp_us_central1={"up": False},
        aws_eu_west_1={"up": False},
    )
    assert read_order(regions, POLICY, NOW) == ("aws-us-east-1",)
    assert write_order(regions, POLICY, NOW) == ("aws-us-east-1",)


def test_a_region_up_since_start_is_not_held_down() -> None:
    regions = topology(aws_us_east_1={"recovered_at": None})
    assert read_order(regions, POLICY, NOW)[0] == "aws-us-east-1"


def test_a_region_much_slower_than_the_best_is_demoted_behind_faster_ones() -> None:
    regions = topology(aws_us_east_1={"rtt": 0.300})
    assert read_order(regions, POLICY, NOW) == (
        "aws-eu-west-1",
        "gcp-us-central1",
        "aws-us-east-1",
    )


def test_a_region_that_keeps_losing_hedged_races_is_demoted() -> None:
    regions = topology(aws_us_east_1={"slow": True})
    assert read_order(regions, POLICY, NOW) == (
        "aws-eu-west-1",
        "gcp-us-central1",
        "aws-us-east-1",
    )
    assert write_order(regions, POLICY, NOW) == ("aws-us-east-1",)


def test_a_held_down_region_ranks_behind_slow_ones_so_traffic_cannot_flap_back() -> None:
    regions = topology(
        aws_us_east_1={"recovered_at": NOW - 0.5},
        aws_eu_west_1={"slow": True},
        gcp_us_central1={"rtt": 0.5},
    )
    assert read_order(regions, POLICY, NOW) == (
        "aws-eu-west-1",
        "gcp-us-central1",
        "aws-us-east-1",
    )


def test_a_region_held_down_after_failing_ranks_below_one_held_down_for_slowness() -> None:
    """A flapping local region (back from down, failing again) and a remote one that only
    lost hedged races while it carried the load: the remote one serves, the local one gets
    reads back only once its own hold-down has passed."""
    regions = topology(
        aws_us_east_1={"recovered_at": NOW - 0.5, "recovered_from": "failure"},
        gcp_us_central1={"recovered_at": NOW - 0.5, "recovered_from": "slowness"},
        aws_eu_west_1={"up": False},
    )
    assert read_order(regions, POLICY, NOW) == ("gcp-us-central1", "aws-us-east-1")
    # Past the slow one's hold-down nothing changes; past both, locality decides again.
    assert read_order(regions, POLICY, NOW - 0.5 + 3.0)[0] == "aws-us-east-1"


def test_two_regions_held_down_for_the_same_cause_follow_locality() -> None:
    for cause in ("failure", "slowness"):
        regions = topology(
            aws_us_east_1={"recovered_at": NOW - 0.5, "recovered_from": cause},
            gcp_us_central1={"recovered_at": NOW - 0.5, "recovered_from": cause},
            aws_eu_west_1={"up": False},
        )
        assert read_order(regions, POLICY, NOW) == ("aws-us-east-1", "gcp-us-central1")


def test_a_region_a_little_slower_than_the_best_keeps_its_place() -> None:
    regions = topology(aws_us_east_1={"rtt": 0.090}, gcp_us_central1={"rtt": 0.001})
    assert read_order(regions, POLICY, NOW)[0] == "aws-us-east-1"


def test_a_missing_local_region_in_the_snapshot_orders_by_rtt() -> None:
    regions = [view("gcp-a", "gcp", rtt=0.05), view("aws-b", "aws", rtt=0.01)]
    assert read_order(regions, POLICY, NOW) == ("aws-b", "gcp-a")
