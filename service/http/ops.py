"""Operations routes: liveness, readiness, region status, metrics and the OpenAPI document."""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.core.models import Scope
from service.http import appkeys
from service.http.context import principal
from service.http.json import json_response
from service.http.openapi import openapi_document

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """Alive: the process answers. Says nothing of the database."""
    return json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """200 while ready or degraded (no region serves fresh reads, but verification goes on
    from the last known good keys), 503 when unavailable: the decision of
    :mod:`service.core.readiness`, shared with gRPC health and the degraded gauge."""
    report = request.app[appkeys.READINESS].report()
    body = {
        "status": report.state,
        "can_read": report.can_read,
        "can_verify": report.can_verify,
        "keys_fresh": report.is_fresh,
        "can_write": request.app[appkeys.REGIONS].can_write(),
    }
    return json_response(body, status=200 if report.is_serving else 503)


@routes.get("/v1/regions")
async def region_status(request: web.Request) -> web.Response:
    """Which region serves reads and writes, and each region's state, to anyone (load
    balancers and dashboards ask without credentials); RTTs, lag, load and the last errors
    only to a caller whose access token holds the ``read`` scope. Wrong credentials are
    401, as everywhere."""
    status = request.app[appkeys.REGIONS].status().to_dict()
    detailed = (
        "Authorization" in request.headers and Scope.READ in (await principal(request)).scopes
    )
    response = json_response({"data": status if detailed else public_region_status(status)})
    # The answer depends on the credentials: no shared cache may serve one caller's to another.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Vary"] = "Authorization"
    return response


def public_region_status(status: dict[str, Any]) -> dict[str, Any]:
    """The router's status as anyone may see it: which regions exist and serve, nothing of
    how they fail (errors name hosts and their faults) or perform."""
    return {
        **{name: status[name] for name in PUBLIC_STATUS_FIELDS},
        "regions": [
            {name: region[name] for name in PUBLIC_REGION_FIELDS} for region in status["regions"]
        ],
    }


PUBLIC_STATUS_FIELDS: Final = ("local_region", "read_region", "write_region")
PUBLIC_REGION_FIELDS: Final = ("name", "cloud", "state", "role")


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[appkeys.REGISTRY])
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return json_response(openapi_document())
