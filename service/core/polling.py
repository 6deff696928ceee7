"""The loop behind the change feed and the credential table: poll, sleep, poll again.

A failed poll is counted every time but logged once per run of failures (and the recovery
once), so an outage gives two log lines, not five a second.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog

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
