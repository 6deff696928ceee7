"""The health check reads the router live and wakes watchers only when serving flips."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from grpclib.health.service import Health

from service.grpc.health import RegionCheck, region_health


class _Regions:
    def __init__(self) -> None:
        self.readable = True
        self.listeners: list[Callable[..., Any]] = []

    def can_read(self) -> bool:
        return self.readable

    def add_listener(self, callback: Callable[..., Any]) -> None:
        self.listeners.append(callback)


async def test_status_is_read_live_from_the_router() -> None:
    regions = _Regions()
    check = RegionCheck(regions)
    assert check.__status__() is True and await check.__check__() is True
    regions.readable = False
    assert check.__status__() is False and await check.__check__() is False


async def test_watchers_wake_when_serving_flips_not_on_every_report() -> None:
    regions = _Regions()
    health, check = region_health(regions, [])
    assert isinstance(health, Health)
    assert regions.listeners == [check.changed]
    event = await check.__subscribe__()
    regions.listeners[0]("any", "arguments")  # a report without a change
    assert not event.is_set()
    regions.readable = False
    regions.listeners[0]()
    assert event.is_set()
    await check.__unsubscribe__(event)
    event.clear()
    regions.readable = True
    regions.listeners[0]()
    assert not event.is_set(), "an unsubscribed watcher is not woken"
