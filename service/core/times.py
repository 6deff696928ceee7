"""Times as the APIs carry them: strings of Unix seconds (the reference platform's
``created_at`` is one), parsed in one place and rendered in one place."""

from __future__ import annotations

from datetime import UTC, datetime

from service.errors import InvalidRequestError


def parse_unix(value: object, name: str) -> datetime | None:
    """A time given as Unix seconds: an integer, or a decimal string of one."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidRequestError(f"{name} must be Unix seconds")
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except (ValueError, OverflowError, OSError):
        raise InvalidRequestError(f"{name} must be Unix seconds") from None


def unix_seconds(moment: datetime | None) -> str | None:
    """A stored time as a string of Unix seconds; ``None`` stays ``None``."""
    return None if moment is None else str(int(moment.timestamp()))
