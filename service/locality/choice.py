"""Which regions an operation should try, in order: a pure function of a health snapshot.

Order, best first:

1. regions not in their hold-down period before those that are (a region is held down for
   ``hold_down`` seconds after it comes back from down or from slow, and any failure in that
   period starts it over): the hold-down is the hysteresis, so it outranks everything else;
2. regions in good standing before slow ones — slow means it keeps losing hedged races, or
   its smoothed round-trip time is worse than the best candidate's by more than
   ``slow_margin``;
3. then the local region, then the other regions of the local cloud, then other clouds;
4. then the configured priority (lower first: an operator's override);
5. then the smoothed round-trip time (unknown last), and the name to make ties stable.

Reads go only to regions that are up; a standby lagging more than ``max_replica_lag`` is left
out while a fresher region is up. Writes go only to regions that are up and writable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class RegionView:
    """The part of one region's health the choice looks at."""

    name: str
    cloud: str
    priority: int = 0
    up: bool
    writable: bool
    rtt: float | None = None
    lag: float | None = None
    recovered_at: float | None = None
    slow: bool = False  # lost hedged races: it answers later than the others


@dataclass(frozen=True, slots=True, kw_only=True)
class ChoicePolicy:
    """The knobs of the choice (seconds)."""

    local_region: str
    hold_down: float
    max_replica_lag: float
    slow_margin: float


def read_order(regions: Sequence[RegionView], policy: ChoicePolicy, now: float) -> tuple[str, ...]:
    """The regions a read should try, best first."""
    candidates = [region for region in regions if region.up]
    fresh = [region for region in candidates if not _is_lagging(region, policy)]
    if fresh:
        candidates = fresh
    return _ordered(candidates, regions, policy, now)


def write_order(regions: Sequence[RegionView], policy: ChoicePolicy, now: float) -> tuple[str, ...]:
    """The regions a write may go to, best first (only up and writable ones)."""
    candidates = [region for region in regions if region.up and region.writable]
    return _ordered(candidates, regions, policy, now)


def is_held_down(region: RegionView, policy: ChoicePolicy, now: float) -> bool:
    """Whether ``region`` came back too recently to be preferred."""
    return region.recovered_at is not None and now - region.recovered_at < policy.hold_down


def _is_lagging(region: RegionView, policy: ChoicePolicy) -> bool:
    return not region.writable and region.lag is not None and region.lag > policy.max_replica_lag


def _ordered(
    candidates: list[RegionView],
    regions: Sequence[RegionView],
    policy: ChoicePolicy,
    now: float,
) -> tuple[str, ...]:
    local_cloud = next(
        (region.cloud for region in regions if region.name == policy.local_region), None
    )
    measured = [region.rtt for region in candidates if region.rtt is not None]
    best_rtt = min(measured) if measured else None

    def key(region: RegionView) -> tuple[bool, bool, int, int, float, str]:
        slow = region.slow or (
            best_rtt is not None
            and region.rtt is not None
            and region.rtt > best_rtt + policy.slow_margin
        )
        if region.name == policy.local_region:
            tier = 0
        elif region.cloud == local_cloud:
            tier = 1
        else:
            tier = 2
        rtt = region.rtt if region.rtt is not None else math.inf
        return (is_held_down(region, policy, now), slow, tier, region.priority, rtt, region.name)

    return tuple(region.name for region in sorted(candidates, key=key))
