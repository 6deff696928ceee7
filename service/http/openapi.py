"""The OpenAPI 3.1 document for every HTTP route (a test checks it matches the router).

Tight enough to be checked by a fuzzer (``tests/fuzz/``): every parameter's shape is the one
the core accepts (ids, environments, integers, times), every status an operation can answer
is listed (no ``default``), and the headers that go with them (``Retry-After``,
``WWW-Authenticate``, ``ETag``) are declared. A value the schema allows is accepted, and one
it refuses is answered with 400, except where validity is beyond JSON Schema (whether a PEM
text is a public key, whether a token verifies).
"""

from __future__ import annotations

from dataclasses import fields
from functools import cache
from typing import Any, Final

from service.core.crypto import ALGORITHMS
from service.core.requests import (
    DEFAULT_PAGE_LIMIT,
    MAX_EXPECTATION_LENGTH,
    MAX_IDEMPOTENCY_KEY_LENGTH,
    MAX_NAME_LENGTH,
    MAX_PAGE,
    MAX_PAGE_LIMIT,
    STATUS_FILTERS,
)
from service.core.times import EARLIEST, LATEST
from service.core.verify import REASONS
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
_ENV_PARAMS = [
    _param(
        "X-Environment-Id",
        "header",
        _ENVIRONMENT_CHOICE,
        required=False,
        description="The environment; needed only when the token covers several.",
    ),
    _param("environment_id", "query", _ENVIRONMENT_CHOICE, required=False),
]
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
_ALGORITHM = {"type": "string", "enum": list(ALGORITHMS)}
# What a created key and an imported one are both given; null means "not given".
_KEY_SPEC = {
    "algorithm": {"enum": [*ALGORITHMS, None]},
    "name": {
        "type": ["string", "null"],
        "maxLength": MAX_NAME_LENGTH,
        # Printable text (no control characters), never a private key.
        "pattern": "^[^\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029]*$",
        "not": {"type": "string", "pattern": "PRIVATE KEY"},
    },
    "expires_at": {
        "type": ["integer", "string", "null"],
        "minimum": EARLIEST,
        "maximum": LATEST,
        "pattern": digits_at_most(LATEST),
        "description": f"Unix seconds, {EARLIEST} to {LATEST} (years 1970-9999): a whole "
        "number or a string of ASCII digits; a time already passed is 400.",
    },
}

_KEY: Final[dict[str, Any]] = {
    "type": "object",
    "required": [
        "id",
        "created_at",
        "environment_id",
        "algorithm",
        "status",
        "source",
        "name",
        "fingerprint",
        "public_key",
        "updated_at",
        "revoked_at",
        "expires_at",
    ],
    "additionalProperties": False,
    "properties": {
        "id": {**_ID, "description": "Opaque key id, used as the JWT kid."},
        "created_at": {**_UNIX, "description": "Unix seconds, as a string."},
        "environment_id": _ID,
        "algorithm": _ALGORITHM,
        "status": {"type": "string", "enum": ["active", "revoked", "expired"]},
        "source": {"type": "string", "enum": ["generated", "imported"]},
        "name": {"type": ["string", "null"]},
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
        "updated_at": _UNIX,
        "revoked_at": {**_UNIX, "type": ["string", "null"]},
        "expires_at": {**_UNIX, "type": ["string", "null"]},
    },
}
_B64URL = {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"}
_JWK = {
    "type": "object",
    "required": ["kty", "kid", "alg", "use"],
    "properties": {
        "kty": {"type": "string", "enum": ["RSA", "EC", "OKP"]},
        "kid": _ID,
        "alg": _ALGORITHM,
        "use": {"const": "sig"},
        "crv": {"type": "string", "enum": ["P-256", "Ed25519"]},
        "n": _B64URL,
        "e": _B64URL,
        "x": _B64URL,
        "y": _B64URL,
    },
    "additionalProperties": False,
}
_PUBLIC_KEY = {
    "type": "object",
    "required": ["id", "algorithm", "status", "fingerprint", "pem", "jwk"],
    "additionalProperties": False,
    "properties": {
        "id": _ID,
        "algorithm": _ALGORITHM,
        "status": {"type": "string", "enum": ["active", "revoked", "expired"]},
        "fingerprint": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "pem": {"type": "string", "pattern": "^-----BEGIN PUBLIC KEY-----\n"},
        "jwk": _JWK,
    },
}
_VERDICT = {
    "type": "object",
    "required": ["valid", "reason", "key_id", "environment_id", "claims"],
    "additionalProperties": False,
    "properties": {
        "valid": {"type": "boolean"},
        "reason": {
            "type": ["string", "null"],
            "enum": [None, *REASONS],
        },
        "key_id": {"type": ["string", "null"]},
        "environment_id": {"type": ["string", "null"]},
        "claims": {"type": ["object", "null"]},
    },
}
# A key as created: the stored key and, this once, its private key.
_CREATED_KEY = {
    **_KEY,
    "required": [*_KEY["required"], "private_key"],
    "properties": {
        **_KEY["properties"],
        "private_key": {
            "type": "string",
            "pattern": "^[A-Za-z0-9+/]+={0,2}$",
            "description": "Base64 of the PEM private key. Returned once; never stored.",
        },
    },
}
_REGION_STATUS = {
    "type": "object",
    "required": ["local_region", "read_region", "write_region", "regions"],
    "properties": {
        "local_region": {"type": "string"},
        "read_region": {"type": ["string", "null"]},
        "write_region": {"type": ["string", "null"]},
        "regions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "cloud", "state", "role"],
                "properties": {
                    "name": {"type": "string"},
                    "cloud": {"type": "string"},
                    "state": {"type": "string"},
                    "role": {"type": ["string", "null"]},
                },
            },
        },
    },
}
_READINESS = {
    "type": "object",
    "required": ["status", "can_read", "can_verify", "keys_fresh", "can_write"],
    "additionalProperties": False,
    "properties": {
        "status": {"type": "string", "enum": ["ready", "degraded", "unavailable"]},
        "can_read": {"type": "boolean"},
        "can_verify": {"type": "boolean"},
        "keys_fresh": {"type": "boolean"},
        "can_write": {"type": "boolean"},
    },
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
                "required": True,
                "schema": {"type": "string", "const": 'Basic realm="signing-keys"'},
            }
        },
    ),
    403: ("Forbidden", "The token lacks the scope or the environment.", {}),
    404: ("NotFound", "No such key (in an environment the token may see).", {}),
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
    504: ("DeadlineExceeded", "The database did not answer in time.", {}),
}
# What every authenticated operation may answer, whatever it does.
_AUTHENTICATED_ERRORS: Final = (400, 401, 403, 429, 503, 504)
_BODY_ERRORS: Final = (408, 413)


def _error_responses() -> dict[str, Any]:
    body = _json(
        {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["type", "messages"],
                    "properties": {
                        "type": {"type": "string", "pattern": "^[a-z_]+$"},
                        "messages": {"type": "array", "items": {"type": "string"}},
                        "field": {"type": "string", "description": "The field at fault."},
                        "key_id": {"type": "string", "description": "The key concerned."},
                        "environment_id": {"type": "string"},
                    },
                }
            },
        }
    )
    return {name: _response(text, body, **headers) for name, text, headers in _ERRORS.values()}


def _data(schema: dict[str, Any]) -> dict[str, Any]:
    return _json(
        {
            "type": "object",
            "required": ["data"],
            "additionalProperties": False,
            "properties": {"data": schema},
        }
    )


def _json_body(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
    }
    if required:
        schema["required"] = required
    return {"required": bool(required), **_json(schema)}


def _op(
    summary: str, responses: dict[str, Any], errors: tuple[int, ...] = (), **extra: Any
) -> dict[str, Any]:
    listed = {str(status): _error(status) for status in sorted(errors)}
    return {"summary": summary, "responses": {**responses, **listed}, **extra}


def _key_op(
    summary: str, responses: dict[str, Any], errors: tuple[int, ...] = (), **extra: Any
) -> dict[str, Any]:
    params = extra.pop("parameters", [])
    if "requestBody" in extra:
        errors = (*errors, *_BODY_ERRORS)
    return _op(
        summary,
        responses,
        (*_AUTHENTICATED_ERRORS, *errors),
        security=_AUTH,
        parameters=[*params, *_ENV_PARAMS, _CONSISTENCY_PARAM],
        **extra,
    )


@cache
def openapi_document() -> dict[str, Any]:
    key_ref = {"$ref": "#/components/schemas/SigningKey"}
    idempotency = _param("Idempotency-Key", "header", _IDEMPOTENCY_KEY, required=False)
    return {
        "openapi": "3.1.0",
        "info": {"title": "signing-keys", "version": "1.0.0"},
        "paths": {
            "/system/v1/signing-keys": {
                "post": _key_op(
                    "Create a signing key; the private key is returned once.",
                    {"201": _response("Created.", _data(_CREATED_KEY), **_WRITE_TOKEN)},
                    (409, 422),
                    parameters=[idempotency],
                    requestBody=_json_body(_KEY_SPEC),
                ),
                "get": _key_op(
                    "List signing keys, newest first.",
                    {"200": _response("A page.", _data({"type": "array", "items": key_ref}))},
                    parameters=[
                        _param(
                            "limit",
                            "query",
                            {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": MAX_PAGE_LIMIT,
                                "default": DEFAULT_PAGE_LIMIT,
                            },
                        ),
                        _param(
                            "page",
                            "query",
                            {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 1},
                        ),
                        _STATUS_PARAM,
                    ],
                ),
            },
            "/system/v1/signing-keys/import": {
                "post": _key_op(
                    "Import a customer-supplied public key (PEM or JWK).",
                    {
                        "201": _response("Imported.", _data(key_ref), **_WRITE_TOKEN),
                        "200": _response(
                            "A replay (same Idempotency-Key, same request): the key stored then.",
                            _data(key_ref),
                            **_WRITE_TOKEN,
                        ),
                    },
                    (422,),
                    parameters=[idempotency],
                    requestBody=_json_body(
                        {
                            "public_key": {
                                "oneOf": [{"type": "string", "minLength": 1}, {"type": "object"}],
                                "description": "One PEM public key block, or a public JWK.",
                            },
                            **_KEY_SPEC,
                        },
                        ["public_key"],
                    ),
                )
            },
            "/system/v1/signing-keys/{id}": {
                "get": _key_op(
                    "Get a signing key (never its private key); a revoked one only if asked.",
                    {"200": _response("The key.", _data(key_ref))},
                    (404,),
                    parameters=[_ID_PARAM, _STATUS_PARAM],
                ),
                "delete": _key_op(
                    "Revoke (delete) a signing key; revoking twice is harmless. The record "
                    "stays, shown by get and list with status=revoked or status=all.",
                    {"204": _response("Revoked.", {}, **_WRITE_TOKEN)},
                    (404,),
                    parameters=[_ID_PARAM],
                ),
            },
            "/system/v1/signing-keys/{id}/public-key": {
                "get": _key_op(
                    "The public key as PEM and JWK; a revoked key's only if asked.",
                    {"200": _response("The public key.", _data(_PUBLIC_KEY))},
                    (404,),
                    parameters=[_ID_PARAM, _STATUS_PARAM],
                )
            },
            "/v1/tokens/verify": {
                "post": _op(
                    "Verify a compact JWT: valid or not (200 either way), with a reason.",
                    {"200": _response("The verdict.", _data(_VERDICT))},
                    (*_AUTHENTICATED_ERRORS, *_BODY_ERRORS),
                    security=_AUTH,
                    parameters=[_CONSISTENCY_PARAM],
                    requestBody=_json_body(
                        {
                            "token": {
                                "type": "string",
                                "minLength": 1,
                                "maxLength": _MAX_TOKEN_BYTES,
                                "description": "A compact JWS; longer than "
                                "SIGNING_KEYS_MAX_TOKEN_BYTES (by default "
                                f"{_MAX_TOKEN_BYTES}) is 413.",
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
                            "environment_id": {**_ID, "type": ["string", "null"]},
                        },
                        ["token"],
                    ),
                )
            },
            "/v1/environments/{environment_id}/jwks.json": {
                "get": _op(
                    "The environment's active keys as a JWK Set (ETag, 304 on If-None-Match).",
                    {
                        "200": _response(
                            "JWK Set.",
                            _json(
                                {
                                    "type": "object",
                                    "required": ["keys"],
                                    "additionalProperties": False,
                                    "properties": {"keys": {"type": "array", "items": _JWK}},
                                }
                            ),
                            ETag={"required": True, "schema": {"type": "string"}},
                        ),
                        "304": _response(
                            "Not modified.",
                            {},
                            ETag={"required": True, "schema": {"type": "string"}},
                        ),
                    },
                    _AUTHENTICATED_ERRORS,
                    security=_AUTH,
                    parameters=[
                        _param("environment_id", "path", _ID, required=True),
                        _param("If-None-Match", "header", required=False),
                        _CONSISTENCY_PARAM,
                    ],
                )
            },
            "/v1/regions": {
                "get": _op(
                    "Per-region state of the locality router. Without credentials: each "
                    "region's name, cloud, state and role, and which region serves reads and "
                    "writes; with an access token holding the read scope, also RTT, lag, "
                    "in-flight calls and the last error.",
                    {"200": _response("Status.", _data(_REGION_STATUS))},
                    (401, 429),
                    security=[{}, *_AUTH],  # credentials are optional; they show more
                )
            },
            "/healthz": {
                "get": _op(
                    "Liveness: the process answers.",
                    {
                        "200": _response(
                            "Alive.",
                            _json(
                                {
                                    "type": "object",
                                    "required": ["status"],
                                    "properties": {"status": {"const": "ok"}},
                                }
                            ),
                        )
                    },
                )
            },
            "/readyz": {
                "get": _op(
                    "Readiness: a region can serve reads.",
                    {
                        "200": _response("Ready or degraded.", _json(_READINESS)),
                        "503": _response("Unavailable.", _json(_READINESS)),
                    },
                )
            },
            "/metrics": {
                "get": _op(
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
                    "This document.",
                    {
                        "200": _response(
                            "OpenAPI 3.1.",
                            _json({"type": "object", "required": ["openapi", "paths"]}),
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
            "schemas": {"SigningKey": _KEY},
            "responses": _error_responses(),
        },
    }
