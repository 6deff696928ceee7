"""What a database failure means for routing: retry elsewhere, back off, or give up.

The error *classes* the service raises live in :mod:`service.errors`; this module only sorts
the foreign exceptions that asyncpg and the operating system raise into the few kinds the
router acts on, and renders them as short strings that are safe to show and log.
"""

from __future__ import annotations

import enum
import re

import asyncpg

from service.errors import ServiceError

_MAX_ERROR_LENGTH = 160
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)
_PASSWORD = re.compile(r"(password\s*[=:]\s*)\S+", re.IGNORECASE)


class Failure(enum.Enum):
    """The kinds of failure the router treats differently."""

    CONNECTION = "connection"  # the region could not be reached, or dropped the connection
    TIMEOUT = "timeout"  # a connect, acquire or statement ran out of time
    SERIALIZATION = "serialization"  # 40001 / 40P01: rolled back for sure, retry with backoff
    AMBIGUOUS = "ambiguous"  # 40003: the server itself does not know whether it committed
    READ_ONLY = "read_only"  # a write reached a standby (25006, or SERIALIZABLE on hot standby)
    BEHIND = "behind"  # a read's region has not replayed the position the read must see


_CONNECTION_SQLSTATES = frozenset(
    {
        "53300",  # too_many_connections
        "57P01",  # admin_shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now (starting up, shutting down, in recovery without hot standby)
    }
)
_SERIALIZATION_SQLSTATES = frozenset({"40001", "40P01"})


def classify_failure(exc: BaseException) -> Failure | None:
    """Sort ``exc`` into a :class:`Failure`, or ``None`` when routing cannot help.

    ``None`` covers the caller's own errors (a :class:`ServiceError` raised by an operation,
    a unique violation, bad SQL): they would fail the same way anywhere.
    """
    if isinstance(exc, ServiceError):
        return None
    if isinstance(exc, TimeoutError):
        return Failure.TIMEOUT
    if isinstance(exc, asyncpg.PostgresConnectionError):
        return Failure.CONNECTION
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = getattr(exc, "sqlstate", None)
        if sqlstate in _SERIALIZATION_SQLSTATES:
            return Failure.SERIALIZATION
        if sqlstate == "40003":
            return Failure.AMBIGUOUS
        if sqlstate == "25006":
            return Failure.READ_ONLY
        if sqlstate == "0A000" and "hot standby" in str(exc).lower():
            # PostgreSQL refuses SERIALIZABLE on a standby before any write is attempted.
            return Failure.READ_ONLY
        if sqlstate in _CONNECTION_SQLSTATES:
            return Failure.CONNECTION
        return None
    if isinstance(exc, asyncpg.exceptions.DataError):
        # Arguments asyncpg could not encode: the caller's fault, and their text may carry
        # caller data, so it must never be matched against below.
        return None
    if isinstance(exc, asyncpg.InterfaceError):
        # "connection is closed", "pool is closing": the connection cannot be used. Other
        # interface errors (bad arguments) are the caller's.
        # "…released back to the pool": the server ended the session under us (asyncpg
        # detaches a connection that closed while checked out).
        text = str(exc).lower()
        return Failure.CONNECTION if "clos" in text or "released back to the pool" in text else None
    if isinstance(exc, asyncpg.exceptions.InternalClientError):
        return Failure.CONNECTION  # protocol state is unknown: the connection is unusable
    if isinstance(exc, OSError | EOFError):
        return Failure.CONNECTION
    return None


def describe_error(exc: BaseException) -> str:
    """A short, single-line description of ``exc`` that carries no DSN or password."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    text = _URL.sub("<url>", text)
    text = _PASSWORD.sub(r"\1<redacted>", text)
    name = type(exc).__name__
    summary = f"{name}: {text}" if text else name
    if len(summary) > _MAX_ERROR_LENGTH:
        summary = summary[: _MAX_ERROR_LENGTH - 1] + "…"
    return summary
