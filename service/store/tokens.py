"""SQL for access tokens: one function per query."""

from __future__ import annotations

from typing import Any

from service.core.models import AccessToken, Scope
from service.store.database import Database


async def insert_token(db: Database, token: AccessToken, *, timeout: float | None = None) -> None:
    async def op(conn: Any) -> None:
        await conn.execute(
            "INSERT INTO access_tokens (id, secret_hash, scopes, environments, name, created_at)"
            " VALUES ($1, $2, $3, $4, $5, now()) ON CONFLICT (id) DO NOTHING",
            token.id,
            token.secret_hash,
            sorted(scope.value for scope in token.scopes),
            sorted(token.environments),
            token.name,
        )

    await db.write(op, idempotent=True, timeout=timeout)


async def get_token(
    db: Database, token_id: str, *, timeout: float | None = None
) -> AccessToken | None:
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

    return await db.read(op, timeout=timeout)
