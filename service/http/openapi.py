"""The OpenAPI 3.1 document for every HTTP route (a test checks it matches the router).

Tight enough to be checked by a fuzzer (``tests/fuzz/``): every parameter's shape is the one
the core accepts (ids, environments, integers, times), every status an operation can answer
is listed (no ``default``), and the headers that go with them (``Retry-After``,
``WWW-Authenticate``, ``ETag``) are declared. A value the schema allows is accepted, and one
it refuses is answered with 400, except where validity is beyond JSON Schema (whether a PEM
text is a public key, whether a token verifies).

Loose where clients must be (generated clients are what break on an additive change):
every response object allows members it does not name (``additionalProperties: true``), and
the enumerations the service may grow (a key's ``status`` and ``algorithm``, a verdict's
``reason``, an error's ``type``) are strings whose known values are listed in
``x-extensible-enum`` and the description, never a closed ``enum``, so that a client
generated today reads ``not_before`` or ``ES384`` tomorrow. Requests stay closed: the service
refuses what it does not know, and the document says so. Every operation has an
``operationId`` and a tag, every schema a generator names is a named component.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import fields
from functools import cache
from typing import Any, Final

from service.core.crypto import ALGORITHMS
from service.core.listing import AUDIT_ACTIONS, MAX_BATCH_IDS, MAX_CURSOR_LENGTH, SOURCES
from service.core.requests import (
    DEFAULT_GRACE_SECONDS,
    DEFAULT_PAGE_LIMIT,
    MAX_EXPECTATION_LENGTH,
    MAX_GRACE_SECONDS,
    MAX_IDEMPOTENCY_KEY_LENGTH,
    MAX_NAME_LENGTH,
    MAX_PAGE,
    MAX_PAGE_LIMIT,
    MIN_GRACE_SECONDS,
    STATUS_FILTERS,
)
from service.core.times import EARLIEST, LATEST
from service.core.verify import REASONS
from service.errors import ServiceError
from service.http.errors import WWW_AUTHENTICATE
from service.settings import Settings


def digits_at_most(limit: int) -> str:
    """A pattern for strings of ASCII digits (leading zeros allowed) whose value is at most
    ``limit`` and whose length is at most its length: what :func:`service.core.times.
    parse_unix` reads from a string.

    >>> digits_at_most(250)
    '^(?:[0-9]{1,2}|250|[0-1][0-9]{2}|2[0-4][0-9]{1})$'
    """
    text = str(limit)
    branches = [f"[0-9]{{1,{len(text) - 1}}}", text] if len(text) > 1 else [text]
    for i, digit in enumerate(text):
        if digit != "0":
            rest = len(text) - i - 1
            tail = f"[0-9]{{{rest}}}" if rest else ""
            branches.append(f"{text[:i]}[0-{int(digit) - 1}]{tail}")
    return "^(?:" + "|".join(branches) + ")$"


# The shapes of service.core.models.check_id and of the idempotency key and request id in
# service.core.requests.
ID_PATTERN: Final = "^[A-Za-z0-9._-]{1,128}$"
_ID: Final = {"type": "string", "pattern": ID_PATTERN, "minLength": 1, "maxLength": 128}
_IDEMPOTENCY_KEY: Final = {
    "type": "string",
    "pattern": f"^[!-~]{{1,{MAX_IDEMPOTENCY_KEY_LENGTH}}}$",
    "maxLength": MAX_IDEMPOTENCY_KEY_LENGTH,
}
_REQUEST_ID_HEADER: Final = {
    "X-Request-Id": {
        "description": "The request's id: the caller's X-Request-Id if well formed, else new.",
        "required": True,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
    }
}
_RETRY_AFTER: Final = {
    "Retry-After": {
        "description": "Whole seconds, at least 1.",
        "required": True,
        "schema": {"type": "string", "pattern": "^[1-9][0-9]*$"},
    }
}
_UNIX: Final = {"type": "string", "pattern": "^[0-9]{1,12}$", "description": "Unix seconds."}
# The default, as a document served whatever the settings can only say.
_MAX_TOKEN_BYTES: Final = next(f.default for f in fields(Settings) if f.name == "max_token_bytes")


def _param(
    name: str, where: str, schema: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    """An operation's parameter, a string unless ``schema`` says otherwise; ``extra`` adds
    fields such as ``required`` and ``description``."""
    return {"name": name, "in": where, "schema": schema or {"type": "string"}, **extra}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _open_enum(
    values: Iterable[str], description: str, *, nullable: bool = False
) -> dict[str, Any]:
    """A string a response carries whose values may grow: the known ones are listed (for
    documentation and generators that read ``x-extensible-enum``), not enforced, so that a
    client generated today does not fail on a value added tomorrow."""
    known = list(values)
    return {
        "type": ["string", "null"] if nullable else "string",
        "description": f"{description} Known values: {', '.join(known)}. More may be added: "
        "a client must accept any other string.",
        "x-extensible-enum": known,
        "examples": [known[0]],
    }


def _object(
    properties: dict[str, Any],
    required: Iterable[str] | None = None,
    *,
    description: str | None = None,
    example: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A response object: every member listed, those always present ``required``, and any
    member it does not name allowed (a newer service may add one)."""
    schema: dict[str, Any] = {
        "type": "object",
        "required": list(properties if required is None else required),
        "additionalProperties": True,
        "properties": properties,
    }
    if description is not None:
        schema["description"] = description
    if example is not None:
        schema["examples"] = [example]
    return schema


def _response(description: str, body: dict[str, Any], **headers: Any) -> dict[str, Any]:
    """A response with a body (``_json(...)`` or ``{}``); every one carries X-Request-Id."""
    return {"description": description, **body, "headers": {**_REQUEST_ID_HEADER, **headers}}


_AUTH: list[dict[str, list[str]]] = [{"basic": []}, {"bearer": []}]
# An empty header or query value names no environment, as an absent one.
_ENVIRONMENT_CHOICE: Final = {
    "type": "string",
    "pattern": "^[A-Za-z0-9._-]{0,128}$",
    "maxLength": 128,
    "description": "An environment id; empty is the same as absent.",
}
_CONFLICT: Final = (
    " The header, the query parameter and the body's or path's environment_id, when more "
    "than one is given, must name the same environment: else 400."
)
_ENV_PARAMS = [
    _param(
        "X-Environment-Id",
        "header",
        _ENVIRONMENT_CHOICE,
        required=False,
        description="The environment; needed only when the token covers several." + _CONFLICT,
    ),
    _param(
        "environment_id",
        "query",
        _ENVIRONMENT_CHOICE,
        required=False,
        description="The environment, as X-Environment-Id." + _CONFLICT,
    ),
]
_LOCATION: Final = {
    "Location": {
        "description": "The key's path (its get).",
        "required": True,
        "schema": {"type": "string", "pattern": "^/system/v1/signing-keys/[^/]+$"},
    }
}
_ID_PARAM = _param("id", "path", _ID, required=True)
# Read your writes: a write answers a token; sent back, a request's reads see that write.
_CONSISTENCY_TOKEN: Final = {"type": "string", "pattern": "^[A-Za-z0-9_-]{28}$"}
_CONSISTENCY_CHOICE: Final = {
    "type": "string",
    "pattern": "^([A-Za-z0-9_-]{28})?$",
    "description": "Empty is the same as absent.",
}
_CONSISTENCY_PARAM = _param(
    "X-Consistency-Token",
    "header",
    _CONSISTENCY_CHOICE,
    required=False,
    description="A token a write answered with: this request's reads see that write. "
    "Malformed, or from another database: 400 invalid_consistency_token.",
)
_WRITE_TOKEN: Final = {
    "X-Consistency-Token": {
        "description": "Send it back (on any instance) so that later reads see this write; "
        "absent on CockroachDB, whose reads always do.",
        "required": False,
        "schema": _CONSISTENCY_TOKEN,
    }
}

_STATUS_PARAM = _param(
    "status",
    "query",
    {"type": "string", "enum": list(STATUS_FILTERS), "default": "active"},
    required=False,
    description="Which keys to find: active (the default, as the reference platform: a "
    "deleted key is 404 and not listed), revoked, or all.",
)
_LIMIT_PARAM = _param(
    "limit",
    "query",
    {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_LIMIT, "default": DEFAULT_PAGE_LIMIT},
    description="Items per page.",
)
_UNIX_QUERY: Final = {"type": "string", "pattern": "^[0-9]{1,12}$"}
_NEXT_LINK: Final = {
    "Link": {
        "description": 'RFC 8288: <this request with the next cursor>; rel="next". Absent '
        "after the last page.",
        "required": False,
        "schema": {"type": "string"},
    }
}
_CURSOR_PATTERN: Final = f"^[A-Za-z0-9_-]{{1,{MAX_CURSOR_LENGTH}}}$"
# Filters and the cursor of the list (service.core.listing), beside Mux's page and limit.
_LIST_PARAMS = [
    _param(
        "cursor",
        "query",
        {"type": "string", "pattern": _CURSOR_PATTERN},
        required=False,
        description="The next_cursor of an earlier page (or the Link header's rel=next): "
        "the keys after it, however deep, by keyset on (created_at, id). Not with page; "
        "with the same status and filters as the request that returned it, else 400.",
    ),
    _param(
        "algorithm",
        "query",
        {"type": "string", "enum": list(ALGORITHMS)},
        required=False,
        description="Only keys of this algorithm.",
    ),
    _param(
        "source",
        "query",
        {"type": "string", "enum": list(SOURCES)},
        required=False,
        description="Only generated or only imported keys.",
    ),
    _param(
        "expires_before",
        "query",
        {"type": "string", "pattern": "^[0-9]{1,12}$"},
        required=False,
        description="Only keys whose expiry (Unix seconds) is before this; keys that never "
        "expire do not match.",
    ),
]
# What a request may name (closed: the service refuses others) and what a response carries
# (open: a newer service may answer an algorithm this document does not know).
_ALGORITHM_CHOICE = {"type": "string", "enum": list(ALGORITHMS)}
_ALGORITHM = _open_enum(ALGORITHMS, "The JWS algorithm the key signs with (alg).")
_KEY_STATUS = _open_enum(
    ("active", "revoked", "expired"),
    "Whether the key may verify tokens (expired: its expires_at has passed).",
)
_EXAMPLE_ID: Final = "sk_01J9Z3Q4T8W2X6Y0A1B2C3D4E5"
_EXAMPLE_PEM: Final = (
    "-----BEGIN PUBLIC KEY-----\n"
    "MCowBQYDK2VwAyEAh1dMuV/o0UbX+pvR7GCO8hejYCWdp3hH7a2/pN4jZF8=\n"
    "-----END PUBLIC KEY-----\n"
)
_EXAMPLE_FINGERPRINT: Final = "9f2c4a1be07d3c5e8f6a2b1d0c9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e"
# What a created key and an imported one are both given; null means "not given".
_KEY_SPEC: dict[str, dict[str, Any]] = {
    "algorithm": {
        "enum": [*ALGORITHMS, None],
        "description": f"One of {', '.join(ALGORITHMS)}; RS256 when null or absent (an "
        "imported key's own algorithm when it has only one).",
    },
    "name": {
        "type": ["string", "null"],
        "maxLength": MAX_NAME_LENGTH,
        # Printable text (no control characters), never a private key.
        "pattern": "^[^\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029]*$",
        "not": {"type": "string", "pattern": "PRIVATE KEY"},
        "description": "A label for people; printable text.",
    },
    "expires_at": {
        "type": ["integer", "string", "null"],
        "minimum": EARLIEST,
        "maximum": LATEST,
        "pattern": digits_at_most(LATEST),
        "description": f"Unix seconds, {EARLIEST} to {LATEST} (years 1970-9999): a whole "
        "number or a string of ASCII digits; a time already passed is 400.",
    },
    "not_before": {
        "type": ["integer", "string", "null"],
        "minimum": EARLIEST,
        "maximum": LATEST,
        "pattern": digits_at_most(LATEST),
        "description": "Unix seconds, as expires_at: when the key may start signing. It is "
        "in the JWK Set from creation, but a token it signed earlier does not verify "
        "(reason key_not_yet_valid). Must be before expires_at.",
    },
}

_KEY_PROPERTIES: Final[dict[str, Any]] = {
    "id": {**_ID, "description": "Opaque key id, used as the JWT kid."},
    "created_at": {**_UNIX, "description": "Unix seconds, as a string."},
    "environment_id": {**_ID, "description": "The environment the key belongs to."},
    "algorithm": _ALGORITHM,
    "status": _KEY_STATUS,
    "source": _open_enum(("generated", "imported"), "Whether the service generated the key."),
    "name": {"type": ["string", "null"], "description": "The key's label, if it has one."},
    "fingerprint": {
        "type": "string",
        "pattern": "^[0-9a-f]{64}$",
        "description": "SHA-256 of the SPKI DER, hex.",
    },
    "public_key": {
        "type": "string",
        "pattern": "^-----BEGIN PUBLIC KEY-----\n",
        "description": "PEM SubjectPublicKeyInfo.",
    },
    "updated_at": {**_UNIX, "description": "Unix seconds of the last change, as a string."},
    "revoked_at": {**_UNIX, "type": ["string", "null"], "description": "Unix seconds, or null."},
    "expires_at": {**_UNIX, "type": ["string", "null"], "description": "Unix seconds, or null."},
    "not_before": {
        **_UNIX,
        "type": ["string", "null"],
        "description": "Unix seconds from which the key may sign, or null (from creation).",
    },
    "rotated_to": {
        **_ID,
        "type": ["string", "null"],
        "description": "The key this one was rotated to, or null: a key rotates once.",
    },
}
_EXAMPLE_KEY: Final = {
    "id": _EXAMPLE_ID,
    "created_at": "1767225600",
    "environment_id": "production",
    "algorithm": "EdDSA",
    "status": "active",
    "source": "generated",
    "name": "ci-signer",
    "fingerprint": _EXAMPLE_FINGERPRINT,
    "public_key": _EXAMPLE_PEM,
    "updated_at": "1767225600",
    "revoked_at": None,
    "expires_at": "1798761600",
    "not_before": None,
    "rotated_to": None,
}
_KEY: Final = _object(
    _KEY_PROPERTIES,
    description="A signing key's public record (never its private key).",
    example=_EXAMPLE_KEY,
)
# A key as created: the stored key and, this once, its private key.
_CREATED_KEY: Final = _object(
    {
        **_KEY_PROPERTIES,
        "private_key": {
            "type": "string",
            "pattern": "^[A-Za-z0-9+/]+={0,2}$",
            "description": "Base64 of the PEM private key. Returned once; never stored.",
        },
    },
    description="A key just created: its record and, this once, its private key.",
    example={**_EXAMPLE_KEY, "private_key": "LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0tCg=="},
)
# A rotation's answer: the new key (with its private key, this once) and the old key as
# rotated (rotated_to set, its expiry scheduled).
_ROTATED_KEY: Final = _object(
    {**_CREATED_KEY["properties"], "previous_key": _ref("SigningKey")},
    description="The key a rotation created (its private key shown this once) and the key "
    "it replaces, as rotated.",
    example={
        **_EXAMPLE_KEY,
        "id": "sk_01J9Z3Q4T8W2X6Y0A1B2C3D4F6",
        "private_key": "LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0tCg==",
        "previous_key": {
            **_EXAMPLE_KEY,
            "expires_at": "1767312000",
            "rotated_to": "sk_01J9Z3Q4T8W2X6Y0A1B2C3D4F6",
        },
    },
)
_B64URL = {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"}
_EXAMPLE_JWK: Final = {
    "kty": "OKP",
    "kid": _EXAMPLE_ID,
    "alg": "EdDSA",
    "use": "sig",
    "crv": "Ed25519",
    "x": "h1dMuV_o0UbX-pvR7GCO8hejYCWdp3hH7a2_pN4jZF8",
}
_JWK: Final = _object(
    {
        "kty": _open_enum(("RSA", "EC", "OKP"), "Key type (RFC 7517)."),
        "kid": {**_ID, "description": "The key's id."},
        "alg": _ALGORITHM,
        "use": {"type": "string", "const": "sig", "description": "Always sig."},
        "crv": _open_enum(("P-256", "Ed25519"), "Curve, for EC and OKP keys."),
        "n": {**_B64URL, "description": "RSA modulus (base64url)."},
        "e": {**_B64URL, "description": "RSA exponent (base64url)."},
        "x": {**_B64URL, "description": "EC or OKP x coordinate (base64url)."},
        "y": {**_B64URL, "description": "EC y coordinate (base64url)."},
    },
    ["kty", "kid", "alg", "use"],
    description="A public JWK (RFC 7517); which members are present depends on kty.",
    example=_EXAMPLE_JWK,
)
_JWK_SET: Final = _object(
    {"keys": {"type": "array", "items": _ref("Jwk"), "description": "The active keys."}},
    description="A JWK Set (RFC 7517, section 5).",
    example={"keys": [_EXAMPLE_JWK]},
)
_PUBLIC_KEY: Final = _object(
    {
        "id": {**_ID, "description": "The key's id."},
        "algorithm": _ALGORITHM,
        "status": _KEY_STATUS,
        "fingerprint": {
            "type": "string",
            "pattern": "^[0-9a-f]{64}$",
            "description": "SHA-256 of the SPKI DER, hex.",
        },
        "pem": {
            "type": "string",
            "pattern": "^-----BEGIN PUBLIC KEY-----\n",
            "description": "PEM SubjectPublicKeyInfo.",
        },
        "jwk": _ref("Jwk"),
    },
    description="A key's public half, as PEM and as JWK.",
    example={
        "id": _EXAMPLE_ID,
        "algorithm": "EdDSA",
        "status": "active",
        "fingerprint": _EXAMPLE_FINGERPRINT,
        "pem": _EXAMPLE_PEM,
        "jwk": _EXAMPLE_JWK,
    },
)
_VERDICT: Final = _object(
    {
        "valid": {"type": "boolean", "description": "Whether the token verifies."},
        "reason": _open_enum(
            REASONS, "Why the token does not verify; null if it does.", nullable=True
        ),
        "key_id": {"type": ["string", "null"], "description": "The token's kid, if read."},
        "environment_id": {
            "type": ["string", "null"],
            "description": "The environment of the key that signed it, if found.",
        },
        "claims": {
            "type": ["object", "null"],
            "description": "The token's claims when it verifies, else null.",
        },
    },
    description="A verification's outcome: valid or not, and why not.",
    example={
        "valid": True,
        "reason": None,
        "key_id": _EXAMPLE_ID,
        "environment_id": "production",
        "claims": {"sub": "build-42", "exp": 1767229200},
    },
)
_REGION: Final = _object(
    {
        "name": {"type": "string", "description": "The region's name."},
        "cloud": {"type": "string", "description": "Its cloud provider."},
        "state": {"type": "string", "description": "The router's view of it (open set)."},
        "role": {"type": ["string", "null"], "description": "primary, standby, or null."},
    },
    description="One database region as the locality router sees it.",
)
_REGION_STATUS: Final = _object(
    {
        "local_region": {"type": "string", "description": "This instance's region."},
        "read_region": {"type": ["string", "null"], "description": "Serves reads, if any."},
        "write_region": {"type": ["string", "null"], "description": "Serves writes, if any."},
        "regions": {"type": "array", "items": _ref("Region")},
    },
    description="Which region serves reads and writes, and each region's state (with "
    "credentials holding the read scope, also more members per region).",
)
_READINESS: Final = _object(
    {
        "status": _open_enum(("ready", "degraded", "unavailable"), "The readiness state."),
        "can_read": {"type": "boolean", "description": "A region serves reads."},
        "can_verify": {"type": "boolean", "description": "Tokens can be verified."},
        "keys_fresh": {"type": "boolean", "description": "The cached keys are current."},
        "can_write": {"type": "boolean", "description": "A region serves writes."},
    },
    description="Readiness: whether this instance can serve.",
    example={
        "status": "ready",
        "can_read": True,
        "can_verify": True,
        "keys_fresh": True,
        "can_write": True,
    },
)
_HEALTH: Final = _object(
    {"status": {"type": "string", "const": "ok", "description": "Always ok."}},
    description="Liveness.",
    example={"status": "ok"},
)


def _error_types() -> list[str]:
    """Every ``error.type`` the service names: its error classes' and the middleware's own."""
    found: set[str] = set()
    pending: list[type[ServiceError]] = [ServiceError]
    while pending:
        cls = pending.pop()
        found.add(cls.type)
        pending.extend(cls.__subclasses__())
    return sorted(found | _TRANSPORT_ERROR_TYPES)


# The types the HTTP middleware answers without a service error (aiohttp's own refusals,
# named after their reason phrase, and a body that did not arrive).
_TRANSPORT_ERROR_TYPES: Final = frozenset(
    {"request_timeout", "method_not_allowed", "not_found", "payload_too_large"}
)
_ERROR: Final = _object(
    {
        "type": {
            **_open_enum(_error_types(), "What failed, for programs."),
            "pattern": "^[a-z_]+$",
        },
        "messages": {
            "type": "array",
            "items": {"type": "string"},
            "description": "What failed, for people (never a secret).",
        },
        "request_id": {
            "type": "string",
            "pattern": "^[A-Za-z0-9._-]{1,64}$",
            "description": "The request's id, as in the X-Request-Id header.",
        },
        "field": {"type": "string", "description": "The request field at fault."},
        "key_id": {"type": "string", "description": "The key concerned."},
        "environment_id": {"type": "string", "description": "The environment concerned."},
    },
    ("type", "messages", "request_id"),  # field, key_id, environment_id: where they apply
    description="An error: a machine-readable type, human messages, the request's id.",
    example={
        "type": "not_found",
        "messages": ["signing key not found"],
        "request_id": "5f0c2a9e81d4b7c3",
    },
)
_ERROR_BODY: Final = _object(
    {"error": _ref("Error")},
    description="Every error answer's body.",
    example={
        "error": {
            "type": "not_found",
            "messages": ["signing key not found"],
            "request_id": "5f0c2a9e81d4b7c3",
        }
    },
)


def _data(name: str, description: str) -> dict[str, Any]:
    """The reference platform's envelope: ``{"data": ...}`` around a named schema."""
    return _object({"data": _ref(name)}, description=description)


def _request(
    properties: dict[str, Any],
    required: list[str] | None = None,
    *,
    description: str,
    example: dict[str, Any],
) -> dict[str, Any]:
    """A request body: closed, since the service refuses members it does not know."""
    schema: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
        "description": description,
        "examples": [example],
    }
    if required:
        schema["required"] = required
    return schema


_CREATE_REQUEST: Final = _request(
    _KEY_SPEC,
    description="What to create; every member is optional (an empty body is fine).",
    example={"algorithm": "EdDSA", "name": "ci-signer", "expires_at": 4102444800},
)
_IMPORT_REQUEST: Final = _request(
    {
        "public_key": {
            "oneOf": [{"type": "string", "minLength": 1}, {"type": "object"}],
            "description": "One PEM public key block, or a public JWK.",
        },
        **_KEY_SPEC,
    },
    ["public_key"],
    description="A customer-supplied public key to import.",
    example={"public_key": _EXAMPLE_PEM, "name": "partner-signer"},
)
_ROTATE_REQUEST: Final = _request(
    {
        **_KEY_SPEC,
        "algorithm": {
            "enum": [*ALGORITHMS, None],
            "description": "The new key's algorithm; the old key's when null or absent.",
        },
        "grace_period_seconds": {
            "type": ["integer", "null"],
            "minimum": MIN_GRACE_SECONDS,
            "maximum": MAX_GRACE_SECONDS,
            "default": DEFAULT_GRACE_SECONDS,
            "description": "How long the old key keeps verifying after the new one takes "
            "over (its not_before, or now); never later than the old key's own expiry.",
        },
    },
    description="The next key; every member is optional (an empty body is fine).",
    example={"not_before": 4102444800, "grace_period_seconds": 86400},
)
_UPDATE_REQUEST: Final = _request(
    {
        "name": _KEY_SPEC["name"],
        "expires_at": {
            **_KEY_SPEC["expires_at"],
            "description": "A new expiry, in the future and no later than the key's own "
            "(an update only shortens); null or absent leaves it.",
        },
    },
    description="A JSON merge patch: name (null clears it) and/or an earlier expires_at.",
    example={"name": "retiring", "expires_at": 4102444800},
)
_VERIFY_REQUEST: Final = _request(
    {
        "token": {
            "type": "string",
            "minLength": 1,
            "maxLength": _MAX_TOKEN_BYTES,
            "description": "A compact JWS; longer than SIGNING_KEYS_MAX_TOKEN_BYTES (by "
            f"default {_MAX_TOKEN_BYTES}) is 413.",
        },
        "audience": {
            "type": ["string", "null"],
            "minLength": 1,
            "maxLength": MAX_EXPECTATION_LENGTH,
            "description": "Expected aud.",
        },
        "subject": {
            "type": ["string", "null"],
            "minLength": 1,
            "maxLength": MAX_EXPECTATION_LENGTH,
            "description": "Expected sub.",
        },
        "environment_id": {
            **_ID,
            "type": ["string", "null"],
            "description": "The environment whose keys may have signed the token.",
        },
    },
    ["token"],
    description="A token to verify, and what to expect of it.",
    example={"token": "eyJhbGciOiJFZERTQSJ9.e30.c2ln", "audience": "deploy"},
)

_SCHEMAS: Final = {
    "SigningKey": _KEY,
    "CreatedSigningKey": _CREATED_KEY,
    "PublicKey": _PUBLIC_KEY,
    "Jwk": _JWK,
    "JwkSet": _JWK_SET,
    "Verdict": _VERDICT,
    "Region": _REGION,
    "RegionStatus": _REGION_STATUS,
    "Readiness": _READINESS,
    "Health": _HEALTH,
    "Error": _ERROR,
    "ErrorResponse": _ERROR_BODY,
    "SigningKeyResponse": _data("SigningKey", "One signing key."),
    "CreatedSigningKeyResponse": _data("CreatedSigningKey", "The key just created."),
    "RotatedSigningKey": _ROTATED_KEY,
    "RotatedSigningKeyResponse": _data("RotatedSigningKey", "The rotation's new and old key."),
    "RotateSigningKeyRequest": _ROTATE_REQUEST,
    "UpdateSigningKeyRequest": _UPDATE_REQUEST,
    "SigningKeyList": _object(
        {
            "data": {"type": "array", "items": _ref("SigningKey")},
            "next_cursor": {
                "type": "string",
                "pattern": _CURSOR_PATTERN,
                "description": "Pass as cursor for the next page (the Link header's "
                "rel=next says the same); absent when no key follows this page.",
            },
        },
        required=["data"],
        description="A page of signing keys, newest first.",
    ),
    "AuditEvent": _object(
        {
            "id": _ID,
            "environment_id": _ID,
            "key_id": {"type": ["string", "null"]},
            "action": _open_enum(AUDIT_ACTIONS, "What was done to the key."),
            "actor": {"type": "string", "description": "The access token id (never a secret)."},
            "api": _open_enum(("http", "grpc", "cli"), "Through which API."),
            "request_id": {"type": ["string", "null"]},
            "created_at": {**_UNIX, "type": ["string", "null"]},
        },
        description="One recorded change to a key: ids and times, never key material.",
    ),
    "AuditEventList": _object(
        {
            "data": {"type": "array", "items": _ref("AuditEvent")},
            "next_cursor": {
                "type": "string",
                "pattern": _CURSOR_PATTERN,
                "description": "Pass as cursor for the next page; absent after the last.",
            },
        },
        required=["data"],
        description="A page of audit events, newest first.",
    ),
    "SigningKeyBatch": _object(
        {
            "data": {"type": "array", "items": _ref("SigningKey")},
            "not_found": {"type": "array", "items": _ID},
        },
        description="The keys found, in the order asked for, and the ids not found (missing, "
        "of another environment, or not of the status asked for: indistinguishable).",
    ),
    "PublicKeyResponse": _data("PublicKey", "A key's public half."),
    "VerdictResponse": _data("Verdict", "A verification's outcome."),
    "RegionStatusResponse": _data("RegionStatus", "The locality router's state."),
    "CreateSigningKeyRequest": _CREATE_REQUEST,
    "ImportSigningKeyRequest": _IMPORT_REQUEST,
    "VerifyTokenRequest": _VERIFY_REQUEST,
    "EnvironmentSettings": _object(
        {
            "environment_id": {"type": "string"},
            "public_jwks": {
                "type": "boolean",
                "description": "Whether /v1/public/environments/{id}/jwks.json serves the "
                "environment's JWK Set without credentials.",
            },
        },
        description="An environment's settings, as just recorded.",
        example={"environment_id": "prod", "public_jwks": True},
    ),
    "EnvironmentSettingsResponse": _data("EnvironmentSettings", "An environment's settings."),
    "EnvironmentSettingsRequest": _request(
        {"public_jwks": {"type": "boolean"}},
        ["public_jwks"],
        description="Opt the environment in to (true) or out of (false) the anonymous JWK Set.",
        example={"public_jwks": True},
    ),
}


def _error(status: int) -> dict[str, Any]:
    return {"$ref": f"#/components/responses/{_ERRORS[status][0]}"}


# Every error status an operation may answer, with its error body and headers.
_ERRORS: Final[dict[int, tuple[str, str, dict[str, Any]]]] = {
    400: ("BadRequest", "A parameter or the body is invalid.", {}),
    401: (
        "Unauthorized",
        "Missing or wrong credentials.",
        {
            "WWW-Authenticate": {
                "description": "The schemes the service accepts: Basic and Bearer.",
                "required": True,
                "schema": {"type": "string", "const": WWW_AUTHENTICATE},
            }
        },
    ),
    403: ("Forbidden", "The token lacks the scope or the environment.", {}),
    404: (
        "NotFound",
        "No such key (in an environment the token may see); for the public JWK Set, an "
        "environment that did not opt in (whether or not it exists).",
        {},
    ),
    408: ("RequestTimeout", "The request body did not arrive in time.", {}),
    409: (
        "Conflict",
        "The Idempotency-Key already created a key, named in error.key_id (its private key "
        "is not shown again).",
        {},
    ),
    413: ("PayloadTooLarge", "The body (or the token) is too large.", {}),
    422: (
        "IdempotencyKeyMismatch",
        "The Idempotency-Key was used for a different request (error.key_id names its key).",
        {},
    ),
    429: (
        "TooManyRequests",
        "Too many failed authentications from this client or for this token id, or (verify)"
        " too many look-ups of key ids this instance does not hold: retry after Retry-After.",
        _RETRY_AFTER,
    ),
    503: (
        "Unavailable",
        "No region can serve the request now; for verify, key_unavailable: whether the "
        "token's key exists cannot be told now (the token is not valid until a retry says).",
        _RETRY_AFTER,
    ),
    500: ("InternalError", "A failure of the service's own; the body says no more.", {}),
    504: ("DeadlineExceeded", "The database did not answer in time.", {}),
}
# What every operation may answer, whatever it does; and every authenticated one.
_ANY_ERRORS: Final = (500,)
_AUTHENTICATED_ERRORS: Final = (*_ANY_ERRORS, 400, 401, 403, 429, 503, 504)
_BODY_ERRORS: Final = (408, 413)


def _error_responses() -> dict[str, Any]:
    body = _json(_ref("ErrorResponse"))
    return {name: _response(text, body, **headers) for name, text, headers in _ERRORS.values()}


def _request_body(name: str, *, required: bool) -> dict[str, Any]:
    return {"required": required, **_json(_ref(name))}


def _op(
    operation_id: str,
    tag: str,
    summary: str,
    responses: dict[str, Any],
    errors: tuple[int, ...] = _ANY_ERRORS,
    **extra: Any,
) -> dict[str, Any]:
    listed = {str(status): _error(status) for status in sorted(set(errors))}
    return {
        "operationId": operation_id,
        "tags": [tag],
        "summary": summary,
        "responses": {**responses, **listed},
        **extra,
    }


def _key_op(
    operation_id: str,
    summary: str,
    responses: dict[str, Any],
    errors: tuple[int, ...] = (),
    **extra: Any,
) -> dict[str, Any]:
    params = extra.pop("parameters", [])
    if "requestBody" in extra:
        errors = (*errors, *_BODY_ERRORS)
    return _op(
        operation_id,
        "SigningKeys",
        summary,
        responses,
        (*_AUTHENTICATED_ERRORS, *errors),
        security=_AUTH,
        parameters=[*params, *_ENV_PARAMS, _CONSISTENCY_PARAM],
        **extra,
    )


def _ok(description: str, schema: str, **headers: Any) -> dict[str, Any]:
    return _response(description, _json(_ref(schema)), **headers)


_JWKS_HEADERS: Final = {
    "ETag": {"description": "The set's version.", "required": True, "schema": {"type": "string"}},
    "Cache-Control": {
        "description": "How long a cache may keep the set.",
        "required": True,
        "schema": {"type": "string"},
    },
}
_PUBLIC_JWKS_HEADERS: Final = {
    **_JWKS_HEADERS,
    "Cache-Control": {
        "description": "public, max-age=SIGNING_KEYS_PUBLIC_JWKS_MAX_AGE, "
        "stale-if-error=SIGNING_KEYS_PUBLIC_JWKS_STALE_IF_ERROR: shared caches may keep it.",
        "required": True,
        "schema": {"type": "string"},
    },
    "Access-Control-Allow-Origin": {"required": True, "schema": {"type": "string", "const": "*"}},
}
_PRIVATE_ANSWER: Final = {
    "Cache-Control": {"required": True, "schema": {"type": "string", "const": "no-store"}},
    "Vary": {"required": True, "schema": {"type": "string", "const": "Authorization"}},
}


@cache
def openapi_document() -> dict[str, Any]:
    idempotency = _param(
        "Idempotency-Key",
        "header",
        _IDEMPOTENCY_KEY,
        required=False,
        description="Repeat a write with the same key and it is done once.",
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "signing-keys",
            "version": "1.0.0",
            "description": "Public signing keys per environment, and token verification. "
            "Responses may gain members and enumerations values: clients must ignore what "
            "they do not know.",
        },
        "tags": [
            {"name": "SigningKeys", "description": "Create, import, read and revoke keys."},
            {"name": "Tokens", "description": "Verify tokens; the JWK Set of an environment."},
            {"name": "Operations", "description": "Health, readiness, regions, metrics."},
        ],
        "paths": {
            "/system/v1/signing-keys": {
                "post": _key_op(
                    "createSigningKey",
                    "Create a signing key; the private key is returned once.",
                    {
                        "201": _ok(
                            "Created.", "CreatedSigningKeyResponse", **_WRITE_TOKEN, **_LOCATION
                        )
                    },
                    (409, 422),
                    parameters=[idempotency],
                    requestBody=_request_body("CreateSigningKeyRequest", required=False),
                ),
                "get": _key_op(
                    "listSigningKeys",
                    "List signing keys, newest first.",
                    {"200": _ok("A page.", "SigningKeyList", **_NEXT_LINK)},
                    parameters=[
                        _LIMIT_PARAM,
                        _param(
                            "page",
                            "query",
                            {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 1},
                            description="1-based; a page past the end is empty.",
                        ),
                        _STATUS_PARAM,
                        *_LIST_PARAMS,
                    ],
                ),
            },
            "/system/v1/signing-keys:batchGet": {
                "get": _key_op(
                    "batchGetSigningKeys",
                    f"Get up to {MAX_BATCH_IDS} signing keys by id at once.",
                    {"200": _ok("The keys found and the ids not found.", "SigningKeyBatch")},
                    parameters=[
                        _param(
                            "ids",
                            "query",
                            {
                                "type": "string",
                                "pattern": f"^[A-Za-z0-9._-]{{1,128}}(,[A-Za-z0-9._-]{{1,128}})"
                                f"{{0,{MAX_BATCH_IDS - 1}}}$",
                            },
                            required=True,
                            description=f"1 to {MAX_BATCH_IDS} key ids, comma-separated (or "
                            "the parameter repeated); a repeated id is read once.",
                        ),
                        _STATUS_PARAM,
                    ],
                )
            },
            "/system/v1/audit-events": {
                "get": _key_op(
                    "listAuditEvents",
                    "Who created, imported or revoked which key, when, through which API; "
                    "newest first, paged by cursor.",
                    {"200": _ok("A page.", "AuditEventList", **_NEXT_LINK)},
                    parameters=[
                        _LIMIT_PARAM,
                        _LIST_PARAMS[0],  # cursor
                        _param(
                            "key_id",
                            "query",
                            _ID,
                            required=False,
                            description="Only this key's events.",
                        ),
                        _param(
                            "actor",
                            "query",
                            _ID,
                            required=False,
                            description="Only this access token's events.",
                        ),
                        _param(
                            "action",
                            "query",
                            {"type": "string", "enum": list(AUDIT_ACTIONS)},
                            required=False,
                            description="Only events of this action.",
                        ),
                        _param(
                            "since",
                            "query",
                            _UNIX_QUERY,
                            required=False,
                            description="Only events at or after this (Unix seconds).",
                        ),
                        _param(
                            "until",
                            "query",
                            _UNIX_QUERY,
                            required=False,
                            description="Only events before this (Unix seconds).",
                        ),
                    ],
                )
            },
            "/system/v1/signing-keys/import": {
                "post": _key_op(
                    "importSigningKey",
                    "Import a customer-supplied public key (PEM or JWK).",
                    {
                        "201": _ok("Imported.", "SigningKeyResponse", **_WRITE_TOKEN, **_LOCATION),
                        "200": _ok(
                            "A replay (same Idempotency-Key, same request): the key stored then.",
                            "SigningKeyResponse",
                            **_WRITE_TOKEN,
                        ),
                    },
                    (422,),
                    parameters=[idempotency],
                    requestBody=_request_body("ImportSigningKeyRequest", required=True),
                )
            },
            "/system/v1/signing-keys/{id}": {
                "get": _key_op(
                    "getSigningKey",
                    "Get a signing key (never its private key); a revoked one only if asked.",
                    {"200": _ok("The key.", "SigningKeyResponse")},
                    (404,),
                    parameters=[_ID_PARAM, _STATUS_PARAM],
                ),
                "patch": _key_op(
                    "updateSigningKey",
                    "Rename a key and/or bring its expiry forward (never later; a revoked "
                    "key stays revoked). Caches and the JWK Set see the change.",
                    {"200": _ok("The key as updated.", "SigningKeyResponse", **_WRITE_TOKEN)},
                    (404,),
                    parameters=[_ID_PARAM],
                    requestBody=_request_body("UpdateSigningKeyRequest", required=False),
                ),
                "delete": _key_op(
                    "revokeSigningKey",
                    "Revoke (delete) a signing key; revoking twice is harmless. The record "
                    "stays, shown by get and list with status=revoked or status=all.",
                    {"204": _response("Revoked.", {}, **_WRITE_TOKEN)},
                    (404,),
                    parameters=[_ID_PARAM],
                ),
            },
            "/system/v1/signing-keys/{id}/rotate": {
                "post": _key_op(
                    "rotateSigningKey",
                    "Rotate a key in one transaction: create the next key (optionally from a "
                    "not_before) and expire this one a grace period after the new one takes "
                    "over. A key rotates once; a revoked or expired key does not (409).",
                    {
                        "201": _ok(
                            "Rotated; Location names the new key.",
                            "RotatedSigningKeyResponse",
                            **_WRITE_TOKEN,
                            **_LOCATION,
                        )
                    },
                    (404, 409, 422),
                    parameters=[_ID_PARAM, idempotency],
                    requestBody=_request_body("RotateSigningKeyRequest", required=False),
                )
            },
            "/system/v1/signing-keys:current": {
                "get": _key_op(
                    "getCurrentSigningKey",
                    "The environment's current key: the newest active, unexpired key whose "
                    "not_before has passed (404 when none). Sign new tokens with it.",
                    {"200": _ok("The current key.", "SigningKeyResponse")},
                    (404,),
                )
            },
            "/system/v1/signing-keys/{id}/public-key": {
                "get": _key_op(
                    "getSigningKeyPublicKey",
                    "The public key as PEM and JWK; a revoked key's only if asked.",
                    {"200": _ok("The public key.", "PublicKeyResponse")},
                    (404,),
                    parameters=[_ID_PARAM, _STATUS_PARAM],
                )
            },
            "/v1/tokens/verify": {
                "post": _op(
                    "verifyToken",
                    "Tokens",
                    "Verify a compact JWT: valid or not (200 either way), with a reason.",
                    {"200": _ok("The verdict.", "VerdictResponse")},
                    (*_AUTHENTICATED_ERRORS, *_BODY_ERRORS),
                    security=_AUTH,
                    parameters=[*_ENV_PARAMS, _CONSISTENCY_PARAM],
                    requestBody=_request_body("VerifyTokenRequest", required=True),
                )
            },
            "/v1/environments/{environment_id}/jwks.json": {
                "get": _op(
                    "getJwks",
                    "Tokens",
                    "The environment's active keys as a JWK Set (ETag, 304 on If-None-Match).",
                    {
                        "200": _ok("JWK Set.", "JwkSet", **_JWKS_HEADERS),
                        "304": _response("Not modified.", {}, **_JWKS_HEADERS),
                    },
                    _AUTHENTICATED_ERRORS,
                    security=_AUTH,
                    parameters=[
                        _param("environment_id", "path", _ID, required=True),
                        _param(
                            "If-None-Match",
                            "header",
                            required=False,
                            description="ETags of sets the caller holds: 304 if current.",
                        ),
                        # The header only: a query parameter would share the path's name.
                        _ENV_PARAMS[0],
                        _CONSISTENCY_PARAM,
                    ],
                )
            },
            "/v1/public/environments/{environment_id}/jwks.json": {
                "get": _op(
                    "getPublicJwks",
                    "Tokens",
                    "No credentials: the JWK Set of an environment that opted in (for Envoy "
                    "remote_jwks, Istio, JOSE remote key sets); 404, the same for every other "
                    "environment. Strong ETag; If-None-Match (W/ and * too) answers 304.",
                    {
                        "200": _ok("JWK Set.", "JwkSet", **_PUBLIC_JWKS_HEADERS),
                        "304": _response("Not modified.", {}, **_PUBLIC_JWKS_HEADERS),
                    },
                    (*_ANY_ERRORS, 404, 429, 503, 504),
                    security=[{}],
                    parameters=[
                        _param("environment_id", "path", _ID, required=True),
                        _param(
                            "If-None-Match",
                            "header",
                            required=False,
                            description="ETags of sets the caller holds (or *): 304 if current.",
                        ),
                    ],
                )
            },
            "/v1/environments/{environment_id}/settings": {
                "put": _op(
                    "putEnvironmentSettings",
                    "Tokens",
                    "Opt the environment in to or out of the anonymous JWK Set (write scope); "
                    "every instance follows within SIGNING_KEYS_PUBLIC_JWKS_SETTING_TTL plus "
                    "SIGNING_KEYS_CHANGE_MAX_DATA_AGE.",
                    {"200": _ok("Recorded.", "EnvironmentSettingsResponse")},
                    (*_AUTHENTICATED_ERRORS, *_BODY_ERRORS),
                    security=_AUTH,
                    parameters=[
                        _param("environment_id", "path", _ID, required=True),
                        _ENV_PARAMS[0],
                    ],
                    requestBody=_request_body("EnvironmentSettingsRequest", required=True),
                )
            },
            "/v1/regions": {
                "get": _op(
                    "getRegionStatus",
                    "Operations",
                    "Per-region state of the locality router. Without credentials: each "
                    "region's name, cloud, state and role, and which region serves reads and "
                    "writes; with an access token holding the read scope, also RTT, lag, "
                    "in-flight calls and the last error.",
                    {"200": _ok("Status.", "RegionStatusResponse", **_PRIVATE_ANSWER)},
                    (*_ANY_ERRORS, 401, 429),
                    security=[{}, *_AUTH],  # credentials are optional; they show more
                )
            },
            "/healthz": {
                "get": _op(
                    "getHealth",
                    "Operations",
                    "Liveness: the process answers.",
                    {"200": _ok("Alive.", "Health")},
                )
            },
            "/readyz": {
                "get": _op(
                    "getReadiness",
                    "Operations",
                    "Readiness: a region can serve reads.",
                    {
                        "200": _ok("Ready or degraded.", "Readiness"),
                        "503": _ok("Unavailable.", "Readiness"),
                    },
                )
            },
            "/metrics": {
                "get": _op(
                    "getMetrics",
                    "Operations",
                    "Prometheus metrics.",
                    {
                        "200": _response(
                            "Text exposition format.",
                            {"content": {"text/plain": {"schema": {"type": "string"}}}},
                        )
                    },
                )
            },
            "/openapi.json": {
                "get": _op(
                    "getOpenApiDocument",
                    "Operations",
                    "This document.",
                    {
                        "200": _response(
                            "OpenAPI 3.1.",
                            _json(
                                {
                                    "type": "object",
                                    "required": ["openapi", "paths"],
                                    "additionalProperties": True,
                                }
                            ),
                        )
                    },
                )
            },
        },
        "components": {
            "securitySchemes": {
                "basic": {"type": "http", "scheme": "basic", "description": "token id:secret"},
                "bearer": {"type": "http", "scheme": "bearer", "description": "id:secret"},
            },
            "schemas": _SCHEMAS,
            "responses": _error_responses(),
        },
    }
