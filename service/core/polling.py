"""The loop behind the change feed and the credential table: poll, sleep, poll again.

A failed poll is counted every time but logged once per run of failures (and the recovery
once), so an outage gives two log lines, not five a second.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog

from service.lifecycle import AsyncResource, cancel_and_wait

log = structlog.get_logger(__name__)


class Counter(Protocol):
    def inc(self) -> None: ...


async def poll_forever(
    poll_once: Callable[[], Awaitable[object]],
    *,
    interval: float,
    name: str,
    serving_from: str,
    failed: Counter,
) -> None:
    """Call ``poll_once`` every ``interval`` seconds until cancelled; log ``<name>_failing``
    (and what is served meanwhile) at the first failure and ``<name>_recovered`` after."""
    failing = False
    while True:
        await asyncio.sleep(interval)
        try:
            await poll_once()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failed.inc()
            if not failing:
                log.warning(f"{name}_failing", error=type(exc).__name__, serving_from=serving_from)
            failing = True
        else:
            if failing:
                log.info(f"{name}_recovered")
            failing = False


class Poller(AsyncResource):
    """A resource that polls: :meth:`start` makes a first poll (best effort — a database
    that is down now is retried by polling) and then polls every ``interval`` seconds until
    :meth:`aclose`. Subclasses say what one poll does."""

    def __init__(self, *, interval: float, name: str, serving_from: str, failed: Counter) -> None:
        self._interval = interval
        self._poll_name = name
        self._serving_from = serving_from
        self._failed = failed
        self._task: asyncio.Task[None] | None = None

    @abc.abstractmethod
    async def poll_once(self) -> object:
        """One poll."""

    async def start(self) -> None:
        with contextlib.suppress(Exception):
            await self.poll_once()
        self._task = asyncio.create_task(
            poll_forever(
                self.poll_once,
                interval=self._interval,
                name=self._poll_name,
                serving_from=self._serving_from,
                failed=self._failed,
            ),
            name=self._poll_name,
        )

    async def aclose(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
