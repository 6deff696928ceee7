"""``signing-keys token create`` writes as the server does: through the router's write path,
with the server-side bound on the write transaction that key writes carry (the credential
tables' overlap is a proof only if every write transaction is bounded)."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from service import cli
from service.errors import RegionUnavailableError
from service.settings import Settings

ENV = {
    "SIGNING_KEYS_REGIONS": "aws-us-east-1:aws",
    "SIGNING_KEYS_LOCAL_REGION": "aws-us-east-1",
    "SIGNING_KEYS_DSN_AWS_US_EAST_1": "postgresql://u:p@a/db",
}


class RecordingConnection:
    """A PostgreSQL connection that records every statement and answers what the write
    path asks (the transaction took 10 ms)."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, tuple[Any, ...]]] = []

    def get_settings(self) -> SimpleNamespace:
        return SimpleNamespace()  # no crdb_version: PostgreSQL

    async def execute(self, sql: str, *args: Any) -> str:
        self.statements.append((sql, args))
        return "OK"

    async def fetchrow(self, sql: str, *args: Any) -> dict[str, Any]:
        self.statements.append((sql, args))
        return {"elapsed": 0.01}

    async def fetchval(self, sql: str, *args: Any) -> Any:
        self.statements.append((sql, args))
        return 0.01


class RecordingRouter:
    """The router's write path, run on one recording connection."""

    def __init__(self) -> None:
        self.conn = RecordingConnection()

    async def write(
        self, op: Any, *, idempotent: bool, timeout: float | None = None, autocommit: bool = False
    ) -> Any:
        if autocommit:
            return None  # the position read after the write: no token for the CLI
        return await op(self.conn)

    async def read(self, op: Any, **options: Any) -> Any:
        # The credential table's first read after the issue: nothing to read here.
        raise RegionUnavailableError("no reads in this test")

    async def read_with_age(self, op: Any, **options: Any) -> Any:
        raise RegionUnavailableError("no reads in this test")


async def test_token_create_bounds_its_write_transaction_on_the_server(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    router = RecordingRouter()

    @contextlib.asynccontextmanager
    async def database(settings: Settings, *, writable: bool) -> AsyncIterator[Any]:
        assert writable
        yield router

    monkeypatch.setattr(cli, "open_database", database)
    settings = Settings.from_env(ENV)
    args = argparse.Namespace(environments=["env-a"], scopes="read", name=None)
    assert await cli._token_create(args, settings) == 0
    statements = [sql for sql, _ in router.conn.statements]
    assert "statement_timeout" in statements[0], "the bound is set before the INSERT"
    bound_ms = str(round(settings.longest_write * 1000))
    assert router.conn.statements[0][1] == (bound_ms,)
    assert "INSERT INTO access_tokens" in statements[1]
    assert "transaction_timestamp()" in statements[2], "the elapsed time is checked before COMMIT"
    assert '"scopes": ["read"]' in capsys.readouterr().out
