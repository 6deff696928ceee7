"""Times: one range for every time a caller gives, and rendering that never fails."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from service.core import times
from service.core.requests import CreateKeyRequest, ImportKeyRequest, KeySpec
from service.errors import InvalidRequestError

PEM = (
    "-----BEGIN PUBLIC KEY-----\n"
    "MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n"
    "-----END PUBLIC KEY-----\n"
)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (0, datetime(1970, 1, 1, tzinfo=UTC)),
        ("1893456000", datetime(2030, 1, 1, tzinfo=UTC)),
        (1893456000, datetime(2030, 1, 1, tzinfo=UTC)),
        ("253402300799", datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),
        (None, None),
    ],
)
def test_unix_seconds_from_1970_to_the_end_of_9999_are_accepted(
    given: object, expected: datetime | None
) -> None:
    assert times.parse_unix(given, "expires_at") == expected


@pytest.mark.parametrize(
    "given",
    [
        "-62135596800",  # year 1: the database kept it as -infinity
        -62135596800,
        -1,
        "-1",
        253402300800,  # year 10000
        "253402300800",
        "9" * 13,
        "9" * 5000,  # longer than int() would even read
        " 5",
        "+5",
        "1_0",
        "٣",
        "1.5",
        1.5,
        True,
        "",
        "soon",
        [],
    ],
)
def test_anything_else_is_refused_with_the_range_in_the_message(given: object) -> None:
    with pytest.raises(InvalidRequestError, match="expires_at must be Unix seconds") as refused:
        times.parse_unix(given, "expires_at")
    assert "0 to 253402300799" in str(refused.value)


@pytest.mark.parametrize("expires_at", ["-62135596800", "253402300800", -5])
def test_create_and_import_refuse_an_expiry_out_of_range(expires_at: object) -> None:
    with pytest.raises(InvalidRequestError, match="expires_at"):
        CreateKeyRequest.parse(algorithm="EdDSA", expires_at=expires_at)
    with pytest.raises(InvalidRequestError, match="expires_at"):
        ImportKeyRequest.parse(public_key=PEM, expires_at=expires_at)


@pytest.mark.parametrize(
    "expires_at",
    [datetime(1, 1, 1, tzinfo=UTC), datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC)],
)
def test_a_key_spec_built_in_code_holds_to_the_same_range(expires_at: datetime) -> None:
    with pytest.raises(InvalidRequestError, match="expires_at must fall within"):
        KeySpec(algorithm="EdDSA", expires_at=expires_at)


@pytest.mark.parametrize(
    ("stored", "rendered"),
    [
        (None, None),
        (datetime(2030, 1, 1, tzinfo=UTC), "1893456000"),
        (datetime(2030, 1, 1, 0, 0, 0, 999_999, tzinfo=UTC), "1893456000"),
        # asyncpg's -infinity and +infinity: naive datetime.min and datetime.max
        (datetime.min, "0"),
        (datetime.max, "253402300799"),
        (datetime(1, 1, 1, tzinfo=UTC), "0"),
        (datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14))), "0"),
        (datetime.max.replace(tzinfo=timezone(timedelta(hours=-14))), "253402300799"),
        (datetime(1969, 7, 20, tzinfo=UTC), "0"),
    ],
)
def test_any_stored_time_renders_clamped_into_the_range(
    stored: datetime | None, rendered: str | None
) -> None:
    assert times.unix_seconds(stored) == rendered
