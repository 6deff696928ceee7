"""gRPC health reads the service's readiness live: SERVING while ready or degraded,
NOT_SERVING when unavailable; watchers wake only when that flips."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from grpclib.health.service import Health

from service.core.readiness import Readiness
from service.grpc.health import ReadinessCheck, readiness_health


class _Facts:
    """The two facts readiness reads, and the router's listeners, flipped by the test."""

    def __init__(self) -> None:
        self.can_read = True
        self.can_verify = True
        self.listeners: list[Callable[..., Any]] = []

    def readiness(self) -> Readiness:
        return Readiness(can_read=lambda: self.can_read, can_verify=lambda: self.can_verify)

    def add_listener(self, callback: Callable[..., Any]) -> None:
        self.listeners.append(callback)


async def test_serving_while_ready_or_degraded_not_serving_when_unavailable() -> None:
    facts = _Facts()
    check = ReadinessCheck(facts.readiness())
    assert check.__status__() is True and await check.__check__() is True  # ready
    facts.can_read = False
    assert check.__status__() is True and await check.__check__() is True  # degraded
    facts.can_verify = False
    assert check.__status__() is False and await check.__check__() is False  # unavailable
    assert "serving=False" in repr(check)


async def test_watchers_wake_when_serving_flips_not_on_every_report() -> None:
    facts = _Facts()
    health, check = readiness_health(facts.readiness(), [], regions=facts)
    assert isinstance(health, Health)
    assert facts.listeners == [check.changed]
    event = await check.__subscribe__()
    facts.listeners[0]("any", "arguments")  # a report without a change
    assert not event.is_set()
    facts.can_read = False
    facts.listeners[0]()
    assert not event.is_set(), "degraded is still serving: nothing to tell"
    facts.can_verify = False
    facts.listeners[0]()
    assert event.is_set()
    await check.__unsubscribe__(event)
    event.clear()
    facts.can_read = True
    facts.listeners[0]()
    assert not event.is_set(), "an unsubscribed watcher is not woken"


async def test_a_recheck_notices_what_no_router_event_announces() -> None:
    """Degraded turns unavailable when the last known good keys grow too old: time passes,
    no region changes, yet watchers must hear of it."""
    facts = _Facts()
    facts.can_read = False
    _, check = readiness_health(facts.readiness(), [], regions=facts, recheck_interval=0.01)
    assert not check.is_rechecking
    event = await check.__subscribe__()
    assert check.is_rechecking
    await asyncio.sleep(0.05)
    assert not event.is_set()
    facts.can_verify = False  # no listener is called
    await asyncio.wait_for(event.wait(), 1)
    await check.__unsubscribe__(event)
    assert not check.is_rechecking, "no timer runs once nobody watches"


async def test_a_new_watcher_is_not_woken_for_a_change_it_never_missed() -> None:
    """Changes while nobody watched leave no stale status behind to 'flip' later."""
    facts = _Facts()
    _, check = readiness_health(facts.readiness(), [], regions=facts)
    facts.can_read = facts.can_verify = False
    facts.listeners[0]()  # reported while nobody watched
    facts.can_read = True  # recovered, not reported yet
    event = await check.__subscribe__()
    facts.listeners[0]()  # the router reports, nothing flipped since the watcher came
    assert not event.is_set()
    await check.__unsubscribe__(event)
