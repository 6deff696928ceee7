"""A strict protobuf codec: a malformed or oversized request gets a status, never a guess.

betterproto 2.0.0b7 parses leniently: a truncated string is accepted as its prefix, a varint
sent for a string field becomes an ``int`` in a ``str`` attribute, and stray bytes are
skipped. So every request for one of our betterproto messages is first parsed by the
protobuf runtime (upb, a compliant parser, about a microsecond for our small messages) and,
once betterproto has decoded it, its fields are checked against their declared types. The
health and reflection services use protobuf messages and get the first check only.

Oversized requests are refused here too (``RESOURCE_EXHAUSTED``, as grpc-core does), but
only once their bytes are in memory; :mod:`service.grpc.limits` refuses them earlier, from
the length prefix.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Final, cast

import betterproto
from google.protobuf.message import Message as ProtobufMessage
from grpclib.const import Status
from grpclib.encoding.proto import ProtoCodec
from grpclib.exceptions import GRPCError

_INT_TYPES: Final = frozenset(
    {
        betterproto.TYPE_ENUM,
        betterproto.TYPE_INT32,
        betterproto.TYPE_INT64,
        betterproto.TYPE_UINT32,
        betterproto.TYPE_UINT64,
        betterproto.TYPE_SINT32,
        betterproto.TYPE_SINT64,
        betterproto.TYPE_FIXED32,
        betterproto.TYPE_SFIXED32,
        betterproto.TYPE_FIXED64,
        betterproto.TYPE_SFIXED64,
    }
)
_PYTHON_TYPE: Final[Mapping[str, type | tuple[type, ...]]] = {
    betterproto.TYPE_STRING: str,
    betterproto.TYPE_BYTES: bytes,
    betterproto.TYPE_BOOL: bool,
    betterproto.TYPE_FLOAT: (float, int),
    betterproto.TYPE_DOUBLE: (float, int),
    # betterproto reads google.protobuf.Timestamp and Duration as datetime and timedelta.
    betterproto.TYPE_MESSAGE: (betterproto.Message, datetime, timedelta),
    betterproto.TYPE_MAP: dict,
    **dict.fromkeys(_INT_TYPES, int),
}


class MalformedMessageError(ValueError):
    """The bytes are not a valid encoding of the expected message."""


def protobuf_twins(
    betterproto_module: types.ModuleType, pb2_module: types.ModuleType
) -> dict[type[betterproto.Message], type[ProtobufMessage]]:
    """Pair each betterproto message class with the protobuf class of the same proto message.

    Covers top-level messages (ours has no nested ones).
    """
    twins: dict[type[betterproto.Message], type[ProtobufMessage]] = {}
    for name in pb2_module.DESCRIPTOR.message_types_by_name:
        cls = getattr(betterproto_module, name, None)
        if isinstance(cls, type) and issubclass(cls, betterproto.Message):
            twins[cls] = getattr(pb2_module, name)
    return twins


def check_types(message: betterproto.Message) -> None:
    """Raise :class:`MalformedMessageError` if a field holds a value of the wrong type."""
    meta = cast(Any, message)._betterproto
    current = {
        group: betterproto.which_one_of(message, group)[0] for group in meta.oneof_field_by_group
    }
    for field in dataclasses.fields(cast(Any, message)):
        field_meta = meta.meta_by_field_name.get(field.name)
        if field_meta is None:
            continue
        if field_meta.group is not None and current.get(field_meta.group) != field.name:
            continue
        value = getattr(message, field.name)
        if value is None:
            if field_meta.optional or field_meta.group is not None:
                continue
            if field_meta.proto_type == betterproto.TYPE_MESSAGE:
                continue  # an unset message field
            raise MalformedMessageError(f"field {field.name} is missing its value")
        if isinstance(value, list) and not isinstance(meta.default_gen[field.name](), list):
            # betterproto turns a length-delimited value on a scalar field into a list.
            raise MalformedMessageError(f"field {field.name} has the wrong wire type")
        expected = _PYTHON_TYPE.get(field_meta.proto_type)
        if expected is None:
            continue
        values = value if isinstance(value, list) else [value]
        for item in values:
            if not isinstance(item, expected) or (
                expected is int and isinstance(item, bool)  # bool is an int in Python
            ):
                raise MalformedMessageError(f"field {field.name} has the wrong wire type")
            if isinstance(item, betterproto.Message):
                check_types(item)


class StrictCodec(ProtoCodec):
    """grpclib's protobuf codec, refusing oversized and malformed requests with a status.

    ``twins`` maps betterproto message classes to their protobuf (upb) classes, used to
    validate the wire format before betterproto's lenient parse.
    """

    def __init__(
        self,
        *,
        max_message_bytes: int,
        twins: Mapping[type[Any], type[ProtobufMessage]] | None = None,
    ) -> None:
        self.max_message_bytes = max_message_bytes
        self._twins = dict(twins or {})

    def decode(self, data: bytes, message_type: type[Any]) -> Any:
        if len(data) > self.max_message_bytes:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"request message larger than {self.max_message_bytes} bytes",
            )
        try:
            twin = self._twins.get(message_type)
            if twin is not None:
                twin.FromString(data)
            message = message_type.FromString(data)
            if isinstance(message, betterproto.Message):
                check_types(message)
        except Exception:
            # Whatever a parser raises on bytes a caller chose (DecodeError, EOFError
            # mid-varint, KeyError on a wire type betterproto does not expect, …) is the
            # caller's malformed message, never an internal error.
            raise GRPCError(Status.INVALID_ARGUMENT, "malformed request message") from None
        return message
