"""The OpenAPI 3.1 document for every HTTP route (a test checks it matches the router)."""

from __future__ import annotations

from functools import cache
from typing import Any

from service.core.crypto import ALGORITHMS
from service.core.requests import (
    DEFAULT_PAGE_LIMIT,
    MAX_IDEMPOTENCY_KEY_LENGTH,
    MAX_NAME_LENGTH,
    MAX_PAGE_LIMIT,
)
from service.core.verify import REASONS


def _param(
    name: str, where: str, schema: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    """An operation's parameter, a string unless ``schema`` says otherwise; ``extra`` adds
    fields such as ``required`` and ``description``."""
    return {"name": name, "in": where, "schema": schema or {"type": "string"}, **extra}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


_ERROR = {"$ref": "#/components/responses/Error"}
_AUTH: list[dict[str, list[str]]] = [{"basic": []}, {"bearer": []}]
_ENV_PARAMS = [
    _param(
        "X-Environment-Id",
        "header",
        required=False,
        description="The environment; needed only when the token covers several.",
    ),
    _param("environment_id", "query", required=False),
]
_ID_PARAM = _param("id", "path", required=True)
_ALGORITHM = {"type": "string", "enum": list(ALGORITHMS)}
# What a created key and an imported one are both given.
_KEY_SPEC = {
    "algorithm": _ALGORITHM,
    "name": {"type": "string", "maxLength": MAX_NAME_LENGTH},
    "expires_at": {"type": ["integer", "string"], "description": "Unix seconds."},
}

_KEY = {
    "type": "object",
    "required": ["id", "created_at"],
    "properties": {
        "id": {"type": "string", "description": "Opaque key id, used as the JWT kid."},
        "created_at": {"type": "string", "description": "Unix seconds, as a string."},
        "environment_id": {"type": "string"},
        "algorithm": _ALGORITHM,
        "status": {"type": "string", "enum": ["active", "revoked"]},
        "source": {"type": "string", "enum": ["generated", "imported"]},
        "name": {"type": ["string", "null"]},
        "fingerprint": {"type": "string", "description": "SHA-256 of the SPKI DER, hex."},
        "public_key": {"type": "string", "description": "PEM SubjectPublicKeyInfo."},
        "updated_at": {"type": "string"},
        "revoked_at": {"type": ["string", "null"]},
        "expires_at": {"type": ["string", "null"]},
    },
}
_VERDICT = {
    "type": "object",
    "required": ["valid", "reason", "key_id", "environment_id", "claims"],
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
_CREATED_KEY = {
    "allOf": [
        {"$ref": "#/components/schemas/SigningKey"},
        {
            "type": "object",
            "required": ["private_key"],
            "properties": {
                "private_key": {
                    "type": "string",
                    "description": "Base64 of the PEM private key. Returned once; never stored.",
                }
            },
        },
    ]
}


def _data(schema: dict[str, Any]) -> dict[str, Any]:
    return _json({"type": "object", "required": ["data"], "properties": {"data": schema}})


def _json_body(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
    }
    if required:
        schema["required"] = required
    return {"required": bool(required), **_json(schema)}


def _op(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": {**responses, "default": _ERROR}, **extra}


def _key_op(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    params = extra.pop("parameters", [])
    return _op(summary, responses, security=_AUTH, parameters=[*params, *_ENV_PARAMS], **extra)


@cache
def openapi_document() -> dict[str, Any]:
    key_ref = {"$ref": "#/components/schemas/SigningKey"}
    idempotency = _param(
        "Idempotency-Key",
        "header",
        {"type": "string", "maxLength": MAX_IDEMPOTENCY_KEY_LENGTH},
        required=False,
    )
    status_body = {**_json({"type": "object"}), "description": "Status."}
    return {
        "openapi": "3.1.0",
        "info": {"title": "signing-keys", "version": "1.0.0"},
        "paths": {
            "/system/v1/signing-keys": {
                "post": _key_op(
                    "Create a signing key; the private key is returned once.",
                    {"201": {"description": "Created.", **_data(_CREATED_KEY)}},
                    parameters=[idempotency],
                    requestBody=_json_body(_KEY_SPEC),
                ),
                "get": _key_op(
                    "List signing keys, newest first.",
                    {
                        "200": {
                            "description": "A page.",
                            **_data({"type": "array", "items": key_ref}),
                        }
                    },
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
                        _param("page", "query", {"type": "integer", "minimum": 1, "default": 1}),
                    ],
                ),
            },
            "/system/v1/signing-keys/import": {
                "post": _key_op(
                    "Import a customer-supplied public key (PEM or JWK).",
                    {"201": {"description": "Imported.", **_data(key_ref)}},
                    parameters=[idempotency],
                    requestBody=_json_body(
                        {
                            "public_key": {"oneOf": [{"type": "string"}, {"type": "object"}]},
                            **_KEY_SPEC,
                        },
                        ["public_key"],
                    ),
                )
            },
            "/system/v1/signing-keys/{id}": {
                "get": _key_op(
                    "Get a signing key (never its private key).",
                    {"200": {"description": "The key.", **_data(key_ref)}},
                    parameters=[_ID_PARAM],
                ),
                "delete": _key_op(
                    "Revoke a signing key; revoking twice is harmless.",
                    {"204": {"description": "Revoked."}},
                    parameters=[_ID_PARAM],
                ),
            },
            "/system/v1/signing-keys/{id}/public-key": {
                "get": _key_op(
                    "The public key as PEM and JWK.",
                    {"200": {"description": "The public key.", **_data({"type": "object"})}},
                    parameters=[_ID_PARAM],
                )
            },
            "/v1/tokens/verify": {
                "post": _op(
                    "Verify a compact JWT: valid or not (200 either way), with a reason.",
                    {"200": {"description": "The verdict.", **_data(_VERDICT)}},
                    security=_AUTH,
                    requestBody=_json_body(
                        {
                            "token": {"type": "string"},
                            "audience": {"type": "string", "description": "Expected aud."},
                            "subject": {"type": "string", "description": "Expected sub."},
                            "environment_id": {"type": "string"},
                        },
                        ["token"],
                    ),
                )
            },
            "/v1/environments/{environment_id}/jwks.json": {
                "get": _op(
                    "The environment's active keys as a JWK Set (ETag, 304 on If-None-Match).",
                    {
                        "200": {"description": "JWK Set.", **_json({"type": "object"})},
                        "304": {"description": "Not modified."},
                    },
                    security=_AUTH,
                    parameters=[
                        _param("environment_id", "path", required=True),
                        _param("If-None-Match", "header", required=False),
                    ],
                )
            },
            "/v1/regions": {
                "get": _op("Per-region state of the locality router.", {"200": status_body})
            },
            "/healthz": {"get": _op("Liveness: the process answers.", {"200": status_body})},
            "/readyz": {
                "get": _op(
                    "Readiness: a region can serve reads.",
                    {"200": status_body, "503": status_body},
                )
            },
            "/metrics": {
                "get": _op(
                    "Prometheus metrics.",
                    {
                        "200": {
                            "description": "Text exposition format.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                )
            },
            "/openapi.json": {"get": _op("This document.", {"200": status_body})},
        },
        "components": {
            "securitySchemes": {
                "basic": {"type": "http", "scheme": "basic", "description": "token id:secret"},
                "bearer": {"type": "http", "scheme": "bearer", "description": "id:secret"},
            },
            "schemas": {"SigningKey": _KEY},
            "responses": {
                "Error": {
                    "description": "An error.",
                    **_json(
                        {
                            "type": "object",
                            "required": ["error"],
                            "properties": {
                                "error": {
                                    "type": "object",
                                    "required": ["type", "messages"],
                                    "properties": {
                                        "type": {"type": "string"},
                                        "messages": {"type": "array", "items": {"type": "string"}},
                                    },
                                }
                            },
                        }
                    ),
                }
            },
        },
    }
