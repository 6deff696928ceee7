"""Which regions may serve a read that must see a commit position (pure)."""

from __future__ import annotations

import pytest

from service.core.consistency import CommitPosition
from service.errors import InvalidConsistencyTokenError
from service.locality.positions import check_cluster, replay_of

AT = CommitPosition("42", 2, 10_000)


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        ({"engine": "cockroachdb", "is_writer": True, "timeline": None, "lsn": None}, "replayed"),
        ({"engine": "postgresql", "is_writer": True, "timeline": 2, "lsn": 1}, "replayed"),
        ({"engine": "postgresql", "is_writer": True, "timeline": 3, "lsn": 1}, "replayed"),
        ({"engine": "postgresql", "is_writer": False, "timeline": 2, "lsn": 10_000}, "replayed"),
        ({"engine": "postgresql", "is_writer": False, "timeline": 3, "lsn": 20_000}, "replayed"),
        ({"engine": "postgresql", "is_writer": False, "timeline": 2, "lsn": 9_999}, "unknown"),
        ({"engine": "postgresql", "is_writer": False, "timeline": 2, "lsn": None}, "unknown"),
        ({"engine": None, "is_writer": False, "timeline": None, "lsn": None}, "unknown"),
        # An old primary, or a standby following one: never, whatever its position says.
        ({"engine": "postgresql", "is_writer": True, "timeline": 1, "lsn": 99_999}, "never"),
        ({"engine": "postgresql", "is_writer": False, "timeline": 1, "lsn": 99_999}, "never"),
    ],
)
def test_replay_of(facts: dict[str, object], expected: str) -> None:
    assert replay_of(AT, **facts) == expected  # type: ignore[arg-type]


def test_a_position_of_another_database_is_refused() -> None:
    check_cluster(AT, "42")
    check_cluster(AT, None)  # not known yet: nothing to compare
    with pytest.raises(InvalidConsistencyTokenError, match="another database"):
        check_cluster(AT, "43")
