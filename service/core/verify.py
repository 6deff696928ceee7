"""Token verification: a compact JWS/JWT in, a verdict with a reason out.

The rules: ``kid`` from the JOSE header, else from the payload (the reference
platform's current SDK puts it there); the algorithm is the key's own — ``none``, HS256 over
the public key and every other confusion is refused before any signature check; ``exp`` is
required, ``nbf`` honoured, both with a clock-skew leeway; an expected ``aud`` and ``sub`` are
checked when given; a key of one environment never verifies a token for another.

The signature is checked with ``cryptography`` directly — one call, no parsing, no
re-validation — because this is the hot path and the JOSE libraries cost 1.6-2.4x the raw
verify. Independent JOSE libraries make the test tokens.

Reasons say *why* without helping an attacker: a key of an environment the caller cannot see
is ``unknown_key``, exactly like a key that does not exist.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from service.core import consistency, crypto, times
from service.core.changes import ChangeFeed
from service.core.json import loads
from service.core.jwks import JwksDocument, JwksDocuments
from service.core.keycache import CachedKey, KeyCache
from service.core.metrics import CoreMetrics
from service.core.models import Principal, Scope, is_valid_id
from service.core.ports import KeyRecords
from service.core.ratelimit import KeyedBuckets
from service.core.requests import JwksRequest, VerifyRequest
from service.errors import (
    KeyUnavailableError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RegionUnavailableError,
    TooManyRequestsError,
)

log = structlog.get_logger(__name__)

Reason = Literal[
    "malformed",
    "unknown_key",
    "revoked_key",
    "expired",
    "not_yet_valid",
    "bad_signature",
    "wrong_audience",
    "wrong_subject",
    "algorithm_mismatch",
    "unsupported_key",
    "key_not_yet_valid",
]
REASONS: Final[tuple[Reason, ...]] = get_args(Reason)
# RFC 9864 names Ed25519 explicitly; older libraries say EdDSA. Both mean our EdDSA keys.
_ALGORITHM_ALIASES: Final = {"Ed25519": "EdDSA"}
DEFAULT_MISS_BUDGET: Final = 50  # database look-ups of uncached kids per second per caller
_MAX_KID_LENGTH: Final = 128


@dataclass(frozen=True, slots=True, kw_only=True)
class Verification:
    """The verdict: ``claims`` only when valid, ``reason`` only when not."""

    valid: bool
    reason: Reason | None = None
    key_id: str | None = None
    environment_id: str | None = None
    claims: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "reason": self.reason,
            "key_id": self.key_id,
            "environment_id": self.environment_id,
            "claims": self.claims,
        }


class _Invalid(Exception):
    def __init__(self, reason: Reason, key: CachedKey | None = None) -> None:
        self.reason = reason
        self.key = key


class TokenVerifier:
    """Verifies tokens against the cached keys; falls back to the database on a miss."""

    def __init__(
        self,
        records: KeyRecords,
        cache: KeyCache,
        feed: ChangeFeed,
        *,
        max_token_bytes: int,
        clock_skew: float,
        max_staleness: float,
        miss_budget: float = DEFAULT_MISS_BUDGET,
        metrics: CoreMetrics | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._records = records
        self._cache = cache
        self._feed = feed
        self._max_token_bytes = max_token_bytes
        self._skew = clock_skew
        self._max_staleness = max_staleness
        self._clock = clock
        # Per caller: one tenant flooding random kids cannot starve another's look-ups.
        self._misses = KeyedBuckets(miss_budget, clock=monotonic)
        self._metrics = metrics if metrics is not None else CoreMetrics()
        self.jwks_documents = JwksDocuments(records, cache, feed, clock=clock)

    def can_serve(self) -> bool:
        """False once the last known good keys are older than the allowed staleness."""
        return self._feed.staleness() <= self._max_staleness

    async def verify(self, principal: Principal, request: VerifyRequest) -> Verification:
        token, environment_id = request.token, request.environment_id
        if Scope.VERIFY not in principal.scopes:
            raise PermissionDeniedError("this access token lacks the 'verify' scope")
        if environment_id is not None and environment_id not in principal.environments:
            raise PermissionDeniedError("this access token is not valid for that environment")
        if len(token) > self._max_token_bytes:
            raise PayloadTooLargeError(f"tokens are limited to {self._max_token_bytes} bytes")
        if not self.can_serve():
            raise RegionUnavailableError(
                "no region has been reachable for longer than the allowed key staleness"
            )
        try:
            return await self._verify(
                principal, token, environment_id, request.audience, request.subject
            )
        except _Invalid as invalid:
            key = invalid.key
            return Verification(
                valid=False,
                reason=invalid.reason,
                key_id=key.record.id if key else None,
                environment_id=key.record.environment_id if key else None,
            )

    async def _verify(
        self,
        principal: Principal,
        token: str,
        environment_id: str | None,
        audience: str | None,
        subject: str | None,
    ) -> Verification:
        header_b64, payload_b64, header, payload, signature = _split(token)
        kid = header.get("kid", payload.get("kid"))
        if not isinstance(kid, str) or not 0 < len(kid) <= _MAX_KID_LENGTH:
            raise _Invalid("malformed")
        if not is_valid_id(kid):
            raise _Invalid("unknown_key")  # no key has such an id: no need to look
        key = await self._resolve(principal, kid, payload)
        if key is None or not _may_see(principal, key, environment_id):
            raise _Invalid("unknown_key")
        record = key.record
        now = self._clock()
        if not record.is_active or (
            record.expires_at is not None and times.seconds(record.expires_at) <= now
        ):
            raise _Invalid("revoked_key", key)
        if record.not_before is not None:
            _check_key_started(times.seconds(record.not_before), payload, now, self._skew, key)
        if key.public_key is None:  # stored before today's key rules: never used
            raise _Invalid("unsupported_key", key)
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise _Invalid("malformed", key)
        if _ALGORITHM_ALIASES.get(alg, alg) != record.algorithm:
            raise _Invalid("algorithm_mismatch", key)
        signing_input = f"{header_b64}.{payload_b64}".encode("ascii")
        if not _signature_ok(key.public_key, signing_input, signature):
            raise _Invalid("bad_signature", key)
        _check_claims(payload, now, self._skew, audience, subject, key)
        return Verification(
            valid=True,
            key_id=record.id,
            environment_id=record.environment_id,
            claims=payload,
        )

    async def _resolve(
        self, principal: Principal, kid: str, payload: dict[str, Any]
    ) -> CachedKey | None:
        scope = consistency.current()
        # The caller passed a consistency token: the cache may be older than the write it
        # names (the change feed has not polled since), so ask the database, which reads at
        # or past it; the cache never goes backwards, so what it returns is no older. Within
        # the caller's miss budget: past it, the cache answers, as without a token.
        if (
            scope is not None
            and scope.required is not None
            and self._misses.take(principal.token_id)
        ):
            # No region at or past the token's position: say so (503, retry), rather than
            # answer unknown_key for a key the caller knows was written.
            return await self._look_up(kid)
        cached = self._cache.get(kid)
        if cached is not None:
            return cached
        if self._cache.is_known_unknown(kid) or (
            self._cache.complete and not self._may_be_newer_than_cache(payload)
        ):
            return None
        # Only the database can tell; when it cannot be asked, the answer is "try again"
        # (fail closed), never unknown_key, which a caller reads as "forged".
        if not self._misses.take(principal.token_id):
            raise TooManyRequestsError(
                "too many look-ups of key ids this instance does not hold; retry later",
                retry_after=self._misses.wait(principal.token_id),
            )
        return await self._look_up(kid)

    def _may_be_newer_than_cache(self, payload: dict[str, Any]) -> bool:
        """Whether the token was issued (``iat``, else ``nbf``) recently enough that its
        key may have been created after the cache last heard of changes: on another
        instance, since the change feed's last poll. Such a miss is looked up rather than
        answered ``unknown_key`` from the cache."""
        issued = payload.get("iat", payload.get("nbf"))
        if isinstance(issued, bool) or not isinstance(issued, int | float):
            return False
        now = self._clock()
        return now - self._feed.staleness() - self._skew <= issued <= now + self._skew

    async def _look_up(self, kid: str) -> CachedKey | None:
        self._metrics.key_lookups.inc()
        try:
            record = await self._records.get(kid)
        except RegionUnavailableError as exc:
            if isinstance(exc, KeyUnavailableError):
                raise
            raise KeyUnavailableError(
                "no region answered the look-up of the token's key; retry shortly"
            ) from exc
        if record is None:
            self._cache.mark_unknown(kid)
            return None
        return self._cache.put(record)

    async def jwks(self, principal: Principal, request: JwksRequest) -> JwksDocument:
        """The environment's active keys as a JWK Set, with its ETag."""
        environment_id = request.environment_id
        if not principal.scopes & {Scope.READ, Scope.VERIFY}:
            raise PermissionDeniedError("this access token lacks the 'read' or 'verify' scope")
        if environment_id not in principal.environments:
            raise PermissionDeniedError("this access token is not valid for that environment")
        return await self.jwks_documents.get(environment_id)


def _may_see(principal: Principal, key: CachedKey, environment_id: str | None) -> bool:
    owner = key.record.environment_id
    if environment_id is not None and owner != environment_id:
        return False
    return owner in principal.environments


def _split(token: str) -> tuple[str, str, dict[str, Any], dict[str, Any], bytes]:
    # Not stripped: a compact JWS has no whitespace, and one token must have one spelling.
    parts = token.split(".")
    if len(parts) != 3:
        raise _Invalid("malformed")
    header_b64, payload_b64, signature_b64 = parts
    try:
        header = loads(crypto.b64url_decode(header_b64))
        payload = loads(crypto.b64url_decode(payload_b64))
        # An empty signature (``alg: none``) parses, and is refused by the algorithm check.
        signature = crypto.b64url_decode(signature_b64) if signature_b64 else b""
    except (ValueError, UnicodeDecodeError):
        raise _Invalid("malformed") from None
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise _Invalid("malformed")
    if header.get("crit") is not None:
        raise _Invalid("malformed")  # no critical extensions are understood here
    return header_b64, payload_b64, header, payload, signature


def _signature_ok(key: crypto.PublicKey, signing_input: bytes, signature: bytes) -> bool:
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(key, ec.EllipticCurvePublicKey):
            if len(signature) != 64:  # JWS ES256 is raw r || s, 32 bytes each
                return False
            r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            key.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(hashes.SHA256()))
        else:
            key.verify(signature, signing_input)
    except InvalidSignature:
        return False
    return True


def _number(payload: dict[str, Any], name: str, key: CachedKey) -> float | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid("malformed", key)
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        raise _Invalid("malformed", key) from None
    if not math.isfinite(number):
        raise _Invalid("malformed", key)
    return number


def _check_key_started(
    not_before: float, payload: dict[str, Any], now: float, skew: float, key: CachedKey
) -> None:
    """A key published ahead of its not_before may not sign before it: fail closed. Before
    that moment no token of it verifies (no leeway: no legitimate signer used it yet); after
    it, a token whose ``iat`` says it was signed earlier is refused too (within the skew)."""
    if now < not_before:
        raise _Invalid("key_not_yet_valid", key)
    iat = _number(payload, "iat", key)
    if iat is not None and iat + skew < not_before:
        raise _Invalid("key_not_yet_valid", key)


def _check_claims(
    payload: dict[str, Any],
    now: float,
    skew: float,
    audience: str | None,
    subject: str | None,
    key: CachedKey,
) -> None:
    exp = _number(payload, "exp", key)
    if exp is None:
        raise _Invalid("malformed", key)  # exp is required
    if exp + skew <= now:
        raise _Invalid("expired", key)
    nbf = _number(payload, "nbf", key)
    if nbf is not None and nbf - skew > now:
        raise _Invalid("not_yet_valid", key)
    if audience is not None:
        aud = payload.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if audience not in audiences:
            raise _Invalid("wrong_audience", key)
    if subject is not None and payload.get("sub") != subject:
        raise _Invalid("wrong_subject", key)
