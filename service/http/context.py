"""What every handler reads off a request: the caller, the environment it names, its body,
and the consistency token it carries.

Decoding only: the rules about the values (shapes, ranges, which environment a token may
use) are the core's (:mod:`service.core.requests`).
"""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

from service.core import consistency
from service.core.json import loads
from service.core.models import Principal
from service.errors import InvalidRequestError
from service.http import appkeys
from service.http.middleware import REQUEST_ID

ENVIRONMENT_HEADER: Final = "X-Environment-Id"
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
CONSISTENCY_HEADER: Final = "X-Consistency-Token"


async def principal(request: web.Request) -> Principal:
    """Authenticate the request's credentials (HTTP Basic id:secret, or Bearer id:secret),
    then start its consistency scope from its ``X-Consistency-Token`` (every handler that
    reads or writes keys calls this first, so no request inherits another's scope)."""
    caller = await request.app[appkeys.AUTHENTICATOR].authenticate_header(
        request.headers.get("Authorization"), api="http", request_id=request[REQUEST_ID]
    )
    consistency.bind(request.headers.get(CONSISTENCY_HEADER))
    return caller


def with_consistency_token(response: web.Response) -> web.Response:
    """``response``, carrying the token of the request's write when it made one."""
    scope = consistency.current()
    token = None if scope is None else scope.token()
    if token is not None:
        response.headers[CONSISTENCY_HEADER] = token
    return response


async def read_object(request: web.Request, allowed: frozenset[str]) -> dict[str, Any]:
    """The JSON object body (an empty body is ``{}``); unknown members are refused."""
    raw = await request.read()  # bounded by the application's client_max_size
    if not raw or raw.isspace():
        return {}
    try:
        body = loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequestError("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    if not allowed.issuperset(body):
        names = ", ".join(ascii(name) for name in sorted(set(body) - allowed))
        raise InvalidRequestError(f"unknown fields: {names[:200]}")
    return body


def environment(request: web.Request, *others: object) -> Any:
    """The environment the caller names: the ``X-Environment-Id`` header, the
    ``environment_id`` query parameter, or one of ``others`` (the body's member, the path's
    segment); ``None`` when it names none (an empty header or query value names none; an
    empty body member is the core's to refuse).

    Two that name different environments are refused, not ranked: a client that sets the
    header on every call must not silently act on the environment a path or body names.
    The value is not checked here (the core does)."""
    header = request.headers.get(ENVIRONMENT_HEADER) or None
    query = (request.query.get("environment_id") or None) if request.query_string else None
    named: object = header or query
    if header and query and header != query:
        raise _ambiguous()
    for value in others:
        if value is None:
            continue
        if named is None:
            named = value
        elif value != named:
            raise _ambiguous()
    return named


def _ambiguous() -> InvalidRequestError:
    return InvalidRequestError(
        f"the {ENVIRONMENT_HEADER} header, the environment_id query parameter and the "
        "request's environment_id name different environments: name one"
    )
