"""Token verification and JWKS routes."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from service.core.requests import JwksRequest, VerifyRequest
from service.errors import InvalidRequestError, NotFoundError
from service.http import appkeys
from service.http.context import environment, principal, read_object
from service.http.errors import service_error_response
from service.http.json import json_response
from service.http.middleware import REQUEST_ID
from service.settings import Settings

routes = web.RouteTableDef()

# Private: the document is served to authenticated callers only, so no shared cache may
# keep it for others.
JWKS_CACHE_CONTROL = "private, max-age=10, must-revalidate"
VERIFY_PATH: Final = "/v1/tokens/verify"
JWKS_PATH: Final = "/v1/environments/{environment_id}/jwks.json"
VERIFY_FIELDS: Final = frozenset({"token", "audience", "subject", "environment_id"})


@routes.post(VERIFY_PATH)
async def verify_token(request: web.Request) -> web.Response:
    """Valid or not, the answer is 200: the verdict is in the body, with a reason."""
    caller = await principal(request)
    body = await read_object(request, VERIFY_FIELDS)
    body["environment_id"] = environment(request, body.get("environment_id"))
    verdict = await request.app[appkeys.VERIFIER].verify(
        caller, VerifyRequest.parse(token=body.pop("token", None), **body)
    )
    return json_response({"data": verdict.to_dict()})


@routes.get(JWKS_PATH)
async def jwks(request: web.Request) -> web.Response:
    """The rendered bytes as they are (its ETag is theirs); 304 when the caller has them."""
    caller = await principal(request)
    document = await request.app[appkeys.VERIFIER].jwks(
        caller,
        JwksRequest.parse(
            environment_id=environment(request, request.match_info["environment_id"])
        ),
    )
    headers = {"ETag": document.etag, "Cache-Control": JWKS_CACHE_CONTROL}
    if document.matches(",".join(request.headers.getall("If-None-Match", ()))):
        return web.Response(status=304, headers=headers)
    return web.Response(body=document.body, content_type="application/json", headers=headers)


def public_cache_control(settings: Settings) -> str:
    """Shared caches (CDNs, Envoy, Istio's istiod) may keep the anonymous document for
    ``max-age`` and serve it for ``stale-if-error`` more while we cannot answer (RFC 5861): a
    verifier keeps its keys through an outage of ours."""
    return (
        f"public, max-age={settings.public_jwks_max_age}, "
        f"stale-if-error={settings.public_jwks_stale_if_error}"
    )


@routes.get("/v1/public/environments/{environment_id}/jwks.json")
async def public_jwks(request: web.Request) -> web.Response:
    """No credentials: the JWK Set of an environment that opted in; 404, the same for every
    other environment (existing or not), otherwise. Credentials sent along are ignored
    (verifiers that can send ours use the authenticated route)."""
    try:
        document = await request.app[appkeys.PUBLIC_JWKS].get(request.match_info["environment_id"])
    except NotFoundError as exc:
        # Not kept by shared caches (404s are heuristically cacheable): an environment that
        # opts in is served as soon as the instances know, not when a CDN forgets.
        response = service_error_response(exc, request_id=request[REQUEST_ID])
        response.headers["Cache-Control"] = "no-store"
        return response
    headers = {
        "ETag": document.etag,
        "Cache-Control": public_cache_control(request.app[appkeys.SETTINGS]),
        # Public keys, for anyone: browsers' JOSE libraries may fetch them too.
        "Access-Control-Allow-Origin": "*",
    }
    if document.matches(",".join(request.headers.getall("If-None-Match", ()))):
        return web.Response(status=304, headers=headers)
    return web.Response(body=document.body, content_type="application/json", headers=headers)


@routes.put("/v1/environments/{environment_id}/settings")
async def put_environment_settings(request: web.Request) -> web.Response:
    """Opt an environment in to (or out of) the anonymous JWK Set: ``write`` scope on it."""
    caller = await principal(request)
    body = await read_object(request, frozenset({"public_jwks"}))
    public = body.get("public_jwks")
    if not isinstance(public, bool):
        raise InvalidRequestError("public_jwks must be true or false", field="public_jwks")
    environment_id = environment(request, request.match_info["environment_id"])
    await request.app[appkeys.PUBLIC_JWKS].set(caller, environment_id, public=public)
    return json_response({"data": {"environment_id": environment_id, "public_jwks": public}})
