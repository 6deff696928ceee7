"""The OpenAPI 3.1 document for every HTTP route (a test checks it matches the router)."""

from __future__ import annotations

from functools import cache
from typing import Any

from service.core.verify import REASONS

_ERROR = {"$ref": "#/components/responses/Error"}
_AUTH: list[dict[str, list[str]]] = [{"basic": []}, {"bearer": []}]
_ENV_PARAMS = [
    {
        "name": "X-Environment-Id",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": "The environment; needed only when the token covers several.",
    },
    {"name": "environment_id", "in": "query", "required": False, "schema": {"type": "string"}},
]
_ID_PARAM = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}

_KEY = {
    "type": "object",
    "required": ["id", "created_at"],
    "properties": {
        "id": {"type": "string", "description": "Opaque key id, used as the JWT kid."},
        "created_at": {"type": "string", "description": "Unix seconds, as a string."},
        "environment_id": {"type": "string"},
        "algorithm": {"type": "string", "enum": ["RS256", "ES256", "EdDSA"]},
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
    return {
        "content": {
            "application/json": {
                "schema": {"type": "object", "required": ["data"], "properties": {"data": schema}}
            }
        }
    }


def _json_body(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
    }
    if required:
        schema["required"] = required
    return {"required": bool(required), "content": {"application/json": {"schema": schema}}}


def _op(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": {**responses, "default": _ERROR}, **extra}


def _key_op(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    params = extra.pop("parameters", [])
    return _op(summary, responses, security=_AUTH, parameters=[*params, *_ENV_PARAMS], **extra)


@cache
def openapi_document() -> dict[str, Any]:
    key_ref = {"$ref": "#/components/schemas/SigningKey"}
    expires = {"type": ["integer", "string"], "description": "Unix seconds."}
    idempotency = {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "maxLength": 255},
    }
    status_body = {
        "content": {"application/json": {"schema": {"type": "object"}}},
        "description": "Status.",
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "signing-keys", "version": "1.0.0"},
        "paths": {
            "/system/v1/signing-keys": {
                "post": _key_op(
                    "Create a signing key; the private key is returned once.",
                    {"201": {"description": "Created.", **_data(_CREATED_KEY)}},
                    parameters=[idempotency],
                    requestBody=_json_body(
                        {
                            "algorithm": {"type": "string", "enum": ["RS256", "ES256", "EdDSA"]},
                            "name": {"type": "string", "maxLength": 200},
                            "expires_at": expires,
                        }
                    ),
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
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": 100,
                                "default": 25,
                            },
                        },
                        {
                            "name": "page",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "default": 1},
                        },
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
                            "algorithm": {"type": "string", "enum": ["RS256", "ES256", "EdDSA"]},
                            "name": {"type": "string", "maxLength": 200},
                            "expires_at": expires,
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
                        "200": {
                            "description": "JWK Set.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        "304": {"description": "Not modified."},
                    },
                    security=_AUTH,
                    parameters=[
                        {
                            "name": "environment_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "If-None-Match",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string"},
                        },
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
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["error"],
                                "properties": {
                                    "error": {
                                        "type": "object",
                                        "required": ["type", "messages"],
                                        "properties": {
                                            "type": {"type": "string"},
                                            "messages": {
                                                "type": "array",
                                                "items": {"type": "string"},
                                            },
                                        },
                                    }
                                },
                            }
                        }
                    },
                }
            },
        },
    }
