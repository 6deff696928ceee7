"""The local multi-region topology: PostgreSQL servers and TCP fault proxies (dev/test only).

``make run`` and the test suite use it; the service runtime never imports it.
"""

from __future__ import annotations

from harness.cluster import DEFAULT_REGIONS, LocalTopology, Region, RegionSpec
from harness.postgres import TopologyError
from harness.proxy import FaultProxy, ProxyError

__all__ = [
    "DEFAULT_REGIONS",
    "FaultProxy",
    "LocalTopology",
    "ProxyError",
    "Region",
    "RegionSpec",
    "TopologyError",
]
