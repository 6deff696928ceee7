"""Everything CockroachDB-specific about our schema, in one small, pure place.

The portable migrations in ``sql/migrations`` run unchanged on PostgreSQL and CockroachDB. On
CockroachDB the migration runner then applies :func:`multiregion_statements`, which turn the
database into a multi-region database whose region names are our region names. The same
statements, written out for three regions, are in ``sql/cockroach/multiregion.sql`` for
operators.

The CockroachDB documentation these follow:

- Multi-region overview and survival goals:
  https://www.cockroachlabs.com/docs/stable/multiregion-overview and
  https://www.cockroachlabs.com/docs/stable/multiregion-survival-goals
- ``ALTER DATABASE … SET PRIMARY REGION`` / ``ADD REGION IF NOT EXISTS`` / ``SURVIVE``:
  https://www.cockroachlabs.com/docs/stable/alter-database (a database needs a primary region
  before any other region can be added; only regions present in ``SHOW REGIONS FROM CLUSTER``,
  i.e. the ``region=`` tier of some node's ``--locality``, can be database regions:
  https://www.cockroachlabs.com/docs/stable/cockroach-start#locality).
- ``ALTER TABLE … SET LOCALITY``: https://www.cockroachlabs.com/docs/stable/alter-table and
  https://www.cockroachlabs.com/docs/stable/table-localities
- Identifier quoting: https://www.cockroachlabs.com/docs/stable/keywords-and-identifiers

Each statement is a schema change: run each one on its own (an implicit transaction), never
several inside one explicit transaction
(https://www.cockroachlabs.com/docs/stable/online-schema-changes).

A re-run issues only what differs from the database's current state
(:class:`MultiRegionState`, read with ``SHOW REGIONS FROM DATABASE``, ``SHOW SURVIVAL GOAL
FROM DATABASE`` and ``SHOW TABLES``), never the whole list again: ``SET PRIMARY REGION`` on a
database that already has that primary takes CockroachDB's switch-primary path and rewrites
zone configurations, and it and ``SURVIVE REGION FAILURE`` are refused once an operator has
run ``CONFIGURE ZONE`` — a hook that re-ran them would fail every later upgrade. So
``signing-keys migrate`` may run on every deploy, and on a database in the wanted state it
changes nothing. ``SHOW REGIONS`` needs the ``admin`` role: the migration role (DDL) has it,
the serving role (data only) does not need it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# `SURVIVE REGION FAILURE` needs at least three database regions: a range keeps a quorum of
# voting replicas only if no single region holds a majority of them.
REGION_SURVIVAL_MIN_REGIONS = 3

# Tables read on every request in every region (a verification reads signing_keys, an
# authenticated call reads access_tokens) and written rarely. GLOBAL gives consistent,
# non-stale reads from the local region everywhere; writes pay the cross-region commit wait,
# which is acceptable for key creation, revocation and token issue.
GLOBAL_TABLES = ("signing_keys", "access_tokens", "heartbeat", "environment_settings")
# `heartbeat` (sql/migrations/0002_heartbeat.sql) is GLOBAL for the router's probe: reading its
# row in every region proves that the gateway still reaches the ranges of a GLOBAL table, which
# `SELECT 1` does not. Nothing writes it on CockroachDB (GLOBAL reads are never stale).
# `environment_settings` (0005) is read by anonymous JWK Set requests in every region (each
# instance remembers an answer a few seconds) and written by an operator now and then.

# Tables written only inside the (already slow) key-write transaction and read rarely: the
# audit trail is listed by operators, an idempotency record is read only when a client
# retries. They stay REGIONAL BY TABLE IN PRIMARY REGION (CockroachDB's default, stated
# explicitly so that a re-run restores it). REGIONAL BY ROW was considered and rejected: it
# adds a hidden crdb_region column, and because both tables have client- or server-chosen
# text keys (not gen_random_uuid()), every insert would need a cross-region uniqueness check
# anyway, while the transaction's commit latency is already set by the GLOBAL table write.
# With SURVIVE REGION FAILURE these tables stay available when the primary region is lost.
PRIMARY_REGION_TABLES = ("audit_events", "idempotency_keys")

GLOBAL = "GLOBAL"
IN_PRIMARY_REGION = "REGIONAL BY TABLE IN PRIMARY REGION"

# What migrations.py runs to read a MultiRegionState (each on its own; the database is the
# connection's). `SHOW REGIONS` needs the admin role.
SHOW_DATABASE_REGIONS = "SHOW REGIONS FROM DATABASE"
SHOW_SURVIVAL_GOAL = "SHOW SURVIVAL GOAL FROM DATABASE"
SHOW_TABLE_LOCALITIES = (
    "SELECT table_name, locality FROM [SHOW TABLES] WHERE schema_name = 'public' AND type = 'table'"
)


def normalize_locality(text: str | None) -> str | None:
    """A table locality as ``SHOW TABLES`` prints it, in one spelling (None: none set)."""
    return " ".join(text.upper().split()) if text else None


@dataclass(frozen=True, slots=True, kw_only=True)
class MultiRegionState:
    """What a database is now: its regions, primary region, survival goal and each table's
    locality. The default is a database that is not multi-region yet."""

    primary_region: str | None = None
    regions: frozenset[str] = frozenset()
    survival_goal: str | None = None  # "zone" or "region"
    localities: Mapping[str, str | None] = field(default_factory=dict)

    @classmethod
    def from_rows(
        cls,
        regions: Iterable[Mapping[str, Any]],
        survival: Iterable[Mapping[str, Any]],
        tables: Iterable[Mapping[str, Any]],
    ) -> MultiRegionState:
        """The state from the rows of the three ``SHOW_*`` queries above."""
        region_rows = list(regions)
        primary = next((str(row["region"]) for row in region_rows if row["primary"]), None)
        goal = next((row["survival_goal"] for row in survival), None)
        return cls(
            primary_region=primary,
            regions=frozenset(str(row["region"]) for row in region_rows),
            survival_goal=str(goal).lower() if goal else None,
            localities={
                str(row["table_name"]): normalize_locality(row["locality"]) for row in tables
            },
        )


NOT_MULTIREGION = MultiRegionState()


def is_cockroach(server_version_string: str) -> bool:
    """Whether ``SELECT version()`` came from CockroachDB.

    CockroachDB answers e.g. ``"CockroachDB CCL v24.3.1 (x86_64-pc-linux-gnu, …)"``;
    PostgreSQL answers ``"PostgreSQL 15.5 …"``.
    (https://www.cockroachlabs.com/docs/stable/functions-and-operators — ``version()``)
    """
    return server_version_string.lstrip().startswith("CockroachDB")


def quote_identifier(name: str) -> str:
    """A double-quoted SQL identifier; an embedded ``"`` is doubled, as PostgreSQL does.

    >>> quote_identifier('aws-us-east-1')
    '"aws-us-east-1"'
    """
    if not name:
        raise ValueError("an SQL identifier must not be empty")
    if "\x00" in name:
        raise ValueError("an SQL identifier must not contain a NUL character")
    return '"' + name.replace('"', '""') + '"'


def multiregion_statements(
    database: str,
    regions: Sequence[str],
    primary_region: str,
    current: MultiRegionState = NOT_MULTIREGION,
) -> list[str]:
    """The statements that take ``database`` from ``current`` to multi-region across
    ``regions``: from a database that is not multi-region yet (the default), all of them;
    from one already in that state, none.

    Run them connected to ``database`` (the table names are unqualified). Order matters: on a
    new multi-region database the primary region first (``ADD REGION`` needs one), then the
    other regions; when the primary region changes, the regions first (the new primary must
    be a database region). Then the survival goal (which needs the regions), then table
    localities. With fewer than three regions the survival goal is left as it is
    (CockroachDB's default, ``SURVIVE ZONE FAILURE``). A database region that ``regions``
    does not list is never dropped here (:func:`unlisted_regions` names them).

    >>> multiregion_statements("signing_keys", ["aws-us-east-1"], "aws-us-east-1")[0]
    'ALTER DATABASE "signing_keys" SET PRIMARY REGION "aws-us-east-1"'
    """
    if isinstance(regions, str):
        raise TypeError("regions must be a sequence of region names, not one string")
    names = list(regions)
    if not names:
        raise ValueError("a multi-region database needs at least one region")
    if len(set(names)) != len(names):
        raise ValueError(f"a region is listed twice: {names}")
    if primary_region not in names:
        raise ValueError(f"primary region {primary_region!r} is not one of {names}")

    db = quote_identifier(database)
    set_primary = [f"ALTER DATABASE {db} SET PRIMARY REGION {quote_identifier(primary_region)}"]
    if current.primary_region == primary_region:
        set_primary = []
    # A new multi-region database gets its primary region from SET PRIMARY REGION; an
    # existing one needs a new primary added first.
    present = current.regions | ({primary_region} if current.primary_region is None else set())
    added = [
        f"ALTER DATABASE {db} ADD REGION IF NOT EXISTS {quote_identifier(name)}"
        for name in names
        if name not in present
    ]
    statements = (
        [*set_primary, *added] if current.primary_region is None else [*added, *set_primary]
    )
    if len(names) >= REGION_SURVIVAL_MIN_REGIONS and current.survival_goal != "region":
        statements.append(f"ALTER DATABASE {db} SURVIVE REGION FAILURE")
    statements += [
        f"ALTER TABLE {quote_identifier(table)} SET LOCALITY {GLOBAL}"
        for table in GLOBAL_TABLES
        if current.localities.get(table) != GLOBAL
    ]
    statements += [
        f"ALTER TABLE {quote_identifier(table)} SET LOCALITY {IN_PRIMARY_REGION}"
        for table in PRIMARY_REGION_TABLES
        if current.localities.get(table) != IN_PRIMARY_REGION
    ]
    return statements


def unlisted_regions(current: MultiRegionState, regions: Sequence[str]) -> list[str]:
    """The database's regions that ``regions`` does not list (left in place, for a person
    to drop: dropping a region moves data)."""
    return sorted(current.regions - set(regions))


def primary_region(regions: Sequence[tuple[str, int]]) -> str:
    """The database's primary region: the lowest priority, ties going to the first listed.

    ``regions`` are (name, priority) pairs in configuration order.

    >>> primary_region([("gcp-us-central1", 1), ("aws-us-east-1", 0)])
    'aws-us-east-1'
    """
    if not regions:
        raise ValueError("a multi-region database needs at least one region")
    return min(enumerate(regions), key=lambda item: (item[1][1], item[0]))[1][0]
