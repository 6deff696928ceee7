"""Which regions an operation should try, in order: a pure function of a health snapshot.

Order, best first:

1. regions not in their hold-down period before those that are (a region is held down for
   ``hold_down`` seconds after it comes back from down or from slow, and any failure in that
   period starts it over): the hold-down is the hysteresis, so it outranks everything else.
   Among held-down regions, one held down only for being slow (lost hedged races) comes
   before one held down after *failing* (down, or a failure while held down): a flapping
   local region must not get reads back from a region that merely answered late;
2. regions in good standing before slow ones — slow means it keeps losing hedged races, or
   its smoothed round-trip time is worse than the best candidate's by more than
   ``slow_margin``;
3. then the local region, then the other regions of the local cloud, then other clouds;
4. then the configured priority (lower first: an operator's override);
5. then the smoothed round-trip time (unknown last), and the name to make ties stable.

Reads go only to regions that are up and not fenced (:mod:`service.locality.fencing`). A
standby whose data is older than ``max_replica_lag`` is left out while a fresher region is
up; when none is, reads go to the freshest first (an answer from old data beats none: the
caller that cannot accept it asks for ``max_data_age``). With ``max_data_age`` only regions
whose data age is known to be within it qualify, in the usual order. Writes go only to
regions that are up, writable, not fenced and not in a split brain, and that can acknowledge
a write durably: a PostgreSQL primary whose synchronous standbys are not streaming would hold
every COMMIT in SyncRep until the caller gave up, so it takes no writes until they are back
(``sync_short``; the heartbeat, committed locally on purpose, still goes there).

A region's *data age* grows from its last measurement (:func:`data_age`): the unfenced
writer's is 0; a standby's is its measured age plus the time since; a region in a split
brain has none (unknown).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

# Why a region is held down: it came back from down, or failed while held down ("failure");
# or it only stopped being slow ("slowness"). A failure outranks slowness.
HoldDownCause = Literal["failure", "slowness"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RegionView:
    """The part of one region's health the choice looks at."""

    name: str
    cloud: str
    priority: int = 0
    up: bool
    writable: bool
    rtt: float | None = None
    data_age: float | None = None  # a standby's data age, as of data_age_at
    data_age_at: float | None = None  # when it was measured (None: it does not grow)
    age_is_bound: bool = False  # measured from a heartbeat (an upper bound), not estimated
    recovered_at: float | None = None
    recovered_from: HoldDownCause = "failure"  # why it is held down (while it is)
    slow: bool = False  # lost hedged races: it answers later than the others
    fenced: bool = False  # no reads, no writes (see service.locality.fencing)
    split_brain: bool = False  # one of several writable regions on one timeline: no writes
    sync_short: bool = False  # too few synchronous standbys streaming to acknowledge a COMMIT

    @property
    def is_writer(self) -> bool:
        """Writable, and trusted to be the one place writes go."""
        return self.writable and not self.fenced and not self.split_brain


@dataclass(frozen=True, slots=True, kw_only=True)
class ChoicePolicy:
    """The knobs of the choice (seconds)."""

    local_region: str
    hold_down: float
    max_replica_lag: float
    slow_margin: float


def read_order(
    regions: Sequence[RegionView],
    policy: ChoicePolicy,
    now: float,
    *,
    max_data_age: float | None = None,
) -> tuple[str, ...]:
    """The regions a read should try, best first.

    Without ``max_data_age``: fresh regions (data age within ``max_replica_lag``, or not
    known) in the usual order, else the stale ones, freshest first. With it: only regions
    whose data age is known to be at most ``max_data_age`` now, in the usual order.
    """
    candidates = [region for region in regions if region.up and not region.fenced]
    if max_data_age is not None:
        bounded = [region for region in candidates if _within(region, max_data_age, now)]
        return _ordered(bounded, regions, policy, now)
    fresh = [region for region in candidates if not _is_lagging(region, policy, now)]
    if fresh:
        return _ordered(fresh, regions, policy, now)
    # Every region that is up is stale: the least stale serves best. (All have an age.)
    ordered = _ordered(candidates, regions, policy, now)
    ages = {region.name: data_age(region, now) or 0.0 for region in candidates}
    return tuple(sorted(ordered, key=lambda name: ages[name]))


def write_order(
    regions: Sequence[RegionView], policy: ChoicePolicy, now: float, *, durable: bool = True
) -> tuple[str, ...]:
    """The regions a write may go to, best first (up, writable and trusted ones only).

    ``durable``: only those that can acknowledge it on their synchronous standbys now;
    without it, also a primary whose standbys are missing (for writes that commit locally).
    """
    candidates = [
        region
        for region in regions
        if region.up and region.is_writer and not (durable and region.sync_short)
    ]
    return _ordered(candidates, regions, policy, now)


def data_age(region: RegionView, now: float) -> float | None:
    """How old ``region``'s data is at ``now``, in seconds (``None``: unknown).

    The writer's is 0: a read there sees everything committed. A standby's is its last
    measurement plus the time since, since nothing newer has been seen. A writable region in
    a split brain has none: another region takes writes it does not have.
    """
    if region.writable:
        return 0.0 if region.is_writer else None
    if region.data_age is None:
        return None
    if region.data_age_at is None:
        return region.data_age
    return region.data_age + max(0.0, now - region.data_age_at)


def bounded_data_age(region: RegionView, now: float) -> float | None:
    """The data age at ``now`` when it is an upper bound (the writer, or measured from a
    heartbeat); ``None`` when it is unknown or only an estimate."""
    if region.writable or region.age_is_bound:
        return data_age(region, now)
    return None


def is_held_down(region: RegionView, policy: ChoicePolicy, now: float) -> bool:
    """Whether ``region`` came back too recently to be preferred."""
    return region.recovered_at is not None and now - region.recovered_at < policy.hold_down


def hold_down_rank(region: RegionView, policy: ChoicePolicy, now: float) -> int:
    """0: not held down; 1: held down after being slow; 2: held down after failing."""
    if not is_held_down(region, policy, now):
        return 0
    return 1 if region.recovered_from == "slowness" else 2


def _is_lagging(region: RegionView, policy: ChoicePolicy, now: float) -> bool:
    age = data_age(region, now)
    return age is not None and age > policy.max_replica_lag


def _within(region: RegionView, max_data_age: float, now: float) -> bool:
    age = bounded_data_age(region, now)
    return age is not None and age <= max_data_age


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

    def key(region: RegionView) -> tuple[int, bool, int, int, float, str]:
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
        hold = hold_down_rank(region, policy, now)
        return (hold, slow, tier, region.priority, rtt, region.name)

    return tuple(region.name for region in sorted(candidates, key=key))
