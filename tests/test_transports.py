"""Same mistake, same answer: every bad request below is sent over HTTP and over gRPC to one
running service, and both must name the failure the same way (error type and message) with
corresponding statuses. The table doubles as the list of the rules the core's request types
enforce for both transports."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import betterproto
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError

from service.core import crypto
from service.core.models import Scope
from service.errors import ERROR_KINDS
from service.grpc.generated.signingkeys import v1 as pb
from service.server import Server
from tests.support.service import Credentials, TokenFactory

KEYS = "/system/v1/signing-keys"
GRPC_STATUS_OF_HTTP = {
    400: Status.INVALID_ARGUMENT,
    401: Status.UNAUTHENTICATED,
    403: Status.PERMISSION_DENIED,
    404: Status.NOT_FOUND,
    409: Status.ALREADY_EXISTS,
}


def _rsa_public(bits: int, e: int) -> rsa.RSAPublicKey:
    """An RSA public key of ``bits`` bits: a random odd modulus serves, as import cannot tell."""
    return rsa.RSAPublicNumbers(e, (1 << (bits - 1)) | secrets.randbits(bits - 1) | 1).public_key()


_COSTLY_RSA_PEM = crypto.public_key_pem(crypto.public_key_der(_rsa_public(2048, (1 << 2040) + 1)))
_HUGE_RSA_N = _rsa_public(16384, 65537).public_numbers().n
_HUGE_RSA_JWK = {"kty": "RSA", "n": crypto.b64url(_HUGE_RSA_N.to_bytes(2048, "big")), "e": "AQAB"}


def _respelled_ec_jwk() -> dict[str, str]:
    """A P-256 JWK whose ``x`` ends in a character with its two unused bits set: the same
    bytes as the canonical spelling, which a lax decoder would accept."""
    numbers = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
    x, y = (crypto.b64url(value.to_bytes(32, "big")) for value in (numbers.x, numbers.y))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    x = x[:-1] + alphabet[alphabet.index(x[-1]) | 0b11]
    return {"kty": "EC", "crv": "P-256", "x": x, "y": y}


_RESPELLED_EC_JWK = _respelled_ec_jwk()


def _private_material() -> tuple[str, str, dict[str, str]]:
    """A private key on one line (as it fits a name), a public PEM with that private key's
    body pasted after it, and an RSA private JWK with its CRT members but no ``d``."""
    private_pem = crypto.generate_key_pair("EdDSA").private_pem.decode()
    body = "".join(private_pem.splitlines()[1:-1])
    public_pem = crypto.public_key_pem(crypto.generate_key_pair("EdDSA").public_der)
    rsa_private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    numbers = rsa_private.private_numbers()
    members = {
        "n": numbers.public_numbers.n,
        "e": numbers.public_numbers.e,
        "p": numbers.p,
        "q": numbers.q,
        "dp": numbers.dmp1,
        "dq": numbers.dmq1,
        "qi": numbers.iqmp,
    }
    jwk = {"kty": "RSA"} | {
        name: crypto.b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))
        for name, value in members.items()
    }
    return " ".join(private_pem.split()), public_pem + body + "\n", jwk


_PRIVATE_ONE_LINE, _PUBLIC_THEN_PRIVATE_BODY, _RSA_JWK_WITHOUT_D = _private_material()
_EC_PEM = (
    ec.generate_private_key(ec.SECP256R1())
    .public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)


@dataclass(frozen=True)
class Mistake:
    """One bad request, in both encodings, and the answer both must give."""

    name: str
    http: tuple[str, str, dict[str, str], dict[str, Any] | None]  # method, path, headers, body
    grpc: tuple[str, betterproto.Message]  # method, request
    status: int
    error_type: str
    caller: str = "owner"  # owner | anonymous | wrong_secret | verify_only | two_environments
    message_contains: str = ""
    env: dict[str, str] = field(default_factory=dict)


def invalid(
    name: str,
    http: tuple[str, str, dict[str, str], dict[str, Any] | None],
    grpc: tuple[str, betterproto.Message],
    message_contains: str = "",
) -> Mistake:
    """A request the core's request types refuse: 400 and ``invalid_parameters`` both ways."""
    return Mistake(name, http, grpc, 400, "invalid_parameters", message_contains=message_contains)


MISTAKES = (
    invalid(
        "unknown algorithm",
        ("POST", KEYS, {}, {"algorithm": "HS256"}),
        ("CreateSigningKey", pb.CreateSigningKeyRequest(algorithm="HS256")),
        "algorithm must be one of",
    ),
    invalid(
        "name too long",
        ("POST", KEYS, {}, {"name": "n" * 201}),
        ("CreateSigningKey", pb.CreateSigningKeyRequest(name="n" * 201)),
        "name must be at most 200",
    ),
    invalid(
        "control characters in a name",
        ("POST", KEYS, {}, {"name": "a\nb"}),
        ("CreateSigningKey", pb.CreateSigningKeyRequest(name="a\nb")),
        "printable",
    ),
    invalid(
        "expiry that is not Unix seconds",
        ("POST", KEYS, {}, {"expires_at": "soon"}),
        ("CreateSigningKey", pb.CreateSigningKeyRequest(expires_at="soon")),
        "expires_at must be Unix seconds",
    ),
    invalid(
        "expiry in year 1, which the database would keep as -infinity",
        ("POST", KEYS, {}, {"algorithm": "EdDSA", "expires_at": "-62135596800"}),
        (
            "CreateSigningKey",
            pb.CreateSigningKeyRequest(algorithm="EdDSA", expires_at="-62135596800"),
        ),
        "from 0 to 253402300799",
    ),
    invalid(
        "imported key's expiry after year 9999",
        ("POST", KEYS + "/import", {}, {"public_key": _EC_PEM, "expires_at": "253402300800"}),
        ("ImportSigningKey", pb.ImportSigningKeyRequest(pem=_EC_PEM, expires_at="253402300800")),
        "from 0 to 253402300799",
    ),
    invalid(
        "idempotency key with a space",
        ("POST", KEYS, {"Idempotency-Key": "has space"}, {}),
        ("CreateSigningKey", pb.CreateSigningKeyRequest(idempotency_key="has space")),
        "Idempotency-Key",
    ),
    invalid(
        "malformed environment id on create",
        ("POST", KEYS, {"X-Environment-Id": "bad env!"}, {}),
        ("CreateSigningKey", pb.CreateSigningKeyRequest(environment_id="bad env!")),
        "environment id must be",
    ),
    invalid(
        "malformed environment id on verify",
        ("POST", "/v1/tokens/verify", {}, {"token": "a.b.c", "environment_id": "bad env!"}),
        ("VerifyToken", pb.VerifyTokenRequest(token="a.b.c", environment_id="bad env!")),
        "environment id must be",
    ),
    Mistake(
        "an environment the token does not cover",
        ("GET", KEYS, {"X-Environment-Id": "someone-else"}, None),
        ("ListSigningKeys", pb.ListSigningKeysRequest(environment_id="someone-else")),
        403,
        "forbidden",
        message_contains="not valid for that environment",
    ),
    invalid(
        "malformed key id",
        ("GET", KEYS + "/bad%20id!", {}, None),
        ("GetSigningKey", pb.GetSigningKeyRequest(id="bad id!")),
        "signing key id must be",
    ),
    Mistake(
        "unknown key",
        ("GET", KEYS + "/no-such-key", {}, None),
        ("GetSigningKey", pb.GetSigningKeyRequest(id="no-such-key")),
        404,
        "not_found",
    ),
    Mistake(
        "revoke of an unknown key",
        ("DELETE", KEYS + "/no-such-key", {}, None),
        ("RevokeSigningKey", pb.RevokeSigningKeyRequest(id="no-such-key")),
        404,
        "not_found",
    ),
    invalid(
        "page size above the limit",
        ("GET", KEYS + "?limit=101", {}, None),
        ("ListSigningKeys", pb.ListSigningKeysRequest(limit=101)),
        "limit must be between 1 and 100",
    ),
    invalid(
        "page number above the limit",
        ("GET", KEYS + "?page=10001", {}, None),
        ("ListSigningKeys", pb.ListSigningKeysRequest(page=10001)),
        "page must be between 1 and 10000",
    ),
    invalid(
        "list of keys of an unknown status",
        ("GET", KEYS + "?status=deleted", {}, None),
        ("ListSigningKeys", pb.ListSigningKeysRequest(status="deleted")),
        "status must be one of active, revoked, all",
    ),
    invalid(
        "get of a key of an unknown status",
        ("GET", KEYS + "/no-such-key?status=any", {}, None),
        ("GetSigningKey", pb.GetSigningKeyRequest(id="no-such-key", status="any")),
        "status must be one of active, revoked, all",
    ),
    Mistake(
        "unknown key, asked for whatever its status",
        ("GET", KEYS + "/no-such-key?status=all", {}, None),
        ("GetSigningKey", pb.GetSigningKeyRequest(id="no-such-key", status="all")),
        404,
        "not_found",
        message_contains="no signing key with that id in this environment",
    ),
    invalid(
        "import without a key",
        ("POST", KEYS + "/import", {}, {}),
        ("ImportSigningKey", pb.ImportSigningKeyRequest()),
        "public_key is required",
    ),
    invalid(
        "import of text that is no key",
        ("POST", KEYS + "/import", {}, {"public_key": "not a key"}),
        ("ImportSigningKey", pb.ImportSigningKeyRequest(pem="not a key")),
    ),
    invalid(
        "import of a JWK carrying a private part",
        (
            "POST",
            KEYS + "/import",
            {},
            {"public_key": {"kty": "OKP", "crv": "Ed25519", "x": "A" * 43, "d": "A" * 43}},
        ),
        (
            "ImportSigningKey",
            pb.ImportSigningKeyRequest(
                jwk_json=json.dumps({"kty": "OKP", "crv": "Ed25519", "x": "A" * 43, "d": "A" * 43})
            ),
        ),
        "private",
    ),
    invalid(
        "import of an RSA key with a 2^2040 exponent",
        ("POST", KEYS + "/import", {}, {"public_key": _COSTLY_RSA_PEM}),
        ("ImportSigningKey", pb.ImportSigningKeyRequest(pem=_COSTLY_RSA_PEM)),
        "public exponent 65537",
    ),
    invalid(
        "import of a 16384-bit RSA key",
        ("POST", KEYS + "/import", {}, {"public_key": _HUGE_RSA_JWK}),
        ("ImportSigningKey", pb.ImportSigningKeyRequest(jwk_json=json.dumps(_HUGE_RSA_JWK))),
        "2048 to 4096 bits",
    ),
    invalid(
        "import of a JWK member spelled in non-canonical base64url",
        ("POST", KEYS + "/import", {}, {"public_key": _RESPELLED_EC_JWK}),
        ("ImportSigningKey", pb.ImportSigningKeyRequest(jwk_json=json.dumps(_RESPELLED_EC_JWK))),
        "JWK member 'x' is not base64url",
    ),
    invalid(
        "a private key in a name",
        ("POST", KEYS, {}, {"algorithm": "EdDSA", "name": _PRIVATE_ONE_LINE}),
        ("CreateSigningKey", pb.CreateSigningKeyRequest(algorithm="EdDSA", name=_PRIVATE_ONE_LINE)),
        "name carries a private key",
    ),
    invalid(
        "a private key in an imported key's name",
        ("POST", KEYS + "/import", {}, {"public_key": _EC_PEM, "name": _PRIVATE_ONE_LINE}),
        ("ImportSigningKey", pb.ImportSigningKeyRequest(pem=_EC_PEM, name=_PRIVATE_ONE_LINE)),
        "name carries a private key",
    ),
    invalid(
        "import of an RSA JWK with p, q, dp, dq, qi and no d",
        ("POST", KEYS + "/import", {}, {"public_key": _RSA_JWK_WITHOUT_D}),
        ("ImportSigningKey", pb.ImportSigningKeyRequest(jwk_json=json.dumps(_RSA_JWK_WITHOUT_D))),
        "public_key is a private key (it has the members dp, dq, p, q, qi)",
    ),
    invalid(
        "import of a public PEM with a private key's body after it",
        ("POST", KEYS + "/import", {}, {"public_key": _PUBLIC_THEN_PRIVATE_BODY}),
        ("ImportSigningKey", pb.ImportSigningKeyRequest(pem=_PUBLIC_THEN_PRIVATE_BODY)),
        "exactly one PEM block",
    ),
    invalid(
        "import with an algorithm the key does not have",
        ("POST", KEYS + "/import", {}, {"public_key": _EC_PEM, "algorithm": "RS256"}),
        ("ImportSigningKey", pb.ImportSigningKeyRequest(pem=_EC_PEM, algorithm="RS256")),
        "does not match the key",
    ),
    invalid(
        "verify without a token",
        ("POST", "/v1/tokens/verify", {}, {"token": ""}),
        ("VerifyToken", pb.VerifyTokenRequest(token="")),
        "token is required",
    ),
    invalid(
        "an audience too long",
        ("POST", "/v1/tokens/verify", {}, {"token": "a.b.c", "audience": "a" * 513}),
        ("VerifyToken", pb.VerifyTokenRequest(token="a.b.c", audience="a" * 513)),
        "audience must be",
    ),
    Mistake(
        "no credentials",
        ("GET", KEYS, {}, None),
        ("ListSigningKeys", pb.ListSigningKeysRequest()),
        401,
        "unauthorized",
        caller="anonymous",
    ),
    Mistake(
        "a wrong secret",
        ("GET", KEYS, {}, None),
        ("ListSigningKeys", pb.ListSigningKeysRequest()),
        401,
        "unauthorized",
        caller="wrong_secret",
    ),
    Mistake(
        "a missing scope",
        ("POST", KEYS, {}, {}),
        ("CreateSigningKey", pb.CreateSigningKeyRequest()),
        403,
        "forbidden",
        caller="verify_only",
        message_contains="'write' scope",
    ),
    Mistake(
        "several environments and no choice",
        ("GET", KEYS, {}, None),
        ("ListSigningKeys", pb.ListSigningKeysRequest()),
        400,
        "environment_required",
        caller="two_environments",
        message_contains="several environments",
    ),
    invalid(
        "an expiry in the past",
        ("POST", KEYS, {}, {"algorithm": "EdDSA", "expires_at": "1000000000"}),
        (
            "CreateSigningKey",
            pb.CreateSigningKeyRequest(algorithm="EdDSA", expires_at="1000000000"),
        ),
        "expires_at is in the past",
    ),
)


@dataclass(frozen=True)
class Answer:
    status: int | Status
    error_type: str
    messages: tuple[str, ...]


@pytest.fixture
async def callers(
    issue_token: TokenFactory, auth: Credentials, environment: str
) -> dict[str, Credentials | None]:
    return {
        "owner": auth,
        "anonymous": None,
        "wrong_secret": Credentials(auth.login, "x" * len(auth.password)),
        "verify_only": await issue_token([environment], [Scope.VERIFY]),
        "two_environments": await issue_token([environment, environment + "-b"]),
    }


@pytest.fixture
async def channel(server: Server) -> AsyncIterator[Channel]:
    assert server.grpc_port is not None
    channel = Channel("127.0.0.1", server.grpc_port)
    try:
        yield channel
    finally:
        channel.close()


async def over_http(
    http: aiohttp.ClientSession, mistake: Mistake, caller: Credentials | None
) -> Answer:
    method, path, headers, body = mistake.http
    headers = {**headers, **(caller.headers if caller else {})}
    data = None if body is None else json.dumps(body)
    async with http.request(method, path, headers=headers, data=data) as response:
        error = (await response.json())["error"]
        return Answer(response.status, error["type"], tuple(error["messages"]))


async def over_grpc(channel: Channel, mistake: Mistake, caller: Credentials | None) -> Answer:
    method, message = mistake.grpc
    metadata = {"authorization": caller.headers["Authorization"]} if caller else {}
    async with channel.request(
        f"/signingkeys.v1.SigningKeys/{method}",
        Cardinality.UNARY_STREAM if method == "WatchSigningKeys" else Cardinality.UNARY_UNARY,
        type(message),
        getattr(pb, f"{method}Response"),
        metadata=metadata,
    ) as stream:
        await stream.send_message(message, end=True)
        with pytest.raises(GRPCError) as raised:
            await stream.recv_message()
    assert stream.trailing_metadata is not None
    error_type = stream.trailing_metadata.get("error-type")
    assert isinstance(error_type, str)
    return Answer(raised.value.status, error_type, (raised.value.message or "",))


async def test_the_same_mistake_gets_the_same_answer_over_http_and_grpc(
    http: aiohttp.ClientSession, channel: Channel, callers: dict[str, Credentials | None]
) -> None:
    table = []
    for mistake in MISTAKES:
        caller = callers[mistake.caller]
        by_http = await over_http(http, mistake, caller)
        by_grpc = await over_grpc(channel, mistake, caller)
        table.append((mistake.name, by_http, by_grpc))
        assert by_http.status == mistake.status, (mistake.name, by_http)
        assert by_grpc.status is GRPC_STATUS_OF_HTTP[mistake.status], (mistake.name, by_grpc)
        kind = ERROR_KINDS[mistake.error_type]  # the one table both transports read
        assert (kind.http_status, kind.grpc_code) == (mistake.status, by_grpc.status.name)
        assert by_http.error_type == by_grpc.error_type == mistake.error_type, mistake.name
        assert "; ".join(by_http.messages) == by_grpc.messages[0], mistake.name
        assert mistake.message_contains in by_grpc.messages[0], (mistake.name, by_grpc)
    assert len(table) == len(MISTAKES)


async def test_nothing_was_created_by_any_of_the_mistakes(
    http: aiohttp.ClientSession, channel: Channel, callers: dict[str, Credentials | None]
) -> None:
    for mistake in MISTAKES:
        caller = callers[mistake.caller]
        await over_http(http, mistake, caller)
        await over_grpc(channel, mistake, caller)
    owner = callers["owner"]
    assert owner is not None
    async with http.get(KEYS, headers=owner.headers) as response:
        assert response.status == 200
        assert (await response.json())["data"] == []


async def test_a_deeply_nested_jwk_is_a_bad_argument_not_an_internal_error(
    http: aiohttp.ClientSession, channel: Channel, callers: dict[str, Credentials | None]
) -> None:
    nested = "[" * 50_000
    mistake = invalid(
        "deep JWK",
        ("POST", KEYS + "/import", {}, None),
        ("ImportSigningKey", pb.ImportSigningKeyRequest(jwk_json=nested)),
    )
    answer = await over_grpc(channel, mistake, callers["owner"])
    assert answer.status is Status.INVALID_ARGUMENT
    assert answer.messages == ("jwk_json is not valid JSON",)
    owner = callers["owner"]
    assert owner is not None
    body = '{"public_key": ' + nested + "}"
    async with http.post(KEYS + "/import", headers=owner.headers, data=body) as response:
        assert response.status == 400
        assert (await response.json())["error"]["type"] == "invalid_parameters"
