"""``grpc.health.v1`` status fed by the locality router: SERVING while reads can be served.

:class:`RegionCheck` is a grpclib health check whose status is read from the router on every
``Check`` (never stale), and which wakes ``Watch`` streams when the router reports a change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

import structlog
from grpclib.health.check import CheckBase
from grpclib.health.service import OVERALL, Health

log = structlog.get_logger(__name__)


class Regions(Protocol):
    """What gRPC needs of the locality router."""

    def can_read(self) -> bool: ...

    def add_listener(self, callback: Callable[..., Any]) -> Any: ...


class RegionCheck(CheckBase):
    """SERVING while ``regions.can_read()``; NOT_SERVING otherwise."""

    def __init__(self, regions: Regions) -> None:
        self._regions = regions
        self._events: set[asyncio.Event] = set()
        self._last: bool | None = None

    def __repr__(self) -> str:
        return f"<RegionCheck serving={self.__status__()} watchers={len(self._events)}>"

    def __status__(self) -> bool:
        return self._regions.can_read()

    async def __check__(self) -> bool:
        return self.__status__()

    async def __subscribe__(self) -> asyncio.Event:
        event = asyncio.Event()
        self._events.add(event)
        return event

    async def __unsubscribe__(self, event: asyncio.Event) -> None:
        self._events.discard(event)

    def changed(self, *_: object) -> None:
        """The router's listener: wake the watchers when the serving status flips."""
        status = self.__status__()
        if status == self._last:
            return
        if self._last is not None:
            log.info("grpc health changed", serving=status)
        self._last = status
        for event in self._events:
            event.set()


def region_health(regions: Regions, services: list[Any]) -> tuple[Health, RegionCheck]:
    """The Health service for ``services`` (servicers) and the overall ("") status."""
    check = RegionCheck(regions)
    check.changed()
    regions.add_listener(check.changed)
    checks: dict[Any, list[CheckBase]] = {service: [check] for service in services}
    checks[OVERALL] = [check]
    return Health(checks), check
