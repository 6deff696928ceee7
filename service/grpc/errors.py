"""Domain errors → gRPC statuses: the one place the gRPC transport decides a status.

The HTTP twin is :mod:`service.http.errors`; both read the status from
:data:`service.errors.ERROR_KINDS`. A caller's error keeps its messages (they never carry a
secret); anything unexpected becomes ``INTERNAL`` with a fixed message, so that no detail of
the failure leaks to the client.

Every error carries a ``google.rpc.Status`` in ``grpc-status-details-bin``, the form Google's
clients (``grpc-status``'s ``rpc_status.from_call``, Go's ``status.FromError``, Java's
``StatusProto.fromThrowable``) read, with
- ``ErrorInfo``: ``reason`` is the error's type (HTTP's ``error.type``), ``domain``
  :data:`ERROR_DOMAIN`, ``metadata`` the ids a client acts on (``key_id``, ...);
- ``RetryInfo`` when retrying may succeed (``UNAVAILABLE``, and ``RESOURCE_EXHAUSTED`` for a
  rate limit; not for a size limit, which no retry cures), with the delay HTTP sends as
  ``Retry-After``;
- ``BadRequest`` with the field at fault, when one is known.
The type also travels in the trailing metadata entry ``error-type``, as it always has.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final

import google.rpc.error_details_pb2 as error_details_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from grpclib.const import Status
from grpclib.encoding.proto import ProtoStatusDetailsCodec
from grpclib.exceptions import GRPCError

from service import errors

ERROR_TYPE_METADATA: Final = "error-type"
ERROR_DOMAIN: Final = "signingkeys.v1"
INTERNAL_MESSAGE: Final = "internal error"
_RETRYABLE: Final = frozenset({Status.UNAVAILABLE, Status.RESOURCE_EXHAUSTED})
# A status raised by code that named no type (grpclib itself): the type that status means
# most often here.
_TYPE_OF_STATUS: Final[dict[Status, str]] = {
    Status.INVALID_ARGUMENT: errors.InvalidRequestError.type,
    Status.RESOURCE_EXHAUSTED: errors.PayloadTooLargeError.type,
    Status.UNIMPLEMENTED: "unsupported_encoding",
    Status.UNAVAILABLE: errors.DependencyError.type,
    Status.UNAUTHENTICATED: errors.UnauthenticatedError.type,
    Status.DEADLINE_EXCEEDED: errors.DeadlineExceededError.type,
}


def status_details_codec() -> ProtoStatusDetailsCodec:
    """What the server encodes ``grpc-status-details-bin`` with (grpclib's own codec for
    ``google.rpc.Status``; it picks it by itself only when it also picks the message codec)."""
    return ProtoStatusDetailsCodec()


@dataclass(frozen=True, slots=True)
class ErrorStatus:
    """What a client is told about a failed call."""

    status: Status
    message: str
    error_type: str
    details: list[Message] = field(default_factory=list)

    @property
    def is_internal(self) -> bool:
        return self.status is Status.INTERNAL

    def metadata(self) -> dict[str, str]:
        """The trailing metadata beside the status."""
        return {ERROR_TYPE_METADATA: self.error_type}


def details(
    status: Status,
    error_type: str,
    message: str,
    *,
    metadata: dict[str, str] | None = None,
    retry_after: float | None = None,
    field_name: str | None = None,
) -> list[Message]:
    """The ``google.rpc`` detail messages of an error."""
    found: list[Message] = [
        error_details_pb2.ErrorInfo(reason=error_type, domain=ERROR_DOMAIN, metadata=metadata)
    ]
    if status in _RETRYABLE and retry_after is not None:
        delay = Duration(seconds=max(1, math.ceil(retry_after)))
        found.append(error_details_pb2.RetryInfo(retry_delay=delay))
    if field_name is not None:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=field_name, description=message
        )
        found.append(error_details_pb2.BadRequest(field_violations=[violation]))
    return found


def _service_status(error: errors.ServiceError) -> ErrorStatus:
    status = Status[error.kind.grpc_code]
    if status is Status.INTERNAL:  # our failure: its words may name what the client must not
        return _internal()
    message = "; ".join(error.messages)
    return ErrorStatus(
        status,
        message,
        error.type,
        details(
            status,
            error.type,
            message,
            metadata=error.metadata,
            retry_after=error.retry_after,
            field_name=error.field,
        ),
    )


def _grpc_status(error: GRPCError) -> ErrorStatus:
    """A status raised as ``GRPCError`` (framing and codec checks, grpclib): its type is its
    ``ErrorInfo``'s reason when it carries one."""
    message = error.message or ""
    infos = [d for d in error.details or () if isinstance(d, error_details_pb2.ErrorInfo)]
    if infos:
        return ErrorStatus(error.status, message, infos[0].reason, list(error.details or ()))
    error_type = _TYPE_OF_STATUS.get(error.status, errors.InternalError.type)
    retry_after = errors.DEFAULT_RETRY_AFTER if error.status is Status.UNAVAILABLE else None
    found = details(error.status, error_type, message, retry_after=retry_after)
    return ErrorStatus(error.status, message, error_type, found)


def error_status(error: BaseException) -> ErrorStatus:
    """The status, message, error type and details to send for ``error``.

    >>> error_status(errors.NotFoundError("no such key")).status
    <Status.NOT_FOUND: 5>
    """
    if isinstance(error, errors.ServiceError):
        return _service_status(error)
    if isinstance(error, GRPCError):
        return _grpc_status(error)
    return _internal()


def _internal() -> ErrorStatus:
    internal = errors.InternalError.type
    return ErrorStatus(
        Status.INTERNAL, INTERNAL_MESSAGE, internal, details(Status.INTERNAL, internal, "")
    )


def grpc_error(error: errors.ServiceError) -> GRPCError:
    """``error`` as the ``GRPCError`` grpclib sends, details included: for code that must
    raise grpclib's own exception (a message codec, a stream's reads), so that what it
    refuses is typed as everything else is."""
    answer = _service_status(error)
    return GRPCError(answer.status, answer.message, answer.details)
