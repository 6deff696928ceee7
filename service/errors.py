"""The service's error hierarchy: one root, split by who must act.

- the caller: :class:`CallerError` and its children (bad input, unknown id, credentials);
- a dependency: :class:`DependencyError` (no region reachable, no writable region, a deadline);
- us: :class:`InternalError`.

Transports map these to HTTP statuses (one middleware) and gRPC statuses (one function);
foreign exceptions are translated at the boundary with ``raise … from exc``.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Root of every error the service raises on purpose.

    ``type`` is the stable machine-readable name sent to clients; ``messages`` are human
    sentences that must never carry a secret.
    """

    type = "internal_error"

    def __init__(self, *messages: str) -> None:
        super().__init__(*messages)
        self.messages: list[str] = list(messages) or [self.__class__.__doc__ or self.type]

    def __str__(self) -> str:
        return "; ".join(self.messages)


class CallerError(ServiceError):
    """The caller must change the request."""


class InvalidRequestError(CallerError, ValueError):
    """The request is malformed or fails validation."""

    type = "invalid_parameters"


class PayloadTooLargeError(InvalidRequestError):
    """The request body or token exceeds the configured size limit."""

    type = "payload_too_large"


class NotFoundError(CallerError, LookupError):
    """The object does not exist (or belongs to another environment)."""

    type = "not_found"


class ConflictError(CallerError):
    """The request conflicts with an earlier one (e.g. an idempotency key reused)."""

    type = "conflict"


class UnauthenticatedError(CallerError):
    """Credentials are missing or wrong."""

    type = "unauthorized"


class PermissionDeniedError(CallerError):
    """The credentials are valid but do not cover this scope or environment."""

    type = "forbidden"


class DependencyError(ServiceError):
    """A dependency (the database regions) cannot serve; retrying later may help."""

    type = "service_unavailable"


class RegionUnavailableError(DependencyError, ConnectionError):
    """No region that could serve this operation is reachable."""

    type = "region_unavailable"


class NoWritableRegionError(RegionUnavailableError):
    """No writable region is reachable: key writes are refused until one is."""

    type = "no_writable_region"


class AmbiguousCommitError(DependencyError):
    """A write may or may not have committed; repeat it with the same idempotency key."""

    type = "ambiguous_commit"


class DeadlineExceededError(DependencyError, TimeoutError):
    """The operation did not finish within its deadline."""

    type = "deadline_exceeded"


class InternalError(ServiceError):
    """Something went wrong inside the service."""

    type = "internal_error"


class SlowConsumerError(DependencyError):
    """A watcher fell too far behind the change stream; resume from its last position."""

    type = "slow_consumer"


class TooManyWatchersError(DependencyError):
    """This instance already serves as many watch streams as it allows; try another or later."""

    type = "too_many_watchers"
