"""The checker: pure functions from a :class:`~harness.chaos.history.History` to violations.

Nothing here does I/O or reads a clock; ``python -m harness.chaos check history.json`` runs
exactly these functions over a recorded run. Each check says what it can know and what it
cannot; an operation's effect is placed anywhere between its invocation and its completion,
so a check flags only what is wrong wherever in that interval the effect fell.

========================  ======================================================================
kind                      what is flagged
========================  ======================================================================
lost_write                an acknowledged create whose key, or an acknowledged revoke whose
                          revocation, is missing from the final state on the primary
duplicate_create          an Idempotency-Key whose acknowledged key is not the one its record
                          names, or a key in the final state that no idempotency record names
split_brain_write         a lost acknowledged write that was acknowledged while two regions
                          were writable, or found only on a diverged (later wiped) timeline;
                          and a read that saw a write the final timeline does not hold
stale_read                a read that missed a write acknowledged more than the staleness bound
                          before it was invoked (or, with a consistency token, any write its
                          token covers)
impossible_read           a read that saw a revocation before any revoke of the key was
                          invoked, or a key no create ever returned
revoked_key_accepted      a token of a revoked key verified although it was sent more than the
                          propagation bound after the revoke was acknowledged
failed_read               a read that failed although its instance was up and some region was
                          serving (see :func:`check_failed_reads`)
watch_lag                 an acknowledged write a live watch subscriber received later than
                          the watch bound after its acknowledgement, or never
watch_divergence          a watch subscriber's replica that differs from the final state
replica_divergence        a region whose final copy differs from the primary's
orphaned_backend          a backend of the service's role stuck on SyncRep or idle in a
                          transaction, or still there after the instances stopped
resource_growth           an instance whose open files or RSS grew beyond the bound
incomplete_run            the run ended before its final state was read: nothing else can be
                          checked against it
========================  ======================================================================
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Final

from harness.chaos.history import OUTCOMES, History, Operation, RegionSample
from service.core.consistency import CommitPosition, decode_token
from service.errors import InvalidConsistencyTokenError

VIOLATION_KINDS: Final = (
    "lost_write",
    "duplicate_create",
    "split_brain_write",
    "stale_read",
    "impossible_read",
    "revoked_key_accepted",
    "failed_read",
    "watch_lag",
    "watch_divergence",
    "replica_divergence",
    "orphaned_backend",
    "resource_growth",
    "incomplete_run",
)

READ_KINDS: Final = frozenset({"get", "verify"})
WRITE_KINDS: Final = frozenset({"create", "revoke"})
MIB: Final = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class Bounds:
    """What the checker allows. Stored in the history's meta so a replay applies the same.

    - ``staleness``: a read may miss a write acknowledged at most this long before the read
      was invoked (the service's ``MAX_REPLICA_LAG`` plus the probes' detection time);
    - ``propagation``: a revoked key's token may verify at most this long after the revoke
      was acknowledged (DESIGN §6: under one second);
    - ``watch``: a live watch subscriber must have received an acknowledged write this long
      after its acknowledgement. Arrival is measured at the client, after the stream and the
      client's own loop, and a rejoin's base backup on a small machine delays the change feed
      by up to about a second (1.13 s seen): twice the propagation target;
    - ``grace``: a read may fail this long after its instance or a region became available
      again (failure detection and one request deadline);
    - ``fd_growth``/``rss_growth``: how much an instance may grow between ``warmup`` seconds
      into its life and its last sample, for instances that lived ``min_lifetime`` or more;
    - ``stuck``: how long a backend may sit idle in a transaction before it counts as stuck;
    - ``monitor_slack``: how far a region's observed role may lag the truth (its sampling).
    """

    staleness: float = 2.0
    propagation: float = 1.0
    watch: float = 2.0
    grace: float = 2.0
    fd_growth: int = 64
    rss_growth: int = 64 * MIB
    warmup: float = 10.0
    min_lifetime: float = 30.0
    stuck: float = 1.0
    monitor_slack: float = 0.5

    def to_dict(self) -> dict[str, float]:
        return {key: float(value) for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Bounds:
        known = {item.name: item.type for item in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key in known:
                values[key] = int(value) if known[key] == "int" else float(value)
        return cls(**values)


@dataclass(frozen=True, slots=True)
class Violation:
    """One thing the history shows the service got wrong; ``operations`` are the evidence."""

    kind: str
    message: str
    t: float | None = None
    operations: tuple[int, ...] = ()


@dataclass(slots=True)
class Summary:
    """The figures the table prints."""

    operations: dict[str, dict[str, int]] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    violations: dict[str, int] = field(default_factory=dict)
    worst_staleness: float = 0.0
    worst_revocation_lag: float = 0.0
    worst_watch_lag: float | None = None
    write_unavailability: float = 0.0


@dataclass(slots=True)
class Report:
    violations: list[Violation]
    summary: Summary
    bounds: Bounds

    @property
    def ok(self) -> bool:
        return not self.violations


# -- what the clients were told ---------------------------------------------------------------


@dataclass(slots=True)
class Acknowledged:
    """The acknowledged writes: the first acknowledgement of each key's create and revoke."""

    created: dict[str, Operation] = field(default_factory=dict)
    revoked: dict[str, Operation] = field(default_factory=dict)
    first_revoke_invoked: dict[str, float] = field(default_factory=dict)
    returned_ids: set[str] = field(default_factory=set)  # every id any create answered with


def acknowledged(history: History) -> Acknowledged:
    known = Acknowledged()
    for op in history.operations:
        key = op.result.get("key_id") if op.kind == "create" else op.args.get("key_id")
        if op.kind == "create" and key is not None:
            known.returned_ids.add(key)
        if op.kind == "revoke" and key is not None:
            first = known.first_revoke_invoked.get(key)
            if first is None or op.invoked < first:
                known.first_revoke_invoked[key] = op.invoked
        if not op.is_ok or key is None or op.kind not in WRITE_KINDS:
            continue
        table = known.created if op.kind == "create" else known.revoked
        earlier = table.get(key)
        if earlier is None or op.end < earlier.end:
            table[key] = op
    return known


def observed(op: Operation) -> str | None:
    """What a successful read saw of its key: ``absent``, ``active``, ``revoked``, or None
    (a verdict that says nothing about the key, e.g. an expired token)."""
    if not op.is_ok:
        return None
    if op.kind == "get":
        status = op.result.get("status")
        return status if status in ("absent", "active", "revoked") else None
    if op.kind == "verify":
        if op.result.get("valid"):
            return "active"
        return {"unknown_key": "absent", "revoked_key": "revoked"}.get(op.result.get("reason", ""))
    return None


def _reads(history: History) -> Iterator[tuple[Operation, str, str]]:
    for op in history.operations:
        if op.kind in READ_KINDS:
            state = observed(op)
            key = op.args.get("key_id")
            if state is not None and key is not None:
                yield op, key, state


def _token_covers(read: Operation, write: Operation, history: History) -> bool:
    """Whether the consistency token ``read`` carried covers ``write``: the token came from
    write ``w``, and ``write`` is ``w`` or was acknowledged before ``w`` was invoked (so it
    committed before ``w`` did)."""
    source = read.args.get("token_write")
    if read.args.get("consistency_token") is None or not isinstance(source, int):
        return False
    if not 0 <= source < len(history.operations):
        return False
    w = history.operations[source]
    return write.index == w.index or write.end < w.invoked


def _must_see(read: Operation, write: Operation, bound: float, history: History) -> bool:
    return read.invoked > write.end + bound or _token_covers(read, write, history)


# -- the checks -------------------------------------------------------------------------------


def check_writes(history: History) -> list[Violation]:
    """Lost, duplicated and split-brain writes, against the final state on the primary.

    Knows: what clients were acknowledged, the final timeline, when the monitor saw two
    writable regions, and what the nemesis read off a diverged region before wiping it.
    Cannot know: which region served a write (the service does not say), so a lost write is
    called split-brain only with that evidence; writes whose outcome stayed unknown are not
    required to survive.
    """
    final = history.final
    if not final.complete:
        return []
    known = acknowledged(history)
    windows = two_writable_windows(history.regions, slack=_bounds(history).monitor_slack)
    diverged: dict[str, str] = {}
    for record in history.faults:
        diverged.update(record.details.get("diverged_keys", {}))
    violations: list[Violation] = []

    def lost(kind: str, key: str, op: Operation, what: str) -> None:
        evidence = []
        if _inside(op.end, windows):
            evidence.append("acknowledged while two regions were writable")
        if key in diverged:
            evidence.append(f"found on a diverged timeline as {diverged[key]}")
        if evidence:
            violations.append(
                Violation(
                    "split_brain_write",
                    f"{kind} of {key} acknowledged at {op.end:.3f} s ({op.instance}) {what}: "
                    + "; ".join(evidence),
                    op.end,
                    (op.index,),
                )
            )
        else:
            violations.append(
                Violation(
                    "lost_write",
                    f"{kind} of {key} acknowledged at {op.end:.3f} s ({op.instance}) {what}",
                    op.end,
                    (op.index,),
                )
            )

    for key, op in sorted(known.created.items(), key=lambda item: item[1].end):
        if key not in final.keys:
            lost("create", key, op, "is not in the final state")
    for key, op in sorted(known.revoked.items(), key=lambda item: item[1].end):
        status = final.keys.get(key)
        if status is not None and status != "revoked":
            lost("revoke", key, op, f"but the key is {status} in the final state")

    # A read that saw what the final timeline does not hold read from a diverged one.
    for op, key, state in _reads(history):
        final_status = final.keys.get(key)
        if state == "revoked" and final_status == "active":
            violations.append(
                Violation(
                    "split_brain_write",
                    f"{op.kind} at {op.invoked:.3f} s ({op.instance}) saw {key} revoked; "
                    "the final state has it active",
                    op.invoked,
                    (op.index,),
                )
            )
        elif state in ("active", "revoked") and final_status is None and key in known.returned_ids:
            violations.append(
                Violation(
                    "split_brain_write",
                    f"{op.kind} at {op.invoked:.3f} s ({op.instance}) saw {key} {state}; "
                    "the final state does not hold it",
                    op.invoked,
                    (op.index,),
                )
            )

    by_claim: dict[str, Operation] = {}
    for op in history.operations:
        claim = op.args.get("idempotency_key")
        if op.kind == "create" and op.is_ok and claim is not None:
            by_claim.setdefault(claim, op)
    for claim, op in by_claim.items():
        recorded = final.idempotency.get(claim)
        if recorded is not None and recorded != op.result.get("key_id"):
            violations.append(
                Violation(
                    "duplicate_create",
                    f"Idempotency-Key {claim} acknowledged as {op.result.get('key_id')} but "
                    f"its record names {recorded}",
                    op.end,
                    (op.index,),
                )
            )
    claimed = set(final.idempotency.values())
    for key in sorted(set(final.keys) - claimed):
        violations.append(
            Violation(
                "duplicate_create",
                f"{key} is in the final state but no idempotency record names it "
                "(every create of the run sends an Idempotency-Key)",
            )
        )
    return violations


def check_stale_reads(history: History, bounds: Bounds) -> tuple[list[Violation], float]:
    """Reads that missed a write they had to see; and the worst staleness seen.

    A read must see a create (``absent`` is stale) or a revoke (``active`` is stale — for a
    GET; a token verifying after a revoke is :func:`check_revocations`' business) that was
    acknowledged more than ``bounds.staleness`` before the read was invoked, or that its
    consistency token covers. Staleness seen is ``read.invoked - write acknowledged`` over
    every read that saw the older state, flagged or not. Cannot know: when the write really
    committed (somewhere before its acknowledgement) — so staleness is a lower bound.
    Also flags impossible reads (a revocation seen before any revoke was invoked; a key no
    create ever returned).
    """
    known = acknowledged(history)
    violations: list[Violation] = []
    worst = 0.0
    for op, key, state in _reads(history):
        write: Operation | None = None
        if state == "absent":
            write = known.created.get(key)
        elif state == "active" and op.kind == "get":
            write = known.revoked.get(key)
        if write is not None:
            age = op.invoked - write.end
            worst = max(worst, age)
            if _must_see(op, write, bounds.staleness, history):
                covered = _token_covers(op, write, history)
                token = " (its consistency token covers it)" if covered else ""
                violations.append(
                    Violation(
                        "stale_read",
                        f"{op.kind} via {op.transport} at {op.invoked:.3f} s ({op.instance}) saw "
                        f"{key} {state}, {age:.3f} s after the {write.kind} was acknowledged"
                        f"{token} (bound {bounds.staleness:g} s)",
                        op.invoked,
                        (op.index, write.index),
                    )
                )
        if state == "revoked":
            first = known.first_revoke_invoked.get(key)
            if first is None or first > op.end:
                violations.append(
                    Violation(
                        "impossible_read",
                        f"{op.kind} at {op.invoked:.3f} s ({op.instance}) saw {key} revoked "
                        "before any revoke of it was invoked",
                        op.invoked,
                        (op.index,),
                    )
                )
        elif (
            state == "active"
            and key not in known.returned_ids
            and key not in history.final.keys
            and history.final.complete
        ):
            violations.append(
                Violation(
                    "impossible_read",
                    f"{op.kind} at {op.invoked:.3f} s ({op.instance}) found {key}, which no "
                    "create returned and the final state does not hold",
                    op.invoked,
                    (op.index,),
                )
            )
    return violations, worst


def check_revocations(history: History, bounds: Bounds) -> tuple[list[Violation], float]:
    """Tokens of revoked keys that verified too late; and the worst revocation lag seen.

    A token verifying is a violation when the verification was invoked more than
    ``bounds.propagation`` after the revoke was acknowledged. The lag seen is
    ``verify.invoked - revoke acknowledged`` over every token that still verified after the
    acknowledgement. Cannot know: lag on instances no verification happened to probe.
    """
    known = acknowledged(history)
    violations: list[Violation] = []
    worst = 0.0
    for op, key, state in _reads(history):
        if op.kind != "verify" or state != "active":
            continue
        revoke = known.revoked.get(key)
        if revoke is None:
            continue
        lag = op.invoked - revoke.end
        worst = max(worst, lag)
        if lag > bounds.propagation:
            violations.append(
                Violation(
                    "revoked_key_accepted",
                    f"a token of {key} verified via {op.transport} at {op.invoked:.3f} s "
                    f"({op.instance}), {lag:.3f} s after its revoke was acknowledged "
                    f"(bound {bounds.propagation:g} s)",
                    op.invoked,
                    (op.index, revoke.index),
                )
            )
    return violations, worst


def check_failed_reads(history: History, bounds: Bounds) -> list[Violation]:
    """Reads that failed while a fresh region was reachable.

    Exactly what is checked: a get or verify that failed (an error status, a transport error
    or a client timeout) is a violation when, over the whole interval from ``bounds.grace``
    before its invocation to its completion,

    - its service instance was up (ready, not killed by the nemesis), and
    - at least one region was *serving*: no fault recorded by the nemesis listed it as
      unavailable at any moment of that interval (blackholed or reset proxy, killed or paused
      server, fenced or rogue old primary, cut replication link), and the topology monitor
      saw its server reachable, its tables readable within a second (not blocked, e.g. on a
      lock WAL replay holds), and either writable or a standby streaming WAL; and
    - for a read carrying a consistency token, that region *held the token's position* when
      the read was invoked: the monitor's newest sample of it at or before the invocation
      shows it writable on the token's timeline or a later one, or a standby on such a
      timeline whose replay position had reached the token's LSN (the router's own rule,
      ``service/locality/positions.py``). A region that had not may not serve that read:
      a 503 then is the right answer, not a failure.

    Cannot know: whether the router could have known a region was serving (it learns by
    probing; ``grace`` covers that), or whether a delayed proxy was "too slow" — a delayed
    region still counts as serving, since delays stay below the request deadline. A region
    that reached a token's position only after the read was invoked is not held against the
    read (the router might have retried there in time; it might not). A history without
    positions (older monitors) counts every serving region, as before.
    """
    violations: list[Violation] = []
    up = _instance_intervals(history)
    regions = list(history.meta.regions)
    for op in history.operations:
        if op.kind not in READ_KINDS or op.outcome not in ("fail", "info"):
            continue
        start, end = op.invoked - bounds.grace, op.end
        if not any(a <= start and end <= b for a, b in up.get(op.instance, [])):
            continue
        serving = [region for region in regions if _serving(history, region, start, end)]
        position = _token_position(op)
        if position is not None:
            serving = [
                region for region in serving if _holds(history, region, position, op.invoked)
            ]
        if serving:
            violations.append(
                Violation(
                    "failed_read",
                    f"{op.kind} via {op.transport} at {op.invoked:.3f} s ({op.instance}) failed "
                    f"({op.result.get('error', 'unknown error')}) while {', '.join(serving)} "
                    "could serve",
                    op.invoked,
                    (op.index,),
                )
            )
    return violations


def check_watch_lag(history: History, bounds: Bounds) -> tuple[list[Violation], float | None]:
    """Acknowledged writes that reached a live watch subscriber late, or never; and the
    worst delay seen from an acknowledgement to a live subscriber's event.

    A subscriber is *live* from the ``synced`` event of a stream to that stream's end. For
    each acknowledged create (revoke), every subscriber live throughout the watch
    bound after the acknowledgement must have received an event carrying the key (carrying
    it revoked) by the end of that bound — before the acknowledgement counts too, as a
    change may be visible before its writer hears back. The bound holds only while a
    writable region was serving throughout it: with none (a switchover or failover under
    way, every writer cut off), no region's data is young enough for the change feed, which
    then waits rather than serve stale data; convergence still checks those changes. Cannot
    know: delays shorter than the bound, or anything about subscribers that were
    reconnecting (convergence covers those).
    """
    known = acknowledged(history)
    live = _live_watchers(history)
    seen: dict[tuple[str, str], float] = {}
    revoked_seen: dict[tuple[str, str], float] = {}
    for event in history.watch_events:
        if event.key_id is None:
            continue
        seen.setdefault((event.watcher, event.key_id), event.t)
        if event.status == "revoked":
            revoked_seen.setdefault((event.watcher, event.key_id), event.t)
    violations = []
    worst: float | None = None
    for table, arrivals, what in (
        (known.created, seen, "create"),
        (known.revoked, revoked_seen, "revoke"),
    ):
        for key, op in sorted(table.items(), key=lambda item: item[1].end):
            due = op.end + bounds.watch
            if not _writer_serving(history, op.end, due):
                continue
            for watcher, intervals in sorted(live.items()):
                if not any(a <= op.end and due <= b for a, b in intervals):
                    continue
                arrived = arrivals.get((watcher, key))
                if arrived is not None:
                    worst = max(worst or 0.0, arrived - op.end)
                if arrived is None or arrived > due:
                    late = "never" if arrived is None else f"{arrived - op.end:.3f} s after"
                    violations.append(
                        Violation(
                            "watch_lag",
                            f"{watcher} received the {what} of {key} (acknowledged at "
                            f"{op.end:.3f} s) {late} (bound {bounds.watch:g} s)",
                            op.end,
                            (op.index,),
                        )
                    )
    return violations, worst


def _live_watchers(history: History) -> dict[str, list[tuple[float, float]]]:
    synced: dict[str, list[float]] = defaultdict(list)
    for event in history.watch_events:
        if event.kind == "synced":
            synced[event.watcher].append(event.t)
    live: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for op in history.operations:
        if op.kind != "watch":
            continue
        start = next((t for t in synced[op.process] if op.invoked <= t <= op.end), None)
        if start is not None:
            live[op.process].append((start, op.end))
    return live


def check_watches(history: History) -> list[Violation]:
    """Every watch subscriber's replica equals the final state after the quiet period."""
    final = history.final
    if not final.complete:
        return []
    violations = []
    for watcher, replica in sorted(final.replicas.items()):
        problems = _differences(replica, final.keys)
        if problems:
            violations.append(
                Violation(
                    "watch_divergence",
                    f"{watcher}'s replica differs from the final state: {problems}",
                )
            )
    return violations


def check_replicas(history: History) -> list[Violation]:
    """Every region's copy equals the primary's after the quiet period."""
    final = history.final
    if not final.complete:
        return []
    violations = []
    for region, keys in sorted(final.regions.items()):
        if region == final.primary:
            continue
        problems = _differences(keys, final.keys)
        if problems:
            violations.append(
                Violation("replica_divergence", f"{region} differs from the primary: {problems}")
            )
    return violations


def check_backends(history: History, bounds: Bounds) -> list[Violation]:
    """Backends of the service's role left stuck (SyncRep, idle in a transaction) while the
    instances ran, or left at all after they stopped; and those the nemesis found stuck on a
    diverged region just before it wiped it. Cannot know: backends of a server that was down
    when the run looked."""
    violations = []
    for record in history.faults:
        region = record.details.get("old_primary")
        for stuck in record.details.get("stuck_backends", []):
            if (
                stuck.get("wait_event") != "SyncRep"
                and (stuck.get("seconds") or 0.0) <= bounds.stuck
            ):
                continue  # a transaction in progress, not yet stuck
            violations.append(
                Violation(
                    "orphaned_backend",
                    f"backend {stuck.get('pid')} on the diverged {region}"
                    f" ({stuck.get('state')}, wait {stuck.get('wait_event')}) for "
                    f"{stuck.get('seconds') or 0:.1f} s when it was rejoined: "
                    f"{(stuck.get('query') or '')[:80]!r}",
                    record.healing,
                )
            )
    for backend in history.final.backends:
        state = backend.state or ""
        if backend.phase == "stopped":
            reason = "still there after every instance stopped"
        elif backend.wait_event == "SyncRep":
            reason = "waiting on synchronous replication"
        elif (
            state.startswith("idle in transaction")
            and (backend.seconds_in_state or 0.0) > bounds.stuck
        ):
            reason = f"{state} for {backend.seconds_in_state:.1f} s"
        else:
            continue
        violations.append(
            Violation(
                "orphaned_backend",
                f"backend {backend.pid} on {backend.region} ({state or 'no state'}, "
                f"wait {backend.wait_event}) {reason}: {(backend.query or '')[:80]!r}",
            )
        )
    return violations


def check_resources(history: History, bounds: Bounds) -> list[Violation]:
    """Open files and RSS of each service process, ``warmup`` seconds into its life vs its
    last sample. Cannot know: slow leaks smaller than the bound over a short run."""
    by_process: dict[tuple[str, int], list[Any]] = defaultdict(list)
    for sample in history.processes:
        by_process[(sample.instance, sample.pid)].append(sample)
    violations = []
    for (instance, pid), samples in sorted(by_process.items()):
        samples.sort(key=lambda sample: sample.t)
        first, last = samples[0], samples[-1]
        if last.t - first.t < bounds.min_lifetime:
            continue
        baseline = next(sample for sample in samples if sample.t >= first.t + bounds.warmup)
        fds = last.fds - baseline.fds
        rss = last.rss - baseline.rss
        if fds > bounds.fd_growth:
            violations.append(
                Violation(
                    "resource_growth",
                    f"{instance} (pid {pid}) open files {baseline.fds} -> {last.fds} "
                    f"from {baseline.t:.0f} s to {last.t:.0f} s (bound +{bounds.fd_growth})",
                    last.t,
                )
            )
        if rss > bounds.rss_growth:
            violations.append(
                Violation(
                    "resource_growth",
                    f"{instance} (pid {pid}) RSS {baseline.rss / MIB:.1f} -> {last.rss / MIB:.1f}"
                    f" MiB from {baseline.t:.0f} s to {last.t:.0f} s "
                    f"(bound +{bounds.rss_growth / MIB:.0f} MiB)",
                    last.t,
                )
            )
    return violations


# -- figures ----------------------------------------------------------------------------------


def write_unavailability(history: History) -> float:
    """The longest interval with no acknowledged write while writes were being attempted.

    Between two consecutive acknowledgements (or the first write's invocation and the last
    write's completion), the interval counts from the first moment a write was in flight in
    it: a stretch in which nobody tried to write is not unavailability.
    """
    writes = [op for op in history.operations if op.kind in WRITE_KINDS]
    if not writes:
        return 0.0
    finite = [op.end for op in writes if op.completed is not None]
    first = min(op.invoked for op in writes)
    last = max([*finite, *(op.invoked for op in writes)])
    edges = [first, *sorted(op.end for op in writes if op.is_ok), last]
    longest = 0.0
    for a, b in itertools.pairwise(edges):
        if b - a <= longest:
            continue
        starts = [
            max(a, op.invoked)
            for op in writes
            if op.invoked < b and op.end > a and not (op.is_ok and op.end == a)
        ]
        if starts:
            longest = max(longest, b - min(starts))
    return longest


def summarize(history: History, violations: Sequence[Violation]) -> Summary:
    summary = Summary()
    for op in history.operations:
        label = f"{op.kind}/{op.transport}"
        counts = summary.operations.setdefault(label, dict.fromkeys(OUTCOMES, 0))
        if op.outcome is not None:
            counts[op.outcome] += 1
    summary.faults = dict(Counter(record.name for record in history.faults if record.applied))
    counted = Counter(violation.kind for violation in violations)
    summary.violations = {kind: counted.get(kind, 0) for kind in VIOLATION_KINDS}
    summary.write_unavailability = write_unavailability(history)
    return summary


def check(history: History, bounds: Bounds | None = None) -> Report:
    """Every check over ``history``; ``bounds`` default to the ones the run recorded."""
    bounds = bounds or _bounds(history)
    violations: list[Violation] = []
    if not history.final.complete:
        violations.append(
            Violation("incomplete_run", "the run ended before the final state was read")
        )
    violations += check_writes(history)
    stale, worst_staleness = check_stale_reads(history, bounds)
    violations += stale
    revoked, worst_lag = check_revocations(history, bounds)
    violations += revoked
    violations += check_failed_reads(history, bounds)
    lagging, worst_watch = check_watch_lag(history, bounds)
    violations += lagging
    violations += check_watches(history)
    violations += check_replicas(history)
    violations += check_backends(history, bounds)
    violations += check_resources(history, bounds)
    summary = summarize(history, violations)
    summary.worst_staleness = worst_staleness
    summary.worst_revocation_lag = worst_lag
    summary.worst_watch_lag = worst_watch
    return Report(violations, summary, bounds)


# -- helpers ----------------------------------------------------------------------------------


def _bounds(history: History) -> Bounds:
    return Bounds.from_dict(history.meta.bounds)


def _differences(replica: dict[str, str], truth: dict[str, str], limit: int = 5) -> str:
    missing = sorted(set(truth) - set(replica))
    extra = sorted(set(replica) - set(truth))
    wrong = sorted(key for key in set(truth) & set(replica) if truth[key] != replica[key])
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({', '.join(missing[:limit])})")
    if extra:
        parts.append(f"{len(extra)} extra ({', '.join(extra[:limit])})")
    if wrong:
        shown = ", ".join(f"{key} {replica[key]}≠{truth[key]}" for key in wrong[:limit])
        parts.append(f"{len(wrong)} with another status ({shown})")
    return "; ".join(parts)


def _inside(t: float, windows: Iterable[tuple[float, float]]) -> bool:
    return any(a <= t <= b for a, b in windows)


def two_writable_windows(
    samples: Sequence[RegionSample], *, slack: float = 0.0
) -> list[tuple[float, float]]:
    """Intervals in which the monitor saw two or more regions writable, widened by ``slack``
    on each side (a role change is seen up to one sampling interval late)."""
    writable: dict[str, bool] = {}
    windows: list[tuple[float, float]] = []
    opened: float | None = None
    for sample in sorted(samples, key=lambda sample: sample.t):
        writable[sample.region] = sample.reachable and sample.writable
        count = sum(writable.values())
        if count >= 2 and opened is None:
            opened = sample.t
        elif count < 2 and opened is not None:
            windows.append((opened - slack, sample.t + slack))
            opened = None
    if opened is not None:
        windows.append((opened - slack, float("inf")))
    return windows


def _instance_intervals(history: History) -> dict[str, list[tuple[float, float]]]:
    """When each instance was up: from each ``ready`` to the next ``killed``/``stopped``."""
    intervals: dict[str, list[tuple[float, float]]] = defaultdict(list)
    ready: dict[str, float] = {}
    for event in sorted(history.instances, key=lambda event: event.t):
        if event.event == "ready":
            ready.setdefault(event.instance, event.t)
        elif event.instance in ready:
            intervals[event.instance].append((ready.pop(event.instance), event.t))
    for instance, t in ready.items():
        intervals[instance].append((t, float("inf")))
    for record in history.faults:  # belt and braces: the nemesis's own record
        for instance in record.instances_down:
            intervals[instance] = _subtract(intervals[instance], record.started, record.end)
    return intervals


def _subtract(
    intervals: list[tuple[float, float]], a: float, b: float
) -> list[tuple[float, float]]:
    out = []
    for x, y in intervals:
        if y <= a or x >= b:
            out.append((x, y))
            continue
        if x < a:
            out.append((x, a))
        if y > b:
            out.append((b, y))
    return out


def _writer_serving(history: History, start: float, end: float) -> bool:
    """Whether one region was serving and writable throughout ``[start, end]`` (the change
    feed's data is young only while some region writes heartbeats)."""
    for region in history.meta.regions:
        if not _serving(history, region, start, end):
            continue
        samples = [sample for sample in history.regions if sample.region == region]
        before = [sample for sample in samples if sample.t <= start][-1:]
        during = [sample for sample in samples if start < sample.t <= end]
        if not samples or all(sample.writable for sample in [*before, *during]):
            return True
    return False


def _token_position(op: Operation) -> CommitPosition | None:
    """The commit position the consistency token ``op`` carried names (``None``: no token,
    or one that does not decode — the service refuses that with a 400, not a failure)."""
    token = op.args.get("consistency_token")
    if not isinstance(token, str) or not token:
        return None
    try:
        return decode_token(token)
    except InvalidConsistencyTokenError:
        return None


def _holds(history: History, region: str, position: CommitPosition, t: float) -> bool:
    """Whether the monitor's newest sample of ``region`` at or before ``t`` shows it holding
    ``position``; a history whose samples carry no positions says yes (nothing to judge by)."""
    samples = [sample for sample in history.regions if sample.region == region]
    if not samples or all(sample.replay_lsn is None for sample in samples):
        return True
    before = [sample for sample in samples if sample.t <= t]
    if not before:
        return False
    sample = before[-1]
    if not sample.reachable or sample.timeline is None or sample.timeline < position.timeline:
        return False
    return sample.writable or (sample.replay_lsn is not None and sample.replay_lsn >= position.lsn)


def _serving(history: History, region: str, start: float, end: float) -> bool:
    """Whether ``region`` could serve fresh reads throughout ``[start, end]``."""
    for record in history.faults:
        if region in record.unavailable and record.started <= end and record.end >= start:
            return False
    samples = [sample for sample in history.regions if sample.region == region]
    if not samples:
        return True  # no monitor in this history: the nemesis's record alone decides
    before = [sample for sample in samples if sample.t <= start]
    if not before:
        return False  # not seen yet: it cannot be said to have served
    during = [sample for sample in samples if start < sample.t <= end]
    return all(
        sample.reachable and sample.readable is not False and (sample.writable or sample.streaming)
        for sample in [before[-1], *during]
    )
