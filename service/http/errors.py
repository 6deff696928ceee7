"""Domain errors → HTTP statuses, and the reference platform's error body."""

from __future__ import annotations

import math
from typing import Final

from aiohttp import web

from service import errors
from service.core.json import dumps

# Most specific first: the first class an error is an instance of decides its status.
STATUS_BY_ERROR: Final[tuple[tuple[type[errors.ServiceError], int], ...]] = (
    (errors.PayloadTooLargeError, 413),
    (errors.InvalidRequestError, 400),
    (errors.NotFoundError, 404),
    (errors.ConflictError, 409),
    (errors.UnauthenticatedError, 401),
    (errors.PermissionDeniedError, 403),
    (errors.TooManyRequestsError, 429),
    (errors.DeadlineExceededError, 504),
    (errors.DependencyError, 503),
    (errors.ServiceError, 500),
)


def status_of(error: errors.ServiceError) -> int:
    return next(status for cls, status in STATUS_BY_ERROR if isinstance(error, cls))


# Both schemes the service reads (RFC 9110, 11.6.1: one challenge per scheme).
WWW_AUTHENTICATE: Final = 'Basic realm="signing-keys", Bearer realm="signing-keys"'


def error_response(
    status: int,
    error_type: str,
    messages: list[str],
    *,
    retry_after: float = 1.0,
    request_id: str | None = None,
) -> web.Response:
    """The error body; with ``request_id`` (the X-Request-Id header's), so that a body
    pasted into a ticket still names the request."""
    error: dict[str, object] = {"type": error_type, "messages": messages}
    if request_id is not None:
        error["request_id"] = request_id
    response = web.Response(
        status=status, text=dumps({"error": error}), content_type="application/json"
    )
    if status == 401:
        response.headers["WWW-Authenticate"] = WWW_AUTHENTICATE
    if status in (429, 503):
        # Whole seconds, at least one: RFC 9110 allows no fraction, and 0 invites a storm.
        response.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return response


def service_error_response(
    error: errors.ServiceError, *, request_id: str | None = None
) -> web.Response:
    retry_after = error.retry_after if isinstance(error, errors.TooManyRequestsError) else 1.0
    return error_response(
        status_of(error),
        error.type,
        error.messages,
        retry_after=retry_after,
        request_id=request_id,
    )
