"""Properties of the parsers that read what callers send: imported public keys (PEM text and
JWK objects, :func:`service.core.crypto.parse_customer_public_key`), the JSON body decoder,
and the request values of :mod:`service.core.requests` that every transport hands its
decoded input to.

Each takes any input and answers with a value or an :class:`InvalidRequestError` (400,
``INVALID_ARGUMENT``), never another exception. What gets through obeys the rules: an
accepted key is one the verifier will use, and nothing carrying private material is ever
accepted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import example, given
from hypothesis import strategies as st

from service.core import crypto, times
from service.core.json import loads
from service.core.models import is_valid_id
from service.core.requests import (
    CreateKeyRequest,
    ImportKeyRequest,
    JwksRequest,
    KeyRef,
    ListKeysRequest,
    VerifyRequest,
    WatchRequest,
)
from service.errors import InvalidRequestError
from service.http.openapi import ID_PATTERN, openapi_document
from tests.fuzz.budget import examples
from tests.fuzz.mutations import json_values, mutated_bytes, mutated_text

pytestmark = pytest.mark.fuzz

_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_PRIVATE_KEYS: list[crypto.PrivateKey] = [
    _RSA,
    ec.generate_private_key(ec.SECP256R1()),
    ed25519.Ed25519PrivateKey.generate(),
]
PEMS = [
    key.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
    for key in _PRIVATE_KEYS
] + [
    _RSA.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    .decode()
]
JWKS = [
    crypto.jwk_of(key.public_key(), kid="k", algorithm=crypto.algorithm_of(key.public_key()))
    for key in _PRIVATE_KEYS
]
PRIVATE_PEM = (
    _PRIVATE_KEYS[1]
    .private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    .decode()
)


def _accepted_or_refused(parse: Callable[[], Any]) -> Any:
    """``parse()``'s value, or ``None`` if it refused the input with InvalidRequestError;
    any other exception fails the test."""
    try:
        return parse()
    except InvalidRequestError:
        return None


def test_the_seeds_are_accepted() -> None:
    """The mutations start from inputs the parser accepts (else they test nothing)."""
    for value in [*PEMS, *JWKS]:
        assert crypto.parse_customer_public_key(value)[0] in crypto.ALGORITHMS


def _check_accepted(result: tuple[crypto.Algorithm, bytes] | None) -> None:
    if result is None:
        return
    algorithm, der = result
    assert crypto.usable_key(der, algorithm) is not None, "accepted a key the verifier refuses"


@given(text=mutated_text([*PEMS, PEMS[0] + PRIVATE_PEM]) | st.text(max_size=300))
@examples(bounded=150)
def test_pem_text_is_a_usable_public_key_or_invalid(text: str) -> None:
    result = _accepted_or_refused(lambda: crypto.parse_customer_public_key(text))
    _check_accepted(result)
    if "PRIVATE KEY" in text:
        assert result is None


@st.composite
def mutated_jwks(draw: st.DrawFn) -> dict[str, Any]:
    """A valid JWK with members changed (their text damaged, or replaced by any JSON
    value), removed, or added (among them the members only a private key has)."""
    jwk: dict[str, Any] = dict(draw(st.sampled_from(JWKS)))
    for _ in range(draw(st.integers(1, 3))):
        name = draw(
            st.sampled_from(sorted(jwk)) | st.sampled_from(sorted(crypto.PRIVATE_JWK_MEMBERS))
        )
        edit = draw(st.sampled_from(["damage", "replace", "remove"]))
        if edit == "damage" and isinstance(jwk.get(name), str):
            jwk[name] = draw(mutated_text([jwk[name]]))
        elif edit == "remove":
            jwk.pop(name, None)
        else:
            jwk[name] = draw(json_values(max_leaves=4))
    return jwk


@given(jwk=mutated_jwks() | st.dictionaries(st.text(max_size=4), json_values(), max_size=6))
@examples(bounded=60)
@example(jwk={**JWKS[0], "p": "AQAB", "q": "AQAB"})  # RSA private parts without d
@example(jwk={**JWKS[0], "e": "AQABAA"})  # a 2^24-ish exponent, not 65537
@example(jwk={"kty": [[[[[[["RSA"]]]]]]]})
def test_a_jwk_is_a_usable_public_key_or_invalid(jwk: dict[str, Any]) -> None:
    result = _accepted_or_refused(lambda: crypto.parse_customer_public_key(jwk))
    _check_accepted(result)
    if crypto.PRIVATE_JWK_MEMBERS & jwk.keys():
        assert result is None, "accepted a JWK with private members"


_BODIES = [
    json.dumps({"public_key": PEMS[0], "name": "ci", "expires_at": "1893456000"}).encode(),
    json.dumps({"public_key": JWKS[1], "algorithm": "ES256", "expires_at": 1893456000}).encode(),
    json.dumps({"algorithm": "EdDSA", "name": "n", "expires_at": None}).encode(),
    json.dumps({"token": "a.b.c", "audience": "x", "environment_id": "env-1"}).encode(),
]


def _members(body: Any, allowed: tuple[str, ...]) -> dict[str, Any] | None:
    """The members a route takes, as ``service.http.context.read_object`` lets them through
    (an object of known members only), else ``None``."""
    if not isinstance(body, dict) or not set(body) <= set(allowed):
        return None
    return body


@given(raw=mutated_bytes(_BODIES) | st.binary(max_size=200))
@examples(bounded=200)
@example(raw=b"[" * 50_000)
@example(raw=b'{"expires_at": 1.0e400}')
@example(raw=b'{"expires_at": -62135596800}')
def test_a_json_body_becomes_a_request_or_invalid(raw: bytes) -> None:
    """The HTTP path of a body: parse (ValueError is the body's fault, 400), then the core's
    request for each route that takes a body."""
    try:
        body = loads(raw)
    except ValueError:
        return
    spec = ("algorithm", "name", "expires_at")
    create = _members(body, spec)
    if create is not None:
        _accepted_or_refused(lambda: CreateKeyRequest.parse(**create))
    imported = _members(body, ("public_key", *spec))
    if imported is not None:
        # As the handlers call them: the required member may be missing (None).
        public_key = imported.pop("public_key", None)
        request = _accepted_or_refused(
            lambda: ImportKeyRequest.parse(public_key=public_key, **imported)
        )
        if request is not None:
            _check_accepted(
                _accepted_or_refused(lambda: crypto.parse_customer_public_key(request.public_key))
            )
    verify = _members(body, ("token", "audience", "subject", "environment_id"))
    if verify is not None:
        token = verify.pop("token", None)
        _accepted_or_refused(lambda: VerifyRequest.parse(token=token, **verify))


_VALUES = json_values(max_leaves=6) | st.text(max_size=140) | st.sampled_from(["", "0", "1"])


@given(data=st.data())
@examples(bounded=60)
def test_every_request_value_validates_any_field(data: st.DataObject) -> None:
    """Whatever values a transport decodes (JSON of any type, query strings, protobuf
    strings), each request is built or refused with InvalidRequestError; a built one holds
    values of its declared shape."""

    def draw(name: str) -> Any:
        return data.draw(st.none() | _VALUES, label=name)

    created = _accepted_or_refused(
        lambda: CreateKeyRequest.parse(
            environment_id=draw("environment_id"),
            algorithm=draw("algorithm"),
            name=draw("name"),
            expires_at=draw("expires_at"),
            idempotency_key=draw("idempotency_key"),
        )
    )
    if created is not None:
        assert created.spec.algorithm in crypto.ALGORITHMS
    listed = _accepted_or_refused(
        lambda: ListKeysRequest.parse(
            environment_id=draw("environment_id"),
            limit=draw("limit"),
            page=draw("page"),
            status=draw("status"),
        )
    )
    if listed is not None:
        assert isinstance(listed.limit, int) and isinstance(listed.page, int)
    _accepted_or_refused(
        lambda: KeyRef.parse(
            key_id=draw("key_id"), environment_id=draw("environment_id"), status=draw("status")
        )
    )
    _accepted_or_refused(
        lambda: ImportKeyRequest.parse(
            public_key=draw("public_key"), name=draw("name"), expires_at=draw("expires_at")
        )
    )
    _accepted_or_refused(
        lambda: VerifyRequest.parse(
            token=draw("token"), audience=draw("audience"), subject=draw("subject")
        )
    )
    _accepted_or_refused(
        lambda: WatchRequest.parse(environment_id=draw("environment_id"), after=draw("after"))
    )
    _accepted_or_refused(lambda: JwksRequest.parse(environment_id=draw("environment_id")))


def _body_property(path: str, name: str) -> dict[str, Any]:
    document = openapi_document()
    operation = document["paths"][path]["post"]
    ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema: dict[str, Any] = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return dict(schema["properties"][name])


@given(
    text=st.text(alphabet="0123456789", min_size=1, max_size=13)
    | st.integers(0, 10**13).map(str)
    | st.text(max_size=13)
)
@examples(bounded=150)
@example(text=str(times.LATEST))
@example(text=str(times.LATEST + 1))
@example(text="0" * 12)
@example(text="1\n")
def test_the_documented_shapes_are_the_parsers(text: str) -> None:
    """The OpenAPI document's patterns (as JSON Schema reads them, the whole string) accept
    exactly what the core accepts: a schema-valid request is never refused for its shape."""
    expires_at = _body_property("/system/v1/signing-keys", "expires_at")["pattern"]
    accepted = _accepted_or_refused(lambda: times.parse_unix(text, "expires_at")) is not None
    assert (re.fullmatch(expires_at, text) is not None) == accepted
    assert (re.fullmatch(ID_PATTERN, text) is not None) == is_valid_id(text)
