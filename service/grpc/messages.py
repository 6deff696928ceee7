"""Translation between the core's records and the generated protobuf messages.

Pure functions: no I/O, no rules beyond the encoding. Field semantics mirror the HTTP API
(:mod:`service.http.keys`): times are strings of Unix seconds, the private key is base64 of
its PEM, and an empty string means "not given".
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any, Final, TypeVar, get_args

import betterproto

from service.core import crypto
from service.core.json import dumps, loads
from service.core.models import KeySource, KeyStatus
from service.core.models import SigningKey as Key
from service.core.times import unix_seconds
from service.core.verify import REASONS
from service.errors import InvalidRequestError
from service.grpc.generated.signingkeys import v1 as pb

T = TypeVar("T")

_STATUS: Final[dict[KeyStatus, pb.KeyStatus]] = {
    status: pb.KeyStatus.from_string(status.upper()) for status in get_args(KeyStatus)
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
    message = _signing_key(key)
    # Every time also as a Timestamp, the same whole (clamped) second as its string; unset
    # where the string is empty.
    for name, moment in (
        ("create_time", key.created_at),
        ("update_time", key.updated_at),
        ("revoke_time", key.revoked_at),
        ("expire_time", key.expires_at),
    ):
        text = unix(moment)
        if text:
            setattr(message, name, datetime.fromtimestamp(int(text), UTC))
    return message


def _signing_key(key: Key) -> pb.SigningKey:
    return pb.SigningKey(
        id=key.id,
        created_at=unix(key.created_at),
        environment_id=key.environment_id,
        algorithm=key.algorithm,
        status=_STATUS[key.status],
        source=_SOURCE[key.source],
        name=key.name or "",
        fingerprint=key.fingerprint,
        public_key=crypto.public_key_pem(key.public_key),
        updated_at=unix(key.updated_at),
        revoked_at=unix(key.revoked_at),
        expires_at=unix(key.expires_at),
    )


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


def invalid_reason(reason: str | None) -> pb.InvalidReason:
    if reason is None:
        return pb.InvalidReason.from_string("UNSPECIFIED")
    return _REASON[reason]


def watch_kind(kind: str) -> pb.WatchEventKind:
    return _WATCH_KIND[kind]


def claims_json(claims: dict[str, Any] | None) -> str:
    if claims is None:
        return ""
    return dumps(claims)
