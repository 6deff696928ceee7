"""SQL for access tokens: one method per query.

:class:`PostgresTokenRecords` implements the core's
:class:`~service.core.ports.TokenRecords` port.
"""

from __future__ import annotations

from typing import Any

from service.core.models import AccessToken, Scope
from service.store.database import Database


class PostgresTokenRecords:
    """Access tokens in PostgreSQL or CockroachDB, reached through a :class:`Database`."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def __repr__(self) -> str:
        return f"<PostgresTokenRecords database={self._db!r}>"

    async def insert(self, token: AccessToken, *, timeout: float | None = None) -> None:
        async def op(conn: Any) -> None:
            await conn.execute(
                "INSERT INTO access_tokens (id, secret_hash, scopes, environments, name,"
                " created_at) VALUES ($1, $2, $3, $4, $5, now()) ON CONFLICT (id) DO NOTHING",
                token.id,
                token.secret_hash,
                sorted(scope.value for scope in token.scopes),
                sorted(token.environments),
                token.name,
            )

        await self._db.write(op, idempotent=True, timeout=timeout)

    async def get(self, token_id: str, *, timeout: float | None = None) -> AccessToken | None:
        async def op(conn: Any) -> AccessToken | None:
            row = await conn.fetchrow(
                "SELECT id, secret_hash, scopes, environments, name, revoked_at"
                " FROM access_tokens WHERE id = $1",
                token_id,
            )
            if row is None:
                return None
            return AccessToken(
                id=row["id"],
                secret_hash=bytes(row["secret_hash"]),
                scopes=frozenset(Scope(scope) for scope in row["scopes"]),
                environments=frozenset(row["environments"]),
                name=row["name"],
                revoked_at=row["revoked_at"],
            )

        return await self._db.read(op, timeout=timeout)
