"""Frozen snapshots of the router's state, for ``GET /v1/regions``, the CLI and readiness."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.locality.health import Engine, RegionState


@dataclass(frozen=True, slots=True, kw_only=True)
class RegionStatus:
    """One region as the router sees it now. ``last_error`` never carries a DSN or password."""

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

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cloud": self.cloud,
            "state": self.state,
            "writable": self.writable,
            "role": "writable" if self.writable else "read-only",
            "engine": self.engine,
            "rtt_ms": None if self.rtt_ms is None else round(self.rtt_ms, 3),
            "lag_seconds": None if self.lag_seconds is None else round(self.lag_seconds, 3),
            "in_flight": self.in_flight,
            "last_error": self.last_error,
            "since": round(self.since, 3),
            "slow": self.slow,
            "held_down": self.held_down,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class RouterStatus:
    """All regions, and which region serves reads and writes now (``None``: none can)."""

    regions: tuple[RegionStatus, ...]
    read_region: str | None
    write_region: str | None
    local_region: str

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
            "regions": [region.to_dict() for region in self.regions],
        }
