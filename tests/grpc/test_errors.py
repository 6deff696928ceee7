"""Domain errors → gRPC statuses, decided in one place."""

from __future__ import annotations

import pytest
from grpclib.const import Status

from service import errors
from service.grpc.errors import INTERNAL_MESSAGE, error_status


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.InvalidRequestError("bad"), Status.INVALID_ARGUMENT),
        (errors.PayloadTooLargeError("big"), Status.INVALID_ARGUMENT),
        (errors.NotFoundError("gone"), Status.NOT_FOUND),
        (errors.ConflictError("again"), Status.ALREADY_EXISTS),
        (errors.UnauthenticatedError("who"), Status.UNAUTHENTICATED),
        (errors.PermissionDeniedError("no"), Status.PERMISSION_DENIED),
        (errors.TooManyRequestsError("slow down", retry_after=3), Status.RESOURCE_EXHAUSTED),
        (errors.RegionUnavailableError("down"), Status.UNAVAILABLE),
        (errors.NoWritableRegionError("read only"), Status.UNAVAILABLE),
        (errors.AmbiguousCommitError("maybe"), Status.UNAVAILABLE),
        (errors.SlowConsumerError("behind"), Status.UNAVAILABLE),
        (errors.DeadlineExceededError("late"), Status.DEADLINE_EXCEEDED),
    ],
)
def test_each_domain_error_has_its_status_message_and_type(
    error: errors.ServiceError, status: Status
) -> None:
    mapped = error_status(error)
    assert mapped.status is status
    assert mapped.message == str(error)
    assert mapped.error_type == error.type


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("postgresql://user:hunter2@db"),
        KeyError("secret"),
        errors.InternalError("the key was not stored in region x"),
    ],
)
def test_anything_else_is_internal_and_says_nothing_more(error: Exception) -> None:
    mapped = error_status(error)
    assert mapped.status is Status.INTERNAL and mapped.is_internal
    assert mapped.message == INTERNAL_MESSAGE
    assert mapped.error_type == "internal_error"
