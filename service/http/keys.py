"""Key-management routes, shaped like the reference platform's public Signing Keys API.

Handlers translate HTTP into calls on :class:`~service.core.keys.KeyService` and back; the
rules live in the core. Paths, statuses and body shapes follow what the reference platform's
official SDKs depend on (DESIGN.md §3): create answers exactly 201 and accepts an empty body
with or without a JSON content type; ``created_at`` is a string of Unix seconds; ``page`` is
1-based and a page past the end answers ``"data": []``.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any, Final

import structlog
from aiohttp import web

from service.core import crypto
from service.core.json import loads
from service.core.keys import DEFAULT_PAGE_LIMIT, KeySpec
from service.core.models import Principal, SigningKey, check_id
from service.errors import InvalidRequestError
from service.http import appkeys
from service.http.json import json_response
from service.http.middleware import REQUEST_ID

log = structlog.get_logger(__name__)

ENVIRONMENT_HEADER: Final = "X-Environment-Id"
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
PREFIX: Final = "/system/v1/signing-keys"

routes = web.RouteTableDef()


def unix(moment: datetime | None) -> str | None:
    return None if moment is None else str(int(moment.timestamp()))


def key_json(key: SigningKey) -> dict[str, Any]:
    """A key as the reference API shows it (``id``, ``created_at``) plus our extra fields."""
    return {
        "id": key.id,
        "created_at": unix(key.created_at),
        "environment_id": key.environment_id,
        "algorithm": key.algorithm,
        "status": key.status,
        "source": key.source,
        "name": key.name,
        "fingerprint": key.fingerprint,
        "public_key": crypto.public_key_pem(key.public_key),
        "updated_at": unix(key.updated_at),
        "revoked_at": unix(key.revoked_at),
        "expires_at": unix(key.expires_at),
    }


async def principal(request: web.Request) -> Principal:
    """Authenticate the request's credentials (HTTP Basic id:secret, or Bearer id:secret)."""
    return await request.app[appkeys.AUTHENTICATOR].authenticate_header(
        request.headers.get("Authorization"), api="http", request_id=request.get(REQUEST_ID)
    )


def environment(request: web.Request, caller: Principal) -> str:
    requested = request.headers.get(ENVIRONMENT_HEADER) or request.query.get("environment_id")
    if requested:
        check_id(requested, "environment id")
    return caller.default_environment(requested)


async def read_object(request: web.Request, allowed: frozenset[str]) -> dict[str, Any]:
    """The JSON object body (an empty body is ``{}``); unknown members are refused."""
    raw = await request.read()  # bounded by the application's client_max_size
    if not raw.strip():
        return {}
    try:
        body = loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequestError("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        names = ", ".join(ascii(name) for name in unknown)
        raise InvalidRequestError(f"unknown fields: {names[:200]}")
    return body


def optional_text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidRequestError(f"{name} must be a string")
    return value


def optional_time(body: dict[str, Any], name: str) -> datetime | None:
    """A time given as Unix seconds (number or numeric string, like ``created_at``)."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidRequestError(f"{name} must be Unix seconds")
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except (ValueError, OverflowError, OSError):
        raise InvalidRequestError(f"{name} must be Unix seconds") from None


def query_int(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidRequestError(f"{name} must be an integer") from None


@routes.post(PREFIX)
async def create_key(request: web.Request) -> web.Response:
    caller = await principal(request)
    body = await read_object(request, frozenset({"algorithm", "name", "expires_at"}))
    spec = KeySpec(
        algorithm=crypto.parse_algorithm(body.get("algorithm", crypto.DEFAULT_ALGORITHM)),
        name=optional_text(body, "name"),
        expires_at=optional_time(body, "expires_at"),
    )
    created = await request.app[appkeys.KEYS].create(
        caller,
        environment(request, caller),
        spec,
        idempotency_key=request.headers.get(IDEMPOTENCY_HEADER),
    )
    data = key_json(created.key)
    data["private_key"] = base64.b64encode(created.private_key_pem).decode("ascii")
    return json_response({"data": data}, status=201)


@routes.get(PREFIX)
async def list_keys(request: web.Request) -> web.Response:
    caller = await principal(request)
    keys = await request.app[appkeys.KEYS].list(
        caller,
        environment(request, caller),
        limit=query_int(request, "limit", DEFAULT_PAGE_LIMIT),
        page=query_int(request, "page", 1),
    )
    return json_response({"data": [key_json(key) for key in keys]})


@routes.post(PREFIX + "/import")
async def import_key(request: web.Request) -> web.Response:
    caller = await principal(request)
    body = await read_object(request, frozenset({"public_key", "algorithm", "name", "expires_at"}))
    if "public_key" not in body:
        raise InvalidRequestError("public_key is required (a PEM string or a JWK object)")
    key = await request.app[appkeys.KEYS].import_key(
        caller,
        environment(request, caller),
        body["public_key"],
        algorithm=optional_text(body, "algorithm"),
        name=optional_text(body, "name"),
        expires_at=optional_time(body, "expires_at"),
        idempotency_key=request.headers.get(IDEMPOTENCY_HEADER),
    )
    return json_response({"data": key_json(key)}, status=201)


@routes.get(PREFIX + "/{id}")
async def get_key(request: web.Request) -> web.Response:
    caller = await principal(request)
    key = await request.app[appkeys.KEYS].get(
        caller, environment(request, caller), request.match_info["id"]
    )
    return json_response({"data": key_json(key)})


@routes.get(PREFIX + "/{id}/public-key")
async def get_public_key(request: web.Request) -> web.Response:
    caller = await principal(request)
    key = await request.app[appkeys.KEYS].get(
        caller, environment(request, caller), request.match_info["id"]
    )
    return json_response(
        {
            "data": {
                "id": key.id,
                "algorithm": key.algorithm,
                "status": key.status,
                "fingerprint": key.fingerprint,
                "pem": crypto.public_key_pem(key.public_key),
                "jwk": crypto.public_jwk(key.public_key, kid=key.id, algorithm=key.algorithm),
            }
        }
    )


@routes.delete(PREFIX + "/{id}")
async def revoke_key(request: web.Request) -> web.Response:
    caller = await principal(request)
    await request.app[appkeys.KEYS].revoke(
        caller, environment(request, caller), request.match_info["id"]
    )
    return web.Response(status=204)
