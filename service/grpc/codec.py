"""A strict protobuf codec: a malformed or oversized request gets a status, never a guess.

betterproto 2.0.0b7 parses leniently: a truncated string is accepted as its prefix, a varint
sent for a string field becomes an ``int`` in a ``str`` attribute, and stray bytes are
skipped. So every request for one of our betterproto messages is first parsed by the
protobuf runtime (upb, a compliant parser, about a microsecond for our small messages) and,
once betterproto has decoded it, its fields are checked against their declared types. The
messages of the hot RPCs, and of health and reflection, are protobuf's own: parsed once,
by upb, which keeps a declared field sent with the wrong wire type as an *unknown* field —
refused here too, as betterproto's messages are.

Oversized requests are refused here too (``RESOURCE_EXHAUSTED``, as grpc-core does), but
only once their bytes are in memory; :mod:`service.grpc.limits` refuses them earlier, from
the length prefix.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, Final, cast

import betterproto
from google.protobuf.message import Message as ProtobufMessage
from google.protobuf.unknown_fields import UnknownFieldSet
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


def check_wire_types(message: ProtobufMessage) -> None:
    """Raise :class:`MalformedMessageError` if a declared field came with the wrong wire type
    (upb keeps it as an unknown field). Fields of numbers the message does not declare are
    skipped, as proto3 asks. Top level only: no request of ours nests a message."""
    unknown = UnknownFieldSet(message)
    if not len(unknown):
        return
    declared = message.DESCRIPTOR.fields_by_number
    for item in unknown:
        if item.field_number in declared:
            raise MalformedMessageError(f"field {item.field_number} has the wrong wire type")


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
        # How each message type is parsed and checked, worked out at its first request.
        self._parsers: dict[type[Any], Callable[[bytes], Any]] = {}

    def decode(self, data: bytes, message_type: type[Any]) -> Any:
        if len(data) > self.max_message_bytes:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"request message larger than {self.max_message_bytes} bytes",
            )
        parse = self._parsers.get(message_type)
        if parse is None:
            parse = self._parsers[message_type] = self._parser(message_type)
        try:
            return parse(data)
        except Exception:
            # Whatever a parser raises on bytes a caller chose (DecodeError, EOFError
            # mid-varint, KeyError on a wire type betterproto does not expect, …) is the
            # caller's malformed message, never an internal error.
            raise GRPCError(Status.INVALID_ARGUMENT, "malformed request message") from None

    def _parser(self, message_type: type[Any]) -> Callable[[bytes], Any]:
        from_string: Callable[[bytes], Any] = message_type.FromString
        if isinstance(message_type, type) and issubclass(message_type, betterproto.Message):
            twin = self._twins.get(message_type)

            def parse_betterproto(data: bytes) -> Any:
                if twin is not None:
                    twin.FromString(data)
                message = from_string(data)
                check_types(message)
                return message

            return parse_betterproto
        if isinstance(message_type, type) and issubclass(message_type, ProtobufMessage):

            def parse_protobuf(data: bytes) -> Any:
                message = from_string(data)
                check_wire_types(message)
                return message

            return parse_protobuf
        return from_string
