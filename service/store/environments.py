"""SQL for per-environment settings (``environment_settings``): one method per query.

:class:`PostgresEnvironmentSettings` implements the core's
:class:`~service.core.public_jwks.EnvironmentSettingsRecords` port.
"""

from __future__ import annotations

from typing import Any

from service.store.database import Database


class PostgresEnvironmentSettings:
    """Environment settings in PostgreSQL or CockroachDB, reached through a :class:`Database`."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def __repr__(self) -> str:
        return f"<PostgresEnvironmentSettings database={self._db!r}>"

    async def public_jwks(
        self,
        environment_id: str,
        *,
        timeout: float | None = None,
        max_data_age: float | None = None,
    ) -> bool:
        """Whether the environment opted in to an anonymous JWK Set (no row: it did not),
        from a region whose data is at most ``max_data_age`` seconds old."""

        async def op(conn: Any) -> bool:
            value = await conn.fetchval(
                "SELECT public_jwks FROM environment_settings WHERE environment_id = $1",
                environment_id,
            )
            return bool(value)

        value, _age = await self._db.read_with_age(op, timeout=timeout, max_data_age=max_data_age)
        return value

    async def set_public_jwks(
        self, environment_id: str, enabled: bool, *, timeout: float | None = None
    ) -> None:
        async def op(conn: Any) -> None:
            await conn.execute(
                "INSERT INTO environment_settings (environment_id, public_jwks, updated_at)"
                " VALUES ($1, $2, now()) ON CONFLICT (environment_id)"
                " DO UPDATE SET public_jwks = excluded.public_jwks, updated_at = now()",
                environment_id,
                enabled,
            )

        # Setting a value twice leaves the same row: safe to retry after an ambiguous commit.
        await self._db.write(op, idempotent=True, timeout=timeout)
