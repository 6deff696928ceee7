"""Access tokens: issuing them, parsing the ``Authorization`` header, and authenticating.

A token is an id plus a 256-bit random secret. Only SHA-256 of the secret is stored: the
secret's entropy makes a slow password hash pointless, so checking a credential costs one
fast hash and a constant-time comparison — and, thanks to a small bounded cache, no database
round trip on the hot path.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Final

import cachetools
import structlog

from service.core.models import AccessToken, Api, Principal, Scope, check_id
from service.core.ports import TokenRecords
from service.errors import DependencyError, InvalidRequestError, UnauthenticatedError

log = structlog.get_logger(__name__)

TOKEN_ID_PREFIX: Final = "skt_"
_TOKEN_ID: Final = re.compile(r"skt_[A-Za-z0-9]{16}")
# Short: a token just issued in another region may not have replicated here yet.
DEFAULT_UNKNOWN_TTL: Final = 0.5
DEFAULT_CREDENTIAL_CACHE_SIZE: Final = 10_000
MAX_CREDENTIAL_LENGTH: Final = 512
# Ids and secrets are printable ASCII (letters, digits, URL-safe base64); anything else — a
# raw byte a transport decoded as it could, a control character — cannot be a credential.
_CREDENTIAL = re.compile(r"[\x21-\x7e]+")


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


def new_access_token(
    scopes: Iterable[Scope], environments: Iterable[str], *, name: str | None = None
) -> tuple[AccessToken, str]:
    """A new token record and its secret; the secret is shown to its owner once."""
    scopes, environments = frozenset(scopes), frozenset(environments)
    if not scopes:
        raise InvalidRequestError("an access token needs at least one scope")
    if not environments:
        raise InvalidRequestError("an access token needs at least one environment")
    for environment in environments:
        check_id(environment, "environment id")
    secret = secrets.token_urlsafe(32)
    token = AccessToken(
        id=TOKEN_ID_PREFIX + secrets.token_urlsafe(12).replace("-", "x").replace("_", "y"),
        secret_hash=hash_secret(secret),
        scopes=scopes,
        environments=environments,
        name=name,
    )
    return token, secret


def parse_authorization(header: str | None) -> tuple[str, str]:
    """``Basic base64(id:secret)`` or ``Bearer id:secret`` → (id, secret)."""
    if not header:
        raise UnauthenticatedError(
            "missing credentials: send an access token as HTTP Basic (id:secret) or Bearer"
        )
    if len(header) > MAX_CREDENTIAL_LENGTH:
        raise UnauthenticatedError("the Authorization header is too long")
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "basic":
        try:
            value = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise UnauthenticatedError("malformed Basic credentials") from None
    elif scheme.lower() != "bearer":
        raise UnauthenticatedError("unsupported authorization scheme: use Basic or Bearer")
    token_id, sep, secret = value.partition(":")
    if not sep or not token_id or not secret:
        raise UnauthenticatedError("credentials must be an access token id and secret")
    if not (_CREDENTIAL.fullmatch(token_id) and _CREDENTIAL.fullmatch(secret)):
        raise UnauthenticatedError("credentials must be printable ASCII")
    return token_id, secret


class Authenticator:
    """Turns an (id, secret) pair into a :class:`Principal`, caching token records.

    A record is re-read after ``cache_ttl`` seconds, so a revoked token stops working within
    that time. When no region can answer, the last record read is used for up to
    ``max_staleness`` seconds (last known good, like the keys), so verification outlives a
    database outage. Ids that do not look like ours never reach the database; unknown ones
    are remembered briefly apart, so a flood of them cannot evict real credentials.
    """

    def __init__(
        self,
        tokens: TokenRecords,
        *,
        cache_ttl: float,
        max_staleness: float,
        cache_size: int = DEFAULT_CREDENTIAL_CACHE_SIZE,
        unknown_ttl: float = DEFAULT_UNKNOWN_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tokens = tokens
        self._ttl = cache_ttl
        self._max_staleness = max_staleness
        self._clock = clock
        self._known: cachetools.LRUCache[str, tuple[AccessToken, float]] = cachetools.LRUCache(
            maxsize=cache_size
        )
        self._unknown: cachetools.TTLCache[str, bool] = cachetools.TTLCache(
            maxsize=cache_size, ttl=unknown_ttl, timer=clock
        )

    async def authenticate(
        self, token_id: str, secret: str, *, api: Api, request_id: str | None = None
    ) -> Principal:
        token = await self._lookup(token_id) if _TOKEN_ID.fullmatch(token_id) else None
        # Compare even when the token is unknown, so timing does not tell which ids exist.
        expected = token.secret_hash if token is not None else b"\0" * 32
        matches = hmac.compare_digest(expected, hash_secret(secret))
        if token is None or not matches or token.revoked_at is not None:
            raise UnauthenticatedError("invalid access token id or secret")
        return Principal(
            token_id=token.id,
            scopes=token.scopes,
            environments=token.environments,
            api=api,
            request_id=request_id,
        )

    async def _lookup(self, token_id: str) -> AccessToken | None:
        if token_id in self._unknown:
            return None
        now = self._clock()
        known = self._known.get(token_id)
        if known is not None and now - known[1] < self._ttl:
            return known[0]
        try:
            token = await self._tokens.get(token_id)
        except DependencyError:
            if known is not None and now - known[1] <= self._max_staleness:
                return known[0]  # last known good
            raise
        if token is None:
            self._known.pop(token_id, None)
            self._unknown[token_id] = True
        else:
            self._known[token_id] = (token, now)
        return token

    async def authenticate_header(
        self, header: str | None, *, api: Api, request_id: str | None = None
    ) -> Principal:
        token_id, secret = parse_authorization(header)
        return await self.authenticate(token_id, secret, api=api, request_id=request_id)

    async def issue(
        self, scopes: Iterable[Scope], environments: Iterable[str], *, name: str | None = None
    ) -> tuple[AccessToken, str]:
        """Create and store a token; return it with its secret (shown once)."""
        token, secret = new_access_token(scopes, environments, name=name)
        await self._tokens.insert(token)
        log.info("access_token_issued", token_id=token.id, scopes=sorted(token.scopes))
        return token, secret
