"""The nemesis: a table of faults, applied at random (seeded) and healed, each recorded.

Every fault is an entry of :data:`FAULTS` — a name, the targets it can hit now, how to apply
it, how to heal it, and whether the harness offers what it needs — so a new fault is one more
entry. Applying fills the :class:`~harness.chaos.history.FaultRecord`: which regions the
fault leaves unable to serve fresh reads (``unavailable``), which service instances it
stopped (``instances_down``), and any details (the delay chosen, the new primary, what a
diverged region held before it was wiped). The checker reads nothing else about faults.

``handled`` marks the faults the service is expected to handle; the 90 s run in ``make test``
uses exactly those (:data:`HANDLED`). Every entry is handled today (fencing, measured data
age and durable acknowledgements cured the last four); a new fault whose cure is not built
yet goes in with ``handled=False``, so that ``make chaos`` finds the gap and CI stays green.

Optional entries activate only when the topology offers what they need (feature
detection): ``pause``/``resume`` on the topology (a server frozen with SIGSTOP),
``replication_proxy`` on a region (a fault proxy on its replication link), and
``rogue_promote`` on the topology (a standby promoted without fencing the primary).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import structlog

from harness.chaos.history import FaultRecord, History
from harness.chaos.instances import ServiceInstance
from harness.cluster import ROLE, LocalTopology, PromotionRefusedError
from harness.proxy import FaultProxy

log = structlog.get_logger(__name__)

DELAYS: Final = (0.05, 0.1, 0.2, 0.4)  # below the service's 2 s deadline: still serving
# Service backends waiting on synchronous replication, or idle inside a transaction.
STUCK_SQL: Final = """
SELECT pid, state, wait_event, extract(epoch FROM now() - state_change)::float8, query
FROM pg_stat_activity
WHERE usename = $1 AND (wait_event = 'SyncRep' OR state LIKE 'idle in transaction%')
"""


@dataclass(slots=True)
class World:
    """What the nemesis acts on: the topology, the service instances, and the history."""

    topology: LocalTopology
    instances: Mapping[str, ServiceInstance]
    history: History

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking harness call off the event loop."""
        return await asyncio.to_thread(fn, *args)

    def regions(self) -> list[str]:
        return list(self.topology.region_names)

    def running(self, name: str) -> bool:
        return self.topology.region(name).is_running

    def standbys(self) -> list[str]:
        return [
            name
            for name in self.regions()
            if self.topology.role(name) == "standby" and self.running(name)
        ]

    def healthy(self) -> bool:
        """Every server running in its role: nothing fenced, nothing down."""
        return all(
            self.running(name) and self.topology.role(name) != "fenced" for name in self.regions()
        )


Targets = Callable[[World], Sequence[str | None]]
Apply = Callable[[World, str | None, random.Random, FaultRecord], Awaitable[None]]
Heal = Callable[[World, str | None, FaultRecord], Awaitable[None]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    """One entry of the fault table."""

    name: str
    description: str
    targets: Targets
    apply: Apply
    heal: Heal
    handled: bool = True
    available: Callable[[World], bool] = lambda world: True
    hold: tuple[float, float] | None = None  # how long it stays applied (else the nemesis's)


# -- targets ----------------------------------------------------------------------------------


def _any_region(world: World) -> Sequence[str | None]:
    return list(world.regions()) if world.healthy() else []


def _primary_with_standby(world: World) -> Sequence[str | None]:
    return [None] if world.healthy() and world.standbys() else []


def _clouds(world: World) -> Sequence[str | None]:
    if not world.healthy():
        return []
    return [*sorted({region.cloud for region in world.topology.regions})]


def _standbys(world: World) -> Sequence[str | None]:
    return world.standbys() if world.healthy() else []


def _instances(world: World) -> Sequence[str | None]:
    return [name for name, instance in world.instances.items() if instance.is_running]


# -- proxies ----------------------------------------------------------------------------------


def _proxy(world: World, target: str | None) -> FaultProxy:
    assert target is not None
    return world.topology.region(target).proxy


async def _blackhole(
    world: World, target: str | None, rng: random.Random, rec: FaultRecord
) -> None:
    rec.unavailable = [str(target)]
    await world.call(_proxy(world, target).blackhole)


async def _delay(world: World, target: str | None, rng: random.Random, rec: FaultRecord) -> None:
    seconds = rng.choice(DELAYS)
    rec.details["delay"] = seconds
    await world.call(_proxy(world, target).delay, seconds)


async def _reset(world: World, target: str | None, rng: random.Random, rec: FaultRecord) -> None:
    rec.unavailable = [str(target)]
    await world.call(_proxy(world, target).reset)


async def _pass(world: World, target: str | None, rec: FaultRecord) -> None:
    await world.call(_proxy(world, target).pass_through)


def _cloud_regions(world: World, cloud: str | None) -> list[str]:
    return [region.name for region in world.topology.regions if region.cloud == cloud]


async def _partition_cloud(
    world: World, target: str | None, rng: random.Random, rec: FaultRecord
) -> None:
    regions = _cloud_regions(world, target)
    rec.unavailable = regions
    for name in regions:
        await world.call(world.topology.region(name).proxy.blackhole)


async def _heal_cloud(world: World, target: str | None, rec: FaultRecord) -> None:
    for name in _cloud_regions(world, target):
        await world.call(world.topology.region(name).proxy.pass_through)


# -- servers ----------------------------------------------------------------------------------


async def _kill_server(
    world: World, target: str | None, rng: random.Random, rec: FaultRecord
) -> None:
    rec.unavailable = [str(target)]
    rec.details["role"] = world.topology.role(str(target))
    await world.call(world.topology.kill, target)


async def _restart_server(world: World, target: str | None, rec: FaultRecord) -> None:
    await world.call(world.topology.restart, target)


async def _crash_failover(
    world: World, target: str | None, rng: random.Random, rec: FaultRecord
) -> None:
    """The primary crashes; an HA manager notices after a moment and promotes the most
    advanced standby (the old primary stays fenced until rejoined)."""
    old = world.topology.primary
    rec.unavailable = [old]
    rec.details["old_primary"] = old
    await world.call(world.topology.kill, old)
    await asyncio.sleep(rng.uniform(0.2, 1.0))
    await _failover(world, old, rec)


async def _failover(world: World, old: str, rec: FaultRecord) -> None:
    """Promote as the topology's rule allows. A refusal (too few of the synchronous standbys
    running to be sure of every acknowledged write) is what a careful HA manager does too:
    the old primary is brought back instead, and the refusal recorded."""
    try:
        rec.details["new_primary"] = await world.call(world.topology.failover)
    except PromotionRefusedError as exc:
        rec.details["promotion_refused"] = str(exc)
        log.warning("nemesis_promotion_refused", old_primary=old, error=str(exc))
        if not world.running(old):
            await world.call(world.topology.restart, old)


async def _switchover(
    world: World, target: str | None, rng: random.Random, rec: FaultRecord
) -> None:
    """A planned promotion: the primary is stopped (fenced) and the most advanced standby
    promoted at once."""
    old = world.topology.primary
    rec.unavailable = [old]
    rec.details["old_primary"] = old
    await _failover(world, old, rec)


async def _rejoin_old_primary(world: World, target: str | None, rec: FaultRecord) -> None:
    old = rec.details.get("old_primary")
    if old is not None and world.topology.role(old) == "fenced":
        await world.call(world.topology.rejoin, old)


async def _unfenced_old_primary(
    world: World, target: str | None, rng: random.Random, rec: FaultRecord
) -> None:
    """A failover after which the old primary comes back without being fenced or rejoined
    (its data directory restarted as it was): two writable regions, the old one on the old
    timeline, its commits waiting for standbys that now follow someone else."""
    await _switchover(world, target, rng, rec)
    await asyncio.sleep(rng.uniform(0.2, 1.0))
    await world.call(world.topology.restart, rec.details["old_primary"])
    rec.details["unfenced"] = True


async def _wipe_diverged(world: World, target: str | None, rec: FaultRecord) -> None:
    """Record what the diverged old primary holds that the primary does not, and the service
    backends stuck on it, then rejoin it (which wipes it)."""
    old = rec.details.get("old_primary") or target
    if old is not None and world.running(old):
        try:
            rec.details["diverged_keys"] = await _diverged_keys(world, old)
            rec.details["stuck_backends"] = await _stuck_backends(world, old)
        except Exception as exc:
            rec.details["diverged_unread"] = str(exc)
    if old is not None:
        await world.call(world.topology.rejoin, old)


async def _diverged_keys(world: World, region: str) -> dict[str, str]:
    """Writes the diverged region took that the primary lacks: keys it alone holds, and keys
    it holds revoked while the primary has them active (a key merely behind is not one)."""
    sql = "SELECT id, status FROM signing_keys WHERE environment_id = $1"
    environment = world.history.meta.environment
    theirs = dict(await world.call(world.topology.query, region, sql, environment))
    ours = dict(await world.call(world.topology.query, world.topology.primary, sql, environment))
    return {
        key: status
        for key, status in theirs.items()
        if key not in ours or (status == "revoked" and ours[key] == "active")
    }


async def _stuck_backends(world: World, region: str) -> list[dict[str, Any]]:
    rows = await world.call(world.topology.query, region, STUCK_SQL, ROLE)
    return [
        {"pid": pid, "state": state, "wait_event": wait, "seconds": seconds, "query": query}
        for pid, state, wait, seconds, query in rows
    ]


# -- service instances ------------------------------------------------------------------------


async def _kill_instance(
    world: World, target: str | None, rng: random.Random, rec: FaultRecord
) -> None:
    instance = world.instances[str(target)]
    rec.instances_down = [str(target)]
    pid = instance.pid
    instance.kill()
    world.history.instance_event(str(target), "killed", pid)


async def _restart_instance(world: World, target: str | None, rec: FaultRecord) -> None:
    instance = world.instances[str(target)]
    if not instance.is_running:
        pid = await instance.start()
        world.history.instance_event(str(target), "ready", pid)


# -- optional entries: active only when the harness offers them -------------------------------


def _has(*names: str) -> Callable[[World], bool]:
    return lambda world: all(callable(getattr(world.topology, name, None)) for name in names)


def _has_replication_proxies(world: World) -> bool:
    regions = world.topology.regions
    return bool(regions) and all(
        isinstance(getattr(region, "replication_proxy", None), FaultProxy) for region in regions
    )


async def _pause(world: World, target: str | None, rng: random.Random, rec: FaultRecord) -> None:
    rec.unavailable = [str(target)]
    await world.call(world.topology.pause, str(target))


async def _resume(world: World, target: str | None, rec: FaultRecord) -> None:
    await world.call(world.topology.resume, str(target))


def _replication_proxy(world: World, target: str | None) -> FaultProxy:
    proxy: FaultProxy = getattr(world.topology.region(str(target)), "replication_proxy")  # noqa: B009
    return proxy


async def _cut_replication(
    world: World, target: str | None, rng: random.Random, rec: FaultRecord
) -> None:
    rec.unavailable = [str(target)]  # a standby cut off its primary is not fresh
    await world.call(_replication_proxy(world, target).blackhole)


async def _restore_replication(world: World, target: str | None, rec: FaultRecord) -> None:
    await world.call(_replication_proxy(world, target).pass_through)


async def _rogue_promotion(
    world: World, target: str | None, rng: random.Random, rec: FaultRecord
) -> None:
    """A standby promoted while the primary still runs, nobody fenced. The old primary is
    the rogue (on the old timeline, fenced by the service): wiped and rejoined on heal. (It
    used to record the promoted standby, whose rejoin fails — it is the primary — which left
    the rogue in place for the rest of the run.)"""
    old = world.topology.primary
    rec.unavailable = [old]
    rec.details["old_primary"] = old
    await world.call(world.topology.rogue_promote, str(target))


FAULTS: Final[dict[str, Fault]] = {
    fault.name: fault
    for fault in (
        Fault(
            name="proxy-blackhole",
            description="a region's network path swallows everything (a partition)",
            targets=_any_region,
            apply=_blackhole,
            heal=_pass,
        ),
        Fault(
            name="proxy-delay",
            description="a region's network path adds 50-400 ms each way",
            targets=_any_region,
            apply=_delay,
            heal=_pass,
        ),
        Fault(
            name="proxy-reset",
            description="a region's network path resets every connection",
            targets=_any_region,
            apply=_reset,
            heal=_pass,
        ),
        Fault(
            name="cloud-partition",
            description="every region of one cloud is blackholed",
            targets=_clouds,
            apply=_partition_cloud,
            heal=_heal_cloud,
        ),
        Fault(
            name="server-kill",
            description="a region's PostgreSQL is killed (SIGKILL), then restarted",
            targets=_any_region,
            apply=_kill_server,
            heal=_restart_server,
        ),
        Fault(
            name="failover",
            description="the primary crashes; the most advanced standby is promoted; the old "
            "primary is rejoined as a standby on heal",
            targets=_primary_with_standby,
            apply=_crash_failover,
            heal=_rejoin_old_primary,
        ),
        Fault(
            name="switchover",
            description="the primary is fenced and the most advanced standby promoted at once",
            targets=_primary_with_standby,
            apply=_switchover,
            heal=_rejoin_old_primary,
        ),
        Fault(
            name="instance-kill",
            description="a service instance is killed (kill -9), then started again",
            targets=_instances,
            apply=_kill_instance,
            heal=_restart_instance,
        ),
        Fault(
            name="unfenced-old-primary",
            description="after a switchover the old primary restarts unfenced (split brain)",
            targets=_primary_with_standby,
            apply=_unfenced_old_primary,
            heal=_wipe_diverged,
            # Long enough for the service to send writes there: its routers prefer a region
            # again only after the hold-down (3 s) once it is back.
            hold=(6.0, 9.0),
        ),
        Fault(
            name="server-pause",
            description="a region's PostgreSQL is frozen (SIGSTOP), then resumed",
            targets=_any_region,
            apply=_pause,
            heal=_resume,
            available=_has("pause", "resume"),
        ),
        Fault(
            name="replication-cut",
            description="a standby's replication link is blackholed",
            targets=_standbys,
            apply=_cut_replication,
            heal=_restore_replication,
            available=_has_replication_proxies,
        ),
        Fault(
            name="rogue-promotion",
            description="a standby is promoted without fencing the primary",
            targets=_standbys,
            apply=_rogue_promotion,
            heal=_wipe_diverged,
            available=_has("rogue_promote"),
            hold=(6.0, 9.0),
        ),
    )
}

HANDLED: Final = tuple(name for name, fault in FAULTS.items() if fault.handled)


def select(names: Sequence[str]) -> list[Fault]:
    """The table's entries by name; ``all`` and ``handled`` name the two usual sets."""
    chosen: list[str] = []
    for name in names:
        if name == "all":
            chosen += list(FAULTS)
        elif name == "handled":
            chosen += list(HANDLED)
        elif name in FAULTS:
            chosen.append(name)
        else:
            raise ValueError(f"no fault {name!r}; faults are {', '.join(FAULTS)}")
    return [FAULTS[name] for name in dict.fromkeys(chosen)]


class Nemesis:
    """Applies one fault at a time from ``faults``, at random, until stopped; then heals.

    Kinds are dealt from a shuffled deck (every kind once per round, in a seeded random
    order), targets chosen at random among those the kind can hit now.

    >>> nemesis = Nemesis(world, select(["handled"]), random.Random(seed))
    >>> task = asyncio.create_task(nemesis.run(stop))
    >>> ...; stop.set(); await task       # heals what is active, then restores everything
    """

    def __init__(
        self,
        world: World,
        faults: Sequence[Fault],
        rng: random.Random,
        *,
        gap: tuple[float, float] = (1.0, 4.0),
        duration: tuple[float, float] = (2.0, 6.0),
    ) -> None:
        self.world = world
        self.faults = [fault for fault in faults if fault.available(world)]
        self.unavailable = [fault.name for fault in faults if not fault.available(world)]
        self.rng = rng
        self.gap = gap
        self.duration = duration
        self._deck: list[str] = []

    def __repr__(self) -> str:
        return f"<Nemesis faults={[fault.name for fault in self.faults]}>"

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not await _wait(stop, self.rng.uniform(*self.gap)):
                await self.strike(stop)
        finally:
            await asyncio.shield(self.restore())

    async def strike(self, stop: asyncio.Event) -> FaultRecord | None:
        """Apply one random fault that has a target now, hold it, heal it."""
        options = [(fault, target) for fault in self.faults for target in fault.targets(self.world)]
        if not options:
            return None
        name = self.deal({fault.name for fault, _ in options})
        target = self.rng.choice([t for f, t in options if f.name == name])
        entry = next(fault for fault in self.faults if fault.name == name)
        record = self.world.history.fault(entry.name, target)
        log.info("nemesis_apply", fault=entry.name, target=target)
        try:
            await entry.apply(self.world, target, self.rng, record)
            record.applied = self.world.history.now()
            await _wait(stop, self.rng.uniform(*(entry.hold or self.duration)))
        except Exception as exc:
            record.error = f"{type(exc).__name__}: {exc}"
            log.warning("nemesis_apply_failed", fault=entry.name, target=target, error=str(exc))
        finally:
            await asyncio.shield(self._heal(entry, target, record))
        return record

    def deal(self, possible: set[str]) -> str:
        """The next kind of fault: from a shuffled deck of every kind, so that a short run
        still applies each of them (then the target is chosen among that kind's)."""
        if not any(name in possible for name in self._deck):
            self._deck += self.rng.sample([fault.name for fault in self.faults], k=len(self.faults))
        name = next(name for name in self._deck if name in possible)
        self._deck.remove(name)
        return name

    async def _heal(self, fault: Fault, target: str | None, record: FaultRecord) -> None:
        record.healing = self.world.history.now()
        try:
            await fault.heal(self.world, target, record)
        except Exception as exc:
            record.error = (record.error + "; " if record.error else "") + f"heal: {exc}"
            log.warning("nemesis_heal_failed", fault=fault.name, target=target, error=str(exc))
            await self.restore()
        record.healed = self.world.history.now()

    async def restore(self) -> None:
        """Put everything back: proxies passing, servers running in their roles (fenced ones
        rejoined), every instance serving, standbys caught up."""
        world = self.world
        topology = world.topology
        for region in topology.regions:
            await world.call(region.proxy.pass_through)
            replication = getattr(region, "replication_proxy", None)
            if isinstance(replication, FaultProxy):
                await world.call(replication.pass_through)
        for name in world.regions():
            if callable(getattr(topology, "resume", None)):
                with contextlib.suppress(Exception):
                    await world.call(topology.resume, name)
        if not world.running(topology.primary) and topology.role(topology.primary) == "primary":
            await world.call(topology.restart, topology.primary)
        for name in world.regions():
            if topology.role(name) == "fenced":
                await world.call(topology.rejoin, name)
            elif not world.running(name):
                await world.call(topology.restart, name)
        for name, instance in world.instances.items():
            if not instance.is_running:
                pid = await instance.start()
                world.history.instance_event(name, "ready", pid)
        with contextlib.suppress(Exception):
            await world.call(topology.wait_replayed)


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` or until ``stop``; return whether stop is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()
