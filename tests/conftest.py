"""Root fixtures: the local multi-region topology, shared or fresh.

- ``topology`` (session): one three-region topology for the whole run. Non-destructive use
  only: a test may switch proxy faults, service or replication links (they are put back to
  pass-through after every test) but must not kill, pause, restart, promote or rejoin
  servers — use ``fresh_topology`` for that.
- ``healthy_topology`` (function): the shared topology, with every proxy in pass-through
  before and after the test.
- ``fresh_topology`` (function): a brand-new topology of its own, stopped after the test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness import LocalTopology

pytest_plugins = ["tests.support.service", "tests.support.hygiene"]

_SHARED = pytest.StashKey[LocalTopology]()
_SHARED_PRIMARY = pytest.StashKey[str]()


@pytest.fixture(scope="session")
def topology(request: pytest.FixtureRequest) -> Iterator[LocalTopology]:
    """The shared three-region topology (aws-us-east-1 primary, two standbys)."""
    with LocalTopology() as topo:
        request.config.stash[_SHARED] = topo
        request.config.stash[_SHARED_PRIMARY] = topo.primary
        try:
            yield topo
        finally:
            del request.config.stash[_SHARED]


@pytest.fixture
def healthy_topology(topology: LocalTopology) -> LocalTopology:
    """The shared topology with every proxy in pass-through (and put back after the test)."""
    _pass_through(topology)
    return topology


@pytest.fixture
def fresh_topology() -> Iterator[LocalTopology]:
    """A topology of this test's own, for destructive scenarios (kill, failover, rejoin)."""
    with LocalTopology() as topo:
        yield topo


@pytest.fixture(autouse=True)
def _shared_topology_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test: proxies back to pass-through; fail loudly if servers were harmed."""
    yield
    topo = request.config.stash.get(_SHARED, None)
    if topo is None:
        return
    _pass_through(topo)
    problems = []
    original = request.config.stash[_SHARED_PRIMARY]
    for region in topo.regions:
        if not region.is_running:
            problems.append(f"{region.name} is down")
        if region.paused is not None:
            problems.append(f"{region.name} is paused ({region.paused})")
            topo.resume(region.name)
    if topo.primary != original:
        problems.append(f"the primary moved to {topo.primary}")
    if problems:
        _heal(topo, original)  # so that the tests after this one still run
        pytest.fail(
            f"{request.node.nodeid} left the shared topology damaged ({'; '.join(problems)}): "
            "destructive tests must use fresh_topology",
            pytrace=False,
        )


def _heal(topo: LocalTopology, original_primary: str) -> None:
    """Bring the shared topology back to its first shape: the original primary, all
    standbys streaming."""
    for name in topo.region_names:
        if not topo.region(name).is_running and topo.role(name) not in ("fenced", "rogue"):
            topo.restart(name)
    if topo.primary != original_primary:
        if topo.role(original_primary) != "standby" or not topo.region(original_primary).is_running:
            topo.rejoin(original_primary)
        topo.promote(original_primary)
    for name in topo.region_names:
        if topo.role(name) in ("fenced", "rogue"):
            topo.rejoin(name)


def _pass_through(topo: LocalTopology) -> None:
    for region in topo.regions:
        region.proxy.pass_through()
        region.replication_proxy.pass_through()
