"""Frozen snapshots of the router's state, for ``GET /v1/regions``, the CLI and readiness."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.locality.fencing import FenceReason
from service.locality.health import AgeSource, Engine, RegionState


@dataclass(frozen=True, slots=True, kw_only=True)
class RegionStatus:
    """One region as the router sees it now. ``last_error`` never carries a DSN or password.

    ``writable`` is what the region says of itself; ``fenced`` says the router does not
    believe it (``fence_reason``: see :mod:`service.locality.fencing`). ``lag_seconds`` is
    how old its data is now (0 for the writer), measured as ``data_age_source`` says.
    """

    name: str
    cloud: str
    state: RegionState
    writable: bool
    engine: Engine | None
    rtt_ms: float | None
    lag_seconds: float | None
    in_flight: int
    last_error: str | None
    since: float  # Unix time of the last up/down change (or of the router's start)
    slow: bool = False  # answers later than the others (lost hedged races)
    held_down: bool = False  # back recently: not preferred until the hold-down has passed
    fenced: bool = False  # neither read nor written (split brain: not written)
    fence_reason: FenceReason | None = None
    system_identifier: str | None = None  # PostgreSQL: the data directory's identity
    timeline: int | None = None  # PostgreSQL: the timeline it is on, or follows
    data_age_source: AgeSource | None = None  # how lag_seconds was measured (standbys)
    receiver: str | None = None  # a standby's walreceiver status, e.g. "streaming"
    receiver_silence_seconds: float | None = None  # since it last heard upstream (at probe)
    # A PostgreSQL primary's synchronous standbys streaming now, and how many a COMMIT needs.
    sync_standbys: int | None = None
    sync_required: int | None = None

    @property
    def role(self) -> str:
        if self.fenced:
            return "fenced"
        return "writable" if self.writable else "read-only"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cloud": self.cloud,
            "state": self.state,
            "writable": self.writable,
            "role": self.role,
            "fenced": self.fenced,
            "fence_reason": self.fence_reason,
            "system_identifier": self.system_identifier,
            "timeline": self.timeline,
            "engine": self.engine,
            "rtt_ms": None if self.rtt_ms is None else round(self.rtt_ms, 3),
            "lag_seconds": None if self.lag_seconds is None else round(self.lag_seconds, 3),
            "data_age_source": self.data_age_source,
            "receiver": self.receiver,
            "receiver_silence_seconds": (
                None
                if self.receiver_silence_seconds is None
                else round(self.receiver_silence_seconds, 3)
            ),
            "sync_standbys": self.sync_standbys,
            "sync_required": self.sync_required,
            "in_flight": self.in_flight,
            "last_error": self.last_error,
            "since": round(self.since, 3),
            "slow": self.slow,
            "held_down": self.held_down,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class RouterStatus:
    """All regions, and which region serves reads and writes now (``None``: none can).

    ``timeline`` and ``system_identifier`` are what the router has learned of the PostgreSQL
    cluster (the highest timeline seen); ``writes_refused`` says why no region takes writes
    when one claims it could (fenced, a split brain, or too few synchronous standbys).
    """

    regions: tuple[RegionStatus, ...]
    read_region: str | None
    write_region: str | None
    local_region: str
    system_identifier: str | None = None
    timeline: int | None = None
    writes_refused: str | None = None

    @property
    def can_read(self) -> bool:
        return self.read_region is not None

    @property
    def can_write(self) -> bool:
        return self.write_region is not None

    def region(self, name: str) -> RegionStatus:
        """The status of the region called ``name`` (``KeyError`` if unknown)."""
        for region in self.regions:
            if region.name == name:
                return region
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "local_region": self.local_region,
            "read_region": self.read_region,
            "write_region": self.write_region,
            "system_identifier": self.system_identifier,
            "timeline": self.timeline,
            "writes_refused": self.writes_refused,
            "regions": [region.to_dict() for region in self.regions],
        }
