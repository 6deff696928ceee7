"""The strict codec: betterproto's lenient parse never sees (or never keeps) a bad message, and
the hot RPCs' messages are parsed once, by upb."""

from __future__ import annotations

from typing import Any, cast

import betterproto
import pytest
from google.protobuf.message import Message as ProtobufMessage
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_pb2 import HealthCheckRequest

from service.grpc.codec import MalformedMessageError, StrictCodec, check_types, protobuf_twins
from service.grpc.generated.signingkeys import v1 as pb
from service.grpc.generated.signingkeys.v1 import signing_keys_pb2
from service.grpc.servicer import SERVICE_NAME, SigningKeysServicer

CODEC = StrictCodec(max_message_bytes=64, twins=protobuf_twins(pb, signing_keys_pb2))


def test_every_message_has_its_protobuf_twin() -> None:
    twins = protobuf_twins(pb, signing_keys_pb2)
    assert twins[pb.GetSigningKeyRequest] is signing_keys_pb2.GetSigningKeyRequest
    assert len(twins) == len(signing_keys_pb2.DESCRIPTOR.message_types_by_name)


def test_a_valid_message_round_trips() -> None:
    request = pb.ImportSigningKeyRequest(environment_id="e", jwk_json="{}", name="n")
    assert CODEC.decode(bytes(request), pb.ImportSigningKeyRequest) == request
    assert CODEC.decode(b"", pb.GetSigningKeyRequest) == pb.GetSigningKeyRequest()


@pytest.mark.parametrize(
    "payload",
    [b"\x0a\x05ab", b"\x0a\x02\xff\xfe", b"\x08\x96\x01", b"\xff\xff\xff", b"\x0b", b"\x12\x80"],
)
def test_malformed_bytes_are_invalid_argument(payload: bytes) -> None:
    with pytest.raises(GRPCError) as raised:
        CODEC.decode(payload, pb.GetSigningKeyRequest)
    assert raised.value.status is Status.INVALID_ARGUMENT


def test_betterproto_alone_would_have_accepted_them() -> None:
    """Why the codec exists: these parse 'successfully' with betterproto 2.0.0b7."""
    assert pb.GetSigningKeyRequest.FromString(b"\x0a\x05ab").environment_id == "ab"
    assert pb.GetSigningKeyRequest.FromString(b"\x08\x96\x01").environment_id == 150  # type: ignore[comparison-overlap]


def test_a_wrong_type_is_found_in_nested_messages_too() -> None:
    reply = pb.GetSigningKeyResponse(key=pb.SigningKey(id="k"))
    check_types(reply)
    reply.key.name = 5  # type: ignore[assignment]
    with pytest.raises(MalformedMessageError):
        check_types(reply)
    enum_as_bool = pb.SigningKey(status=True)  # type: ignore[arg-type]
    with pytest.raises(MalformedMessageError):
        check_types(enum_as_bool)


def test_an_oversized_message_is_resource_exhausted() -> None:
    request = pb.GetSigningKeyRequest(id="k" * 100)
    with pytest.raises(GRPCError) as raised:
        CODEC.decode(bytes(request), pb.GetSigningKeyRequest)
    assert raised.value.status is Status.RESOURCE_EXHAUSTED


def test_protobuf_messages_of_health_and_reflection_are_checked_too() -> None:
    assert CODEC.decode(b"\x0a\x01x", HealthCheckRequest).service == "x"
    with pytest.raises(GRPCError) as raised:
        CODEC.decode(b"\x0a\x05x", HealthCheckRequest)
    assert raised.value.status is Status.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "payload",
    [
        bytes.fromhex("0d01020304"),  # fixed32 on a string field: betterproto raises KeyError
        bytes.fromhex("120141"),  # length-delimited on int32 limit: betterproto makes a list
    ],
)
def test_wire_types_betterproto_mishandles_are_invalid_argument_not_internal(
    payload: bytes,
) -> None:
    with pytest.raises(GRPCError) as raised:
        CODEC.decode(payload, pb.ListSigningKeysRequest)
    assert raised.value.status is Status.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "payload",
    [b"\x08\x96\x01", bytes.fromhex("0d01020304")],  # a varint, a fixed32 on string field 1
)
def test_protobuf_messages_refuse_a_declared_field_with_the_wrong_wire_type(
    payload: bytes,
) -> None:
    """upb keeps such a field as unknown and parses 'successfully'; the codec refuses."""
    assert signing_keys_pb2.GetSigningKeyRequest.FromString(payload).id == ""
    with pytest.raises(GRPCError) as raised:
        CODEC.decode(payload, signing_keys_pb2.GetSigningKeyRequest)
    assert raised.value.status is Status.INVALID_ARGUMENT


def test_protobuf_messages_skip_fields_they_do_not_declare() -> None:
    """proto3: a newer client's extra field (number 15 here) is ignored, not refused."""
    request = CODEC.decode(b"\x0a\x01k\x78\x01", signing_keys_pb2.GetSigningKeyRequest)
    assert request.environment_id == "k"


def test_the_hot_rpcs_are_decoded_once_by_upb(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: upb parsed each GetSigningKey and VerifyToken request, then betterproto again."""

    def refuse(*_: object) -> None:
        raise AssertionError("betterproto parsed a hot RPC's request")

    monkeypatch.setattr(betterproto.Message, "parse", refuse)
    servicer = SigningKeysServicer(
        key_service=cast(Any, None),
        authenticator=cast(Any, None),
        verifier=cast(Any, None),
        changes=cast(Any, None),
    )
    mapping = servicer.__mapping__()
    for method, request in (
        ("GetSigningKey", pb.GetSigningKeyRequest(id="k", environment_id="e")),
        ("VerifyToken", pb.VerifyTokenRequest(token="a.b.c", audience="x")),
    ):
        handler = mapping[f"/{SERVICE_NAME}/{method}"]
        decoded = CODEC.decode(bytes(request), handler.request_type)
        assert decoded.SerializeToString() == bytes(request)
        assert issubclass(handler.reply_type, ProtobufMessage)
