"""Translation between the core's records and the generated protobuf messages.

Pure functions, and :class:`KeyReplies`, which keeps GetSigningKey's replies built: no I/O,
no rules beyond the encoding. Field semantics mirror the HTTP API
(:mod:`service.http.keys`): times are strings of Unix seconds, the private key is base64 of
its PEM, and an empty string means "not given".

Messages are betterproto's (the Python client API), except for the hot RPCs' replies, which
the server builds with the protobuf runtime (upb; the ``*_upb`` functions): it decodes and
encodes them in C, once (see :mod:`service.grpc.servicer`). Both are built from the same
fields here, so the two cannot drift.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, Final, TypeVar, get_args

import betterproto

from service.core import crypto
from service.core.json import dumps, loads
from service.core.models import KeySource, ShownStatus
from service.core.models import SigningKey as Key
from service.core.times import unix_seconds
from service.core.verify import REASONS, Verification
from service.errors import InvalidRequestError
from service.grpc.generated.signingkeys import v1 as pb
from service.grpc.generated.signingkeys.v1 import signing_keys_pb2 as pb2

T = TypeVar("T")

_STATUS: Final[dict[ShownStatus, pb.KeyStatus]] = {
    status: pb.KeyStatus.from_string(status.upper()) for status in get_args(ShownStatus)
}
_SOURCE: Final[dict[KeySource, pb.KeySource]] = {
    source: pb.KeySource.from_string(source.upper()) for source in get_args(KeySource)
}
# The proto's enum names are the core's words upper-cased (INVALID_REASON_UNKNOWN_KEY ↔
# "unknown_key"); betterproto strips the enum's prefix from member names.
_REASON: Final[dict[str, pb.InvalidReason]] = {
    reason: pb.InvalidReason.from_string(reason.upper()) for reason in REASONS
}
_WATCH_KIND: Final[dict[str, pb.WatchEventKind]] = {
    kind: pb.WatchEventKind.from_string(kind.upper())
    for kind in ("snapshot", "synced", "changed", "progress")
}


def unix(moment: datetime | None) -> str:
    return unix_seconds(moment) or ""


def absent(value: T) -> T | None:
    """proto3 cannot tell "not given" from its default (``""``, ``0``): both mean not given."""
    return value or None


def signing_key(key: Key) -> pb.SigningKey:
    message = pb.SigningKey(**_key_fields(key))
    for name, seconds in _timestamps(key):
        setattr(message, name, datetime.fromtimestamp(seconds, UTC))
    return message


def signing_key_upb(key: Key, status: ShownStatus | None = None) -> pb2.SigningKey:
    """``status``: the status to show, if the caller has it (else as of now)."""
    message = pb2.SigningKey(**_key_fields(key, status))
    for name, seconds in _timestamps(key):
        getattr(message, name).FromSeconds(seconds)
    return message


class KeyReplies:
    """GetSigningKey's reply for a key, built once per key record and shown status.

    A reply changes only with its record (a frozen value: a revocation or an update is a new
    one) and with the status shown as of now (an active key shows ``expired`` once its
    expiry has passed), so a key read over and over is encoded into a message once, not on
    every read (the reply is most of the read's own work). The replies are shared: nothing
    may change one. Bounded: the ``size`` most recently added are kept (4096 keys, a few MB).

    >>> replies = KeyReplies()
    >>> replies.reply(key) is replies.reply(key)
    True
    """

    def __init__(self, *, size: int = 4096, clock: Callable[[], float] = time.time) -> None:
        self._size = size
        self._clock = clock
        self._replies: dict[Key, tuple[ShownStatus, pb2.GetSigningKeyResponse]] = {}

    def __repr__(self) -> str:
        return f"<KeyReplies {len(self._replies)}/{self._size}>"

    def __len__(self) -> int:
        return len(self._replies)

    def reply(self, key: Key) -> pb2.GetSigningKeyResponse:
        status = key.status_at(self._clock())
        # By the record's value, as the dict compares; the cache hands out the same record
        # object, which a dict matches by identity before comparing.
        known = self._replies.get(key)
        if known is not None and known[0] == status:
            return known[1]
        reply = pb2.GetSigningKeyResponse(key=signing_key_upb(key, status))
        if known is None and len(self._replies) >= self._size:
            del self._replies[next(iter(self._replies))]  # the oldest
        self._replies[key] = (status, reply)
        return reply


def _timestamps(key: Key) -> Iterator[tuple[str, int]]:
    """Every time also as a Timestamp, the same whole (clamped) second as its string; unset
    where the string is empty."""
    for name, moment in (
        ("create_time", key.created_at),
        ("update_time", key.updated_at),
        ("revoke_time", key.revoked_at),
        ("expire_time", key.expires_at),
        ("not_before_time", key.not_before),
    ):
        text = unix(moment)
        if text:
            yield name, int(text)


def _key_fields(key: Key, status: ShownStatus | None = None) -> dict[str, Any]:
    if status is None:
        # As HTTP shows it: expired once expires_at has passed (the stored status says active).
        status = key.status_at(time.time())
    return {
        "id": key.id,
        "created_at": unix(key.created_at),
        "environment_id": key.environment_id,
        "algorithm": key.algorithm,
        "status": _STATUS[status],
        "source": _SOURCE[key.source],
        "name": key.name or "",
        "fingerprint": key.fingerprint,
        "public_key": crypto.public_key_pem(key.public_key),
        "updated_at": unix(key.updated_at),
        "revoked_at": unix(key.revoked_at),
        "expires_at": unix(key.expires_at),
        "not_before": unix(key.not_before),
        "rotated_to": key.rotated_to or "",
    }


def private_key(pem: bytes) -> str:
    return base64.b64encode(pem).decode("ascii")


def public_key(request: pb.ImportSigningKeyRequest) -> object:
    """The imported key as the core takes it: PEM text, a decoded JWK, or ``None``."""
    form, value = betterproto.which_one_of(request, "public_key")
    if form == "jwk_json":
        try:
            return loads(str(value))
        except ValueError:
            raise InvalidRequestError("jwk_json is not valid JSON") from None
    return value or None


_NO_REASON: Final = pb.InvalidReason.from_string("UNSPECIFIED")


def invalid_reason(reason: str | None) -> pb.InvalidReason:
    return _NO_REASON if reason is None else _REASON[reason]


def verification_upb(verdict: Verification) -> pb2.VerifyTokenResponse:
    return pb2.VerifyTokenResponse(
        valid=verdict.valid,
        reason=invalid_reason(verdict.reason),
        reason_text=verdict.reason or "",
        key_id=verdict.key_id or "",
        environment_id=verdict.environment_id or "",
        claims_json=claims_json(verdict.claims),
    )


def watch_kind(kind: str) -> pb.WatchEventKind:
    return _WATCH_KIND[kind]


def claims_json(claims: dict[str, Any] | None) -> str:
    if claims is None:
        return ""
    return dumps(claims)
