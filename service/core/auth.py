"""Access tokens: issuing them, parsing the ``Authorization`` header, and authenticating.

A token is an id plus a 256-bit random secret. Only SHA-256 of the secret is stored: the
secret's entropy makes a slow password hash pointless, so checking a credential costs one
fast hash and a constant-time comparison, against the records the
:class:`~service.core.credentials.CredentialTable` holds in memory: no database round trip,
whether or not the id exists. An unknown id is compared against a dummy hash, so it takes
the same steps as a wrong secret, and the two get the same answer.

A credential that authenticated is remembered (:class:`VerifiedCredentials`) by a keyed
digest of its whole ``Authorization`` value, beside the very record it matched: the next
request with the same value skips parsing, hashing and comparing, but only while the
credential table still holds that same record — a poll that reads the token revoked,
changed or gone replaces it, and the next request is checked in full. A failure is never
remembered, so a flood of wrong secrets adds nothing to it.

Failed authentications are limited per client address and per token id
(:class:`FailureLimits`): past the limit the answer is 429 (``RESOURCE_EXHAUSTED``).
The transports bind the client's address to :data:`CLIENT_ADDRESS` for each request.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import functools
import hashlib
import hmac
import ipaddress
import re
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Final

import structlog

from service.core.credentials import CredentialTable
from service.core.metrics import CoreMetrics
from service.core.models import AccessToken, Api, Principal, Scope, check_id
from service.core.ports import TokenRecords
from service.core.ratelimit import KeyedBuckets
from service.errors import (
    DependencyError,
    InvalidRequestError,
    RegionUnavailableError,
    TooManyRequestsError,
    UnauthenticatedError,
)
from service.lifecycle import AsyncResource

log = structlog.get_logger(__name__)

TOKEN_ID_PREFIX: Final = "skt_"
_TOKEN_ID: Final = re.compile(r"skt_[A-Za-z0-9]{16}")
MAX_CREDENTIAL_LENGTH: Final = 512
# Ids and secrets are printable ASCII (letters, digits, URL-safe base64); anything else — a
# raw byte a transport decoded as it could, a control character — cannot be a credential.
_CREDENTIAL = re.compile(r"[\x21-\x7e]+")
# How many client addresses and token ids the failure limits remember (least recent forgotten).
DEFAULT_LIMITED_KEYS: Final = 10_000
INVALID_CREDENTIALS: Final = "invalid access token id or secret"
# How many credentials that authenticated are remembered (least recent forgotten): tokens
# are few, and a client usually sends one spelling of its credentials.
DEFAULT_VERIFIED_CREDENTIALS: Final = 10_000

# The address of the client whose request is being served: bound by the transport for the
# request's task, as the request id is bound for logging; None outside a request.
CLIENT_ADDRESS: Final = contextvars.ContextVar[str | None]("client_address", default=None)


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
        except ValueError:
            # binascii.Error, UnicodeDecodeError, and the plain ValueError b64decode raises
            # for a non-ASCII character (HTTP hands such a byte over as Latin-1 or UTF-8).
            raise UnauthenticatedError("malformed Basic credentials") from None
    elif scheme.lower() != "bearer":
        raise UnauthenticatedError("unsupported authorization scheme: use Basic or Bearer")
    token_id, sep, secret = value.partition(":")
    if not sep or not token_id or not secret:
        raise UnauthenticatedError("credentials must be an access token id and secret")
    if not (_CREDENTIAL.fullmatch(token_id) and _CREDENTIAL.fullmatch(secret)):
        raise UnauthenticatedError("credentials must be printable ASCII")
    return token_id, secret


@functools.lru_cache(maxsize=DEFAULT_LIMITED_KEYS)
def client_key(address: str) -> str:
    """What the per-client limit counts by: an IPv4 address, or an IPv6 address's /64 (one
    host is commonly given a whole /64, and could otherwise pick a fresh address per try)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class FailureLimits:
    """How many failed authentications a client address, and a token id, may cause: each a
    token bucket of ``per_client`` (``per_token``) failures a second, as many at once.

    A client address over its limit is refused before its credentials are checked. A token
    id over its limit only turns the answer to a *failure* into 429: the right secret still
    authenticates, so whoever knows an id (ids are not secret: audit events name them)
    cannot lock its owner out. Well-shaped ids are counted whether they exist or not, so
    the limit itself tells nothing about which ids exist.
    """

    def __init__(
        self,
        *,
        per_client: float,
        per_token: float,
        size: int = DEFAULT_LIMITED_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clients = KeyedBuckets(per_client, size=size, clock=clock)
        self._tokens = KeyedBuckets(per_token, size=size, clock=clock)

    def __repr__(self) -> str:
        return f"<FailureLimits clients={len(self._clients)} token_ids={len(self._tokens)}>"

    def client_wait(self, client: str | None) -> float:
        """Seconds until ``client`` may fail again (0: it may now)."""
        return 0.0 if client is None else self._clients.wait(client_key(client))

    def failed(self, client: str | None, token_id: str | None) -> str | None:
        """Count one failure against both; the limit it went over (``auth_client`` or
        ``auth_token``), if any."""
        over_client = client is not None and not self._clients.take(client_key(client))
        over_token = token_id is not None and not self._tokens.take(token_id)
        if over_client:
            return "auth_client"
        return "auth_token" if over_token else None

    def token_wait(self, token_id: str) -> float:
        return self._tokens.wait(token_id)


class VerifiedCredentials:
    """``Authorization`` values that authenticated, with the token record each matched.

    Keyed by a BLAKE2b digest under a key drawn at start, so the header itself (which holds
    the secret) is not what the cache keeps, and nobody can choose values that collide. An
    entry counts only while the table holds the same record — the same object, or one equal
    in every field (a secret hash, scopes, environments, revocation, stamp): any change the
    table reads makes the next request check in full — and for at most ``ttl`` seconds;
    bounded to ``size`` entries, least recently used forgotten.
    """

    def __init__(
        self, *, ttl: float, size: int = DEFAULT_VERIFIED_CREDENTIALS, clock: Callable[[], float]
    ) -> None:
        self._ttl = ttl
        self._size = size
        self._clock = clock
        # Keyed once: a keyed BLAKE2b costs as much to set up as to hash a header, so each
        # digest starts from a copy of this state.
        self._keyed = hashlib.blake2b(digest_size=32, key=secrets.token_bytes(32))
        # A plain dict in recency order (a hit moves its entry to the end, the first is the
        # least recently used): every authenticated request looks here, and a dict's own
        # operations cost a fraction of a cache class's Python methods.
        self._entries: dict[bytes, tuple[AccessToken, float]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def digest(self, header: str) -> bytes:
        # surrogatepass: a header a transport decoded leniently still has one digest.
        hasher = self._keyed.copy()
        hasher.update(header.encode("utf-8", "surrogatepass"))
        return hasher.digest()

    def get(self, digest: bytes, table: CredentialTable) -> AccessToken | None:
        """The record ``digest`` authenticated with, if the table still holds exactly it."""
        entry = self._entries.pop(digest, None)
        if entry is None:
            return None
        token, expires = entry
        current = table.get(token.id)
        if current is not token and current is not None and current == token:
            # The same record read again (a poll's overlap re-reads recent changes).
            token = current
        if current is token and token.revoked_at is None and self._clock() < expires:
            self._entries[digest] = (token, expires)  # the most recently used, now
            return token
        return None  # forgotten: the next request with it is checked in full

    def put(self, digest: bytes, token: AccessToken) -> None:
        entries = self._entries
        entries.pop(digest, None)
        entries[digest] = (token, self._clock() + self._ttl)
        while len(entries) > self._size:
            del entries[next(iter(entries))]


class Authenticator(AsyncResource):
    """Turns an (id, secret) pair into a :class:`Principal`, from the credential table.

    The table reads every token record at start, then what changed every ``poll_interval``
    (``overlap`` as the change feed's) and everything every ``cache_ttl`` — the bound on how
    long a revoked token can still work. Without ``poll_interval`` it reads everything every
    ``cache_ttl`` only. When no region can answer, the records last read keep serving for up
    to ``max_staleness`` seconds (last known good, like the keys); past that, authentication
    fails closed with 503. Without ``limits``, failures are counted but never limited (the
    command line, which only issues tokens). Credentials that authenticated are remembered
    (:class:`VerifiedCredentials`) for at most ``cache_ttl``, and only while the table
    holds the record they matched.

    >>> async with Authenticator(records, cache_ttl=30, max_staleness=300,
    ...                          poll_interval=0.2, overlap=5.0, limits=limits) as auth:
    ...     principal = await auth.authenticate_header(header, api="http")
    """

    def __init__(
        self,
        tokens: TokenRecords,
        *,
        cache_ttl: float,
        max_staleness: float,
        poll_interval: float | None = None,
        overlap: float | None = None,
        limits: FailureLimits | None = None,
        metrics: CoreMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_data_age: float | None = None,
    ) -> None:
        if poll_interval is not None and overlap is None:
            raise ValueError("polling for changes needs an overlap to re-read")
        self._tokens = tokens
        self._max_staleness = max_staleness
        self._limits = limits
        self._metrics = metrics if metrics is not None else CoreMetrics()
        self.credentials = CredentialTable(
            tokens,
            poll_interval=cache_ttl if poll_interval is None else poll_interval,
            overlap=overlap or 0.0,
            resync_interval=cache_ttl,
            max_data_age=max_data_age,  # the revocation bound: see CredentialTable
            metrics=self._metrics,
            clock=clock,
        )
        # What an unknown id is compared against: the same work as a wrong secret.
        self._dummy_hash = hash_secret(secrets.token_urlsafe(32))
        self.verified = VerifiedCredentials(ttl=cache_ttl, clock=clock)

    def __repr__(self) -> str:
        return f"<Authenticator {self.credentials!r} limits={self._limits!r}>"

    async def start(self) -> None:
        await self.credentials.start()

    async def aclose(self) -> None:
        await self.credentials.aclose()

    def can_serve(self) -> bool:
        """Whether the credential records are recent enough to authenticate with."""
        return self.credentials.staleness() <= self._max_staleness

    async def authenticate(
        self, token_id: str, secret: str, *, api: Api, request_id: str | None = None
    ) -> Principal:
        client = CLIENT_ADDRESS.get()
        self._refuse_limited_client(client)
        self._refuse_stale()
        return _principal(self._check(token_id, secret, client), api, request_id)

    def _refuse_stale(self) -> None:
        if not self.can_serve():
            raise RegionUnavailableError(
                "access tokens cannot be checked: no region has answered for too long"
            )

    def _check(self, token_id: str, secret: str, client: str | None) -> AccessToken:
        """The record ``token_id:secret`` authenticates as; raises on any failure."""
        shaped = _TOKEN_ID.fullmatch(token_id) is not None
        token = self.credentials.get(token_id) if shaped else None
        # Compare even when the id is unknown, so that timing does not tell which ids exist.
        expected = token.secret_hash if token is not None else self._dummy_hash
        matches = hmac.compare_digest(expected, hash_secret(secret))
        if token is not None and matches and token.revoked_at is None:
            return token
        reason = "unknown_token" if token is None else "revoked" if matches else "wrong_secret"
        raise self._failure(
            UnauthenticatedError(INVALID_CREDENTIALS),
            reason,
            client=client,
            token_id=token_id if shaped else None,
        )

    async def authenticate_header(
        self, header: str | None, *, api: Api, request_id: str | None = None
    ) -> Principal:
        client = CLIENT_ADDRESS.get()
        self._refuse_limited_client(client)
        digest = None
        if header and len(header) <= MAX_CREDENTIAL_LENGTH:
            digest = self.verified.digest(header)
            known = self.verified.get(digest, self.credentials)
            # Stale records: the full path below refuses, in the same order as on a miss.
            if known is not None and self.can_serve():
                return _principal(known, api, request_id)
        try:
            token_id, secret = parse_authorization(header)
        except UnauthenticatedError as exc:
            reason = "missing" if not header else "malformed"
            raise self._failure(exc, reason, client=client) from None
        self._refuse_stale()
        token = self._check(token_id, secret, client)
        if digest is not None:
            self.verified.put(digest, token)
        return _principal(token, api, request_id)

    def _refuse_limited_client(self, client: str | None) -> None:
        if self._limits is None:
            return
        wait = self._limits.client_wait(client)
        if wait > 0:
            self._metrics.limited["auth_client"].inc()
            raise TooManyRequestsError(
                "too many failed authentications from this address; retry later",
                retry_after=wait,
            )

    def _failure(
        self,
        error: UnauthenticatedError,
        reason: str,
        *,
        client: str | None,
        token_id: str | None = None,
    ) -> UnauthenticatedError | TooManyRequestsError:
        """Count a failed authentication; the error to answer it with."""
        self._metrics.auth_failures[reason].inc()
        if self._limits is None:
            return error
        limited = self._limits.failed(client, token_id)
        if limited is None:
            return error
        self._metrics.limited[limited].inc()
        if limited == "auth_client":
            return TooManyRequestsError(
                "too many failed authentications from this address; retry later",
                retry_after=self._limits.client_wait(client),
            )
        assert token_id is not None
        return TooManyRequestsError(
            "too many failed authentications for this access token id; retry later",
            retry_after=self._limits.token_wait(token_id),
        )

    async def issue(
        self, scopes: Iterable[Scope], environments: Iterable[str], *, name: str | None = None
    ) -> tuple[AccessToken, str]:
        """Create and store a token; return it with its secret (shown once). It works on
        this instance at once, and on the others after their next poll."""
        token, secret = new_access_token(scopes, environments, name=name)
        await self._tokens.insert(token)
        self.credentials.put(token)
        if not self.can_serve():
            # Never read yet (started before the schema existed, say): the database has just
            # answered, so read it now rather than refuse the new token until the next poll.
            with contextlib.suppress(DependencyError):
                await self.credentials.poll_once()
        log.info("access_token_issued", token_id=token.id, scopes=sorted(token.scopes))
        return token, secret


def _principal(token: AccessToken, api: Api, request_id: str | None) -> Principal:
    return Principal(
        token_id=token.id,
        scopes=token.scopes,
        environments=token.environments,
        api=api,
        request_id=request_id,
    )
