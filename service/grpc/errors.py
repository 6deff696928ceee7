"""Domain errors → gRPC statuses: the one place the gRPC transport decides a status.

The HTTP twin is :mod:`service.http.errors`. A caller's error keeps its messages (they never
carry a secret); anything unexpected becomes ``INTERNAL`` with a fixed message, so that no
detail of the failure leaks to the client. The error's stable ``type`` (as in HTTP's
``{"error": {"type": …}}``) travels in the trailing metadata entry ``error-type``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from grpclib.const import Status

from service import errors

ERROR_TYPE_METADATA: Final = "error-type"
INTERNAL_MESSAGE: Final = "internal error"

# Most specific first: the first class an error is an instance of decides its status.
STATUS_BY_ERROR: Final[tuple[tuple[type[errors.ServiceError], Status], ...]] = (
    (errors.InvalidRequestError, Status.INVALID_ARGUMENT),  # PayloadTooLargeError included
    (errors.NotFoundError, Status.NOT_FOUND),
    (errors.ConflictError, Status.ALREADY_EXISTS),
    (errors.UnauthenticatedError, Status.UNAUTHENTICATED),
    (errors.PermissionDeniedError, Status.PERMISSION_DENIED),
    (errors.TooManyRequestsError, Status.RESOURCE_EXHAUSTED),
    (errors.DeadlineExceededError, Status.DEADLINE_EXCEEDED),
    # Region unavailable, no writable region, ambiguous commit: retry later (an ambiguous
    # commit with the same idempotency key).
    (errors.DependencyError, Status.UNAVAILABLE),
)


@dataclass(frozen=True, slots=True)
class ErrorStatus:
    """What a client is told about a failed call."""

    status: Status
    message: str
    error_type: str

    @property
    def is_internal(self) -> bool:
        return self.status is Status.INTERNAL


def error_status(error: BaseException) -> ErrorStatus:
    """The status, message and error type to send for ``error``.

    >>> error_status(errors.NotFoundError("no such key")).status
    <Status.NOT_FOUND: 5>
    """
    if isinstance(error, errors.ServiceError):
        for cls, status in STATUS_BY_ERROR:
            if isinstance(error, cls):
                return ErrorStatus(status, "; ".join(error.messages), error.type)
    return ErrorStatus(Status.INTERNAL, INTERNAL_MESSAGE, errors.InternalError.type)
