"""Token verification and JWKS routes."""

from __future__ import annotations

from aiohttp import web

from service.core.requests import JwksRequest, VerifyRequest
from service.http import appkeys
from service.http.context import environment, principal, read_object
from service.http.json import json_response

routes = web.RouteTableDef()

# Private: the document is served to authenticated callers only, so no shared cache may
# keep it for others.
JWKS_CACHE_CONTROL = "private, max-age=10, must-revalidate"


@routes.post("/v1/tokens/verify")
async def verify_token(request: web.Request) -> web.Response:
    """Valid or not, the answer is 200: the verdict is in the body, with a reason."""
    caller = await principal(request)
    body = await read_object(request, frozenset({"token", "audience", "subject", "environment_id"}))
    body["environment_id"] = environment(request, body.get("environment_id"))
    verdict = await request.app[appkeys.VERIFIER].verify(
        caller, VerifyRequest.parse(token=body.pop("token", None), **body)
    )
    return json_response({"data": verdict.to_dict()})


@routes.get("/v1/environments/{environment_id}/jwks.json")
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
