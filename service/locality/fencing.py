"""Which PostgreSQL regions the router may trust: a pure function of what the probes saw.

A PostgreSQL server's word about itself (``pg_is_in_recovery()`` is false: "I am the
primary") is not enough: after a promotion across a partition the old primary is still up,
still local, still writable, and every write it takes is lost when it is rebuilt. So each
probe also reports the server's *system identifier* (shared by a primary and every standby
made from it by a base backup) and its *timeline* (a promotion starts a new, higher one), and
the router decides here, for every region at once:

1. The cluster is the system identifier most regions report (ties: the one of the region
   listed first). A region with another system identifier is a different database — a
   wrong DSN, a rebuilt server — and is never used (``foreign_system``).
2. The cluster's timeline is the highest timeline any of its regions has reported, primary
   or standby, now or before: the router remembers it (:class:`Lineage`), so an old primary
   does not become trustworthy again because the new one is briefly out of sight.
3. A writable region on a lower timeline is an old primary that was never fenced: no reads,
   no writes (``old_timeline``), until it comes back as a standby of the current timeline.
4. A standby still on a lower timeline follows such an old primary (or has not reached the
   new timeline yet): no reads (``follows_old_timeline``).
5. Two or more writable regions on the current timeline are a split brain with no way to
   tell which is right: no writes to any of them (``split_brain``); they still serve reads,
   but their data age is unknown.

Regions are judged on the last facts the router has for them, also while they are down, so
that a region fenced before an outage is still fenced when it answers again. CockroachDB
regions report no system identifier and take no part: every one of its nodes takes writes.

What this cannot do: the router only knows the timelines it has seen. An old primary is
fenced from the moment this router has seen a higher timeline from any region — not
before, and not by a router that has not seen one (another instance, or this one after a
restart while the new primary is out of its sight). Fencing the old server itself (shutting
it down, or making it refuse writes) is the HA manager's job; this is the router's own
defence.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

FenceReason = Literal["foreign_system", "old_timeline", "follows_old_timeline", "split_brain"]

# Fences that keep reads away too; a split brain only stops writes.
READ_FENCES: frozenset[FenceReason] = frozenset(
    {"foreign_system", "old_timeline", "follows_old_timeline"}
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    """What the last successful probe of one PostgreSQL region said about it."""

    name: str
    writable: bool
    system_identifier: str | None
    timeline: int | None  # a primary's current timeline, a standby's (see probe.py)


@dataclass(frozen=True, slots=True)
class Lineage:
    """What the router has learned of the cluster: which system it is, and the highest
    timeline seen on it (0: none yet)."""

    system_identifier: str | None = None
    timeline: int = 0


@dataclass(frozen=True, slots=True)
class Fencing:
    """The verdict: the cluster's lineage and the regions fenced, with why."""

    lineage: Lineage
    fences: Mapping[str, FenceReason] = field(default_factory=dict)

    def reason(self, name: str) -> FenceReason | None:
        return self.fences.get(name)

    def split_brain(self) -> tuple[str, ...]:
        """The writable regions that share the current timeline, when there are several."""
        return tuple(name for name, reason in self.fences.items() if reason == "split_brain")


def decide(regions: Sequence[Identity], known: Lineage) -> Fencing:
    """Fence what must be fenced, given every region's identity and what was known before.

    >>> a = Identity(name="a", writable=True, system_identifier="7", timeline=1)
    >>> b = Identity(name="b", writable=True, system_identifier="7", timeline=2)
    >>> decide([a, b], Lineage()).fences
    {'a': 'old_timeline'}
    """
    identified = [region for region in regions if region.system_identifier is not None]
    if not identified:
        return Fencing(known)
    counts = collections.Counter(region.system_identifier for region in identified)
    most = max(counts.values())
    system = next(
        region.system_identifier
        for region in identified
        if counts[region.system_identifier] == most
    )
    assert system is not None
    timeline = known.timeline if known.system_identifier == system else 0
    for region in identified:
        if region.system_identifier == system and region.timeline is not None:
            timeline = max(timeline, region.timeline)

    fences: dict[str, FenceReason] = {}
    writers: list[str] = []
    for region in identified:
        if region.system_identifier != system:
            fences[region.name] = "foreign_system"
        elif region.writable:
            if (region.timeline or 0) < timeline:
                fences[region.name] = "old_timeline"
            else:
                writers.append(region.name)
        elif region.timeline is not None and region.timeline < timeline:
            fences[region.name] = "follows_old_timeline"
    if len(writers) > 1:
        for name in writers:
            fences[name] = "split_brain"
    return Fencing(Lineage(system, timeline), fences)
