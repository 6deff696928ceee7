"""The service's error hierarchy: one root, split by who must act.

- the caller: :class:`CallerError` and its children (bad input, unknown id, credentials);
- a dependency: :class:`DependencyError` (no region reachable, no writable region, a deadline);
- us: :class:`InternalError`.

Every error has a stable ``type``, and :data:`ERROR_KINDS` — the one table both transports
read — says what HTTP status and what gRPC code answer it, so that HTTP and gRPC name the
same failure the same way (``tests/test_error_kinds.py`` walks it). Transports map errors
in one place each (:mod:`service.http.errors`, :mod:`service.grpc.errors`); foreign
exceptions are translated at the boundary with ``raise … from exc``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final


@dataclass(frozen=True, slots=True)
class ErrorKind:
    """How the transports answer one error type: the HTTP status, and the gRPC code by its
    canonical name (``google.rpc.Code``; grpclib's ``Status`` has the same names)."""

    http_status: int
    grpc_code: str


# Every type a client can be sent, transport-level ones included (no exception class raises
# those: the transports answer them themselves). Statuses follow the canonical pairing of
# gRPC codes and HTTP statuses (google.rpc.Code's comments), except where a type has an HTTP
# status of its own that gRPC has no code for: 413 and 429 are both RESOURCE_EXHAUSTED, 422
# is FAILED_PRECONDITION.
ERROR_KINDS: Final[dict[str, ErrorKind]] = {
    "invalid_parameters": ErrorKind(400, "INVALID_ARGUMENT"),
    "invalid_consistency_token": ErrorKind(400, "INVALID_ARGUMENT"),
    "environment_required": ErrorKind(400, "INVALID_ARGUMENT"),
    # A size limit, as gRPC's own message limit answers it: retrying the same never helps.
    "payload_too_large": ErrorKind(413, "RESOURCE_EXHAUSTED"),
    "unauthorized": ErrorKind(401, "UNAUTHENTICATED"),
    "forbidden": ErrorKind(403, "PERMISSION_DENIED"),
    "not_found": ErrorKind(404, "NOT_FOUND"),
    "conflict": ErrorKind(409, "ALREADY_EXISTS"),
    "idempotency_key_mismatch": ErrorKind(422, "FAILED_PRECONDITION"),
    "too_many_requests": ErrorKind(429, "RESOURCE_EXHAUSTED"),
    "service_unavailable": ErrorKind(503, "UNAVAILABLE"),
    "region_unavailable": ErrorKind(503, "UNAVAILABLE"),
    "no_writable_region": ErrorKind(503, "UNAVAILABLE"),
    "ambiguous_commit": ErrorKind(503, "UNAVAILABLE"),
    "key_unavailable": ErrorKind(503, "UNAVAILABLE"),
    "slow_consumer": ErrorKind(503, "UNAVAILABLE"),
    "too_many_watchers": ErrorKind(503, "UNAVAILABLE"),
    "watch_max_age": ErrorKind(503, "UNAVAILABLE"),
    "deadline_exceeded": ErrorKind(504, "DEADLINE_EXCEEDED"),
    "internal_error": ErrorKind(500, "INTERNAL"),
    # Transport-level: answered by the HTTP middleware or the gRPC framing checks.
    "request_timeout": ErrorKind(408, "DEADLINE_EXCEEDED"),
    "method_not_allowed": ErrorKind(405, "UNIMPLEMENTED"),
    "unsupported_encoding": ErrorKind(415, "UNIMPLEMENTED"),
    "client_closed_request": ErrorKind(499, "CANCELLED"),
}
# The default wait a retryable error suggests (HTTP ``Retry-After``, gRPC ``RetryInfo``).
DEFAULT_RETRY_AFTER: Final = 1.0


class ServiceError(Exception):
    """Root of every error the service raises on purpose.

    ``type`` is the stable machine-readable name sent to clients, named in the class line of
    each error that has one of its own (``class NotFoundError(CallerError, type="not_found")``)
    and listed in :data:`ERROR_KINDS`; ``messages`` are human sentences that must never carry
    a secret. What a client can act on travels beside them, never only inside the words:
    ``field`` names the request field at fault (gRPC ``BadRequest``, HTTP ``error.field``),
    ``metadata`` holds ids such as ``key_id`` (gRPC ``ErrorInfo.metadata``, HTTP members of
    ``error``), and ``retry_after`` says when trying again may succeed (``None``: it will not).
    """

    type = "internal_error"
    retry_after: float | None = None

    def __init_subclass__(cls, *, type: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if type is not None:
            if type not in ERROR_KINDS:
                raise TypeError(f"error type {type!r} is missing from ERROR_KINDS")
            cls.type = type

    def __init__(
        self,
        *messages: str,
        field: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(*messages)
        self.messages: list[str] = list(messages) or [self.__class__.__doc__ or self.type]
        self.field = field
        self.metadata: dict[str, str] = dict(metadata or {})
        if retry_after is not None:
            self.retry_after = retry_after

    def __str__(self) -> str:
        return "; ".join(self.messages)

    @property
    def kind(self) -> ErrorKind:
        return ERROR_KINDS[self.type]


class CallerError(ServiceError):
    """The caller must change the request."""


class InvalidRequestError(CallerError, ValueError, type="invalid_parameters"):
    """The request is malformed or fails validation."""


class InvalidConsistencyTokenError(InvalidRequestError, type="invalid_consistency_token"):
    """The consistency token is malformed, or names another database."""


class EnvironmentRequiredError(InvalidRequestError, type="environment_required"):
    """The access token covers several environments and the request names none of them."""


class PayloadTooLargeError(InvalidRequestError, type="payload_too_large"):
    """The request body or token exceeds the configured size limit."""


class NotFoundError(CallerError, LookupError, type="not_found"):
    """The object does not exist (or belongs to another environment)."""


class ConflictError(CallerError, type="conflict"):
    """The request repeats an earlier one: its idempotency key already created a key, named
    in ``metadata["key_id"]``."""


class IdempotencyKeyMismatchError(CallerError, type="idempotency_key_mismatch"):
    """The idempotency key was already used for a different request."""


class UnauthenticatedError(CallerError, type="unauthorized"):
    """Credentials are missing or wrong."""


class PermissionDeniedError(CallerError, type="forbidden"):
    """The credentials are valid but do not cover this scope or environment."""


class TooManyRequestsError(CallerError, type="too_many_requests"):
    """The caller exceeded a limit of its own (failed authentications, watch streams,
    snapshots in progress, key look-ups); ``retry_after`` says when trying again may
    succeed."""

    retry_after: float | None = DEFAULT_RETRY_AFTER


class DependencyError(ServiceError, type="service_unavailable"):
    """A dependency (the database regions) cannot serve; retrying later may help."""

    retry_after: float | None = DEFAULT_RETRY_AFTER


class RegionUnavailableError(DependencyError, ConnectionError, type="region_unavailable"):
    """No region that could serve this operation is reachable."""


class NoWritableRegionError(RegionUnavailableError, type="no_writable_region"):
    """No writable region is reachable: key writes are refused until one is."""


class AmbiguousCommitError(DependencyError, type="ambiguous_commit"):
    """A write may or may not have committed; repeat it with the same idempotency key."""


class KeyUnavailableError(RegionUnavailableError, type="key_unavailable"):
    """Whether the token's key exists cannot be told now: no region answered its look-up.
    Try again shortly; the token is not valid until then."""


class DeadlineExceededError(DependencyError, TimeoutError, type="deadline_exceeded"):
    """The operation did not finish within its deadline."""

    retry_after: float | None = None  # the caller chose the deadline: retrying is its call


class InternalError(ServiceError, type="internal_error"):
    """Something went wrong inside the service."""


class SlowConsumerError(DependencyError, type="slow_consumer"):
    """A watcher fell too far behind the change stream; resume from its last position."""


class TooManyWatchersError(DependencyError, type="too_many_watchers"):
    """This instance already serves as many watch streams as it allows; try another or later."""


class WatchMaxAgeError(DependencyError, type="watch_max_age"):
    """A watch stream reached its maximum age; resume from its last position (any instance)."""

    retry_after: float | None = 0.0  # reconnecting at once is the point
