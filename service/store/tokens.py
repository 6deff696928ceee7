"""SQL for access tokens: one method per query.

:class:`PostgresTokenRecords` implements the core's
:class:`~service.core.ports.TokenRecords` port.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from service.core.models import AccessToken, Scope
from service.core.ports import DEFAULT_PAGE_SIZE
from service.store.database import Database

_COLUMNS = "id, secret_hash, scopes, environments, name, revoked_at, updated_at"


def _token(row: Any) -> AccessToken:
    return AccessToken(
        id=row["id"],
        secret_hash=bytes(row["secret_hash"]),
        scopes=frozenset(Scope(scope) for scope in row["scopes"]),
        environments=frozenset(row["environments"]),
        name=row["name"],
        revoked_at=row["revoked_at"],
        updated_at=row["updated_at"],
    )


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
                " created_at, updated_at) VALUES ($1, $2, $3, $4, $5, now(), now())"
                " ON CONFLICT (id) DO NOTHING",
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
                f"SELECT {_COLUMNS} FROM access_tokens WHERE id = $1",  # noqa: S608
                token_id,
            )
            return None if row is None else _token(row)

        return await self._db.read(op, timeout=timeout)

    async def pages(
        self,
        *,
        since: datetime | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        timeout: float | None = None,
        max_data_age: float | None = None,
    ) -> AsyncIterator[list[AccessToken]]:
        """Tokens updated at or after ``since`` (all, if not given), oldest change first,
        by keyset pagination on (updated_at, id); with ``max_data_age``, each page from a
        region whose data is at most that old (the credential table's revocation bound)."""
        cursor: tuple[datetime, str] | None = None
        while True:
            page = await self._page(since, page_size, cursor, timeout, max_data_age)
            if page:
                yield page
            if len(page) < page_size:
                return
            last = page[-1]
            assert last.updated_at is not None  # the column is NOT NULL
            cursor = (last.updated_at, last.id)

    async def _page(
        self,
        since: datetime | None,
        page_size: int,
        after: tuple[datetime, str] | None,
        timeout: float | None,
        max_data_age: float | None = None,
    ) -> list[AccessToken]:
        async def op(conn: Any) -> list[AccessToken]:
            rows = await conn.fetch(
                f"SELECT {_COLUMNS} FROM access_tokens"  # noqa: S608 - constant columns
                " WHERE ($1::timestamptz IS NULL OR updated_at >= $1::timestamptz)"
                " AND ($3::timestamptz IS NULL OR (updated_at, id) > ($3::timestamptz, $4::text))"
                " ORDER BY updated_at, id LIMIT $2",
                since,
                page_size,
                after[0] if after else None,
                after[1] if after else None,
            )
            return [_token(row) for row in rows]

        if max_data_age is None:
            return await self._db.read(op, timeout=timeout, hedge=False)  # a page scan
        page, _ = await self._db.read_with_age(
            op, timeout=timeout, max_data_age=max_data_age, hedge=False
        )
        return page
