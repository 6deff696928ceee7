"""The checker over hand-written histories: each check fails a history that breaks its rule
and passes one that keeps it (so a clean chaos run means something)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.chaos.checker import (
    MIB,
    Bounds,
    Report,
    check,
    check_backends,
    check_failed_reads,
    check_replicas,
    check_resources,
    check_revocations,
    check_stale_reads,
    check_watch_lag,
    check_watches,
    check_writes,
    two_writable_windows,
    write_unavailability,
)
from harness.chaos.history import (
    Backend,
    FaultRecord,
    History,
    InstanceEvent,
    Meta,
    Operation,
    Outcome,
    ProcessSample,
    RegionSample,
    WatchEventRecord,
)
from service.core.consistency import CommitPosition, encode_token

BOUNDS = Bounds()


def new_history(*, final: dict[str, str] | None = None) -> History:
    """Regions a and b, instances a and b, both ready from t=0; final state ``final``."""
    history = History(
        Meta(
            seed=1,
            seconds=60,
            started_wall=1_700_000_000.0,
            environment="env",
            instances=["a", "b"],
            regions=["a", "b"],
            faults=[],
            bounds=BOUNDS.to_dict(),
        ),
        origin=0.0,
    )
    for name in ("a", "b"):
        history.instances.append(InstanceEvent(t=0.0, instance=name, event="ready", pid=1))
    if final is not None:
        history.final.keys = dict(final)
        history.final.primary = "a"
        history.final.regions = {"a": dict(final), "b": dict(final)}
        history.final.complete = True
    return history


def record(
    history: History,
    kind: str,
    invoked: float,
    completed: float | None,
    outcome: Outcome = "ok",
    *,
    instance: str = "a",
    transport: str = "http",
    process: str | None = None,
    args: dict[str, Any] | None = None,
    **result: Any,
) -> Operation:
    op = Operation(
        index=len(history.operations),
        process=process or f"{kind}-{instance}",
        kind=kind,
        instance=instance,
        transport=transport,
        invoked=invoked,
        invoked_wall=history.wall(invoked),
        completed=completed,
        completed_wall=None if completed is None else history.wall(completed),
        outcome=outcome if completed is not None else None,
        args=dict(args or {}),
        result=result,
    )
    history.operations.append(op)
    return op


def create(
    history: History, key: str, invoked: float, completed: float, outcome: Outcome = "ok"
) -> Operation:
    result = {"key_id": key} if outcome == "ok" else {"error": "client timeout"}
    return record(
        history,
        "create",
        invoked,
        completed,
        outcome,
        args={"idempotency_key": f"claim-{key}"},
        **result,
    )


def revoke(
    history: History, key: str, invoked: float, completed: float, outcome: Outcome = "ok"
) -> Operation:
    return record(history, "revoke", invoked, completed, outcome, args={"key_id": key})


def get(history: History, key: str, invoked: float, status: str, **kwargs: Any) -> Operation:
    args = {"key_id": key, **kwargs.pop("args", {})}
    return record(history, "get", invoked, invoked + 0.01, args=args, status=status, **kwargs)


def verify(
    history: History, key: str, invoked: float, *, valid: bool, reason: str = ""
) -> Operation:
    return record(
        history, "verify", invoked, invoked + 0.01, args={"key_id": key}, valid=valid, reason=reason
    )


def kinds(violations: list[Any]) -> list[str]:
    return [violation.kind for violation in violations]


def claims(history: History) -> None:
    """Idempotency records naming every acknowledged create, as the service keeps them."""
    for op in history.operations:
        if op.kind == "create" and op.is_ok:
            history.final.idempotency[op.args["idempotency_key"]] = op.result["key_id"]


# -- lost, duplicated and split-brain writes --------------------------------------------------


def test_an_acknowledged_create_missing_from_the_final_state_is_a_lost_write() -> None:
    history = new_history(final={"k2": "active"})
    create(history, "k1", 1.0, 1.2)
    create(history, "k2", 2.0, 2.2)
    claims(history)
    history.final.idempotency.pop("claim-k1")
    violations = check_writes(history)
    assert kinds(violations) == ["lost_write"]
    assert "k1" in violations[0].message


def test_writes_of_unknown_outcome_need_not_survive() -> None:
    history = new_history(final={})
    create(history, "k1", 1.0, 3.0, "info")
    assert check_writes(history) == []


def test_an_acknowledged_revoke_of_a_key_still_active_at_the_end_is_a_lost_write() -> None:
    history = new_history(final={"k1": "active"})
    create(history, "k1", 1.0, 1.1)
    revoke(history, "k1", 2.0, 2.1)
    claims(history)
    assert kinds(check_writes(history)) == ["lost_write"]
    history.final.keys["k1"] = "revoked"
    assert check_writes(history) == []


def test_a_lost_write_acknowledged_while_two_regions_were_writable_is_split_brain() -> None:
    history = new_history(final={})
    history.regions += [
        RegionSample(t=0.0, region="a", reachable=True, writable=True, timeline=1),
        RegionSample(t=0.0, region="b", reachable=True, writable=False, streaming=True),
        RegionSample(t=5.0, region="b", reachable=True, writable=True, timeline=2),
        RegionSample(t=9.0, region="a", reachable=False),
    ]
    create(history, "k1", 6.0, 6.5)
    violations = check_writes(history)
    assert kinds(violations) == ["split_brain_write"]
    assert "two regions were writable" in violations[0].message


def test_a_lost_write_found_on_a_diverged_timeline_is_split_brain() -> None:
    history = new_history(final={})
    create(history, "k1", 1.0, 1.1)
    history.faults.append(
        FaultRecord(
            index=0,
            name="unfenced-old-primary",
            target=None,
            started=0.5,
            healed=3.0,
            details={"old_primary": "a", "diverged_keys": {"k1": "active"}},
        )
    )
    violations = check_writes(history)
    assert kinds(violations) == ["split_brain_write"]
    assert "diverged timeline" in violations[0].message


def test_a_read_of_a_revocation_the_final_timeline_lacks_is_split_brain() -> None:
    history = new_history(final={"k1": "active"})
    create(history, "k1", 1.0, 1.1)
    revoke(history, "k1", 2.0, 2.2, "info")
    get(history, "k1", 3.0, "revoked")
    claims(history)
    assert kinds(check_writes(history)) == ["split_brain_write"]


def test_an_idempotency_key_that_created_two_keys_is_a_duplicate_create() -> None:
    history = new_history(final={"k1": "active", "k2": "active"})
    create(history, "k1", 1.0, 1.1)
    history.final.idempotency = {"claim-k1": "k2"}
    violations = check_writes(history)
    assert sorted(kinds(violations)) == ["duplicate_create", "duplicate_create"]
    claims(history)
    history.final.idempotency["claim-k2"] = "k2"
    assert check_writes(history) == []


def test_two_writable_windows_follow_the_monitor() -> None:
    samples = [
        RegionSample(t=0.0, region="a", reachable=True, writable=True),
        RegionSample(t=2.0, region="b", reachable=True, writable=True),
        RegionSample(t=4.0, region="a", reachable=False),
        RegionSample(t=6.0, region="a", reachable=True, writable=True),
    ]
    assert two_writable_windows(samples) == [(2.0, 4.0), (6.0, float("inf"))]
    assert two_writable_windows(samples[:2], slack=0.5) == [(1.5, float("inf"))]


# -- reads ------------------------------------------------------------------------------------


def test_a_not_found_past_the_staleness_bound_after_the_create_is_a_stale_read() -> None:
    history = new_history(final={"k1": "active"})
    create(history, "k1", 1.0, 1.5)
    get(history, "k1", 1.5 + BOUNDS.staleness + 0.1, "absent")
    violations, worst = check_stale_reads(history, BOUNDS)
    assert kinds(violations) == ["stale_read"]
    assert worst == pytest.approx(BOUNDS.staleness + 0.1)


def test_a_not_found_within_the_bound_is_allowed_and_measured() -> None:
    history = new_history(final={"k1": "active"})
    create(history, "k1", 1.0, 1.5)
    get(history, "k1", 1.2, "absent")  # concurrent with the create
    get(history, "k1", 2.0, "absent")  # 0.5 s after the ack, within the bound
    violations, worst = check_stale_reads(history, BOUNDS)
    assert violations == []
    assert worst == pytest.approx(0.5)


def test_active_past_the_bound_after_a_revoke_is_a_stale_read() -> None:
    history = new_history(final={"k1": "revoked"})
    create(history, "k1", 1.0, 1.1)
    revoke(history, "k1", 2.0, 2.1)
    get(history, "k1", 2.1 + BOUNDS.staleness + 0.5, "active")
    assert kinds(check_stale_reads(history, BOUNDS)[0]) == ["stale_read"]


def test_a_token_that_names_the_write_allows_no_staleness() -> None:
    history = new_history(final={"k1": "active"})
    write = create(history, "k1", 1.0, 1.1)
    read = get(history, "k1", 1.2, "absent", args={"consistency_token": "t", "token_write": 0})
    assert write.index == 0
    violations, _ = check_stale_reads(history, BOUNDS)
    assert kinds(violations) == ["stale_read"]
    assert "consistency token" in violations[0].message
    read.args.pop("consistency_token")
    assert check_stale_reads(history, BOUNDS)[0] == []


def test_seeing_a_revocation_before_any_revoke_was_invoked_is_impossible() -> None:
    history = new_history(final={"k1": "revoked"})
    create(history, "k1", 1.0, 1.1)
    get(history, "k1", 2.0, "revoked")
    revoke(history, "k1", 3.0, 3.1)
    assert kinds(check_stale_reads(history, BOUNDS)[0]) == ["impossible_read"]


def test_finding_a_key_no_create_returned_is_impossible() -> None:
    history = new_history(final={})
    get(history, "unknown-x", 1.0, "active")
    assert kinds(check_stale_reads(history, BOUNDS)[0]) == ["impossible_read"]


# -- revocation -------------------------------------------------------------------------------


def test_a_revoked_keys_token_verifying_past_the_propagation_bound_is_a_violation() -> None:
    history = new_history(final={"k1": "revoked"})
    create(history, "k1", 1.0, 1.1)
    revoke(history, "k1", 2.0, 2.5)
    verify(history, "k1", 2.5 + BOUNDS.propagation + 0.2, valid=True)
    violations, worst = check_revocations(history, BOUNDS)
    assert kinds(violations) == ["revoked_key_accepted"]
    assert worst == pytest.approx(BOUNDS.propagation + 0.2)


def test_a_token_verifying_within_the_bound_is_allowed_and_measured() -> None:
    history = new_history(final={"k1": "revoked"})
    create(history, "k1", 1.0, 1.1)
    revoke(history, "k1", 2.0, 2.5)
    verify(history, "k1", 2.2, valid=True)  # concurrent with the revoke
    verify(history, "k1", 2.8, valid=True)
    verify(history, "k1", 5.0, valid=False, reason="revoked_key")
    violations, worst = check_revocations(history, BOUNDS)
    assert violations == []
    assert worst == pytest.approx(0.3)


# -- failed reads -----------------------------------------------------------------------------


def failed_get(history: History, invoked: float, instance: str = "a") -> Operation:
    return record(
        history,
        "get",
        invoked,
        invoked + 2.0,
        "fail",
        instance=instance,
        args={"key_id": "k1"},
        error="http 503 region_unavailable",
    )


def test_a_read_failing_while_a_region_could_serve_is_a_violation() -> None:
    history = new_history()
    failed_get(history, 10.0)
    violations = check_failed_reads(history, BOUNDS)
    assert kinds(violations) == ["failed_read"]
    assert "a, b could serve" in violations[0].message


def test_a_read_failing_while_every_region_was_taken_away_is_allowed() -> None:
    history = new_history()
    history.faults.append(
        FaultRecord(
            index=0,
            name="cloud-partition",
            target="x",
            started=5.0,
            applied=5.0,
            healing=20.0,
            healed=20.0,
            unavailable=["a", "b"],
        )
    )
    failed_get(history, 10.0)
    assert check_failed_reads(history, BOUNDS) == []


def test_a_read_failing_just_after_a_region_came_back_is_within_the_grace() -> None:
    history = new_history()
    history.faults.append(
        FaultRecord(index=0, name="cloud-partition", target="x", started=5.0, healed=9.0)
    )
    history.faults[0].unavailable = ["a", "b"]
    failed_get(history, 9.0 + BOUNDS.grace / 2)
    assert check_failed_reads(history, BOUNDS) == []
    failed_get(history, 9.0 + BOUNDS.grace + 0.1)
    assert kinds(check_failed_reads(history, BOUNDS)) == ["failed_read"]


def test_a_read_failing_while_its_instance_was_down_is_allowed() -> None:
    history = new_history()
    history.instances += [
        InstanceEvent(t=5.0, instance="a", event="killed", pid=1),
        InstanceEvent(t=12.0, instance="a", event="ready", pid=2),
    ]
    failed_get(history, 8.0)
    failed_get(history, 13.0)  # the instance came back within the grace
    assert check_failed_reads(history, BOUNDS) == []


def test_the_monitor_decides_which_regions_could_serve() -> None:
    history = new_history()
    history.regions += [
        RegionSample(t=0.0, region="a", reachable=True, writable=True),
        RegionSample(t=0.0, region="b", reachable=True, streaming=True),
        RegionSample(t=5.0, region="a", reachable=False),
        RegionSample(t=6.0, region="b", reachable=True, streaming=False),  # cut off
    ]
    failed_get(history, 10.0)
    assert check_failed_reads(history, BOUNDS) == []
    history.regions.append(RegionSample(t=20.0, region="b", reachable=True, streaming=True))
    failed_get(history, 25.0)
    assert kinds(check_failed_reads(history, BOUNDS)) == ["failed_read"]


def test_a_region_whose_tables_were_blocked_could_not_serve() -> None:
    """A standby that answers the monitor's role query but whose tables do not answer (a
    lock replay holds) serves no read: a failure then is not the router's."""
    history = new_history()
    history.regions += [
        RegionSample(t=0.0, region="a", reachable=False),
        RegionSample(t=0.0, region="b", reachable=True, streaming=True, readable=False),
    ]
    failed_get(history, 10.0)
    assert check_failed_reads(history, BOUNDS) == []
    history.regions.append(
        RegionSample(t=20.0, region="b", reachable=True, streaming=True, readable=True)
    )
    failed_get(history, 25.0)
    assert kinds(check_failed_reads(history, BOUNDS)) == ["failed_read"]


TOKEN = encode_token(CommitPosition("7301234567890123456", 2, 5000))


def failed_token_get(history: History, invoked: float) -> Operation:
    op = failed_get(history, invoked)
    op.args["consistency_token"] = TOKEN
    return op


def standby(t: float, *, timeline: int = 2, replay_lsn: int) -> RegionSample:
    return RegionSample(
        t=t,
        region="b",
        reachable=True,
        streaming=True,
        timeline=timeline,
        replay_lsn=replay_lsn,
        flush_lsn=replay_lsn,
    )


def token_history(*samples: RegionSample) -> History:
    """Region a (the writer) unreachable from t=5; region b a streaming standby."""
    history = new_history()
    history.regions += [
        RegionSample(t=0.0, region="a", reachable=True, writable=True, timeline=2, replay_lsn=1),
        RegionSample(t=5.0, region="a", reachable=False),
        *samples,
    ]
    return history


def test_a_token_read_failing_where_no_region_had_replayed_its_position_is_allowed() -> None:
    # Seed 7's eight failed reads: the only serving region was a standby still catching up.
    history = token_history(standby(0.0, replay_lsn=4000), standby(9.0, replay_lsn=4999))
    failed_token_get(history, 10.0)
    assert check_failed_reads(history, BOUNDS) == []


def test_a_token_read_failing_where_a_region_had_replayed_its_position_is_a_violation() -> None:
    history = token_history(standby(0.0, replay_lsn=4000), standby(9.0, replay_lsn=5000))
    failed_token_get(history, 10.0)
    assert kinds(check_failed_reads(history, BOUNDS)) == ["failed_read"]


def test_a_token_read_counts_a_region_that_caught_up_only_after_it_was_invoked() -> None:
    history = token_history(standby(0.0, replay_lsn=4000), standby(10.5, replay_lsn=6000))
    failed_token_get(history, 10.0)
    assert check_failed_reads(history, BOUNDS) == []


def test_a_standby_on_an_older_timeline_never_holds_a_token_of_a_newer_one() -> None:
    history = token_history(standby(0.0, timeline=1, replay_lsn=9000))
    failed_token_get(history, 10.0)
    assert check_failed_reads(history, BOUNDS) == []


def test_a_read_without_a_token_fails_wherever_a_region_could_serve() -> None:
    # The token rule must not excuse reads that did not ask for a position.
    history = token_history(standby(0.0, replay_lsn=4000))
    failed_get(history, 10.0)
    assert kinds(check_failed_reads(history, BOUNDS)) == ["failed_read"]


def test_a_history_without_positions_counts_every_serving_region() -> None:
    history = new_history()
    failed_token_get(history, 10.0)
    assert kinds(check_failed_reads(history, BOUNDS)) == ["failed_read"]


# -- watches ----------------------------------------------------------------------------------


def watch_session(history: History, watcher: str, start: float, end: float) -> None:
    record(history, "watch", start, end, process=watcher, transport="grpc")
    history.watch_events.append(
        WatchEventRecord(
            t=start + 0.05, watcher=watcher, kind="synced", key_id=None, status=None, position="0."
        )
    )


def event(history: History, watcher: str, t: float, key: str, status: str) -> None:
    history.watch_events.append(
        WatchEventRecord(
            t=t, watcher=watcher, kind="changed", key_id=key, status=status, position=f"{t}.{key}"
        )
    )


def test_a_live_watcher_that_never_receives_an_acknowledged_create_lags() -> None:
    history = new_history(final={"k1": "active"})
    watch_session(history, "w", 0.0, 30.0)
    create(history, "k1", 1.0, 1.1)
    violations, worst = check_watch_lag(history, BOUNDS)
    assert kinds(violations) == ["watch_lag"]
    assert "never" in violations[0].message
    assert worst is None


def test_a_watcher_receiving_changes_within_the_bound_does_not_lag() -> None:
    history = new_history(final={"k1": "revoked"})
    watch_session(history, "w", 0.0, 30.0)
    create(history, "k1", 1.0, 1.1)
    event(history, "w", 1.05, "k1", "active")  # before the writer heard back: fine
    revoke(history, "k1", 2.0, 2.1)
    event(history, "w", 2.4, "k1", "revoked")
    violations, worst = check_watch_lag(history, BOUNDS)
    assert violations == []
    assert worst == pytest.approx(0.3)


def test_a_watcher_that_was_reconnecting_is_not_held_to_the_bound() -> None:
    history = new_history(final={"k1": "active"})
    watch_session(history, "w", 0.0, 1.0)
    create(history, "k1", 1.0, 1.1)
    watch_session(history, "w", 3.0, 30.0)
    assert check_watch_lag(history, BOUNDS)[0] == []


def test_the_watch_bound_waits_while_no_writable_region_serves() -> None:
    """A switchover under way: the writer is stopped, the change feed finds no young data
    anywhere. The bound resumes once a writer serves again."""
    history = new_history(final={"k1": "active", "k2": "active"})
    history.regions = [
        RegionSample(t=0.0, region="a", reachable=True, writable=True),
        RegionSample(t=0.0, region="b", reachable=True, writable=False, streaming=True),
    ]
    history.faults.append(
        FaultRecord(
            index=0,
            name="switchover",
            target=None,
            started=1.2,
            applied=2.5,
            healing=4.0,
            healed=4.0,
            unavailable=["a"],
        )
    )
    watch_session(history, "w", 0.0, 30.0)
    create(history, "k1", 1.0, 1.1)
    event(history, "w", 3.8, "k1", "active")  # 2.7 s: no writer served in between
    assert check_watch_lag(history, BOUNDS)[0] == []
    create(history, "k2", 10.0, 10.1)
    event(history, "w", 13.0, "k2", "active")  # a writer served throughout: late
    assert kinds(check_watch_lag(history, BOUNDS)[0]) == ["watch_lag"]


def test_a_watch_replica_that_differs_from_the_final_state_diverges() -> None:
    history = new_history(final={"k1": "revoked", "k2": "active"})
    history.final.replicas = {"w": {"k1": "active", "k3": "active"}}
    violations = check_watches(history)
    assert kinds(violations) == ["watch_divergence"]
    assert "1 missing (k2)" in violations[0].message
    assert "1 extra (k3)" in violations[0].message
    history.final.replicas = {"w": {"k1": "revoked", "k2": "active"}}
    assert check_watches(history) == []


def test_a_region_that_differs_from_the_primary_at_the_end_diverges() -> None:
    history = new_history(final={"k1": "revoked"})
    history.final.regions["b"] = {"k1": "active"}
    assert kinds(check_replicas(history)) == ["replica_divergence"]


# -- backends and resources -------------------------------------------------------------------


def backend(**overrides: Any) -> Backend:
    fields: dict[str, Any] = {
        "region": "a",
        "phase": "running",
        "pid": 42,
        "state": "active",
        "wait_event": None,
        "seconds_in_state": 0.1,
        "application_name": "signing-keys",
        "query": "COMMIT",
    }
    fields.update(overrides)
    return Backend(**fields)


def test_stuck_or_left_over_backends_are_orphaned() -> None:
    history = new_history()
    history.final.backends = [
        backend(wait_event="SyncRep"),
        backend(state="idle in transaction", seconds_in_state=5.0),
        backend(phase="stopped", state="idle"),
    ]
    assert kinds(check_backends(history, BOUNDS)) == ["orphaned_backend"] * 3


def test_a_backend_briefly_idle_in_a_transaction_is_not_stuck() -> None:
    history = new_history()
    history.final.backends = [backend(state="idle in transaction", seconds_in_state=0.2)]
    assert check_backends(history, BOUNDS) == []


def test_backends_stuck_on_a_diverged_region_before_its_wipe_are_orphaned() -> None:
    history = new_history()
    history.faults.append(
        FaultRecord(
            index=0,
            name="unfenced-old-primary",
            target=None,
            started=1.0,
            healing=8.0,
            details={
                "old_primary": "a",
                "stuck_backends": [
                    {"pid": 7, "wait_event": "SyncRep", "seconds": 4.0},
                    {"pid": 8, "state": "idle in transaction", "seconds": 0.1},
                ],
            },
        )
    )
    assert kinds(check_backends(history, BOUNDS)) == ["orphaned_backend"]


def samples(history: History, pid: int, points: list[tuple[float, int, int]]) -> None:
    for t, fds, rss in points:
        history.processes.append(ProcessSample(t=t, instance="a", pid=pid, fds=fds, rss=rss))


def test_open_files_or_memory_growing_past_the_bound_is_resource_growth() -> None:
    history = new_history()
    samples(history, 1, [(0.0, 20, 50 * MIB), (10.0, 30, 60 * MIB), (60.0, 200, 60 * MIB)])
    samples(history, 2, [(0.0, 20, 50 * MIB), (10.0, 30, 60 * MIB), (60.0, 40, 200 * MIB)])
    violations = check_resources(history, BOUNDS)
    assert kinds(violations) == ["resource_growth"] * 2
    assert "open files 30 -> 200" in violations[0].message
    assert "RSS 60.0 -> 200.0 MiB" in violations[1].message


def test_flat_or_short_lived_processes_are_fine() -> None:
    history = new_history()
    samples(history, 1, [(0.0, 20, 50 * MIB), (10.0, 30, 60 * MIB), (60.0, 40, 70 * MIB)])
    samples(history, 2, [(0.0, 20, 50 * MIB), (5.0, 500, 900 * MIB)])  # lived 5 s
    assert check_resources(history, BOUNDS) == []


# -- the whole -------------------------------------------------------------------------------


def test_a_run_without_a_final_state_is_incomplete() -> None:
    history = new_history()
    create(history, "k1", 1.0, 1.1)
    report = check(history)
    assert kinds(report.violations) == ["incomplete_run"]
    assert not report.ok


def clean_history() -> History:
    history = new_history(final={"k1": "revoked", "k2": "active"})
    watch_session(history, "w", 0.0, 30.0)
    create(history, "k1", 1.0, 1.1)
    event(history, "w", 1.2, "k1", "active")
    create(history, "k2", 1.5, 1.6)
    event(history, "w", 1.7, "k2", "active")
    get(history, "k1", 2.0, "active")
    revoke(history, "k1", 3.0, 3.2)
    event(history, "w", 3.3, "k1", "revoked")
    verify(history, "k1", 3.4, valid=True)
    verify(history, "k1", 4.0, valid=False, reason="revoked_key")
    get(history, "k2", 4.0, "active")
    history.final.replicas = {"w": {"k1": "revoked", "k2": "active"}}
    claims(history)
    return history


def test_a_clean_history_has_no_violation_and_its_figures() -> None:
    report = check(clean_history())
    assert report.ok, report.violations
    summary = report.summary
    assert summary.operations["create/http"] == {"ok": 2, "fail": 0, "info": 0}
    assert set(summary.violations.values()) == {0}
    assert summary.worst_revocation_lag == pytest.approx(0.2)
    assert summary.worst_watch_lag == pytest.approx(0.1)


def test_write_unavailability_is_the_longest_gap_with_writes_attempted() -> None:
    history = new_history()
    create(history, "k1", 1.0, 1.1)
    create(history, "k2", 2.0, 2.1, "info")  # attempted from 2.0, unanswered
    create(history, "k2", 3.0, 6.1)  # acknowledged at 6.1: 4.1 s without a write
    create(history, "k3", 20.0, 20.1)  # nothing attempted 6.1-20: not unavailability
    assert write_unavailability(history) == pytest.approx(4.1)


def test_a_history_checks_the_same_after_a_json_round_trip(tmp_path: Path) -> None:
    history = clean_history()
    get(history, "k1", 10.0, "active")  # stale: revoked at 3.2
    history.faults.append(
        FaultRecord(index=0, name="proxy-delay", target="b", started=1.0, applied=1.1)
    )
    path = history.dump(tmp_path / "history.json")
    again = History.load(path)
    first: Report = check(history)
    second = check(again)
    assert kinds(second.violations) == kinds(first.violations) == ["stale_read"]
    assert second.summary == first.summary
    assert again.final == history.final


def test_bounds_round_trip_through_the_history() -> None:
    bounds = Bounds(staleness=3.0, fd_growth=10)
    assert Bounds.from_dict(bounds.to_dict()) == bounds
    assert Bounds.from_dict({"staleness": 1, "unknown": 2}) == Bounds(staleness=1.0)
