"""Properties of the gRPC request decoder (:class:`service.grpc.codec.StrictCodec`) and of the
servicer behind it, over damaged encodings of valid requests and random bytes.

The decoder answers a message or a clean status (``INVALID_ARGUMENT``, or
``RESOURCE_EXHAUSTED`` for size), and a message it lets through reads exactly as the
protobuf runtime (upb) reads the same bytes: betterproto's lenient parse never decides what
a field holds. Each decoded request, handled by the servicer over the in-memory core, ends
in a status of the caller's making, never ``INTERNAL``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import betterproto
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from google.protobuf.message import Message as ProtobufMessage
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from hypothesis import event, example, given
from hypothesis import strategies as st

from service.core import crypto
from service.core.auth import Authenticator
from service.core.changes import ChangeFeed
from service.core.keycache import KeyCache
from service.core.keys import KeyService
from service.core.models import Principal, Scope
from service.core.requests import CreateKeyRequest, KeySpec
from service.core.verify import TokenVerifier
from service.grpc.codec import StrictCodec, protobuf_twins
from service.grpc.generated.signingkeys import v1 as pb
from service.grpc.generated.signingkeys.v1 import signing_keys_pb2
from service.grpc.servicer import SERVICE_NAME, SigningKeysServicer
from tests.fuzz.budget import examples
from tests.fuzz.mutations import mutated_bytes, mutated_text
from tests.support.memory import ManualClock, MemoryKeyRecords, MemoryTokenRecords

pytestmark = pytest.mark.fuzz

ENVIRONMENT = "env-fuzz"
MAX_MESSAGE_BYTES = 4096
TWINS = protobuf_twins(pb, signing_keys_pb2)
CODEC = StrictCodec(max_message_bytes=MAX_MESSAGE_BYTES, twins=TWINS)
_PUBLIC = ed25519.Ed25519PrivateKey.generate().public_key()
PEM = _PUBLIC.public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
).decode()
JWK = crypto.jwk_of(_PUBLIC, kid="k", algorithm="EdDSA")
_KEY_ID = "k" * 32  # replaced by a stored key's id in the servicer's world


def _seeds(key_id: str, token: str) -> dict[str, list[bytes]]:
    """Valid encodings of each method's request: where the mutations start."""
    env = ENVIRONMENT
    messages: dict[str, list[betterproto.Message]] = {
        "CreateSigningKey": [
            pb.CreateSigningKeyRequest(
                environment_id=env,
                algorithm="EdDSA",
                name="n",
                expires_at="1893456000",
                idempotency_key="k1",
            )
        ],
        "ImportSigningKey": [
            pb.ImportSigningKeyRequest(environment_id=env, pem=PEM, name="imported"),
            pb.ImportSigningKeyRequest(jwk_json=json.dumps(JWK), expires_at="1893456000"),
        ],
        "GetSigningKey": [pb.GetSigningKeyRequest(environment_id=env, id=key_id, status="all")],
        "ListSigningKeys": [
            pb.ListSigningKeysRequest(environment_id=env, limit=5, page=2, status="active")
        ],
        "RevokeSigningKey": [pb.RevokeSigningKeyRequest(environment_id=env, id=key_id)],
        "VerifyToken": [
            pb.VerifyTokenRequest(token=token, environment_id=env, audience="a", subject="s")
        ],
        "WatchSigningKeys": [pb.WatchSigningKeysRequest(environment_id=env, after="c1")],
    }
    return {method: [bytes(message) for message in found] for method, found in messages.items()}


METHODS = sorted(_seeds(_KEY_ID, "a.b.c"))


def _request_type(method: str) -> type[betterproto.Message]:
    request_type: type[betterproto.Message] = getattr(pb, f"{method}Request")
    return request_type


@st.composite
def requests(draw: st.DrawFn, seeds: Mapping[str, list[bytes]]) -> tuple[str, bytes]:
    """A method and bytes for it: a damaged valid request, or random bytes."""
    method = draw(st.sampled_from(METHODS))
    data = draw(mutated_bytes(seeds[method]) | st.binary(max_size=64))
    return method, data


def _as_upb_reads(message: betterproto.Message, twin: ProtobufMessage) -> None:
    """Assert that every field of the decoded ``message`` holds what upb read."""
    for descriptor in twin.DESCRIPTOR.fields:
        oneof = descriptor.containing_oneof
        if oneof is not None:
            chosen = betterproto.which_one_of(message, oneof.name)[0] or None
            assert chosen == twin.WhichOneof(oneof.name), oneof.name
            if chosen != descriptor.name:
                continue
        assert getattr(message, descriptor.name) == getattr(twin, descriptor.name), descriptor.name


@given(request=requests(_seeds(_KEY_ID, "a.b.c")))
@examples(bounded=200)
@example(request=("ImportSigningKey", b"\x1a\x01\x80"))  # bad UTF-8 in a string
@example(request=("ListSigningKeys", b"\x10\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"))  # -1
@example(request=("GetSigningKey", b"\x12\x02id" * 3000))  # over the size limit
def test_the_decoder_reads_as_upb_or_refuses_cleanly(request: tuple[str, bytes]) -> None:
    method, data = request
    request_type = _request_type(method)
    try:
        message = CODEC.decode(data, request_type)
    except GRPCError as error:
        refused: GRPCError | None = error
    else:
        refused = None
    if refused is not None:
        assert refused.status in (Status.INVALID_ARGUMENT, Status.RESOURCE_EXHAUSTED)
        if refused.status is Status.RESOURCE_EXHAUSTED:
            assert len(data) > MAX_MESSAGE_BYTES
        return
    assert isinstance(message, request_type) and len(data) <= MAX_MESSAGE_BYTES
    _as_upb_reads(message, TWINS[request_type].FromString(data))


@dataclass
class FakeStream:
    """What the servicer's handlers use of grpclib's server stream."""

    message: Any
    metadata: dict[str, str]
    deadline: None = None
    sent: list[Any] = field(default_factory=list)
    status: Status | None = None

    async def recv_message(self) -> Any:
        return self.message

    async def send_initial_metadata(self, **_: Any) -> None:
        pass

    async def send_message(self, message: Any) -> None:
        self.sent.append(message)

    async def send_trailing_metadata(self, *, status: Status, **_: Any) -> None:
        self.status = status


@dataclass(frozen=True)
class World:
    servicer: SigningKeysServicer
    authorization: str
    seeds: dict[str, list[bytes]]


@pytest.fixture(scope="module")
def world(runner: asyncio.Runner) -> Iterator[World]:
    """A servicer over the in-memory core: one stored key, a valid token for it, and an
    access token with every scope on the environment."""
    clock = ManualClock()
    records = MemoryKeyRecords(clock=clock)
    cache = KeyCache(size=1000, negative_size=100, negative_ttl=1.0, clock=clock.seconds)
    feed = ChangeFeed(records, cache, poll_interval=0.1, overlap=1.0, clock=clock.seconds)
    verifier = TokenVerifier(
        records,
        cache,
        feed,
        max_token_bytes=8192,
        clock_skew=30.0,
        max_staleness=300.0,
        clock=clock.seconds,
        monotonic=clock.seconds,
    )
    keys = KeyService(records, on_change=cache.put)
    authenticator = Authenticator(MemoryTokenRecords(), cache_ttl=3600.0, max_staleness=3600.0)
    runner.run(feed.poll_once())
    runner.run(authenticator.start())
    token, secret = runner.run(authenticator.issue(tuple(Scope), [ENVIRONMENT]))
    owner = Principal(token_id=token.id, scopes=token.scopes, environments=token.environments)
    spec = KeySpec(algorithm="EdDSA")
    created = runner.run(keys.create(owner, CreateKeyRequest(spec=spec)))
    signed = jwt.encode(
        {"exp": int(clock.seconds()) + 3600, "aud": "a", "sub": "s"},
        created.private_key_pem,
        algorithm="EdDSA",
        headers={"kid": created.key.id},
    )
    servicer = SigningKeysServicer(
        key_service=keys, authenticator=authenticator, verifier=verifier, changes=feed
    )
    yield World(servicer, f"Bearer {token.id}:{secret}", _seeds(created.key.id, signed))
    runner.run(authenticator.aclose())


# Unary methods only: a watch stream runs until its client leaves.
_UNARY = [method for method in METHODS if method != "WatchSigningKeys"]


@st.composite
def damaged_fields(draw: st.DrawFn, seed: bytes, request_type: type[betterproto.Message]) -> bytes:
    """A valid request with some of its fields' values damaged, replaced or emptied, and
    encoded: past the decoder (which byte damage rarely is), into the servicer's rules."""
    message = request_type.FromString(seed)
    for name in [f.name for f in dataclasses.fields(cast(Any, message))]:
        try:
            value: object = getattr(message, name)
        except AttributeError:  # betterproto's answer for a oneof member not chosen
            continue
        replaced: object
        if isinstance(value, str):
            replaced = draw(
                st.just(value) | mutated_text([value or "x"]) | st.text(max_size=30) | st.just("")
            )
        else:
            replaced = draw(st.just(value) | st.integers(-(2**31), 2**31 - 1))
        if replaced != value:
            setattr(message, name, replaced)
    return bytes(message)


@given(data=st.data())
@examples(bounded=100)
def test_every_decoded_request_ends_in_a_clean_status(
    world: World, runner: asyncio.Runner, data: st.DataObject
) -> None:
    method = data.draw(st.sampled_from(_UNARY), label="method")
    seeds, request_type = world.seeds[method], _request_type(method)
    raw = data.draw(
        st.sampled_from(seeds).flatmap(lambda seed: damaged_fields(seed, request_type))
        | mutated_bytes(seeds),
        label="bytes",
    )
    handler = world.servicer.__mapping__()[f"/{SERVICE_NAME}/{method}"]
    try:  # as the server decodes it: the message type its method declares
        message = CODEC.decode(raw, handler.request_type)
    except GRPCError:
        event("refused by the decoder")
        return  # the property above
    stream = FakeStream(message, {"authorization": world.authorization})
    runner.run(handler.func(stream))
    event(f"{method}: {stream.status.name if stream.status else 'OK'}")
    assert stream.status is not Status.INTERNAL and stream.status is not Status.UNKNOWN
    assert (stream.status is None) == bool(stream.sent), "either a reply or a status"
