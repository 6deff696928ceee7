"""What every handler reads off a request: the caller, the environment it names, its body.

Decoding only: the rules about the values (shapes, ranges, which environment a token may
use) are the core's (:mod:`service.core.requests`).
"""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

from service.core.json import loads
from service.core.models import Principal
from service.errors import InvalidRequestError
from service.http import appkeys
from service.http.middleware import REQUEST_ID

ENVIRONMENT_HEADER: Final = "X-Environment-Id"
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"


async def principal(request: web.Request) -> Principal:
    """Authenticate the request's credentials (HTTP Basic id:secret, or Bearer id:secret)."""
    return await request.app[appkeys.AUTHENTICATOR].authenticate_header(
        request.headers.get("Authorization"), api="http", request_id=request.get(REQUEST_ID)
    )


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


def environment(request: web.Request) -> str | None:
    """The environment the caller names (header, else query); ``None`` when it names none."""
    return request.headers.get(ENVIRONMENT_HEADER) or request.query.get("environment_id") or None
