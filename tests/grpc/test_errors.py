"""Domain errors → gRPC statuses and google.rpc details, decided in one place."""

from __future__ import annotations

import pytest
from google.rpc import error_details_pb2, status_pb2
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from service import errors
from service.grpc.errors import (
    ERROR_DOMAIN,
    INTERNAL_MESSAGE,
    error_status,
    grpc_error,
    status_details_codec,
)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.InvalidRequestError("bad"), Status.INVALID_ARGUMENT),
        (errors.PayloadTooLargeError("big"), Status.RESOURCE_EXHAUSTED),
        (errors.NotFoundError("gone"), Status.NOT_FOUND),
        (errors.ConflictError("again"), Status.ALREADY_EXISTS),
        (errors.IdempotencyKeyMismatchError("other"), Status.FAILED_PRECONDITION),
        (errors.EnvironmentRequiredError("which?"), Status.INVALID_ARGUMENT),
        (errors.KeyUnavailableError("soon"), Status.UNAVAILABLE),
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


def decoded(error: BaseException) -> status_pb2.Status:
    """The ``grpc-status-details-bin`` blob the server sends for ``error``, read back as a
    stock client reads it (``google.rpc.Status.FromString``)."""
    mapped = error_status(error)
    blob = status_details_codec().encode(mapped.status, mapped.message, mapped.details)
    status: status_pb2.Status = status_pb2.Status.FromString(blob)
    return status


def unpacked(status: status_pb2.Status) -> dict[str, object]:
    found: dict[str, object] = {}
    for kind in (
        error_details_pb2.ErrorInfo,
        error_details_pb2.RetryInfo,
        error_details_pb2.BadRequest,
    ):
        for any_detail in status.details:
            detail = kind()
            if any_detail.Unpack(detail):
                found[kind.DESCRIPTOR.name] = detail
    return found


def test_every_error_carries_error_info_with_its_type_and_metadata() -> None:
    error = errors.ConflictError("already created", metadata={"key_id": "k1"})
    status = decoded(error)
    assert status.code == Status.ALREADY_EXISTS.value and status.message == "already created"
    info = unpacked(status)["ErrorInfo"]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain) == ("conflict", ERROR_DOMAIN)
    assert dict(info.metadata) == {"key_id": "k1"}
    assert set(unpacked(decoded(RuntimeError("boom")))) == {"ErrorInfo"}


@pytest.mark.parametrize(
    ("error", "seconds"),
    [
        (errors.RegionUnavailableError("down"), 1),
        (errors.KeyUnavailableError("soon", retry_after=0.3), 1),
        (errors.TooManyRequestsError("slow down", retry_after=2.5), 3),
    ],
)
def test_a_retryable_error_says_when_to_retry(error: errors.ServiceError, seconds: int) -> None:
    retry = unpacked(decoded(error))["RetryInfo"]
    assert isinstance(retry, error_details_pb2.RetryInfo)
    assert retry.retry_delay.seconds == seconds


@pytest.mark.parametrize(
    "error",
    [
        errors.PayloadTooLargeError("big"),  # a size limit: the same request never fits
        errors.InvalidRequestError("bad"),
        errors.DeadlineExceededError("late"),
    ],
)
def test_an_error_no_retry_cures_has_no_retry_info(error: errors.ServiceError) -> None:
    assert "RetryInfo" not in unpacked(decoded(error))


def test_a_bad_field_is_named_in_a_field_violation() -> None:
    status = decoded(errors.InvalidRequestError("expires_at is in the past", field="expires_at"))
    bad = unpacked(status)["BadRequest"]
    assert isinstance(bad, error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("expires_at", "expires_at is in the past")
    ]


def test_a_grpc_error_raised_by_the_codec_is_typed_by_its_status() -> None:
    mapped = error_status(GRPCError(Status.RESOURCE_EXHAUSTED, "request message too large"))
    assert (mapped.status, mapped.error_type) == (Status.RESOURCE_EXHAUSTED, "payload_too_large")
    assert mapped.metadata() == {"error-type": "payload_too_large"}
    malformed = error_status(GRPCError(Status.INVALID_ARGUMENT, "malformed request message"))
    assert malformed.error_type == "invalid_parameters"
    info = unpacked(decoded(GRPCError(Status.UNIMPLEMENTED, "compressed")))["ErrorInfo"]
    assert isinstance(info, error_details_pb2.ErrorInfo) and info.reason == "unsupported_encoding"


def test_grpc_error_keeps_the_type_and_details_of_a_domain_error() -> None:
    raised = grpc_error(errors.DependencyError("shutting down"))
    assert raised.status is Status.UNAVAILABLE and raised.message == "shutting down"
    assert error_status(raised).error_type == "service_unavailable"
