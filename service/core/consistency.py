"""Read your writes: commit positions, the consistency token, and what one request must see.

A write on PostgreSQL commits at a *position* of the cluster's write-ahead log: the system
identifier (which database), the timeline (which history, after promotions) and the log
sequence number. A region whose data has reached that position holds the write; reading
only from such regions (or from the writer) is how a read sees an earlier write.

Two scopes ask for it:

- the **request**: a client passes back the token a write answered with
  (``X-Consistency-Token`` / ``x-consistency-token``), on any instance; the request's reads
  then run only where the data is at or past its position (:func:`bind`);
- the **instance**: the reads of every request on an instance see every write that
  instance made before (the store keeps the newest position it wrote).

The token is opaque to clients: unpadded base64url of a version byte, the system identifier
(8 bytes), the timeline (4 bytes) and the LSN (8 bytes), all big-endian. It is validated,
not signed: a forged one can only make a read stricter (send it to the writer), never let it
see less. A token naming another database is refused with ``invalid_consistency_token``
(by the router, which knows the cluster). On CockroachDB every read is consistent already:
writes answer no token, and a token passed back is checked for shape and otherwise ignored.

>>> token = encode_token(CommitPosition("7301234567890123456", 1, 0x3000060))
>>> decode_token(token) == CommitPosition("7301234567890123456", 1, 0x3000060)
True
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import struct
from dataclasses import dataclass
from typing import Final

from service.errors import InvalidConsistencyTokenError

TOKEN_VERSION: Final = 1
_LAYOUT: Final = struct.Struct(">BQIQ")  # version, system identifier, timeline, LSN
_TOKEN_LENGTH: Final = 28  # base64url of 21 bytes, unpadded
_MAX_U64: Final = 2**64 - 1


@dataclass(frozen=True, slots=True)
class CommitPosition:
    """A point in one PostgreSQL cluster's history: everything committed up to ``lsn``
    (bytes since 0/0) on ``timeline`` of the database ``system_identifier``."""

    system_identifier: str  # pg_control_system().system_identifier, as decimal text
    timeline: int
    lsn: int

    def __post_init__(self) -> None:
        system = self.system_identifier
        if not (system.isascii() and system.isdigit()) or int(system) > _MAX_U64:
            raise ValueError(f"not a system identifier: {self.system_identifier!r}")
        if not 1 <= self.timeline < 2**32 or not 0 <= self.lsn <= _MAX_U64:
            raise ValueError(f"not a WAL position: timeline {self.timeline}, lsn {self.lsn}")

    def sort_key(self) -> tuple[int, int]:
        """Later timelines come after earlier ones: a write on a new timeline follows every
        write the promotion kept from the old one."""
        return (self.timeline, self.lsn)


def later(a: CommitPosition | None, b: CommitPosition | None) -> CommitPosition | None:
    """The later of two positions of one cluster (of two databases: the first); either may
    be missing."""
    if a is None:
        return b
    if b is None or a.system_identifier != b.system_identifier:
        return a
    return a if a.sort_key() >= b.sort_key() else b


def encode_token(position: CommitPosition) -> str:
    """The opaque token a write answers with."""
    return _base64url(
        _LAYOUT.pack(
            TOKEN_VERSION, int(position.system_identifier), position.timeline, position.lsn
        )
    )


def _base64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_token(token: str) -> CommitPosition:
    """The position a token names; :class:`InvalidConsistencyTokenError` for anything this
    service did not hand out (the message never repeats the value)."""
    if len(token) != _TOKEN_LENGTH or not token.isascii():
        raise InvalidConsistencyTokenError(
            "the consistency token is not one this service handed out (wrong length)"
        )
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise InvalidConsistencyTokenError(
            "the consistency token is not one this service handed out (not base64url)"
        ) from None
    if _base64url(raw) != token:
        raise InvalidConsistencyTokenError(
            "the consistency token is not one this service handed out (not canonical)"
        )
    version, system, timeline, lsn = _LAYOUT.unpack(raw)
    if version != TOKEN_VERSION:
        raise InvalidConsistencyTokenError(
            f"the consistency token has version {version}; this service reads version "
            f"{TOKEN_VERSION}"
        )
    try:
        return CommitPosition(str(system), timeline, lsn)
    except ValueError:
        raise InvalidConsistencyTokenError(
            "the consistency token is not one this service handed out (no such position)"
        ) from None


class Consistency:
    """What one request must see and what it wrote: ``required`` is the position of the
    client's token (if any); ``written`` the position of the request's last write, which
    the transport hands back as the new token."""

    __slots__ = ("required", "written")

    def __init__(self, required: CommitPosition | None = None) -> None:
        self.required = required
        self.written: CommitPosition | None = None

    def __repr__(self) -> str:
        return f"<Consistency required={self.required} written={self.written}>"

    def token(self) -> str | None:
        """The token to answer with: the request's write, else nothing."""
        return None if self.written is None else encode_token(self.written)


_current: contextvars.ContextVar[Consistency | None] = contextvars.ContextVar(
    "consistency", default=None
)


def bind(token: str | None) -> Consistency:
    """Start the current request's consistency scope from the token it carries (``None``
    or empty: none); raises :class:`InvalidConsistencyTokenError` for a malformed one."""
    required = decode_token(token) if token else None
    scope = Consistency(required)
    _current.set(scope)
    return scope


def current() -> Consistency | None:
    """The current request's scope; ``None`` outside a request (background pollers)."""
    return _current.get()
