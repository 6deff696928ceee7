"""The history of a chaos run: everything clients invoked and saw, and what the world did.

Jepsen's method (DESIGN §7, STYLE rule 24): record every operation with its invocation and
completion time and check the record afterwards. A history holds

- **operations**: one :class:`Operation` per client call (create, revoke, get, verify, a
  watch session, a final read), with the process that made it, the service instance it went
  to, its arguments and what came back; ``outcome`` is ``ok``, ``fail`` (it certainly did not
  happen) or ``info`` (unknown: a write that timed out may or may not have committed);
- **faults**: what the nemesis did and when (:class:`FaultRecord`), including which regions
  and instances each fault made unavailable;
- **observations** the run made outside the clients: each region's role as seen directly on
  its server (:class:`RegionSample`, recorded on change), service instance lifetimes
  (:class:`InstanceEvent`), file descriptors and RSS of each instance (:class:`ProcessSample`),
  every event each watch subscriber received (:class:`WatchEventRecord`);
- the **final state** read after the quiet period (:class:`FinalState`).

Times are seconds on the run's monotonic clock, from its start; ``meta.started_wall`` turns
them into wall-clock times (each operation also carries its own wall times). The whole
history round-trips through JSON, so a failed run can be checked again from its file alone::

    history.dump(path)
    again = History.load(path)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

FORMAT_VERSION = 1

Outcome = Literal["ok", "fail", "info"]
OUTCOMES: tuple[Outcome, ...] = ("ok", "fail", "info")

_T = TypeVar("_T")


@dataclass(slots=True, kw_only=True)
class Operation:
    """One client call: who made it, against which instance, when, and what it saw.

    ``args`` and ``result`` are small JSON objects; the keys the checker reads are
    ``key_id``, ``idempotency_key``, ``consistency_token``/``token_write`` in ``args`` and
    ``key_id``, ``status`` (``active``/``revoked``/``absent``), ``valid``, ``reason``,
    ``error`` in ``result``.
    """

    index: int
    process: str
    kind: str  # create, revoke, get, verify, watch
    instance: str  # the region of the service instance it went to
    transport: str  # http or grpc
    invoked: float
    invoked_wall: float
    completed: float | None = None
    completed_wall: float | None = None
    outcome: Outcome | None = None  # None only while in flight
    args: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def is_ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def end(self) -> float:
        """When it completed; an operation still open at the end counts as never completed."""
        return self.completed if self.completed is not None else float("inf")


@dataclass(slots=True, kw_only=True)
class FaultRecord:
    """One fault of the nemesis: applied at ``started``..``applied``, healed at
    ``healing``..``healed`` (``None``: never healed, e.g. the apply failed).

    ``unavailable`` lists the regions the fault made unable to serve fresh reads (down,
    cut off, fenced, stale); ``instances_down`` the service instances it stopped.
    """

    index: int
    name: str
    target: str | None
    started: float
    applied: float | None = None
    healing: float | None = None
    healed: float | None = None
    unavailable: list[str] = field(default_factory=list)
    instances_down: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def end(self) -> float:
        return self.healed if self.healed is not None else float("inf")


@dataclass(slots=True, kw_only=True)
class RegionSample:
    """A region's server as seen directly (not through its proxy), recorded when it changes."""

    t: float
    region: str
    reachable: bool
    writable: bool = False
    streaming: bool = False  # a standby receiving WAL from a primary
    # The timeline a writable server writes, or a standby follows (what its walreceiver
    # receives; without one, its last restartpoint's timeline).
    timeline: int | None = None
    # WAL positions in bytes since 0/0: what a standby has replayed and flushed (received),
    # what a writable server has written and flushed. ``None``: not known (older histories,
    # an unreachable server). The checker compares consistency tokens with ``replay_lsn``.
    replay_lsn: int | None = None
    flush_lsn: int | None = None
    # Whether the service's tables answered a read within a second (False: blocked, e.g. on a
    # lock WAL replay holds; None: not asked or not known).
    readable: bool | None = None


@dataclass(slots=True, kw_only=True)
class InstanceEvent:
    """A service instance became ready, was killed, or was stopped at the end."""

    t: float
    instance: str
    event: Literal["ready", "killed", "stopped"]
    pid: int | None = None


@dataclass(slots=True, kw_only=True)
class ProcessSample:
    """Open file descriptors and resident memory of one service process."""

    t: float
    instance: str
    pid: int
    fds: int
    rss: int  # bytes


@dataclass(slots=True, kw_only=True)
class WatchEventRecord:
    """One event a watch subscriber received (``status`` of the key it carries, if any)."""

    t: float
    watcher: str
    kind: str  # snapshot, synced, changed
    key_id: str | None
    status: str | None
    position: str


@dataclass(slots=True, kw_only=True)
class Backend:
    """A server backend of the service's role seen after the run (``pg_stat_activity``).

    ``phase`` is ``running`` (the instances still run) or ``stopped`` (they have exited).
    """

    region: str
    phase: Literal["running", "stopped"]
    pid: int
    state: str | None
    wait_event: str | None
    seconds_in_state: float | None
    application_name: str | None
    query: str | None


@dataclass(slots=True, kw_only=True)
class FinalState:
    """What the run read after healing and the quiet period.

    ``keys`` is the environment's keys (id → status) on the primary: the final timeline.
    ``regions`` holds the same read on every region; ``idempotency`` the environment's
    idempotency records (Idempotency-Key → key id); ``replicas`` each watch subscriber's
    copy (id → status).
    """

    primary: str | None = None
    keys: dict[str, str] = field(default_factory=dict)
    regions: dict[str, dict[str, str]] = field(default_factory=dict)
    idempotency: dict[str, str] = field(default_factory=dict)
    replicas: dict[str, dict[str, str]] = field(default_factory=dict)
    backends: list[Backend] = field(default_factory=list)
    complete: bool = False  # False: the run ended before the final state could be read


@dataclass(slots=True, kw_only=True)
class Meta:
    """What the run was: seed, length, the instances, the bounds the checker applies."""

    seed: int
    seconds: float
    started_wall: float
    environment: str
    instances: list[str]
    regions: list[str]
    faults: list[str]
    skipped_faults: list[str] = field(default_factory=list)  # the harness does not offer them
    bounds: dict[str, float] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)
    scratch: list[str] = field(default_factory=list)  # temporary directories (removed after)
    ended: float | None = None  # run-clock time when the history was closed
    format: int = FORMAT_VERSION


class History:
    """The append-only record of one run; see the module docstring.

    >>> history = History(Meta(seed=1, seconds=60, started_wall=time.time(), environment="e",
    ...                        instances=["r1"], regions=["r1"], faults=[]))
    >>> op = history.invoke("writer-r1", "create", instance="r1", transport="http")
    >>> history.complete(op, "ok", key_id="k1")
    """

    def __init__(
        self,
        meta: Meta,
        *,
        clock: Callable[[], float] = time.monotonic,
        origin: float | None = None,
    ) -> None:
        self.meta = meta
        self._clock = clock
        self._origin = clock() if origin is None else origin
        self.operations: list[Operation] = []
        self.faults: list[FaultRecord] = []
        self.regions: list[RegionSample] = []
        self.instances: list[InstanceEvent] = []
        self.processes: list[ProcessSample] = []
        self.watch_events: list[WatchEventRecord] = []
        self.final = FinalState()

    def __repr__(self) -> str:
        return (
            f"<History seed={self.meta.seed} operations={len(self.operations)} "
            f"faults={len(self.faults)} final={'yes' if self.final.complete else 'no'}>"
        )

    # -- the clock -------------------------------------------------------------------------

    def now(self) -> float:
        """Seconds since the run started (monotonic)."""
        return self._clock() - self._origin

    def wall(self, t: float) -> float:
        return self.meta.started_wall + t

    # -- recording -------------------------------------------------------------------------

    def invoke(
        self,
        process: str,
        kind: str,
        *,
        instance: str,
        transport: str,
        **args: Any,
    ) -> Operation:
        """Record the invocation of an operation; complete it with :meth:`complete`."""
        t = self.now()
        op = Operation(
            index=len(self.operations),
            process=process,
            kind=kind,
            instance=instance,
            transport=transport,
            invoked=t,
            invoked_wall=self.wall(t),
            args={key: value for key, value in args.items() if value is not None},
        )
        self.operations.append(op)
        return op

    def complete(self, op: Operation, outcome: Outcome, **result: Any) -> None:
        if op.outcome is not None:
            raise RuntimeError(f"operation {op.index} was completed already")
        t = self.now()
        op.completed = t
        op.completed_wall = self.wall(t)
        op.outcome = outcome
        op.result = {key: value for key, value in result.items() if value is not None}

    def fault(self, name: str, target: str | None) -> FaultRecord:
        record = FaultRecord(index=len(self.faults), name=name, target=target, started=self.now())
        self.faults.append(record)
        return record

    def observe_region(self, sample: RegionSample) -> bool:
        """Keep ``sample`` if it differs from the region's previous one; return whether kept."""
        for earlier in reversed(self.regions):
            if earlier.region == sample.region:
                if _state(earlier) == _state(sample):
                    return False
                break
        self.regions.append(sample)
        return True

    def instance_event(
        self, instance: str, event: Literal["ready", "killed", "stopped"], pid: int | None
    ) -> None:
        self.instances.append(InstanceEvent(t=self.now(), instance=instance, event=event, pid=pid))

    # -- JSON ------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "meta": asdict(self.meta),
            "operations": [asdict(op) for op in self.operations],
            "faults": [asdict(record) for record in self.faults],
            "regions": [asdict(sample) for sample in self.regions],
            "instances": [asdict(event) for event in self.instances],
            "processes": [asdict(sample) for sample in self.processes],
            "watch_events": [asdict(event) for event in self.watch_events],
            "final": asdict(self.final),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> History:
        meta = _build(Meta, data["meta"])
        if meta.format != FORMAT_VERSION:
            raise ValueError(f"history format {meta.format}; this checker reads {FORMAT_VERSION}")
        history = cls(meta, origin=0.0)
        history.operations = [_build(Operation, item) for item in data.get("operations", [])]
        history.faults = [_build(FaultRecord, item) for item in data.get("faults", [])]
        history.regions = [_build(RegionSample, item) for item in data.get("regions", [])]
        history.instances = [_build(InstanceEvent, item) for item in data.get("instances", [])]
        history.processes = [_build(ProcessSample, item) for item in data.get("processes", [])]
        history.watch_events = [
            _build(WatchEventRecord, item) for item in data.get("watch_events", [])
        ]
        final = dict(data.get("final", {}))
        final["backends"] = [_build(Backend, item) for item in final.get("backends", [])]
        history.final = _build(FinalState, final)
        return history

    def dump(self, path: str | Path) -> Path:
        """Write the history as JSON (to a temporary name first, so a reader never sees half)."""
        target = Path(path)
        partial = target.with_name(target.name + ".partial")
        partial.write_text(json.dumps(self.to_json(), separators=(",", ":"), allow_nan=False))
        partial.replace(target)
        return target

    @classmethod
    def load(cls, path: str | Path) -> History:
        return cls.from_json(json.loads(Path(path).read_text()))


def _build(cls: type[_T], data: dict[str, Any]) -> _T:
    """``cls(**data)`` ignoring members this version does not know."""
    known = {item.name for item in fields(cls)}  # type: ignore[arg-type]
    return cls(**{key: value for key, value in data.items() if key in known})


def _state(sample: RegionSample) -> tuple[object, ...]:
    """What a region sample says, without when it was taken: a new sample is kept only when
    this changes (so replay positions are recorded as they move, idle regions are not)."""
    return (
        sample.reachable,
        sample.writable,
        sample.streaming,
        sample.timeline,
        sample.replay_lsn,
        sample.flush_lsn,
        sample.readable,
    )
