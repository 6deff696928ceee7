"""Sorting database failures into what the router does about them; safe error strings."""

from __future__ import annotations

import asyncpg
import pytest

from service.errors import NotFoundError, RegionUnavailableError
from service.locality.failures import Failure, classify_failure, describe_error


def postgres_error(sqlstate: str, message: str = "boom") -> asyncpg.PostgresError:
    """The exception asyncpg raises when the server answers with ``sqlstate``."""
    error: asyncpg.PostgresError = asyncpg.PostgresError.new(
        {"C": sqlstate, "M": message, "S": "ERROR"}
    )
    return error


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ConnectionRefusedError(111, "Connect call failed"), Failure.CONNECTION),
        (ConnectionResetError(), Failure.CONNECTION),
        (asyncpg.ConnectionDoesNotExistError("closed in the middle"), Failure.CONNECTION),
        (asyncpg.InterfaceError("connection is closed"), Failure.CONNECTION),
        (TimeoutError(), Failure.TIMEOUT),
        (postgres_error("57P01"), Failure.CONNECTION),
        (postgres_error("57P03"), Failure.CONNECTION),
        (postgres_error("53300"), Failure.CONNECTION),
        (postgres_error("40001"), Failure.SERIALIZATION),
        (postgres_error("40P01"), Failure.SERIALIZATION),
        (postgres_error("40003"), Failure.AMBIGUOUS),
        (postgres_error("25006"), Failure.READ_ONLY),
        (
            postgres_error("0A000", "cannot use serializable mode in a hot standby"),
            Failure.READ_ONLY,
        ),
        (postgres_error("0A000", "some other unsupported feature"), None),
        (postgres_error("23505"), None),
        (postgres_error("42601"), None),
        (asyncpg.DataError("invalid input for query argument"), None),
        (NotFoundError("no such key"), None),
        (RegionUnavailableError("ours, not the driver's"), None),
        (ValueError("caller bug"), None),
    ],
)
def test_classify_failure(exc: BaseException, expected: Failure | None) -> None:
    assert classify_failure(exc) is expected


def test_describe_error_strips_dsns_and_passwords() -> None:
    exc = OSError("cannot reach postgresql://admin:hunter2@db.internal:5432/keys password=hunter2")
    text = describe_error(exc)
    assert "hunter2" not in text
    assert "admin" not in text
    assert text.startswith("OSError: ")


def test_describe_error_is_one_short_line() -> None:
    text = describe_error(RuntimeError("x" * 500 + "\nsecond line"))
    assert "\n" not in text
    assert len(text) <= 160
