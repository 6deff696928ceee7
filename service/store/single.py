"""A :class:`~service.store.database.Database` over one region's pool (no failover).

Used until the locality router takes over, and where one DSN is all there is.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

import asyncpg

from service.errors import DeadlineExceededError, RegionUnavailableError
from service.store.database import Operation

T = TypeVar("T")


class SingleRegionDatabase:
    def __init__(self, dsn: str, *, timeout: float = 2.0) -> None:
        self._dsn = dsn
        self._timeout = timeout
        self._pool: Any = None
        self._healthy = False

    async def start(self) -> None:
        self._pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=10, timeout=2)
        self._healthy = True

    async def aclose(self) -> None:
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), 5)
            except TimeoutError:
                self._pool.terminate()

    async def read(self, op: Operation[T], *, timeout: float | None = None) -> T:
        return await self._run(op, None, timeout)

    async def write(self, op: Operation[T], *, idempotent: bool, timeout: float | None = None) -> T:
        return await self._run(op, "serializable", timeout)

    async def _run(self, op: Operation[T], isolation: str | None, timeout: float | None) -> T:
        try:
            async with asyncio.timeout(timeout or self._timeout):
                async with self._pool.acquire() as conn:
                    if isolation is None:
                        return await op(conn)
                    async with conn.transaction(isolation=isolation):
                        return await op(conn)
        except TimeoutError as exc:
            raise DeadlineExceededError("the database did not answer in time") from exc
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
            self._healthy = False
            raise RegionUnavailableError("the database is unreachable") from exc

    def can_read(self) -> bool:
        return self._healthy

    def can_write(self) -> bool:
        return self._healthy

    def status(self) -> Any:
        healthy = self._healthy

        class _Status:
            def to_dict(self) -> dict[str, Any]:
                return {"regions": [], "healthy": healthy}

        return _Status()
