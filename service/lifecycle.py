"""What every object that owns a resource shares: ``async with`` starts it and closes it.

It sits at the bottom of the layers, beside the errors, so that one base serves whatever
starts and stops: the change feed in the core, the locality router, the servers.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
from types import TracebackType
from typing import Self


class AsyncResource(abc.ABC):
    """An object that owns a resource from :meth:`start` to :meth:`aclose`.

    ``async with`` starts it and, however the block ends, closes it. Each subclass keeps
    its own guards: whether it may start twice, and how its close is shielded and bounded.

    >>> class Feed(AsyncResource):
    ...     async def start(self) -> None: ...
    ...     async def aclose(self) -> None: ...
    >>> async with Feed() as feed:
    ...     ...
    """

    @abc.abstractmethod
    async def start(self) -> None:
        """Acquire the resource (open pools, start tasks, listen)."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release the resource."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def cancel_and_wait(task: asyncio.Task[None] | None) -> None:
    """Cancel a background task (``None``: nothing to do) and wait until it has ended."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
