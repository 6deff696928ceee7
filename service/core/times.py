"""Times as the APIs carry them: strings of Unix seconds (the reference platform's
``created_at`` is one), parsed in one place and rendered in one place.

One range holds for every time a caller gives: whole seconds from the Unix epoch to the last
second of year 9999, :data:`EARLIEST` to :data:`LATEST`. Python's ``datetime`` cannot go
beyond it, and the database would keep year 1 as ``-infinity``, a value no reader could
render. Rendering never fails: a stored time outside the range (written by an older version,
or by hand) is clamped into it, so one row cannot break the reads of its environment.

>>> parse_unix("1893456000", "expires_at")
datetime.datetime(2030, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)
>>> unix_seconds(datetime.min)
'0'
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Final

from service.errors import InvalidRequestError

EARLIEST: Final = 0  # 1970-01-01T00:00:00Z
LATEST: Final = 253_402_300_799  # 9999-12-31T23:59:59Z
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND: Final = timedelta(seconds=1)
# Plain ASCII digits only: int() also takes " 5", "+5", "1_0" and "٣". Twelve digits hold
# LATEST; more can only be out of range, and are refused before int() reads them.
_DIGITS: Final = re.compile(r"[0-9]{1,12}")


def parse_unix(value: object, name: str) -> datetime | None:
    """A time given as Unix seconds, an integer or a decimal string of one, within
    :data:`EARLIEST`..:data:`LATEST`; ``None`` stays ``None``."""
    if value is None:
        return None
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not EARLIEST <= value <= LATEST:
        raise InvalidRequestError(
            f"{name} must be Unix seconds: a whole number from {EARLIEST} to {LATEST} "
            "(years 1970 to 9999)"
        )
    return EPOCH + value * _SECOND


def is_in_range(moment: datetime) -> bool:
    """Whether an aware ``moment`` falls within the range callers may give."""
    return moment.tzinfo is not None and EARLIEST <= (moment - EPOCH) / _SECOND <= LATEST


def seconds(moment: datetime) -> float:
    """A stored time as Unix seconds, clamped into :data:`EARLIEST`..:data:`LATEST`; never
    raises. A naive time is read as UTC: asyncpg returns the database's ``±infinity`` as the
    naive ``datetime.min`` and ``datetime.max``."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    # Subtracting aware datetimes cannot overflow, whatever their years (``timestamp()``
    # converts to a time zone first, and fails at the edges of year 1 and year 9999).
    return min(max((moment - EPOCH) / _SECOND, EARLIEST), LATEST)


def unix_seconds(moment: datetime | None) -> str | None:
    """A stored time as a string of whole Unix seconds (clamped as :func:`seconds` does);
    ``None`` stays ``None``."""
    return None if moment is None else str(int(seconds(moment)))
