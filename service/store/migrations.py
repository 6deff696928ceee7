"""Applies the ordered SQL migrations in ``sql/migrations`` exactly once each.

Safe to run twice, or twice at the same time: on PostgreSQL the whole run holds a
transaction-scoped advisory lock; every statement is also idempotent (``IF NOT EXISTS``) and
the bookkeeping insert uses ``ON CONFLICT``, which is what makes concurrent runs safe on
CockroachDB, where advisory locks do not exclude each other. On CockroachDB the multi-region
script follows (see :mod:`service.store.cockroach`).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from service.errors import DependencyError
from service.settings import RegionSettings
from service.store import cockroach
from service.store.database import Database

log = structlog.get_logger(__name__)

# An arbitrary constant: the advisory lock that serialises migration runs on PostgreSQL.
MIGRATION_LOCK_ID = 0x5349474E4B4559
DEFAULT_MIGRATION_TIMEOUT = 60.0
_FILE_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


# In a checkout (and an editable install) ``sql/`` sits beside ``service/``; an installed
# package is told where it is (``Settings.sql_dir``, as the image does).
DEFAULT_SQL_DIR = Path(__file__).resolve().parents[2] / "sql"


def load_migrations(directory: Path = DEFAULT_SQL_DIR) -> list[Migration]:
    folder = directory / "migrations"
    migrations = []
    for path in sorted(folder.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise ValueError(f"migration file {path.name!r} must be named NNNN_name.sql")
        migrations.append(Migration(match.group(1), path.stem, path.read_text()))
    if not migrations:
        raise FileNotFoundError(f"no migrations found in {folder}")
    return migrations


async def migrate(
    db: Database,
    migrations: Sequence[Migration] | None = None,
    *,
    regions: Sequence[RegionSettings] = (),
    timeout: float = DEFAULT_MIGRATION_TIMEOUT,
) -> list[str]:
    """Apply what is not applied yet; return the versions applied by this run.

    On CockroachDB every statement commits on its own (CockroachDB advises against schema
    changes inside explicit transactions), and the multi-region statements for ``regions``
    follow, each on its own as well.
    """
    pending = list(migrations if migrations is not None else load_migrations())
    is_cockroach = cockroach.is_cockroach(await db.read(_server_version, timeout=timeout))

    async def op(conn: Any) -> list[str]:
        if not is_cockroach:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version TEXT NOT NULL PRIMARY KEY, name TEXT NOT NULL,"
            " checksum TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        done = {
            row["version"]: row["checksum"]
            for row in await conn.fetch("SELECT version, checksum FROM schema_migrations")
        }
        applied = []
        for migration in pending:
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    log.warning("migration_changed_after_applied", version=migration.version)
                continue
            await conn.execute(migration.sql, timeout=timeout)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)"
                " ON CONFLICT (version) DO NOTHING",
                migration.version,
                migration.name,
                migration.checksum,
            )
            applied.append(migration.version)
        return applied

    applied = await db.write(op, idempotent=True, timeout=timeout, autocommit=is_cockroach)
    log.info("migrations_applied", applied=applied, pending=len(pending))
    if is_cockroach and regions:
        await _make_multiregion(db, regions, timeout)
    return applied


async def pending_migrations(
    db: Database, migrations: Sequence[Migration], *, timeout: float = DEFAULT_MIGRATION_TIMEOUT
) -> list[str]:
    """The versions of ``migrations`` the database has not applied; a read, so that the
    serving role (data only) can ask."""

    async def op(conn: Any) -> list[str]:
        exists = await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables"
            " WHERE table_schema = current_schema() AND table_name = 'schema_migrations'"
        )
        applied = (
            {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
            if exists
            else set()
        )
        return [migration.version for migration in migrations if migration.version not in applied]

    return await db.read(op, timeout=timeout)


async def wait_until_applied(
    db: Database, migrations: Sequence[Migration], *, wait: float, interval: float = 1.0
) -> list[str]:
    """Ask until every one of ``migrations`` is applied or ``wait`` seconds have passed;
    return what is still pending (empty: all applied). A region that fails to answer is
    asked again: this runs while releases and regions are still coming up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    pending = [migration.version for migration in migrations]
    while True:
        try:
            pending = await pending_migrations(db, migrations)
        except DependencyError as exc:
            log.info("schema_check_failed", error=type(exc).__name__)
        if not pending or loop.time() + interval > deadline:
            return pending
        log.info("schema_waiting", pending=pending)
        await asyncio.sleep(interval)


async def _server_version(conn: Any) -> str:
    return str(await conn.fetchval("SELECT version()"))


async def read_multiregion_state(conn: Any) -> tuple[str, cockroach.MultiRegionState]:
    """The connection's database and its multi-region state, as CockroachDB reports them."""
    database = str(await conn.fetchval("SELECT current_database()"))
    state = cockroach.MultiRegionState.from_rows(
        await conn.fetch(cockroach.SHOW_DATABASE_REGIONS),
        await conn.fetch(cockroach.SHOW_SURVIVAL_GOAL),
        await conn.fetch(cockroach.SHOW_TABLE_LOCALITIES),
    )
    return database, state


async def _make_multiregion(
    db: Database, regions: Sequence[RegionSettings], timeout: float
) -> None:
    # Read where the statements will run (a write region), outside a transaction.
    database, current = await db.write(
        read_multiregion_state, idempotent=True, timeout=timeout, autocommit=True
    )
    names = [region.name for region in regions]
    primary = cockroach.primary_region([(region.name, region.priority) for region in regions])
    statements = cockroach.multiregion_statements(database, names, primary, current)
    if unlisted := cockroach.unlisted_regions(current, names):
        log.warning("database_regions_not_configured", regions=unlisted)
    if current.primary_region not in (None, primary):
        log.warning("primary_region_changes", old=current.primary_region, new=primary)
    for statement in statements:  # each in its own implicit transaction

        async def run(conn: Any, statement: str = statement) -> None:
            await conn.execute(statement, timeout=timeout)  # schema jobs outlast a request

        await db.write(run, idempotent=True, timeout=timeout, autocommit=True)
    log.info(
        "multi_region_schema_applied",
        primary_region=primary,
        regions=len(regions),
        statements=len(statements),
    )
