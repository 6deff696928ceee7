"""Whether a region holds a commit position: the router's read-your-writes decision, pure.

A read that must see a write (:class:`~service.core.consistency.CommitPosition`) may run
where the write's position has been replayed. From what the probes last saw of a region:

- a CockroachDB region: always (its reads are consistent);
- a region on an older timeline than the position: never (it follows a history that ends
  before the write, or an old primary's that lost it);
- the unfenced writer on the position's timeline or a later one: always (it has every
  commit of that history that survived a promotion);
- a standby whose replay position has reached the position's LSN: yes (LSNs continue across
  a timeline switch, so a later timeline's standby past the LSN holds it too, when it
  survived at all);
- otherwise it is not known yet: the probe is up to a probe interval old, so the read may
  still go there, asking the server itself first (:data:`REPLAY_POSITION`).
"""

from __future__ import annotations

from typing import Final, Literal

from service.core.consistency import CommitPosition
from service.errors import InvalidConsistencyTokenError
from service.locality.health import Engine

Replay = Literal["replayed", "unknown", "never"]

# What a server has replayed (a standby) or written (a primary), in bytes since 0/0: asked
# before a read whose region the probes have not yet seen reach the position. Replay only
# moves forward, so a position reached now is reached by the read's snapshot after it.
REPLAY_POSITION: Final = (
    "SELECT pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()"
    " ELSE pg_current_wal_lsn() END, '0/0')::bigint"
)


def replay_of(
    position: CommitPosition,
    *,
    engine: Engine | None,
    is_writer: bool,
    timeline: int | None,
    lsn: int | None,
) -> Replay:
    """Whether a region, as last probed, has replayed ``position``.

    >>> p = CommitPosition("7", 2, 1000)
    >>> replay_of(p, engine="postgresql", is_writer=False, timeline=2, lsn=999)
    'unknown'
    >>> replay_of(p, engine="postgresql", is_writer=False, timeline=1, lsn=5000)
    'never'
    """
    if engine == "cockroachdb":
        return "replayed"
    if timeline is None:
        return "unknown"
    if timeline < position.timeline:
        return "never"
    if is_writer or (lsn is not None and lsn >= position.lsn):
        return "replayed"
    return "unknown"


def check_cluster(position: CommitPosition, system_identifier: str | None) -> None:
    """Refuse a position of another database than the cluster the router serves (``None``:
    not known yet, nothing to compare)."""
    if system_identifier is not None and position.system_identifier != system_identifier:
        raise InvalidConsistencyTokenError(
            "the consistency token was handed out by another database than this service's; "
            "drop it (a token is valid only with the service that issued it)"
        )
