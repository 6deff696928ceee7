"""Translation between the core's records and the generated protobuf messages.

Pure functions: no I/O, no rules beyond the encoding. Field semantics mirror the HTTP API
(:mod:`service.http.keys`): times are strings of Unix seconds, the private key is base64 of
its PEM, and an empty string means "not given".
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any, Final, get_args

import betterproto

from service.core import crypto
from service.core.models import KeySource, KeyStatus
from service.core.models import SigningKey as Key
from service.core.verify import REASONS
from service.errors import InvalidRequestError
from service.grpc.generated.signingkeys import v1 as pb

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
    kind: pb.WatchEventKind.from_string(kind.upper()) for kind in ("snapshot", "synced", "changed")
}


def unix(moment: datetime | None) -> str:
    return "" if moment is None else str(int(moment.timestamp()))


def parse_unix(value: str, name: str) -> datetime | None:
    """A time sent as a decimal string of Unix seconds; empty means none."""
    if not value:
        return None
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except (ValueError, OverflowError, OSError):
        raise InvalidRequestError(f"{name} must be Unix seconds") from None


def optional(value: str) -> str | None:
    return value or None


def signing_key(key: Key) -> pb.SigningKey:
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
    """The imported key as the core takes it: PEM text, or a JWK as a dict."""
    form, value = betterproto.which_one_of(request, "public_key")
    if form == "jwk_json":
        try:
            jwk: Any = json.loads(str(value))
        except ValueError:
            raise InvalidRequestError("jwk_json is not valid JSON") from None
        if not isinstance(jwk, dict):
            raise InvalidRequestError("jwk_json must be a JSON object")
        return jwk
    if form == "pem" and value:
        return value
    raise InvalidRequestError("public_key is required: set pem or jwk_json")


def invalid_reason(reason: str | None) -> pb.InvalidReason:
    if reason is None:
        return pb.InvalidReason.from_string("UNSPECIFIED")
    return _REASON[reason]


def watch_kind(kind: str) -> pb.WatchEventKind:
    return _WATCH_KIND[kind]


def claims_json(claims: dict[str, Any] | None) -> str:
    if claims is None:
        return ""
    return json.dumps(claims, separators=(",", ":"), ensure_ascii=False)
