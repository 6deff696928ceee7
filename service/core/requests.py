"""What callers ask of the core, as values that validate themselves.

Each transport decodes its own encoding (a JSON body and headers, a protobuf message) into
plain Python values and hands them to one ``parse`` here; every rule about those values
(types, ranges, id shapes, the environment's format) lives here once, so the same mistake
gets the same :class:`~service.errors.InvalidRequestError` — the same words — over HTTP and
gRPC. ``None`` means "not given"; a transport whose encoding has no "absent" (proto3's empty
string, zero) maps its default to ``None`` before calling ``parse``.

>>> request = CreateKeyRequest.parse(algorithm="ES256", expires_at="1893456000")
>>> request.spec.algorithm
'ES256'
"""

from __future__ import annotations

import dataclasses
import functools
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal, TypeGuard, TypeVar, get_args

from service.core import crypto, times
from service.core.crypto import Algorithm
from service.core.listing import AuditFilter, KeyFilter, batch_ids
from service.core.models import KeyStatus, check_id
from service.errors import InvalidRequestError

DEFAULT_PAGE_LIMIT: Final = 25
MAX_PAGE_LIMIT: Final = 100
MAX_PAGE: Final = 10_000
MAX_NAME_LENGTH: Final = 200
MAX_IDEMPOTENCY_KEY_LENGTH: Final = 255
MAX_EXPECTATION_LENGTH: Final = 512
IDEMPOTENCY_KEY: Final = "Idempotency-Key"  # its name in messages, as HTTP's header says it

_IDEMPOTENCY_KEY: Final = re.compile(r"[\x21-\x7e]{1,255}")
_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Strict decimal: int() also takes " 5", "1_0", "+5" and non-ASCII digits such as "٣".
_DECIMAL: Final = re.compile(r"[0-9]{1,9}")

T = TypeVar("T")


def field(name: str, check: Callable[[object], T], value: object) -> T:
    """``check(value)``, an :class:`InvalidRequestError` it raises naming ``name`` as the
    field at fault (gRPC ``BadRequest``, HTTP ``error.field``): the request's field name,
    as the proto and the JSON body spell it."""
    try:
        return check(value)
    except InvalidRequestError as exc:
        if exc.field is None:
            exc.field = name
        raise


def refuse_past_expiry(expires_at: datetime | None, now: float | None = None) -> None:
    """A key may not be stored already expired: an expiry in the past is a mistake (a
    milliseconds value read as seconds would be in the future; one in seconds, minutes ago,
    is a clock or arithmetic error), and it would store a key that verifies nothing."""
    if expires_at is not None and times.seconds(expires_at) <= (
        time.time() if now is None else now
    ):
        raise InvalidRequestError(
            "expires_at is in the past: give a future time in Unix seconds, or none",
            field="expires_at",
        )


_REQUEST_IDS: Final = random.Random()


def choose_request_id(offered: object) -> str:
    """The id a request is logged and audited under: the caller's, when it is well formed
    (it is echoed into logs and headers), else a new random one."""
    if isinstance(offered, str) and _REQUEST_ID.fullmatch(offered):
        return offered
    # Not secrets.token_hex: an id names a request, it guards nothing (a caller may choose
    # its own), and the system random source costs a system call per request. A generator
    # of its own, seeded from the system's at start (each worker is a process of its own):
    # the ids a client sees tell nothing of the module's generator, which samples the
    # access log and jitters retries.
    return f"{_REQUEST_IDS.getrandbits(64):016x}"


def optional_text(value: object, name: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise InvalidRequestError(f"{name} must be a string")
    return value


def environment(value: object) -> str | None:
    """A requested environment id, checked for shape before it reaches SQL or a log."""
    text = optional_text(value, "environment id")
    return None if text is None else check_id(text, "environment id")


def expectation(value: object, name: str) -> str | None:
    """An optional expected ``aud``/``sub`` of a token."""
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_EXPECTATION_LENGTH:
        raise InvalidRequestError(
            f"{name} must be a non-empty string of at most {MAX_EXPECTATION_LENGTH} characters"
        )
    return value


# Which keys a read finds: the reference platform's reads show only active keys (a deleted
# key is 404 there), so "active" is the default; revoked keys stay, for audit and for the
# revoked_key verdict, and are read by asking for them.
KeyStatusFilter = Literal["active", "revoked", "all"]
STATUS_FILTERS: Final[tuple[KeyStatusFilter, ...]] = get_args(KeyStatusFilter)


def status_filter(value: object) -> KeyStatusFilter:
    """The ``status`` a read asks for; ``None`` (not given) is ``"active"``."""
    if value is None:
        return "active"
    if value not in STATUS_FILTERS:
        raise InvalidRequestError(f"status must be one of {', '.join(STATUS_FILTERS)}")
    return value


def statuses(status: KeyStatusFilter) -> KeyStatus | None:
    """The one key status a filter lets through; ``None`` for every status."""
    return None if status == "all" else status


def count(value: object, name: str, *, default: int, low: int, high: int) -> int:
    """A whole number from a query string or a message, within ``low``..``high``."""
    if value is None:
        return default
    if isinstance(value, str):
        if not _DECIMAL.fullmatch(value):
            raise InvalidRequestError(f"{name} must be a decimal integer")
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(f"{name} must be an integer")
    if not low <= value <= high:
        raise InvalidRequestError(f"{name} must be between {low} and {high}")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class KeySpec:
    """What a caller asks for when creating (or importing) a key."""

    algorithm: Algorithm = crypto.DEFAULT_ALGORITHM
    name: str | None = None
    expires_at: datetime | None = None
    not_before: datetime | None = None

    def __post_init__(self) -> None:
        if self.name is not None and len(self.name) > MAX_NAME_LENGTH:
            raise InvalidRequestError(
                f"name must be at most {MAX_NAME_LENGTH} characters", field="name"
            )
        if self.name is not None and not self.name.isprintable():
            raise InvalidRequestError(
                "name must be printable text (no control characters)", field="name"
            )
        field("name", lambda name: crypto.refuse_private_material(name, "name"), self.name)
        if self.expires_at is not None and self.expires_at.tzinfo is None:
            raise InvalidRequestError("expires_at must carry a time zone", field="expires_at")
        if self.expires_at is not None and not times.is_in_range(self.expires_at):
            raise InvalidRequestError(
                f"expires_at must fall within Unix seconds {times.EARLIEST} to {times.LATEST}",
                field="expires_at",
            )
        _check_not_before(self.not_before, self.expires_at)


def _check_not_before(not_before: datetime | None, expires_at: datetime | None) -> None:
    if not_before is None:
        return
    if not_before.tzinfo is None:
        raise InvalidRequestError("not_before must carry a time zone", field="not_before")
    if not times.is_in_range(not_before):
        raise InvalidRequestError(
            f"not_before must fall within Unix seconds {times.EARLIEST} to {times.LATEST}",
            field="not_before",
        )
    if expires_at is not None and expires_at <= not_before:
        raise InvalidRequestError("expires_at must be later than not_before", field="expires_at")


def no_private_material(**fields: object) -> None:
    """Refuse a request any of whose fields carries a private key (see
    :func:`~service.core.crypto.refuse_private_material`). Checked before any other rule, so
    that no other message can echo part of the value."""
    for name, value in fields.items():
        try:
            crypto.refuse_private_material(value, name)
        except InvalidRequestError as exc:
            exc.field = "idempotency_key" if name == IDEMPOTENCY_KEY else name
            raise


def whole_number(value: object) -> object:
    """A JSON number without a fraction (``1.0``, ``1e3``) as the integer it is: JSON does not
    tell the two spellings apart, and neither does JSON Schema's ``integer`` (the OpenAPI
    document's type for such fields). Anything else is returned as it came."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _idempotency_key(value: object) -> str | None:
    text = field("idempotency_key", lambda v: optional_text(v, IDEMPOTENCY_KEY), value)
    if text is not None and not _IDEMPOTENCY_KEY.fullmatch(text):
        raise InvalidRequestError(
            f"{IDEMPOTENCY_KEY} must be 1-{MAX_IDEMPOTENCY_KEY_LENGTH} printable ASCII characters",
            field="idempotency_key",
        )
    return text


def _algorithm(value: object) -> Algorithm:
    return field("algorithm", crypto.parse_algorithm, value)


def _expiry(value: object) -> datetime | None:
    moment = field("expires_at", lambda v: times.parse_unix(whole_number(v), "expires_at"), value)
    refuse_past_expiry(moment)
    return moment


def _not_before(value: object) -> datetime | None:
    return field("not_before", lambda v: times.parse_unix(whole_number(v), "not_before"), value)


def _key_id(value: object) -> str:
    return field("id", lambda v: check_id(optional_text(v, "signing key id") or ""), value)


def _environment(value: object) -> str | None:
    return field("environment_id", environment, value)


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateKeyRequest:
    """Create a key pair in an environment (``None``: the token's only environment)."""

    environment_id: str | None = None
    spec: KeySpec = KeySpec()
    idempotency_key: str | None = None

    @classmethod
    def parse(
        cls,
        *,
        environment_id: object = None,
        algorithm: object = None,
        name: object = None,
        expires_at: object = None,
        idempotency_key: object = None,
        not_before: object = None,
    ) -> CreateKeyRequest:
        no_private_material(
            algorithm=algorithm,
            name=name,
            expires_at=expires_at,
            not_before=not_before,
            **{IDEMPOTENCY_KEY: idempotency_key},
        )
        return cls(
            environment_id=_environment(environment_id),
            spec=KeySpec(
                algorithm=crypto.DEFAULT_ALGORITHM if algorithm is None else _algorithm(algorithm),
                name=field("name", lambda v: optional_text(v, "name"), name),
                expires_at=_expiry(expires_at),
                not_before=_not_before(not_before),
            ),
            idempotency_key=_idempotency_key(idempotency_key),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportKeyRequest:
    """Store a customer's public key: PEM text, or a JWK as a JSON object."""

    environment_id: str | None = None
    public_key: str | dict[str, Any]
    algorithm: Algorithm | None = None
    name: str | None = None
    expires_at: datetime | None = None
    idempotency_key: str | None = None
    not_before: datetime | None = None

    @classmethod
    def parse(
        cls,
        *,
        public_key: object,
        environment_id: object = None,
        algorithm: object = None,
        name: object = None,
        expires_at: object = None,
        idempotency_key: object = None,
        not_before: object = None,
    ) -> ImportKeyRequest:
        no_private_material(
            public_key=public_key,
            algorithm=algorithm,
            name=name,
            expires_at=expires_at,
            not_before=not_before,
            **{IDEMPOTENCY_KEY: idempotency_key},
        )
        if public_key is None or public_key == "":
            raise InvalidRequestError(
                "public_key is required (a PEM string or a JWK object)", field="public_key"
            )
        if not isinstance(public_key, str | dict):
            raise InvalidRequestError(
                "public_key must be a PEM string or a JWK object", field="public_key"
            )
        name_text = field("name", lambda v: optional_text(v, "name"), name)
        expiry = _expiry(expires_at)
        start = _not_before(not_before)
        KeySpec(name=name_text, expires_at=expiry, not_before=start)  # a created key's rules
        return cls(
            environment_id=_environment(environment_id),
            public_key=public_key,
            algorithm=None if algorithm is None else _algorithm(algorithm),
            name=name_text,
            expires_at=expiry,
            idempotency_key=_idempotency_key(idempotency_key),
            not_before=start,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyRef:
    """One key of an environment: for get, public key and revoke.

    ``status`` says which keys a read finds (by default only an active one, as the reference
    platform answers); revoke finds the key whatever its status, revoking twice being
    harmless.
    """

    environment_id: str | None = None
    key_id: str
    status: KeyStatusFilter = "active"

    @classmethod
    def parse(
        cls, *, key_id: object, environment_id: object = None, status: object = None
    ) -> KeyRef:
        if type(key_id) is str and _is_text(environment_id) and _is_text(status):
            return _key_ref(key_id, environment_id, status)
        return cls._parse(key_id, environment_id, status)

    @classmethod
    def _parse(cls, key_id: object, environment_id: object, status: object) -> KeyRef:
        return cls(
            environment_id=_environment(environment_id),
            key_id=_key_id(key_id),
            status=field("status", status_filter, status),
        )


def _is_text(value: object) -> TypeGuard[str | None]:
    return value is None or type(value) is str


# The reads of one key ask for the same few keys over and over: a reference already checked
# is looked up, not checked again (a value object, so sharing it is safe). A refusal raises
# afresh every time, and is never kept.
@functools.lru_cache(maxsize=4096)
def _key_ref(key_id: str, environment_id: str | None, status: str | None) -> KeyRef:
    return KeyRef._parse(key_id, environment_id, status)


@dataclass(frozen=True, slots=True, kw_only=True)
class ListKeysRequest:
    """One 1-based page of an environment's keys of one ``status`` (by default the active
    ones), newest first."""

    environment_id: str | None = None
    limit: int = DEFAULT_PAGE_LIMIT
    page: int = 1
    status: KeyStatusFilter = "active"
    # Beyond Mux's pages (see service.core.listing): filters, and a cursor instead of a page.
    filters: KeyFilter = dataclasses.field(default_factory=KeyFilter)
    cursor: str | None = None
    cursor_name: str = "cursor"  # what the transport calls it, for its error messages

    @classmethod
    def parse(
        cls,
        *,
        environment_id: object = None,
        limit: object = None,
        page: object = None,
        status: object = None,
        algorithm: object = None,
        source: object = None,
        expires_before: object = None,
        cursor: object = None,
        cursor_name: str = "cursor",
    ) -> ListKeysRequest:
        token = optional_text(cursor, cursor_name)
        if token is not None and page is not None:
            raise InvalidRequestError(f"page and {cursor_name} cannot be combined: give one")
        return cls(
            environment_id=_environment(environment_id),
            limit=field(
                "limit",
                lambda v: count(v, "limit", default=DEFAULT_PAGE_LIMIT, low=1, high=MAX_PAGE_LIMIT),
                limit,
            ),
            page=field("page", lambda v: count(v, "page", default=1, low=1, high=MAX_PAGE), page),
            status=field("status", status_filter, status),
            filters=KeyFilter.parse(
                algorithm=algorithm, source=source, expires_before=expires_before
            ),
            cursor=token,
            cursor_name=cursor_name,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ListAuditEventsRequest:
    """One page of an environment's audit events, newest first, filtered; paged by cursor
    only (an audit trail only grows: numbered pages would shift under the reader)."""

    environment_id: str | None = None
    limit: int = DEFAULT_PAGE_LIMIT
    filters: AuditFilter = dataclasses.field(default_factory=AuditFilter)
    cursor: str | None = None
    cursor_name: str = "cursor"

    @classmethod
    def parse(
        cls,
        *,
        environment_id: object = None,
        limit: object = None,
        cursor: object = None,
        cursor_name: str = "cursor",
        key_id: object = None,
        actor: object = None,
        action: object = None,
        since: object = None,
        until: object = None,
    ) -> ListAuditEventsRequest:
        return cls(
            environment_id=_environment(environment_id),
            limit=field(
                "limit",
                lambda v: count(v, "limit", default=DEFAULT_PAGE_LIMIT, low=1, high=MAX_PAGE_LIMIT),
                limit,
            ),
            filters=AuditFilter.parse(
                key_id=key_id, actor=actor, action=action, since=since, until=until
            ),
            cursor=optional_text(cursor, cursor_name),
            cursor_name=cursor_name,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchGetKeysRequest:
    """Up to :data:`~service.core.listing.MAX_BATCH_IDS` keys of one environment by id, of
    one ``status`` (by default active, as a get reads)."""

    environment_id: str | None = None
    key_ids: tuple[str, ...]
    status: KeyStatusFilter = "active"

    @classmethod
    def parse(
        cls, *, key_ids: object, environment_id: object = None, status: object = None
    ) -> BatchGetKeysRequest:
        return cls(
            environment_id=_environment(environment_id),
            key_ids=field("ids", batch_ids, key_ids),
            status=field("status", status_filter, status),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyRequest:
    """Verify a compact JWS; ``environment_id`` narrows which keys may sign it."""

    token: str
    environment_id: str | None = None
    audience: str | None = None
    subject: str | None = None

    @classmethod
    def parse(
        cls,
        *,
        token: object,
        environment_id: object = None,
        audience: object = None,
        subject: object = None,
    ) -> VerifyRequest:
        if not isinstance(token, str) or not token:
            raise InvalidRequestError("token is required: a compact JWT string", field="token")
        return cls(
            token=token,
            environment_id=_environment(environment_id),
            audience=field("audience", lambda v: expectation(v, "audience"), audience),
            subject=field("subject", lambda v: expectation(v, "subject"), subject),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchRequest:
    """Follow an environment's keys: a snapshot (or a replay from ``after``), then changes."""

    environment_id: str | None = None
    after: str | None = None

    @classmethod
    def parse(cls, *, environment_id: object = None, after: object = None) -> WatchRequest:
        return cls(
            environment_id=_environment(environment_id),
            after=field("after", lambda v: optional_text(v, "after"), after),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class JwksRequest:
    """An environment's active public keys as a JWK Set."""

    environment_id: str

    @classmethod
    def parse(cls, *, environment_id: object) -> JwksRequest:
        if type(environment_id) is str:
            return _jwks_request(environment_id)  # as a key reference is
        return cls._parse(environment_id)

    @classmethod
    def _parse(cls, environment_id: object) -> JwksRequest:
        text = field("environment_id", lambda v: optional_text(v, "environment id"), environment_id)
        return cls(
            environment_id=field(
                "environment_id", lambda v: check_id(str(v), "environment id"), text or ""
            )
        )


@functools.lru_cache(maxsize=4096)
def _jwks_request(environment_id: str) -> JwksRequest:
    return JwksRequest._parse(environment_id)


# Rotation: how long the old key keeps verifying after the new one takes over (tokens it
# signed just before are still in flight). Bounded: at least a minute (a grace of zero would
# refuse those tokens at once: revoke does that), at most 30 days.
DEFAULT_GRACE_SECONDS: Final = 24 * 3600
MIN_GRACE_SECONDS: Final = 60
MAX_GRACE_SECONDS: Final = 30 * 24 * 3600


@dataclass(frozen=True, slots=True, kw_only=True)
class RotateKeyRequest:
    """Rotate ``key_id``: create the next key (the old one's algorithm unless ``algorithm``
    is given), which takes over at ``not_before`` (at once if ``None``), and expire the old
    key ``grace_seconds`` after that."""

    environment_id: str | None = None
    key_id: str
    algorithm: Algorithm | None = None
    name: str | None = None
    not_before: datetime | None = None
    expires_at: datetime | None = None
    grace_seconds: int = DEFAULT_GRACE_SECONDS
    idempotency_key: str | None = None

    @classmethod
    def parse(
        cls,
        *,
        key_id: object,
        environment_id: object = None,
        algorithm: object = None,
        name: object = None,
        not_before: object = None,
        expires_at: object = None,
        grace_period_seconds: object = None,
        idempotency_key: object = None,
    ) -> RotateKeyRequest:
        no_private_material(
            algorithm=algorithm,
            name=name,
            not_before=not_before,
            expires_at=expires_at,
            **{IDEMPOTENCY_KEY: idempotency_key},
        )
        spec = KeySpec(
            name=field("name", lambda v: optional_text(v, "name"), name),
            expires_at=_expiry(expires_at),
            not_before=_not_before(not_before),
        )
        return cls(
            environment_id=_environment(environment_id),
            key_id=_key_id(key_id),
            algorithm=None if algorithm is None else _algorithm(algorithm),
            name=spec.name,
            not_before=spec.not_before,
            expires_at=spec.expires_at,
            grace_seconds=field(
                "grace_period_seconds",
                lambda v: count(
                    whole_number(v),
                    "grace_period_seconds",
                    default=DEFAULT_GRACE_SECONDS,
                    low=MIN_GRACE_SECONDS,
                    high=MAX_GRACE_SECONDS,
                ),
                grace_period_seconds,
            ),
            idempotency_key=_idempotency_key(idempotency_key),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateKeyRequest:
    """Rename a key (``name_given``: ``name`` is the new name, ``None`` clears it) and/or
    bring its expiry forward (``expires_at``; never later than it is). Neither: the key as it
    is (an empty JSON merge patch changes nothing)."""

    environment_id: str | None = None
    key_id: str
    name_given: bool = False
    name: str | None = None
    expires_at: datetime | None = None

    @classmethod
    def parse(
        cls,
        *,
        key_id: object,
        environment_id: object = None,
        name_given: bool = False,
        name: object = None,
        expires_at: object = None,
    ) -> UpdateKeyRequest:
        no_private_material(name=name, expires_at=expires_at)
        spec = KeySpec(
            name=field("name", lambda v: optional_text(v, "name"), name),
            expires_at=_expiry(expires_at),
        )
        return cls(
            environment_id=_environment(environment_id),
            key_id=_key_id(key_id),
            name_given=name_given,
            name=spec.name,
            expires_at=spec.expires_at,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class CurrentKeyRequest:
    """The environment whose current key to read (``None``: the token's only one)."""

    environment_id: str | None = None

    @classmethod
    def parse(cls, *, environment_id: object = None) -> CurrentKeyRequest:
        return cls(environment_id=_environment(environment_id))
