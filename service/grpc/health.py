"""``grpc.health.v1`` status from the service's readiness (:mod:`service.core.readiness`).

SERVING while the service is ready or degraded, NOT_SERVING when it is unavailable, for the
server (``""``) and ``signingkeys.v1.SigningKeys`` alike — the same decision as ``/readyz``
and the degraded gauge; why degraded is SERVING is explained there.

:class:`ReadinessCheck` reads readiness live on every ``Check``. ``Watch`` streams are woken
when the router reports a change of region health, and by a re-check every
``recheck_interval`` seconds while anyone watches: the last known good keys grow too old
(degraded becomes unavailable) with no event to say so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final, Protocol

import structlog
from grpclib.health.check import CheckBase
from grpclib.health.service import OVERALL, Health

from service.core.readiness import Readiness

log = structlog.get_logger(__name__)

DEFAULT_RECHECK_INTERVAL: Final = 1.0


class RegionEvents(Protocol):
    """Where region health changes are announced (the locality router)."""

    def add_listener(self, callback: Callable[..., Any]) -> Any: ...


class ReadinessCheck(CheckBase):
    """A grpclib health check: serving while ``readiness.is_serving()``."""

    def __init__(
        self, readiness: Readiness, *, recheck_interval: float = DEFAULT_RECHECK_INTERVAL
    ) -> None:
        self._readiness = readiness
        self._recheck_interval = recheck_interval
        self._events: set[asyncio.Event] = set()
        self._last: bool | None = None
        self._recheck: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"<ReadinessCheck serving={self.__status__()} watchers={len(self._events)}>"

    @property
    def is_rechecking(self) -> bool:
        """Whether the periodic re-check runs (only while someone watches)."""
        return self._recheck is not None

    def __status__(self) -> bool:
        return self._readiness.is_serving()

    async def __check__(self) -> bool:
        return self.__status__()

    async def __subscribe__(self) -> asyncio.Event:
        if not self._events:
            # Unwatched, the last status went stale; the new watcher is told the live one.
            self._last = self.__status__()
        event = asyncio.Event()
        self._events.add(event)
        if self._recheck is None:
            self._schedule_recheck()
        return event

    async def __unsubscribe__(self, event: asyncio.Event) -> None:
        self._events.discard(event)
        if not self._events and self._recheck is not None:
            self._recheck.cancel()
            self._recheck = None

    def changed(self, *_: object) -> None:
        """Wake the watchers if the serving status flipped; the router's listener."""
        status = self.__status__()
        if status == self._last:
            return
        if self._last is not None:
            log.info("grpc_health_changed", serving=status, readiness=repr(self._readiness))
        self._last = status
        for event in self._events:
            event.set()

    def _schedule_recheck(self) -> None:
        loop = asyncio.get_running_loop()
        self._recheck = loop.call_later(self._recheck_interval, self._on_recheck)

    def _on_recheck(self) -> None:
        self.changed()
        if self._events:
            self._schedule_recheck()
        else:
            self._recheck = None


def readiness_health(
    readiness: Readiness,
    services: list[Any],
    *,
    regions: RegionEvents,
    recheck_interval: float = DEFAULT_RECHECK_INTERVAL,
) -> tuple[Health, ReadinessCheck]:
    """The Health service for ``services`` (servicers) and the overall (``""``) status."""
    check = ReadinessCheck(readiness, recheck_interval=recheck_interval)
    regions.add_listener(check.changed)
    checks: dict[Any, list[CheckBase]] = {service: [check] for service in services}
    checks[OVERALL] = [check]
    return Health(checks), check
