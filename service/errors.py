"""The service's error hierarchy: one root, split by who must act.

- the caller: :class:`CallerError` and its children (bad input, unknown id, credentials);
- a dependency: :class:`DependencyError` (no region reachable, no writable region, a deadline);
- us: :class:`InternalError`.

Transports map these to HTTP statuses (one middleware) and gRPC statuses (one function);
foreign exceptions are translated at the boundary with ``raise … from exc``.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Root of every error the service raises on purpose.

    ``type`` is the stable machine-readable name sent to clients, named in the class line of
    each error that has one of its own (``class NotFoundError(CallerError, type="not_found")``);
    ``messages`` are human sentences that must never carry a secret.
    """

    type = "internal_error"

    def __init_subclass__(cls, *, type: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if type is not None:
            cls.type = type

    def __init__(self, *messages: str) -> None:
        super().__init__(*messages)
        self.messages: list[str] = list(messages) or [self.__class__.__doc__ or self.type]

    def __str__(self) -> str:
        return "; ".join(self.messages)


class CallerError(ServiceError):
    """The caller must change the request."""


class InvalidRequestError(CallerError, ValueError, type="invalid_parameters"):
    """The request is malformed or fails validation."""


class InvalidConsistencyTokenError(InvalidRequestError, type="invalid_consistency_token"):
    """The consistency token is malformed, or names another database."""


class PayloadTooLargeError(InvalidRequestError, type="payload_too_large"):
    """The request body or token exceeds the configured size limit."""


class NotFoundError(CallerError, LookupError, type="not_found"):
    """The object does not exist (or belongs to another environment)."""


class ConflictError(CallerError, type="conflict"):
    """The request conflicts with an earlier one (e.g. an idempotency key reused)."""


class UnauthenticatedError(CallerError, type="unauthorized"):
    """Credentials are missing or wrong."""


class PermissionDeniedError(CallerError, type="forbidden"):
    """The credentials are valid but do not cover this scope or environment."""


class TooManyRequestsError(CallerError, type="too_many_requests"):
    """The caller exceeded a limit of its own (failed authentications, watch streams,
    snapshots in progress); ``retry_after`` says when trying again may succeed."""

    def __init__(self, *messages: str, retry_after: float = 1.0) -> None:
        super().__init__(*messages)
        self.retry_after = retry_after


class DependencyError(ServiceError, type="service_unavailable"):
    """A dependency (the database regions) cannot serve; retrying later may help."""


class RegionUnavailableError(DependencyError, ConnectionError, type="region_unavailable"):
    """No region that could serve this operation is reachable."""


class NoWritableRegionError(RegionUnavailableError, type="no_writable_region"):
    """No writable region is reachable: key writes are refused until one is."""


class AmbiguousCommitError(DependencyError, type="ambiguous_commit"):
    """A write may or may not have committed; repeat it with the same idempotency key."""


class DeadlineExceededError(DependencyError, TimeoutError, type="deadline_exceeded"):
    """The operation did not finish within its deadline."""


class InternalError(ServiceError, type="internal_error"):
    """Something went wrong inside the service."""


class SlowConsumerError(DependencyError, type="slow_consumer"):
    """A watcher fell too far behind the change stream; resume from its last position."""


class TooManyWatchersError(DependencyError, type="too_many_watchers"):
    """This instance already serves as many watch streams as it allows; try another or later."""


class WatchMaxAgeError(DependencyError, type="watch_max_age"):
    """A watch stream reached its maximum age; resume from its last position (any instance)."""
