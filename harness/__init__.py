"""The development harness: the local multi-region PostgreSQL topology, the TCP fault proxies
in front of it, and the runner behind ``make run`` (``python -m harness run``).

``make run``, the test suite and the benchmarks use it. It is not shipped: the wheel and the
image hold only ``service``, and ``service`` never imports ``harness`` (tests/test_packaging.py
checks all three)::

    from harness import LocalTopology

    with LocalTopology() as topo:
        topo.region("gcp-us-central1").proxy.blackhole()
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
