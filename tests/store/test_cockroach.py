"""The CockroachDB-specific SQL: engine detection and the multi-region statements."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import pytest

from service.store import cockroach
from service.store.cockroach import (
    is_cockroach,
    multiregion_statements,
    quote_identifier,
)

REPO = Path(__file__).resolve().parents[2]
THREE = ["aws-us-east-1", "gcp-us-central1", "aws-eu-west-1"]
TABLES = (
    "signing_keys",
    "audit_events",
    "access_tokens",
    "idempotency_keys",
    "heartbeat",
    "environment_settings",
)


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("CockroachDB CCL v24.3.1 (x86_64-pc-linux-gnu, built 2024/12/03, go1.22.8)", True),
        ("CockroachDB OSS v20.2.0 (x86_64-unknown-linux-gnu, built 2020/11/09)", True),
        (
            "PostgreSQL 15.5 (Debian 15.5-0+deb12u1) on x86_64-pc-linux-gnu, compiled by gcc",
            False,
        ),
        ("PostgreSQL 13.0 on x86_64, CockroachDB-compatible fork", False),
        ("", False),
    ],
)
def test_is_cockroach_reads_the_version_string(version: str, expected: bool) -> None:
    assert is_cockroach(version) is expected


def test_three_regions_survive_a_region_and_make_keys_and_tokens_global() -> None:
    statements = multiregion_statements("signing_keys", THREE, "aws-us-east-1")
    assert statements == [
        'ALTER DATABASE "signing_keys" SET PRIMARY REGION "aws-us-east-1"',
        'ALTER DATABASE "signing_keys" ADD REGION IF NOT EXISTS "gcp-us-central1"',
        'ALTER DATABASE "signing_keys" ADD REGION IF NOT EXISTS "aws-eu-west-1"',
        'ALTER DATABASE "signing_keys" SURVIVE REGION FAILURE',
        'ALTER TABLE "signing_keys" SET LOCALITY GLOBAL',
        'ALTER TABLE "access_tokens" SET LOCALITY GLOBAL',
        'ALTER TABLE "heartbeat" SET LOCALITY GLOBAL',
        'ALTER TABLE "environment_settings" SET LOCALITY GLOBAL',
        'ALTER TABLE "audit_events" SET LOCALITY REGIONAL BY TABLE IN PRIMARY REGION',
        'ALTER TABLE "idempotency_keys" SET LOCALITY REGIONAL BY TABLE IN PRIMARY REGION',
    ]


@pytest.mark.parametrize("count", [1, 2])
def test_fewer_than_three_regions_do_not_ask_for_region_survival(count: int) -> None:
    statements = multiregion_statements("signing_keys", THREE[:count], THREE[0])
    assert not any("SURVIVE" in statement for statement in statements)
    assert sum("ADD REGION" in statement for statement in statements) == count - 1


def test_the_primary_region_comes_first_wherever_it_is_listed() -> None:
    statements = multiregion_statements("db", THREE, "aws-eu-west-1")
    assert statements[0] == 'ALTER DATABASE "db" SET PRIMARY REGION "aws-eu-west-1"'
    added = [s for s in statements if "ADD REGION" in s]
    assert added == [
        'ALTER DATABASE "db" ADD REGION IF NOT EXISTS "aws-us-east-1"',
        'ALTER DATABASE "db" ADD REGION IF NOT EXISTS "gcp-us-central1"',
    ]
    # The survival goal needs every region added first; localities come last.
    survive = next(i for i, s in enumerate(statements) if "SURVIVE" in s)
    assert survive > max(i for i, s in enumerate(statements) if "ADD REGION" in s)
    assert all("ALTER TABLE" in s for s in statements[survive + 1 :])


def test_every_table_of_the_schema_gets_an_explicit_locality() -> None:
    statements = multiregion_statements("signing_keys", THREE, THREE[0])
    located = {
        match.group(1)
        for s in statements
        if (match := re.match(r'ALTER TABLE "(\w+)" SET LOCALITY ', s))
    }
    assert located == set(TABLES)
    # ...and those are exactly the tables the portable migrations create.
    created = set()
    for path in (REPO / "sql" / "migrations").glob("*.sql"):
        created |= set(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", path.read_text()))
    assert located == created


@pytest.mark.parametrize(
    ("name", "quoted"),
    [
        ("aws-us-east-1", '"aws-us-east-1"'),
        ("Mixed Case", '"Mixed Case"'),
        ('evil"; DROP DATABASE x; --', '"evil""; DROP DATABASE x; --"'),
    ],
)
def test_identifiers_are_quoted_so_that_no_name_can_end_the_statement(
    name: str, quoted: str
) -> None:
    assert quote_identifier(name) == quoted
    statement = multiregion_statements(name, [name], name)[0]
    assert statement == f"ALTER DATABASE {quoted} SET PRIMARY REGION {quoted}"


@pytest.mark.parametrize("name", ["", "a\x00b"])
def test_identifiers_that_cannot_be_quoted_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="identifier"):
        quote_identifier(name)


@pytest.mark.parametrize(
    ("regions", "primary", "message"),
    [
        ([], "aws-us-east-1", "at least one region"),
        (["aws-us-east-1", "aws-us-east-1"], "aws-us-east-1", "listed twice"),
        (["aws-us-east-1"], "gcp-us-central1", "not one of"),
    ],
)
def test_inconsistent_regions_are_refused(regions: list[str], primary: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        multiregion_statements("signing_keys", regions, primary)


def test_one_string_is_not_taken_for_a_list_of_one_letter_regions() -> None:
    with pytest.raises(TypeError):
        multiregion_statements("signing_keys", "aws-us-east-1", "aws-us-east-1")


def test_the_operator_reference_script_says_what_the_service_does() -> None:
    """``sql/cockroach/multiregion.sql`` must list exactly the generated statements."""
    text = (REPO / "sql" / "cockroach" / "multiregion.sql").read_text()
    code = "\n".join(line.split("--", 1)[0] for line in text.splitlines())
    written = [" ".join(s.split()) for s in code.split(";") if s.strip()]
    assert written == multiregion_statements("signing_keys", THREE, "aws-us-east-1")


def test_the_primary_region_is_the_lowest_priority_then_the_first_listed() -> None:
    assert cockroach.primary_region([("a-1", 0), ("b-1", 0)]) == "a-1"
    assert cockroach.primary_region([("a-1", 2), ("b-1", 1), ("c-1", 1)]) == "b-1"
    with pytest.raises(ValueError, match="at least one region"):
        cockroach.primary_region([])


# --- re-runs: only what differs from the database's recorded state -------------------------
# Rows as CockroachDB's SHOW REGIONS FROM DATABASE, SHOW SURVIVAL GOAL FROM DATABASE and
# SHOW TABLES return them (the columns of CockroachDB's documentation for those statements).


def region_rows(primary: str | None, *others: str) -> list[dict[str, object]]:
    names = ([primary] if primary else []) + list(others)
    return [
        {
            "database": "signing_keys",
            "region": name,
            "primary": name == primary,
            "secondary": False,
            "zones": [f"{name}a"],
        }
        for name in names
    ]


def table_rows(**localities: str | None) -> list[dict[str, object]]:
    return [
        {
            "schema_name": "public",
            "table_name": table,
            "type": "table",
            "owner": "signing_keys_migrator",
            "estimated_row_count": 0,
            "locality": locality,
        }
        for table, locality in localities.items()
    ]


DONE_TABLES: dict[str, str | None] = {
    "signing_keys": "GLOBAL",
    "access_tokens": "GLOBAL",
    "heartbeat": "GLOBAL",
    "environment_settings": "GLOBAL",
    "audit_events": "REGIONAL BY TABLE IN PRIMARY REGION",
    "idempotency_keys": "REGIONAL BY TABLE IN PRIMARY REGION",
    "schema_migrations": "REGIONAL BY TABLE IN PRIMARY REGION",
}
FRESH_TABLES = dict.fromkeys(DONE_TABLES)  # not multi-region yet: no locality


def state(
    primary: str | None, others: tuple[str, ...], goal: str | None, tables: Mapping[str, str | None]
) -> cockroach.MultiRegionState:
    survival = [{"database": "signing_keys", "survival_goal": goal}] if goal else []
    return cockroach.MultiRegionState.from_rows(
        region_rows(primary, *others), survival, table_rows(**tables)
    )


def test_a_database_already_in_the_wanted_state_gets_no_statement() -> None:
    """What an upgrade's hook meets: nothing to do, so nothing CONFIGURE ZONE could refuse."""
    current = state("aws-us-east-1", ("gcp-us-central1", "aws-eu-west-1"), "region", DONE_TABLES)
    assert multiregion_statements("signing_keys", THREE, "aws-us-east-1", current) == []


def test_a_database_that_is_not_multi_region_gets_every_statement() -> None:
    current = state(None, (), None, FRESH_TABLES)
    assert current == cockroach.MultiRegionState(localities=current.localities)
    assert multiregion_statements(
        "signing_keys", THREE, "aws-us-east-1", current
    ) == multiregion_statements("signing_keys", THREE, "aws-us-east-1")


def test_a_run_cut_short_resumes_where_it_stopped() -> None:
    """Primary set, one region added, the job killed: the rest only, no SET PRIMARY REGION."""
    current = state("aws-us-east-1", ("gcp-us-central1",), "zone", FRESH_TABLES)
    assert multiregion_statements("signing_keys", THREE, "aws-us-east-1", current) == [
        'ALTER DATABASE "signing_keys" ADD REGION IF NOT EXISTS "aws-eu-west-1"',
        'ALTER DATABASE "signing_keys" SURVIVE REGION FAILURE',
        'ALTER TABLE "signing_keys" SET LOCALITY GLOBAL',
        'ALTER TABLE "access_tokens" SET LOCALITY GLOBAL',
        'ALTER TABLE "heartbeat" SET LOCALITY GLOBAL',
        'ALTER TABLE "environment_settings" SET LOCALITY GLOBAL',
        'ALTER TABLE "audit_events" SET LOCALITY REGIONAL BY TABLE IN PRIMARY REGION',
        'ALTER TABLE "idempotency_keys" SET LOCALITY REGIONAL BY TABLE IN PRIMARY REGION',
    ]


def test_a_new_region_is_added_and_nothing_else_is_touched() -> None:
    current = state("aws-us-east-1", ("gcp-us-central1", "aws-eu-west-1"), "region", DONE_TABLES)
    assert multiregion_statements(
        "signing_keys", [*THREE, "azure-westeurope"], "aws-us-east-1", current
    ) == ['ALTER DATABASE "signing_keys" ADD REGION IF NOT EXISTS "azure-westeurope"']


def test_a_changed_primary_is_switched_after_its_region_is_added() -> None:
    current = state("aws-us-east-1", ("gcp-us-central1",), "zone", DONE_TABLES)
    assert multiregion_statements("signing_keys", THREE, "aws-eu-west-1", current) == [
        'ALTER DATABASE "signing_keys" ADD REGION IF NOT EXISTS "aws-eu-west-1"',
        'ALTER DATABASE "signing_keys" SET PRIMARY REGION "aws-eu-west-1"',
        'ALTER DATABASE "signing_keys" SURVIVE REGION FAILURE',
    ]


def test_a_table_whose_locality_was_changed_by_hand_is_put_back() -> None:
    tables = {**DONE_TABLES, "access_tokens": "REGIONAL BY ROW", "audit_events": "GLOBAL"}
    current = state("aws-us-east-1", ("gcp-us-central1", "aws-eu-west-1"), "REGION", tables)
    assert multiregion_statements("signing_keys", THREE, "aws-us-east-1", current) == [
        'ALTER TABLE "access_tokens" SET LOCALITY GLOBAL',
        'ALTER TABLE "audit_events" SET LOCALITY REGIONAL BY TABLE IN PRIMARY REGION',
    ]


def test_a_database_region_no_longer_configured_is_reported_not_dropped() -> None:
    current = state(
        "aws-us-east-1", ("gcp-us-central1", "aws-eu-west-1", "old-region"), "region", DONE_TABLES
    )
    statements = multiregion_statements("signing_keys", THREE, "aws-us-east-1", current)
    assert statements == []
    assert cockroach.unlisted_regions(current, THREE) == ["old-region"]


def test_localities_are_compared_in_one_spelling() -> None:
    assert cockroach.normalize_locality("regional by table in  primary region") == (
        "REGIONAL BY TABLE IN PRIMARY REGION"
    )
    assert cockroach.normalize_locality(None) is None
