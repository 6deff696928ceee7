"""Every SigningKeys RPC through the generated grpclib client, against the real service on the
local topology: answers, errors and their statuses, credentials, scopes and environments."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from google.rpc import error_details_pb2
from grpclib.client import Channel, Stream
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError
from h2.exceptions import StreamClosedError
from prometheus_client import CollectorRegistry

from harness import LocalTopology
from service.core import crypto
from service.core.keys import KeyService
from service.core.models import Principal, Scope, SigningKey
from service.core.requests import KeyRef
from service.grpc.generated.signingkeys import v1 as pb
from service.server import Server
from tests.grpc.conftest import bearer, metadata
from tests.support.service import Credentials, TokenFactory, build_grpc_server

KEYS = "/system/v1/signing-keys"
WATCH = "/signingkeys.v1.SigningKeys/WatchSigningKeys"


async def status_of(call: Any) -> GRPCError:
    with pytest.raises(GRPCError) as raised:
        await call
    return raised.value


# --- Create -------------------------------------------------------------------------------


async def test_create_returns_the_stored_key_and_its_private_key_once(
    stub: pb.SigningKeysStub, md: dict[str, str], environment: str
) -> None:
    before = int(time.time())
    created = await stub.create_signing_key(pb.CreateSigningKeyRequest(), metadata=md)
    key = created.key
    assert key.environment_id == environment
    assert key.algorithm == "RS256"
    assert key.status == pb.KeyStatus.ACTIVE and key.source == pb.KeySource.GENERATED
    assert before - 5 <= int(key.created_at) <= time.time() + 5, "Unix seconds as a string"
    assert key.revoked_at == "" and key.expires_at == "" and key.name == ""
    pem = base64.b64decode(created.private_key)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    private = serialization.load_pem_private_key(pem, password=None)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert key.public_key == public_pem.decode()
    assert key.fingerprint == crypto.fingerprint(crypto.public_key_der(private.public_key()))  # type: ignore[arg-type]
    got = await stub.get_signing_key(pb.GetSigningKeyRequest(id=key.id), metadata=md)
    assert got.key == key
    assert "private" not in got.key.to_json().lower(), "the private key is shown once only"


@pytest.mark.parametrize("algorithm", ["ES256", "EdDSA"])
async def test_create_other_algorithms_with_a_name_and_an_expiry(
    stub: pb.SigningKeysStub, md: dict[str, str], algorithm: str
) -> None:
    expires = str(int(time.time()) + 3600)
    created = await stub.create_signing_key(
        pb.CreateSigningKeyRequest(algorithm=algorithm, name="edge", expires_at=expires),
        metadata=md,
    )
    assert created.key.algorithm == algorithm
    assert created.key.name == "edge" and created.key.expires_at == expires
    private = serialization.load_pem_private_key(
        base64.b64decode(created.private_key), password=None
    )
    expected = ec.EllipticCurvePrivateKey if algorithm == "ES256" else ed25519.Ed25519PrivateKey
    assert isinstance(private, expected)


async def test_create_refuses_bad_input_with_invalid_argument(
    stub: pb.SigningKeysStub, md: dict[str, str]
) -> None:
    for request in (
        pb.CreateSigningKeyRequest(algorithm="HS256"),
        pb.CreateSigningKeyRequest(expires_at="tomorrow"),
        pb.CreateSigningKeyRequest(name="n" * 201),
        pb.CreateSigningKeyRequest(idempotency_key="has space"),
    ):
        error = await status_of(stub.create_signing_key(request, metadata=md))
        assert error.status is Status.INVALID_ARGUMENT, request
        assert error.message


def error_info(error: GRPCError) -> error_details_pb2.ErrorInfo:
    """The ``ErrorInfo`` grpclib's client decoded from ``grpc-status-details-bin``."""
    [info] = [d for d in error.details or () if isinstance(d, error_details_pb2.ErrorInfo)]
    return info


def field_violations(error: GRPCError) -> list[str]:
    return [
        violation.field
        for detail in error.details or ()
        if isinstance(detail, error_details_pb2.BadRequest)
        for violation in detail.field_violations
    ]


async def test_a_repeated_idempotency_key_creates_nothing_and_names_the_key_it_created(
    stub: pb.SigningKeysStub, md: dict[str, str], environment: str
) -> None:
    request = pb.CreateSigningKeyRequest(idempotency_key="grpc-create-1")
    first = await stub.create_signing_key(request, metadata=md)
    error = await status_of(stub.create_signing_key(request, metadata=md))
    assert error.status is Status.ALREADY_EXISTS
    assert error.message is not None and first.key.id in error.message
    info = error_info(error)
    assert info.reason == "conflict" and info.domain == "signingkeys.v1"
    assert dict(info.metadata) == {"key_id": first.key.id, "environment_id": environment}
    other = pb.CreateSigningKeyRequest(idempotency_key="grpc-create-1", algorithm="ES256")
    mismatch = await status_of(stub.create_signing_key(other, metadata=md))
    assert mismatch.status is Status.FAILED_PRECONDITION
    assert error_info(mismatch).reason == "idempotency_key_mismatch"
    assert field_violations(mismatch) == ["idempotency_key"]
    listed = await stub.list_signing_keys(pb.ListSigningKeysRequest(), metadata=md)
    assert [key.id for key in listed.keys] == [first.key.id]


async def test_an_expiry_of_zero_is_unset_and_one_in_the_past_is_refused(
    stub: pb.SigningKeysStub, md: dict[str, str]
) -> None:
    unset = await stub.create_signing_key(
        pb.CreateSigningKeyRequest(algorithm="EdDSA", expires_at="0"), metadata=md
    )
    assert unset.key.expires_at == "", "a zero timestamp means none, not 1970"
    past = pb.CreateSigningKeyRequest(algorithm="EdDSA", expires_at=str(int(time.time()) - 5))
    error = await status_of(stub.create_signing_key(past, metadata=md))
    assert error.status is Status.INVALID_ARGUMENT
    assert error.message is not None and "in the past" in error.message
    assert field_violations(error) == ["expires_at"]


async def test_an_error_carries_its_type_in_the_trailing_metadata(
    channel: Channel, md: dict[str, str]
) -> None:
    async with channel.request(
        "/signingkeys.v1.SigningKeys/CreateSigningKey",
        Cardinality.UNARY_UNARY,
        pb.CreateSigningKeyRequest,
        pb.CreateSigningKeyResponse,
        metadata=md,
    ) as stream:
        await stream.send_message(pb.CreateSigningKeyRequest(algorithm="none"), end=True)
        with pytest.raises(GRPCError) as raised:
            await stream.recv_message()
    assert raised.value.status is Status.INVALID_ARGUMENT
    assert stream.trailing_metadata is not None
    assert stream.trailing_metadata["error-type"] == "invalid_parameters"
    # The details grpclib's client decoded (the raw trailer, as grpcio hands it over, is
    # read back with google.rpc.Status.FromString in tests/grpc/grpcio_client.py).
    assert error_info(raised.value).reason == "invalid_parameters"
    assert field_violations(raised.value) == ["algorithm"]


# --- Import -------------------------------------------------------------------------------


async def test_import_takes_a_pem_or_a_jwk(
    stub: pb.SigningKeysStub, md: dict[str, str], environment: str
) -> None:
    pair = crypto.generate_key_pair("ES256")
    pem = crypto.public_key_pem(pair.public_der)
    imported = await stub.import_signing_key(
        pb.ImportSigningKeyRequest(pem=pem, name="customer"), metadata=md
    )
    assert imported.key.source == pb.KeySource.IMPORTED
    assert imported.key.algorithm == "ES256" and imported.key.public_key == pem
    assert imported.key.environment_id == environment and imported.key.name == "customer"

    other = crypto.generate_key_pair("EdDSA")
    jwk = crypto.public_jwk(other.public_der, kid="ignored", algorithm="EdDSA")
    from_jwk = await stub.import_signing_key(
        pb.ImportSigningKeyRequest(jwk_json=json.dumps(jwk), algorithm="EdDSA"), metadata=md
    )
    assert from_jwk.key.algorithm == "EdDSA"
    assert from_jwk.key.fingerprint == crypto.fingerprint(other.public_der)


async def test_import_refuses_private_keys_and_bad_input(
    stub: pb.SigningKeysStub, md: dict[str, str]
) -> None:
    pair = crypto.generate_key_pair("ES256")
    for request in (
        pb.ImportSigningKeyRequest(),  # no key at all
        pb.ImportSigningKeyRequest(pem=pair.private_pem.decode()),
        pb.ImportSigningKeyRequest(
            pem="-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"
        ),
        pb.ImportSigningKeyRequest(jwk_json="{not json"),
        pb.ImportSigningKeyRequest(jwk_json="[1, 2]"),
        pb.ImportSigningKeyRequest(pem=crypto.public_key_pem(pair.public_der), algorithm="RS256"),
    ):
        error = await status_of(stub.import_signing_key(request, metadata=md))
        assert error.status is Status.INVALID_ARGUMENT, request
    assert error.message is not None and "PRIVATE" not in error.message


# --- Get, List, Revoke --------------------------------------------------------------------


async def test_get_sees_a_key_created_over_http_with_the_same_fields(
    stub: pb.SigningKeysStub, http: aiohttp.ClientSession, auth: Credentials, md: dict[str, str]
) -> None:
    async with http.post(KEYS, headers=auth.headers, json={"name": "from-http"}) as response:
        assert response.status == 201
        data = (await response.json())["data"]
    key = (await stub.get_signing_key(pb.GetSigningKeyRequest(id=data["id"]), metadata=md)).key
    assert key.id == data["id"] and key.created_at == data["created_at"]
    assert key.public_key == data["public_key"] and key.fingerprint == data["fingerprint"]
    assert key.name == "from-http" and key.updated_at == data["updated_at"]


async def test_get_unknown_and_malformed_ids(stub: pb.SigningKeysStub, md: dict[str, str]) -> None:
    missing = await status_of(stub.get_signing_key(pb.GetSigningKeyRequest(id="nope"), metadata=md))
    assert missing.status is Status.NOT_FOUND
    bad = await status_of(stub.get_signing_key(pb.GetSigningKeyRequest(id="a/b"), metadata=md))
    assert bad.status is Status.INVALID_ARGUMENT
    empty = await status_of(stub.get_signing_key(pb.GetSigningKeyRequest(), metadata=md))
    assert empty.status is Status.INVALID_ARGUMENT


async def test_list_pages_newest_first_like_http(
    stub: pb.SigningKeysStub, md: dict[str, str]
) -> None:
    ids = []
    for _ in range(3):
        created = await stub.create_signing_key(
            pb.CreateSigningKeyRequest(algorithm="EdDSA"), metadata=md
        )
        ids.append(created.key.id)
    first = await stub.list_signing_keys(pb.ListSigningKeysRequest(limit=2), metadata=md)
    second = await stub.list_signing_keys(
        pb.ListSigningKeysRequest(limit=2, page=first.next_page), metadata=md
    )
    past = await stub.list_signing_keys(pb.ListSigningKeysRequest(limit=2, page=3), metadata=md)
    assert first.next_page == 2 and second.next_page == 0
    assert [key.id for key in first.keys + second.keys] == ids[::-1]
    assert past.keys == [] and past.next_page == 0
    everything = await stub.list_signing_keys(pb.ListSigningKeysRequest(), metadata=md)
    assert len(everything.keys) == 3, "limit 0 means the default page size"
    for request in (pb.ListSigningKeysRequest(limit=101), pb.ListSigningKeysRequest(page=-1)):
        error = await status_of(stub.list_signing_keys(request, metadata=md))
        assert error.status is Status.INVALID_ARGUMENT


async def test_list_by_page_token_with_filters_and_its_mistakes(
    stub: pb.SigningKeysStub, md: dict[str, str]
) -> None:
    ids = []
    for algorithm in ("EdDSA", "ES256", "EdDSA", "EdDSA"):
        create = pb.CreateSigningKeyRequest(algorithm=algorithm)
        ids.append((await stub.create_signing_key(create, metadata=md)).key.id)
    walked: list[str] = []
    request = pb.ListSigningKeysRequest(page_size=2, algorithm="EdDSA")
    while True:
        page = await stub.list_signing_keys(request, metadata=md)
        walked.extend(key.id for key in page.keys)
        if not page.next_page_token:
            break
        assert page.next_page == (2 if not request.page_token else 0)
        request = pb.ListSigningKeysRequest(
            page_size=2, algorithm="EdDSA", page_token=page.next_page_token
        )
    assert walked == [ids[3], ids[2], ids[0]]
    first = await stub.list_signing_keys(pb.ListSigningKeysRequest(limit=3), metadata=md)
    assert first.next_page == 2 and first.next_page_token, "a numbered page gives both"
    token = first.next_page_token
    for mistake in (
        pb.ListSigningKeysRequest(limit=2, page_size=3),
        pb.ListSigningKeysRequest(page=2, page_token=token),
        pb.ListSigningKeysRequest(page_token="not a token"),
        pb.ListSigningKeysRequest(page_token=token, status="all"),
        pb.ListSigningKeysRequest(source="elsewhere"),
        pb.ListSigningKeysRequest(expires_before="yesterday"),
    ):
        error = await status_of(stub.list_signing_keys(mistake, metadata=md))
        assert error.status is Status.INVALID_ARGUMENT, mistake
    last = await stub.list_signing_keys(
        pb.ListSigningKeysRequest(limit=3, page_token=token), metadata=md
    )
    assert [key.id for key in last.keys] == [ids[0]] and not last.next_page_token


async def test_batch_get_in_the_order_asked_with_the_rest_not_found(
    stub: pb.SigningKeysStub, md: dict[str, str], issue_token: TokenFactory, environment: str
) -> None:
    other = metadata(await issue_token([environment + "-other"]))
    create = pb.CreateSigningKeyRequest(algorithm="EdDSA")
    mine = (await stub.create_signing_key(create, metadata=md)).key
    theirs = (await stub.create_signing_key(create, metadata=other)).key
    answer = await stub.batch_get_signing_keys(
        pb.BatchGetSigningKeysRequest(ids=[theirs.id, "nope", mine.id]), metadata=md
    )
    assert [key.id for key in answer.keys] == [mine.id]
    assert answer.not_found_ids == [theirs.id, "nope"]
    for ids in ([], ["a/b"], [f"k{i}" for i in range(101)]):
        request = pb.BatchGetSigningKeysRequest(ids=ids)
        error = await status_of(stub.batch_get_signing_keys(request, metadata=md))
        assert error.status is Status.INVALID_ARGUMENT


async def test_audit_events_by_page_token(
    stub: pb.SigningKeysStub, md: dict[str, str], auth: Credentials
) -> None:
    create = pb.CreateSigningKeyRequest(algorithm="EdDSA")
    created = [(await stub.create_signing_key(create, metadata=md)).key.id for _ in range(3)]
    await stub.revoke_signing_key(pb.RevokeSigningKeyRequest(id=created[0]), metadata=md)
    seen: list[tuple[str, str]] = []
    request = pb.ListAuditEventsRequest(page_size=3)
    while True:
        page = await stub.list_audit_events(request, metadata=md)
        seen.extend((event.action, event.key_id) for event in page.events)
        for event in page.events:
            assert event.actor == auth.login and event.api == "grpc"
            assert int(event.created_at) == int(event.create_time.timestamp())
        if not page.next_page_token:
            break
        request = pb.ListAuditEventsRequest(page_size=3, page_token=page.next_page_token)
    assert seen == [("revoke", created[0])] + [("create", key_id) for key_id in created[::-1]]
    revokes = await stub.list_audit_events(pb.ListAuditEventsRequest(action="revoke"), metadata=md)
    assert [event.key_id for event in revokes.events] == [created[0]]
    first = await stub.list_audit_events(pb.ListAuditEventsRequest(page_size=1), metadata=md)
    for mistake in (
        pb.ListAuditEventsRequest(action="delete"),
        pb.ListAuditEventsRequest(since="soon"),
        pb.ListAuditEventsRequest(page_token=first.next_page_token, action="create"),
        pb.ListAuditEventsRequest(page_size=101),
    ):
        error = await status_of(stub.list_audit_events(mistake, metadata=md))
        assert error.status is Status.INVALID_ARGUMENT, mistake


async def test_revoke_is_idempotent_and_visible(
    stub: pb.SigningKeysStub, md: dict[str, str]
) -> None:
    key = (await stub.create_signing_key(pb.CreateSigningKeyRequest(), metadata=md)).key
    revoked = (
        await stub.revoke_signing_key(pb.RevokeSigningKeyRequest(id=key.id), metadata=md)
    ).key
    assert revoked.status == pb.KeyStatus.REVOKED and revoked.revoked_at != ""
    again = (await stub.revoke_signing_key(pb.RevokeSigningKeyRequest(id=key.id), metadata=md)).key
    assert again.revoked_at == revoked.revoked_at
    for status in ("revoked", "all"):
        request = pb.GetSigningKeyRequest(id=key.id, status=status)
        got = (await stub.get_signing_key(request, metadata=md)).key
        assert got.status == pb.KeyStatus.REVOKED and got.revoked_at == revoked.revoked_at
    missing = await status_of(
        stub.revoke_signing_key(pb.RevokeSigningKeyRequest(id="nope"), metadata=md)
    )
    assert missing.status is Status.NOT_FOUND


async def test_a_revoked_key_is_read_only_when_asked_for_as_over_http(
    stub: pb.SigningKeysStub, md: dict[str, str]
) -> None:
    """Get and List answer as the reference platform's HTTP API: a revoked key is NOT_FOUND
    and not listed, unless ``status`` asks for revoked (or all) keys."""
    kept, gone = [
        (
            await stub.create_signing_key(
                pb.CreateSigningKeyRequest(algorithm="EdDSA"), metadata=md
            )
        ).key.id
        for _ in range(2)
    ]
    await stub.revoke_signing_key(pb.RevokeSigningKeyRequest(id=gone), metadata=md)

    async def listed(status: str = "") -> list[str]:
        request = pb.ListSigningKeysRequest(status=status)
        return [key.id for key in (await stub.list_signing_keys(request, metadata=md)).keys]

    assert await listed() == await listed("active") == [kept]
    assert await listed("revoked") == [gone]
    assert await listed("all") == [gone, kept]
    for status in ("", "active"):
        error = await status_of(
            stub.get_signing_key(pb.GetSigningKeyRequest(id=gone, status=status), metadata=md)
        )
        assert error.status is Status.NOT_FOUND
        assert error.message is not None and "status=all" in error.message
    error = await status_of(
        stub.get_signing_key(pb.GetSigningKeyRequest(id=kept, status="revoked"), metadata=md)
    )
    assert error.status is Status.NOT_FOUND
    for request in (
        pb.GetSigningKeyRequest(id=kept, status="deleted"),
        pb.ListSigningKeysRequest(status="ACTIVE"),
    ):
        call = (
            stub.get_signing_key(request, metadata=md)
            if isinstance(request, pb.GetSigningKeyRequest)
            else stub.list_signing_keys(request, metadata=md)
        )
        error = await status_of(call)
        assert error.status is Status.INVALID_ARGUMENT
        assert error.message == "status must be one of active, revoked, all"


# --- Credentials, scopes, environments ----------------------------------------------------


async def test_credentials_come_from_the_authorization_metadata(
    stub: pb.SigningKeysStub, auth: Credentials
) -> None:
    request = pb.ListSigningKeysRequest()
    assert (await stub.list_signing_keys(request, metadata=bearer(auth))).keys == []
    wrong = Credentials(auth.login, auth.password + "x")
    for md in (
        None,
        metadata(wrong),
        {"authorization": "Digest abc"},
        {"authorization": "Bearer x"},
    ):
        error = await status_of(stub.list_signing_keys(request, metadata=md))
        assert error.status is Status.UNAUTHENTICATED, md
        assert error.message is not None and auth.password not in error.message


async def test_scopes_and_environments_are_enforced_as_over_http(
    stub: pb.SigningKeysStub, issue_token: TokenFactory, environment: str, md: dict[str, str]
) -> None:
    key = (await stub.create_signing_key(pb.CreateSigningKeyRequest(), metadata=md)).key
    reader = metadata(await issue_token([environment], [Scope.READ]))
    assert (await stub.get_signing_key(pb.GetSigningKeyRequest(id=key.id), metadata=reader)).key
    for call in (
        stub.create_signing_key(pb.CreateSigningKeyRequest(), metadata=reader),
        stub.revoke_signing_key(pb.RevokeSigningKeyRequest(id=key.id), metadata=reader),
        stub.verify_token(pb.VerifyTokenRequest(token="a.b.c"), metadata=reader),
    ):
        assert (await status_of(call)).status is Status.PERMISSION_DENIED

    stranger = metadata(await issue_token(["env-elsewhere"]))
    cross = pb.GetSigningKeyRequest(id=key.id, environment_id=environment)
    assert (await status_of(stub.get_signing_key(cross, metadata=stranger))).status is (
        Status.PERMISSION_DENIED
    )
    own = pb.GetSigningKeyRequest(id=key.id)  # the stranger's own environment
    assert (await status_of(stub.get_signing_key(own, metadata=stranger))).status is (
        Status.NOT_FOUND
    )

    both = metadata(await issue_token([environment, "env-elsewhere"]))
    ambiguous = await status_of(stub.get_signing_key(own, metadata=both))
    assert ambiguous.status is Status.INVALID_ARGUMENT, "a multi-environment token must name one"
    assert error_info(ambiguous).reason == "environment_required"
    assert field_violations(ambiguous) == ["environment_id"]
    assert (await stub.get_signing_key(cross, metadata=both)).key.id == key.id


# --- VerifyToken --------------------------------------------------------------------------


def sign(private_pem: bytes, claims: dict[str, Any], *, kid: str, algorithm: str = "RS256") -> str:
    payload = {"exp": int(time.time()) + 300, **claims}
    return jwt.encode(payload, private_pem, algorithm=algorithm, headers={"kid": kid})


async def test_verify_token_valid_with_its_claims(
    stub: pb.SigningKeysStub, md: dict[str, str], environment: str
) -> None:
    created = await stub.create_signing_key(pb.CreateSigningKeyRequest(), metadata=md)
    private = base64.b64decode(created.private_key)
    big = 2**60 + 1  # exact as JSON; a protobuf Struct would round it to a double
    token = sign(private, {"sub": "p1", "aud": "v", "n": big}, kid=created.key.id)
    verdict = await stub.verify_token(
        pb.VerifyTokenRequest(token=token, audience="v", subject="p1"), metadata=md
    )
    assert verdict.valid and verdict.reason == pb.InvalidReason.UNSPECIFIED
    assert verdict.reason_text == ""
    assert verdict.key_id == created.key.id and verdict.environment_id == environment
    claims = json.loads(verdict.claims_json)
    assert claims["sub"] == "p1" and claims["aud"] == "v" and claims["n"] == big


async def test_verify_token_says_why_not(stub: pb.SigningKeysStub, md: dict[str, str]) -> None:
    created = await stub.create_signing_key(pb.CreateSigningKeyRequest(), metadata=md)
    private, kid = base64.b64decode(created.private_key), created.key.id
    now = int(time.time())
    cases = [
        (pb.InvalidReason.MALFORMED, "not-a-jwt", {}),
        (pb.InvalidReason.UNKNOWN_KEY, sign(private, {}, kid="noSuchKey"), {}),
        (pb.InvalidReason.EXPIRED, sign(private, {"exp": now - 600}, kid=kid), {}),
        (pb.InvalidReason.WRONG_AUDIENCE, sign(private, {"aud": "t"}, kid=kid), {"audience": "v"}),
        (pb.InvalidReason.WRONG_SUBJECT, sign(private, {"sub": "a"}, kid=kid), {"subject": "b"}),
    ]
    for reason, token, expected in cases:
        verdict = await stub.verify_token(
            pb.VerifyTokenRequest(token=token, **expected), metadata=md
        )
        assert not verdict.valid and verdict.reason == reason, (reason, verdict)
        assert verdict.reason_text == str(reason.name).lower()
        assert verdict.claims_json == ""
    assert (await stub.verify_token(pb.VerifyTokenRequest(token=cases[2][1]), metadata=md)).key_id


async def test_verify_token_bad_requests(
    stub: pb.SigningKeysStub, md: dict[str, str], issue_token: TokenFactory
) -> None:
    for request in (
        pb.VerifyTokenRequest(),
        pb.VerifyTokenRequest(token="a.b.c", audience="x" * 513),
    ):
        error = await status_of(stub.verify_token(request, metadata=md))
        assert error.status is Status.INVALID_ARGUMENT, request
    # Over SIGNING_KEYS_MAX_TOKEN_BYTES: a size limit, as HTTP's 413 payload_too_large.
    oversized = pb.VerifyTokenRequest(token="a" * 9000)
    error = await status_of(stub.verify_token(oversized, metadata=md))
    assert error.status is Status.RESOURCE_EXHAUSTED
    assert error_info(error).reason == "payload_too_large"
    elsewhere = pb.VerifyTokenRequest(token="a.b.c", environment_id="env-not-mine")
    assert (await status_of(stub.verify_token(elsewhere, metadata=md))).status is (
        Status.PERMISSION_DENIED
    )


# --- WatchSigningKeys ---------------------------------------------------------------------


@asynccontextmanager
async def watching(
    channel: Channel, md: dict[str, str], after: str = ""
) -> AsyncIterator[Stream[pb.WatchSigningKeysRequest, pb.WatchSigningKeysResponse]]:
    async with channel.request(
        WATCH,
        Cardinality.UNARY_STREAM,
        pb.WatchSigningKeysRequest,
        pb.WatchSigningKeysResponse,
        metadata=md,
    ) as stream:
        await stream.send_message(pb.WatchSigningKeysRequest(after=after), end=True)
        yield stream
        with contextlib.suppress(StreamClosedError):  # unless the server ended it already
            await stream.cancel()


async def next_event(
    stream: Stream[pb.WatchSigningKeysRequest, pb.WatchSigningKeysResponse], timeout: float = 5.0
) -> pb.WatchSigningKeysResponse:
    event = await asyncio.wait_for(stream.recv_message(), timeout)
    assert event is not None, "the watch ended"
    return event


async def next_change(
    stream: Stream[pb.WatchSigningKeysRequest, pb.WatchSigningKeysResponse],
    seen: set[str],
    timeout: float,
) -> pb.WatchSigningKeysResponse:
    """The next event about a key state not seen before: delivery is at least once, and an
    event's position names the state it carries (updated_at is only whole seconds)."""
    async with asyncio.timeout(timeout):
        while True:
            event = await next_event(stream)
            if event.kind == pb.WatchEventKind.CHANGED and event.position in seen:
                continue
            seen.add(event.position)
            return event


async def test_watch_sees_http_creates_and_revokes_in_order_within_a_second(
    channel: Channel, http: aiohttp.ClientSession, auth: Credentials, md: dict[str, str]
) -> None:
    async with http.post(KEYS, headers=auth.headers) as response:
        existing = (await response.json())["data"]["id"]
    async with watching(channel, md) as stream:
        seen: set[str] = set()
        snapshot = await next_change(stream, seen, timeout=5.0)
        assert snapshot.kind == pb.WatchEventKind.SNAPSHOT and snapshot.key.id == existing
        synced = await next_event(stream)
        assert synced.kind == pb.WatchEventKind.SYNCED and synced.position

        started = time.monotonic()
        async with http.post(KEYS, headers=auth.headers, json={"algorithm": "EdDSA"}) as response:
            created = (await response.json())["data"]["id"]
        event = await next_change(stream, seen, timeout=1.0)
        assert event.kind == pb.WatchEventKind.CHANGED
        assert event.key.id == created and event.key.status == pb.KeyStatus.ACTIVE
        assert time.monotonic() - started < 1.0

        started = time.monotonic()
        async with http.delete(f"{KEYS}/{created}", headers=auth.headers) as response:
            assert response.status == 204
        revoked = await next_change(stream, seen, timeout=1.0)
        assert revoked.kind == pb.WatchEventKind.CHANGED
        assert revoked.key.id == created and revoked.key.status == pb.KeyStatus.REVOKED
        assert time.monotonic() - started < 1.0


async def test_watch_resumes_from_a_position_without_missing_a_change(
    channel: Channel, stub: pb.SigningKeysStub, md: dict[str, str]
) -> None:
    first = (await stub.create_signing_key(pb.CreateSigningKeyRequest(), metadata=md)).key
    async with watching(channel, md) as stream:
        assert (await next_event(stream)).key.id == first.id
        position = (await next_event(stream)).position  # SYNCED
    # While nobody watches: one key created, the first revoked.
    second = (await stub.create_signing_key(pb.CreateSigningKeyRequest(), metadata=md)).key
    await stub.revoke_signing_key(pb.RevokeSigningKeyRequest(id=first.id), metadata=md)
    seen: dict[str, pb.SigningKey] = {}
    states: set[str] = set()
    async with watching(channel, md, after=position) as stream:
        while True:
            event = await next_event(stream)
            if event.kind == pb.WatchEventKind.SYNCED:
                break
            assert event.kind == pb.WatchEventKind.CHANGED, "no snapshot when resuming"
            seen[event.key.id] = event.key  # at least once: the last state wins
            states.add(event.position)
            resume_from = event.position
        assert set(seen) == {first.id, second.id}
        assert seen[first.id].status == pb.KeyStatus.REVOKED
        # And live changes keep coming on the resumed stream.
        third = (await stub.create_signing_key(pb.CreateSigningKeyRequest(), metadata=md)).key
        assert (await next_change(stream, states, timeout=1.0)).key.id == third.id
    async with watching(channel, md, after=resume_from) as stream:
        replay = []
        while (event := await next_event(stream)).kind != pb.WatchEventKind.SYNCED:
            replay.append(event.key.id)
        assert third.id in replay, "a change after the resume point is replayed"


async def test_watch_needs_read_scope_and_a_valid_position(
    channel: Channel, issue_token: TokenFactory, environment: str, md: dict[str, str]
) -> None:
    verifier_only = metadata(await issue_token([environment], [Scope.VERIFY]))
    for credentials, after, status in (
        (verifier_only, "", Status.PERMISSION_DENIED),
        (md, "not-a-position", Status.INVALID_ARGUMENT),
        ({}, "", Status.UNAUTHENTICATED),
    ):
        async with watching(channel, credentials, after=after) as stream:
            with pytest.raises(GRPCError) as raised:
                await asyncio.wait_for(stream.recv_message(), 5)
        assert raised.value.status is status


# --- Deadlines and failures ---------------------------------------------------------------


def sample(registry: CollectorRegistry, method: str, status: str) -> float:
    value = registry.get_sample_value(
        "signing_keys_grpc_requests_total", {"method": method, "status": status}
    )
    return value or 0.0


@pytest.mark.fault
async def test_the_clients_deadline_bounds_the_servers_work(
    server: Server, migrated_topology: LocalTopology, auth: Credentials
) -> None:
    registry = CollectorRegistry()
    async with build_grpc_server(server, registry=registry) as grpc_server:
        assert grpc_server.port is not None
        channel = Channel("127.0.0.1", grpc_server.port)
        try:
            stub = pb.SigningKeysStub(channel)
            md = metadata(auth)
            await stub.list_signing_keys(pb.ListSigningKeysRequest(), metadata=md)  # warm caches
            # Every region cut: the router alone would keep trying for its own 2 s deadline.
            for name in migrated_topology.region_names:
                migrated_topology.region(name).proxy.blackhole()
            started = time.monotonic()
            with pytest.raises((GRPCError, asyncio.TimeoutError)):
                await stub.get_signing_key(
                    pb.GetSigningKeyRequest(id="any"), metadata=md, timeout=0.3
                )
            # The server gave up by itself at the deadline (the router's own is 2 s).
            deadline = time.monotonic() + 2.0
            while sample(registry, "GetSigningKey", "DEADLINE_EXCEEDED") < 1:
                assert time.monotonic() < deadline, "the server kept working past the deadline"
                await asyncio.sleep(0.02)
            assert time.monotonic() - started < 1.2
        finally:
            for name in migrated_topology.region_names:
                migrated_topology.region(name).proxy.pass_through()
            channel.close()


class _BrokenKeys(KeyService):
    async def get(self, principal: Principal, ref: KeyRef) -> SigningKey:
        raise RuntimeError("connection string postgresql://user:hunter2@db")


async def test_an_unexpected_failure_is_internal_and_leaks_nothing(
    server: Server, auth: Credentials
) -> None:
    broken = _BrokenKeys(server.key_records)
    async with build_grpc_server(server, key_service=broken) as grpc_server:
        assert grpc_server.port is not None
        channel = Channel("127.0.0.1", grpc_server.port)
        try:
            stub = pb.SigningKeysStub(channel)
            error = await status_of(
                stub.get_signing_key(pb.GetSigningKeyRequest(id="k"), metadata=metadata(auth))
            )
        finally:
            channel.close()
    assert error.status is Status.INTERNAL
    assert error.message == "internal error"


async def test_a_malformed_environment_id_is_invalid_argument_on_every_method(
    stub: pb.SigningKeysStub, md: dict[str, str], channel: Channel
) -> None:
    """As over HTTP (400): the environment's format is checked before anything else is
    decided about it, never answered PERMISSION_DENIED."""
    bad = "bad env/../x"
    calls = [
        stub.create_signing_key(pb.CreateSigningKeyRequest(environment_id=bad), metadata=md),
        stub.import_signing_key(
            pb.ImportSigningKeyRequest(environment_id=bad, pem="x"), metadata=md
        ),
        stub.get_signing_key(pb.GetSigningKeyRequest(environment_id=bad, id="k"), metadata=md),
        stub.list_signing_keys(pb.ListSigningKeysRequest(environment_id=bad), metadata=md),
        stub.revoke_signing_key(
            pb.RevokeSigningKeyRequest(environment_id=bad, id="k"), metadata=md
        ),
        stub.verify_token(pb.VerifyTokenRequest(environment_id=bad, token="a.b.c"), metadata=md),
    ]
    for call in calls:
        error = await status_of(call)
        assert error.status is Status.INVALID_ARGUMENT, error
        assert field_violations(error) == ["environment_id"]
    async with channel.request(
        WATCH,
        Cardinality.UNARY_STREAM,
        pb.WatchSigningKeysRequest,
        pb.WatchSigningKeysResponse,
        metadata=md,
    ) as stream:
        await stream.send_message(pb.WatchSigningKeysRequest(environment_id=bad), end=True)
        with pytest.raises(GRPCError) as raised:
            await stream.recv_message()
    assert raised.value.status is Status.INVALID_ARGUMENT


async def test_an_import_repeated_with_its_idempotency_key_returns_the_stored_key(
    stub: pb.SigningKeysStub, md: dict[str, str]
) -> None:
    pem = crypto.public_key_pem(crypto.generate_key_pair("EdDSA").public_der)
    request = pb.ImportSigningKeyRequest(pem=pem, idempotency_key="grpc-import-1")
    first = await stub.import_signing_key(request, metadata=md)
    again = await stub.import_signing_key(request, metadata=md)
    assert again.key == first.key
    listed = await stub.list_signing_keys(pb.ListSigningKeysRequest(), metadata=md)
    assert [key.id for key in listed.keys] == [first.key.id]
