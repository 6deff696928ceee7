"""Health of the regions: a fall/rise state machine per region, and how old each one's data is.

Nothing here does I/O or reads a clock: every method takes ``now`` (seconds on the router's
monotonic clock), so the hysteresis can be tested with plain numbers.

A region starts *down* and unprobed. Its first successful probe brings it up at once (there
is no flapping to guard against yet); after that it goes down after ``fall`` consecutive
failures — probe failures and connection-class request failures alike, at least one of them
a probe's — and comes back after ``rise`` consecutive successful probes.

A probe that timed out while this process's own event loop was stalled is *inconclusive*
(:mod:`service.locality.probe`): it neither counts towards ``fall`` nor breaks a run of
successes towards ``rise`` — the state does not move. So that a region that really died
while the loop is also stalled cannot stay up for ever, only ``max_inconclusive`` such
results in a row are excused; each further one counts as a failure, until a conclusive
result (success or failure) starts the run over. The prober retries an inconclusive probe at
once, so a dead region under a sustained stall goes down after ``max_inconclusive + fall``
back-to-back probes, each bounded by the probe timeout plus the stall itself.

A region that is up but keeps losing hedged races (another region answered first) is *slow*
after ``fall`` lost races in a row, until it answers within the hedge delay again.

A region that comes back from down or from slow records ``recovered_at``, so that the choice
holds traffic off it for the hold-down period; any failure or lost race in that period starts
it over (flap damping). ``recovered_from`` says why it is held down: ``failure`` (it was down,
or failed while held down) or only ``slowness``; the choice ranks the first lower.

A standby's *data age* is measured from what it has replayed: the router of every instance
writes a heartbeat row on the primary (:mod:`service.locality.heartbeat`), and each probe of a
standby reads how old the newest replayed heartbeat is (:class:`DataAge`, an upper bound that
keeps growing while nothing new arrives). Before the heartbeat table exists the older
estimate from WAL positions (:class:`ReplicationTracker`) stands in for it.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Literal

from service.locality.choice import HoldDownCause

RegionState = Literal["up", "down"]
Engine = Literal["postgresql", "cockroachdb"]
AgeSource = Literal["heartbeat", "wal"]

RTT_SMOOTHING = 0.3  # weight of a new RTT sample in the exponentially weighted average
# Inconclusive probes in a row excused before they count as failures: a stall that long
# (four probe windows, each stalled for more than half) is no longer a hiccup of this process.
MAX_INCONCLUSIVE = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeResult:
    """What one probe of one region saw.

    ``lsn`` is the primary's current WAL position, or a standby's replay position; ``None``
    on CockroachDB. Positions are byte offsets, comparable across regions of one cluster.
    ``heartbeat_age`` is how old the newest heartbeat the region holds was when the probe
    read it (the standby's ``now()`` minus the primary's ``now()`` when it wrote it).
    """

    started_at: float
    error: str | None = None
    # A timeout while this process's event loop was stalled: it says nothing about the region.
    inconclusive: bool = False
    rtt: float | None = None
    engine: Engine | None = None
    writable: bool = False
    lsn: int | None = None
    receive_lsn: int | None = None
    replay_age: float | None = None  # seconds since the standby replayed its last transaction
    system_identifier: str | None = None  # PostgreSQL's pg_control_system()
    timeline: int | None = None  # a primary's current timeline, a standby's (see probe.py)
    has_heartbeat: bool = False  # the heartbeat table exists there
    heartbeat_age: float | None = None
    receiver_status: str | None = None  # pg_stat_wal_receiver.status (standbys)
    receiver_silence: float | None = None  # seconds since the walreceiver last heard upstream
    # A primary's synchronous replication: how many standbys a COMMIT must wait for (0: none,
    # commits are acknowledged locally) and how many synchronous standbys stream now (None:
    # not a primary, or the role may not see pg_stat_replication).
    sync_required: int | None = None
    sync_standbys: int | None = None
    sync_names: str | None = None  # synchronous_standby_names, as the primary reports it

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def sync_short(self) -> bool:
        """A writable PostgreSQL region whose COMMITs would wait for synchronous standbys that
        are not there: each would hang in SyncRep until someone gives up on it."""
        return (
            self.writable
            and self.sync_required is not None
            and self.sync_standbys is not None
            and self.sync_standbys < self.sync_required
        )


@dataclass(frozen=True, slots=True)
class DataAge:
    """How old a standby's data was when measured: ``seconds`` as of ``at`` (router clock);
    it grows from there until the next measurement (:func:`~service.locality.choice.data_age`).

    ``source`` says how it was measured: ``heartbeat``, an upper bound (everything the
    primary committed more than that long ago has been replayed); ``wal``, the estimate from
    WAL positions, used only until the heartbeat table exists.
    """

    seconds: float
    at: float
    source: AgeSource

    @property
    def is_bound(self) -> bool:
        return self.source == "heartbeat"


class RegionHealth:
    """The health record of one region, fed by its prober and by failed requests."""

    def __init__(
        self,
        *,
        fall: int,
        rise: int,
        hold_down: float = 0.0,
        now: float,
        max_inconclusive: int = MAX_INCONCLUSIVE,
    ) -> None:
        if fall < 1 or rise < 1:
            raise ValueError("fall and rise must be at least 1")
        if max_inconclusive < 0:
            raise ValueError("max_inconclusive must not be negative")
        self._fall = fall
        self._max_inconclusive = max_inconclusive
        self._rise = rise
        self._hold_down = hold_down
        self.state: RegionState = "down"
        self.since = now
        self.probed = False
        self.successes = 0
        self.failures = 0
        self.probe_failures = 0
        self.inconclusive = 0  # inconclusive probes in a row
        self.rtt: float | None = None
        self.writable = False
        self.engine: Engine | None = None
        self.data_age: DataAge | None = None
        self.system_identifier: str | None = None
        self.timeline: int | None = None
        self.has_heartbeat = False
        self.receiver_status: str | None = None
        self.receiver_silence: float | None = None
        self.sync_required: int | None = None
        self.sync_standbys: int | None = None
        self.sync_names: str | None = None
        self.sync_short = False
        self.last_error: str | None = None
        self.recovered_at: float | None = None
        self.recovered_from: HoldDownCause = "failure"
        self.lost_races = 0
        self.slow = False

    @property
    def is_up(self) -> bool:
        return self.state == "up"

    def record_success(
        self,
        now: float,
        *,
        rtt: float | None,
        writable: bool,
        engine: Engine | None,
        data_age: DataAge | None,
        probe: ProbeResult | None = None,
    ) -> bool:
        """Record a successful probe; return whether the up/down state changed.

        ``probe`` carries the region's identity (system, timeline) and replication facts.
        """
        self.failures = 0
        self.probe_failures = 0
        self.inconclusive = 0
        self.successes += 1
        self.writable = writable
        if engine is not None:
            self.engine = engine
        self.data_age = None if writable else data_age
        if probe is not None:
            self.system_identifier = probe.system_identifier
            self.timeline = probe.timeline
            self.has_heartbeat = probe.has_heartbeat
            self.receiver_status = probe.receiver_status
            self.receiver_silence = probe.receiver_silence
            self.sync_required = probe.sync_required
            self.sync_standbys = probe.sync_standbys
            self.sync_names = probe.sync_names
            self.sync_short = probe.sync_short
        if rtt is not None:
            self.rtt = rtt if self.rtt is None else self.rtt + RTT_SMOOTHING * (rtt - self.rtt)
        first = not self.probed
        self.probed = True
        if self.state == "up":
            return False
        if first:
            self._enter("up", now)
            return True
        if self.successes >= self._rise:
            self._enter("up", now)
            self.recovered_at = now
            self.recovered_from = "failure"
            return True
        return False

    def record_failure(self, now: float, error: str, *, passive: bool = False) -> bool:
        """Record a failed probe, or (``passive``) a connection-class request failure.

        Returns whether the up/down state changed. Request failures count towards ``fall``
        but cannot take a region down alone: at least one of the consecutive failures must be
        a probe's (the router probes at once after a request failure), so a few connections
        cut in a row on a healthy server do not take it out of service.
        """
        if not passive:
            self.inconclusive = 0  # a conclusive probe ends a run of inconclusive ones
        return self._fail(now, error, passive=passive)

    def record_inconclusive(self, now: float, error: str) -> bool:
        """Record a probe that timed out while this process's event loop was stalled.

        The first ``max_inconclusive`` in a row change nothing; each further one counts as a
        probe failure (see the module's docstring). Returns whether the up/down state changed.
        """
        self.inconclusive += 1
        if self.inconclusive <= self._max_inconclusive:
            return False
        return self._fail(now, error, passive=False)

    def _fail(self, now: float, error: str, *, passive: bool) -> bool:
        self.successes = 0
        self.failures += 1
        if not passive:
            self.probe_failures += 1
        self.last_error = error
        self.probed = True
        self._restart_hold_down(now, failed=True)
        if self.state == "up" and self.failures >= self._fall and self.probe_failures > 0:
            self._enter("down", now)
            return True
        return False

    def record_lost_race(self, now: float) -> bool:
        """A hedged read answered elsewhere first while this region was still silent.

        After ``fall`` lost races in a row the region counts as slow, and the choice puts it
        behind the others until it answers fast again. Returns whether it just became slow.
        """
        self.lost_races += 1
        self._restart_hold_down(now)
        if not self.slow and self.lost_races >= self._fall:
            self.slow = True
            return True
        return False

    def record_answer(self, now: float, *, fast: bool) -> bool:
        """The region answered a probe or a read; ``fast``: within the hedge delay.

        Any answer ends a run of lost races. A fast one also ends slowness: the region is
        then held down for the hold-down period, like a region back from down. Returns
        whether it stopped being slow.
        """
        self.lost_races = 0
        if not (fast and self.slow):
            return False
        self.slow = False
        if not (self._held_down(now) and self.recovered_from == "failure"):
            self.recovered_from = "slowness"  # a failure still being served out stays one
        self.recovered_at = now
        return True

    def mark_read_only(self) -> bool:
        """A write found this region read-only: stop sending writes until a probe says so.

        Returns whether the role changed.
        """
        changed = self.writable
        self.writable = False
        self.sync_short = False
        return changed

    def _held_down(self, now: float) -> bool:
        return self.recovered_at is not None and now - self.recovered_at < self._hold_down

    def _restart_hold_down(self, now: float, *, failed: bool = False) -> None:
        if self._held_down(now):
            # Failing again while held down: a flapping link. The hold-down starts over, so
            # traffic comes back only after a whole quiet period — ranked as a failure's.
            self.recovered_at = now
            if failed:
                self.recovered_from = "failure"

    def _enter(self, state: RegionState, now: float) -> None:
        self.state = state
        self.since = now
        if state == "down":
            # RTT measured before the outage says nothing about the region once it returns.
            self.rtt = None
            self.recovered_at = None


class ReplicationTracker:
    """Estimates how stale each standby's data is, from WAL positions the probes saw.

    Every probe of the primary records ``(time, current LSN)``. A standby that has replayed
    up to ``L`` holds everything the primary had written at the latest recorded time ``t``
    whose LSN is at most ``L``, so its data is at most ``now - t`` old. Unlike
    ``now() - pg_last_xact_replay_timestamp()`` this stays at zero on an idle primary and
    grows only while the primary has data the standby lacks.
    """

    def __init__(self, *, window: float, max_samples: int = 4096) -> None:
        self._window = window
        self._samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=max_samples)

    def observe_primary(self, at: float, lsn: int) -> None:
        """Record the primary's WAL position as of ``at``."""
        self._samples.append((at, lsn))
        while self._samples and self._samples[0][0] < at - self._window:
            self._samples.popleft()

    def forget(self) -> None:
        """Drop the history, e.g. when the primary changed (a new timeline)."""
        self._samples.clear()

    def standby_lag(
        self,
        at: float,
        *,
        replay_lsn: int | None,
        receive_lsn: int | None,
        replay_age: float | None,
        primary_known: bool,
    ) -> float | None:
        """The standby's staleness in seconds as of ``at`` (``None``: cannot tell).

        ``primary_known`` says whether a writable region is up and probed now; without one
        nothing fresher exists, and the standby counts as current once it has replayed
        everything it received.
        """
        if replay_lsn is None:
            return replay_age
        if primary_known and self._samples:
            for sample_at, lsn in reversed(self._samples):
                if lsn <= replay_lsn:
                    return max(0.0, at - sample_at)
            # Behind everything remembered: at least this old, possibly older.
            oldest_at = self._samples[0][0]
            return max(at - oldest_at, replay_age or 0.0)
        if receive_lsn is None or receive_lsn <= replay_lsn:
            return 0.0
        return replay_age
