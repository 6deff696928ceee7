"""The one narrow seam between the store and whatever reaches the database.

The store hands an *operation* — an async function of one asyncpg connection — to a
:class:`Database`; the database decides where it runs (which region), with which deadline,
and whether it may be retried. Writes run inside a SERIALIZABLE transaction; every write
operation the store passes with ``idempotent=True`` must be safe to run twice (server-chosen
ids with ``ON CONFLICT``, revoke of a revoked key a no-op).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import asyncpg

T = TypeVar("T")

Connection = asyncpg.Connection  # type alias for readers; asyncpg ships no type hints
Operation = Callable[[Any], Awaitable[T]]


class Database(Protocol):
    """Runs store operations somewhere that can serve them."""

    async def read(
        self, op: Operation[T], *, timeout: float | None = None, hedge: bool = True
    ) -> T:
        """Run a read-only ``op`` on a region that can serve reads (``hedge``: a second
        region may start it too if the first is slow — for point reads, not page scans)."""
        ...

    async def read_with_age(
        self,
        op: Operation[T],
        *,
        timeout: float | None = None,
        max_data_age: float | None = None,
        hedge: bool = True,
    ) -> tuple[T, float]:
        """Run a read-only ``op`` where the data is at most ``max_data_age`` seconds old (any
        readable region when ``None``); return its result and that age (``inf``: unknown)."""
        ...

    async def write(
        self,
        op: Operation[T],
        *,
        idempotent: bool,
        timeout: float | None = None,
        autocommit: bool = False,
    ) -> T:
        """Run ``op`` in a transaction on a writable region (``autocommit``: without one)."""
        ...
