"""The credential table: every access token's record, in memory, kept current by polling.

Authentication reads only this table, so checking a credential costs no database read —
whether or not its id exists, which is what keeps a flood of made-up ids off the database
and keeps timing from telling which ids exist. Tokens are few (an operator issues them), so
the table holds them all.

It is kept current as the change feed keeps the keys: every ``poll_interval`` it reads the
records whose ``updated_at`` is at or after its watermark minus ``overlap`` (the newest
``updated_at`` read so far: data stamped by the primary, so a lagging standby cannot make it
skip anything; see :mod:`service.core.changes`). Every ``resync_interval`` it reads every
record instead, which also catches a row changed without a new stamp and a row deleted: the
bound on how long a revoked token can still work, whatever the operator did.

Two rules keep a lagging region from taking the table backwards: an older record of a token
never replaces a newer one, and a revoked token stays revoked.

With ``max_data_age`` (the revocation bound, as the change feed has) every read goes only to
a region whose data is known to be at most that old — the writer, or a standby whose
replayed heartbeat says so — and moves on otherwise, so that a frozen or cut-off standby
cannot keep a revoked or deleted token working. The table's staleness is then the age of
the data it last read (time since that poll began, plus ``max_data_age``), not the time
since its last successful poll; :meth:`CredentialTable.is_fresh` is what readiness reads.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import datetime, timedelta

import structlog

from service.core.changes import FRESH_POLLS
from service.core.metrics import CoreMetrics
from service.core.models import AccessToken
from service.core.polling import Poller
from service.core.ports import TokenRecords

log = structlog.get_logger(__name__)


class CredentialTable(Poller):
    """Access-token records by id, polled from :class:`TokenRecords`.

    >>> async with CredentialTable(records, poll_interval=0.2, overlap=5.0,
    ...                            resync_interval=30.0) as table:
    ...     table.get("skt_…")
    """

    def __init__(
        self,
        records: TokenRecords,
        *,
        poll_interval: float,
        overlap: float,
        resync_interval: float,
        max_data_age: float | None = None,
        metrics: CoreMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._records = records
        self._max_data_age = max_data_age
        self._overlap = timedelta(seconds=overlap)
        self._resync = resync_interval
        self._metrics = metrics if metrics is not None else CoreMetrics()
        super().__init__(
            interval=poll_interval,
            name="credential_poll",
            serving_from="last_known_good_credentials",
            failed=self._metrics.credential_polls_failed,
        )
        self._clock = clock
        self._tokens: dict[str, AccessToken] = {}
        self._watermark: datetime | None = None
        self._data_as_of: float | None = None  # every change before this instant was read
        self._last_resync: float | None = None

    def __repr__(self) -> str:
        return (
            f"<CredentialTable tokens={len(self._tokens)} watermark={self._watermark} "
            f"staleness={self.staleness():.3f}s>"
        )

    def __len__(self) -> int:
        return len(self._tokens)

    def get(self, token_id: str) -> AccessToken | None:
        """The token's record as last read (revoked or not); ``None`` if there is none."""
        return self._tokens.get(token_id)

    def put(self, token: AccessToken) -> None:
        """A token issued by this instance: usable here at once, before any poll reads it."""
        self._tokens.setdefault(token.id, token)

    def staleness(self) -> float:
        """How old the newest records read are, in seconds: since the last successful poll
        began, plus the age its data may have had (``max_data_age``; infinite before the
        first read)."""
        return math.inf if self._data_as_of is None else self._clock() - self._data_as_of

    def is_fresh(self) -> bool:
        """Whether the records are within the revocation bound (``max_data_age``) plus a
        few polls of slack, as the change feed judges its keys."""
        return self.staleness() <= (self._max_data_age or 0.0) + FRESH_POLLS * self._interval

    async def poll_once(self) -> None:
        """Read what changed since the last poll — or everything, when a resync is due."""
        started = self._clock()
        if self._last_resync is None or started - self._last_resync >= self._resync:
            await self._resync_all()
            self._last_resync = started
        else:
            await self._read_changes()
        self._data_as_of = started - (self._max_data_age or 0.0)
        self._metrics.credential_polls_ok.inc()

    async def _resync_all(self) -> None:
        fresh: dict[str, AccessToken] = {}
        async for page in self._records.pages(max_data_age=self._max_data_age):
            for token in page:
                known = self._tokens.get(token.id)
                fresh[token.id] = known if known is not None and _keeps(known, token) else token
                self._advance(token)
        for token in self._tokens.values():
            if token.updated_at is None and token.id not in fresh:
                fresh[token.id] = token  # issued here; the region read may not have it yet
        self._tokens = fresh

    async def _read_changes(self) -> None:
        since = None if self._watermark is None else self._watermark - self._overlap
        async for page in self._records.pages(since=since, max_data_age=self._max_data_age):
            for token in page:
                known = self._tokens.get(token.id)
                if known is None or not _keeps(known, token):
                    self._tokens[token.id] = token
                self._advance(token)

    def _advance(self, token: AccessToken) -> None:
        if token.updated_at is not None and (
            self._watermark is None or token.updated_at > self._watermark
        ):
            self._watermark = token.updated_at


def _keeps(known: AccessToken, candidate: AccessToken) -> bool:
    """Whether ``known`` stays rather than ``candidate``: revocation is final, and an older
    record (from a region that has not replayed the newer one) never replaces a newer one.
    A revoked record replaces an active one whatever their stamps: one stamped earlier
    (another clock after a failover, a hand-run UPDATE) is still the later state."""
    if known.revoked_at is not None and candidate.revoked_at is None:
        return True
    if candidate.revoked_at is not None and known.revoked_at is None:
        return False
    if known.updated_at is None or candidate.updated_at is None:
        return False
    return candidate.updated_at < known.updated_at
