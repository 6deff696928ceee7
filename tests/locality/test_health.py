"""The per-region health state machine (fall/rise hysteresis) and the replica-lag estimate."""

from __future__ import annotations

import pytest

from service.locality.health import DataAge, ProbeResult, RegionHealth, ReplicationTracker


def ok(health: RegionHealth, now: float, *, rtt: float = 0.001, writable: bool = True) -> bool:
    return health.record_success(
        now, rtt=rtt, writable=writable, engine="postgresql", data_age=None
    )


def test_a_region_starts_down_and_its_first_good_probe_brings_it_up_without_hold_down() -> None:
    health = RegionHealth(fall=2, rise=3, now=0.0)
    assert not health.is_up
    assert ok(health, 0.1) is True
    assert health.is_up
    assert health.recovered_at is None
    assert health.since == 0.1


def test_a_region_whose_first_probe_failed_needs_rise_successes() -> None:
    health = RegionHealth(fall=2, rise=3, now=0.0)
    assert health.record_failure(0.1, "refused") is False
    assert [ok(health, t) for t in (0.2, 0.3)] == [False, False]
    assert not health.is_up
    assert ok(health, 0.4) is True
    assert health.is_up
    assert health.recovered_at == 0.4


def test_fall_consecutive_failures_take_a_region_down() -> None:
    health = RegionHealth(fall=3, rise=2, now=0.0)
    ok(health, 0.0)
    assert [health.record_failure(t, "timeout") for t in (1.0, 1.1)] == [False, False]
    assert health.is_up
    assert health.record_failure(1.2, "timeout") is True
    assert not health.is_up
    assert health.since == 1.2
    assert health.last_error == "timeout"


def test_request_failures_alone_do_not_take_a_region_down_but_count_with_a_probe() -> None:
    health = RegionHealth(fall=2, rise=2, now=0.0)
    ok(health, 0.0)
    for t in (1.0, 1.01, 1.02):
        assert health.record_failure(t, "reset", passive=True) is False
    assert health.is_up
    assert health.record_failure(1.05, "refused") is True
    assert not health.is_up


def test_a_success_between_failures_resets_the_count_so_one_off_errors_do_not_flap() -> None:
    health = RegionHealth(fall=2, rise=2, now=0.0)
    ok(health, 0.0)
    for t in range(1, 20):
        health.record_failure(float(t), "reset")
        ok(health, t + 0.5)
    assert health.is_up


def test_an_alternating_link_never_comes_back_up_with_rise_two() -> None:
    health = RegionHealth(fall=2, rise=2, now=0.0)
    ok(health, 0.0)
    health.record_failure(1.0, "x")
    health.record_failure(1.1, "x")
    assert not health.is_up
    changes = 0
    for t in range(2, 40):
        changes += ok(health, float(t))
        changes += health.record_failure(t + 0.5, "x")
    assert changes == 0
    assert not health.is_up


def test_coming_back_records_the_recovery_time_and_forgets_the_old_rtt() -> None:
    health = RegionHealth(fall=1, rise=2, now=0.0)
    ok(health, 0.0, rtt=0.300)
    health.record_failure(1.0, "x")
    assert health.rtt is None
    ok(health, 2.0, rtt=0.002)
    ok(health, 2.1, rtt=0.002)
    assert health.is_up
    assert health.recovered_at == 2.1
    assert health.rtt == pytest.approx(0.002)


def test_a_failure_during_the_hold_down_starts_it_over() -> None:
    health = RegionHealth(fall=2, rise=1, hold_down=1.0, now=0.0)
    ok(health, 0.0)
    health.record_failure(1.0, "x")
    health.record_failure(1.1, "x")
    ok(health, 2.0)
    assert health.recovered_at == 2.0
    health.record_failure(2.5, "x")  # one blip: still up, but not quiet for long enough
    assert health.is_up
    assert health.recovered_at == 2.5
    ok(health, 2.6)
    assert health.recovered_at == 2.5


def test_a_failure_after_the_hold_down_does_not_demote_a_settled_region() -> None:
    health = RegionHealth(fall=2, rise=1, hold_down=1.0, now=0.0)
    ok(health, 0.0)
    health.record_failure(1.0, "x")
    health.record_failure(1.1, "x")
    ok(health, 2.0)
    health.record_failure(3.5, "x")
    assert health.recovered_at == 2.0


def test_lost_races_make_a_region_slow_until_it_answers_fast_then_hold_it_down() -> None:
    health = RegionHealth(fall=2, rise=2, hold_down=1.0, now=0.0)
    ok(health, 0.0)
    assert health.record_lost_race(1.0) is False
    assert health.record_lost_race(1.1) is True
    assert health.slow
    assert health.record_lost_race(1.2) is False  # already slow
    assert health.record_answer(1.5, fast=False) is False  # answered, but slowly: still slow
    assert health.slow
    assert health.record_answer(2.0, fast=True) is True
    assert not health.slow
    assert health.recovered_at == 2.0
    assert health.record_answer(2.1, fast=True) is False


def test_the_hold_down_remembers_whether_the_region_failed_or_was_only_slow() -> None:
    health = RegionHealth(fall=2, rise=1, hold_down=1.0, now=0.0)
    ok(health, 0.0)
    health.record_lost_race(1.0)
    health.record_lost_race(1.1)
    health.record_answer(1.2, fast=True)
    assert (health.recovered_at, health.recovered_from) == (1.2, "slowness")
    health.record_lost_race(1.5)  # slow again while held down: still only slowness
    assert (health.recovered_at, health.recovered_from) == (1.5, "slowness")
    health.record_failure(1.8, "x")  # a failure while held down: now it failed
    assert (health.recovered_at, health.recovered_from) == (1.8, "failure")
    ok(health, 3.0)
    health.record_failure(4.0, "x")
    health.record_failure(4.1, "x")
    ok(health, 5.0)  # back from down
    assert (health.recovered_at, health.recovered_from) == (5.0, "failure")
    health.record_lost_race(5.1)
    health.record_lost_race(5.2)
    health.record_answer(5.3, fast=True)  # recovered from slowness inside a failure's period
    assert (health.recovered_at, health.recovered_from) == (5.3, "failure")
    health.record_lost_race(7.0)
    health.record_lost_race(7.1)
    health.record_answer(7.2, fast=True)  # long after: only slowness
    assert (health.recovered_at, health.recovered_from) == (7.2, "slowness")


def test_a_fast_answer_between_lost_races_keeps_a_region_in_good_standing() -> None:
    health = RegionHealth(fall=2, rise=2, hold_down=1.0, now=0.0)
    ok(health, 0.0)
    for t in range(10):
        health.record_lost_race(float(t))
        health.record_answer(t + 0.5, fast=False)
    assert not health.slow
    assert health.recovered_at is None


def test_rtt_is_smoothed() -> None:
    health = RegionHealth(fall=2, rise=2, now=0.0)
    ok(health, 0.0, rtt=0.010)
    ok(health, 0.1, rtt=0.110)
    assert health.rtt is not None
    assert 0.010 < health.rtt < 0.110


def test_a_write_refused_as_read_only_clears_the_role_until_a_probe_restores_it() -> None:
    health = RegionHealth(fall=2, rise=2, now=0.0)
    ok(health, 0.0, writable=True)
    assert health.mark_read_only() is True
    assert health.writable is False
    assert health.mark_read_only() is False
    ok(health, 0.1, writable=True)
    assert health.writable is True


def test_fall_and_rise_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RegionHealth(fall=0, rise=1, now=0.0)


def test_a_standby_that_replayed_the_idle_primarys_position_has_no_lag() -> None:
    tracker = ReplicationTracker(window=30.0)
    for t in range(100):
        tracker.observe_primary(float(t), 5000)  # idle primary: the position does not move
    lag = tracker.standby_lag(
        99.5, replay_lsn=5000, receive_lsn=5000, replay_age=600.0, primary_known=True
    )
    assert lag == pytest.approx(0.5)


def test_a_standby_stuck_while_the_primary_writes_lags_by_the_time_since_it_caught_up() -> None:
    tracker = ReplicationTracker(window=30.0)
    for t in range(10):
        tracker.observe_primary(float(t), 1000 + 100 * t)
    lag = tracker.standby_lag(
        9.0, replay_lsn=1300, receive_lsn=1300, replay_age=6.0, primary_known=True
    )
    assert lag == pytest.approx(6.0)


def test_a_standby_behind_all_remembered_positions_is_at_least_as_old_as_the_window() -> None:
    tracker = ReplicationTracker(window=5.0)
    for t in range(20):
        tracker.observe_primary(float(t), 1000 + 100 * t)
    lag = tracker.standby_lag(
        19.0, replay_lsn=10, receive_lsn=10, replay_age=None, primary_known=True
    )
    assert lag is not None
    assert lag >= 5.0


def test_the_wal_estimate_without_a_primary_calls_a_caught_up_standby_current() -> None:
    """The blind spot of the estimate used before the heartbeat table exists: a standby cut
    off from an invisible primary reads 0. It is never taken for a bound (a read with
    ``max_data_age`` ignores it); the heartbeat's age replaces it once the table exists."""
    tracker = ReplicationTracker(window=30.0)
    tracker.observe_primary(0.0, 9999)
    assert (
        tracker.standby_lag(
            50.0, replay_lsn=100, receive_lsn=100, replay_age=50.0, primary_known=False
        )
        == 0.0
    )
    assert (
        tracker.standby_lag(
            50.0, replay_lsn=100, receive_lsn=200, replay_age=7.0, primary_known=False
        )
        == 7.0
    )


def test_only_a_heartbeat_age_is_a_bound() -> None:
    assert DataAge(0.25, 10.0, "heartbeat").is_bound
    assert not DataAge(0.0, 10.0, "wal").is_bound


def test_a_probe_records_identity_and_data_age_and_a_writable_region_has_none() -> None:
    health = RegionHealth(fall=2, rise=2, now=0.0)
    probe = ProbeResult(
        started_at=1.0,
        rtt=0.001,
        engine="postgresql",
        writable=False,
        system_identifier="7414",
        timeline=3,
        has_heartbeat=True,
        heartbeat_age=0.2,
        receiver_status="streaming",
    )
    age = DataAge(0.2, 1.0, "heartbeat")
    health.record_success(
        1.0, rtt=0.001, writable=False, engine="postgresql", data_age=age, probe=probe
    )
    assert (health.system_identifier, health.timeline, health.has_heartbeat) == ("7414", 3, True)
    assert health.receiver_status == "streaming"
    assert health.data_age == age
    health.record_success(
        1.1, rtt=0.001, writable=True, engine="postgresql", data_age=age, probe=probe
    )
    assert health.data_age is None
