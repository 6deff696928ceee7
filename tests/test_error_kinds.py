"""HTTP and gRPC name the same failure the same way: every error type of
:data:`service.errors.ERROR_KINDS`, through both transports' mappings."""

from __future__ import annotations

import json
from typing import Final

import pytest
from google.rpc import error_details_pb2
from grpclib.const import Status

from service import errors
from service.grpc import errors as grpc_errors
from service.http import errors as http_errors

# google.rpc.Code's HTTP mapping, plus the statuses HTTP has and gRPC lacks a code for.
HTTP_OF_CODE: Final[dict[str, set[int]]] = {
    "INVALID_ARGUMENT": {400},
    "FAILED_PRECONDITION": {400, 422},
    "UNAUTHENTICATED": {401},
    "PERMISSION_DENIED": {403},
    "NOT_FOUND": {404},
    "ALREADY_EXISTS": {409},
    "RESOURCE_EXHAUSTED": {429, 413},
    "CANCELLED": {499},
    "INTERNAL": {500},
    "UNIMPLEMENTED": {501, 405, 415},
    "UNAVAILABLE": {503},
    "DEADLINE_EXCEEDED": {504, 408},
}


def error_classes() -> list[type[errors.ServiceError]]:
    found: list[type[errors.ServiceError]] = []
    pending: list[type[errors.ServiceError]] = [errors.ServiceError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


@pytest.mark.parametrize(("error_type", "kind"), sorted(errors.ERROR_KINDS.items()))
def test_each_types_http_status_and_grpc_code_are_a_pair(
    error_type: str, kind: errors.ErrorKind
) -> None:
    assert kind.grpc_code in Status.__members__, error_type
    assert kind.http_status in HTTP_OF_CODE[kind.grpc_code], error_type


@pytest.mark.parametrize("cls", error_classes(), ids=lambda cls: cls.__name__)
def test_each_error_class_is_answered_by_its_types_kind_on_both_transports(
    cls: type[errors.ServiceError],
) -> None:
    kind = errors.ERROR_KINDS[cls.type]
    error = cls("words", metadata={"key_id": "k1"})
    response = http_errors.service_error_response(error)
    assert response.status == kind.http_status
    assert response.text is not None
    body = json.loads(response.text)["error"]
    assert body["type"] == cls.type
    mapped = grpc_errors.error_status(error)
    assert mapped.status.name == kind.grpc_code
    if mapped.is_internal:
        return  # our own failure: its type is sent, nothing more
    assert mapped.error_type == cls.type and mapped.metadata() == {"error-type": cls.type}
    info = mapped.details[0]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert info.reason == cls.type and dict(info.metadata) == {"key_id": "k1"}
    assert body["key_id"] == "k1", "HTTP names the key in a member of its own"
    retryable = any(isinstance(d, error_details_pb2.RetryInfo) for d in mapped.details)
    assert retryable == ("Retry-After" in response.headers), "one retry hint, both ways"


def test_every_type_a_transport_answers_by_itself_is_in_the_table() -> None:
    for error_type in ("request_timeout", "method_not_allowed", "client_closed_request"):
        assert error_type in errors.ERROR_KINDS
    for status, error_type in grpc_errors._TYPE_OF_STATUS.items():
        assert errors.ERROR_KINDS[error_type].grpc_code == status.name


def test_an_error_type_missing_from_the_table_is_refused_when_declared() -> None:
    with pytest.raises(TypeError, match="ERROR_KINDS"):

        class _Undeclared(errors.CallerError, type="made_up"):
            pass
