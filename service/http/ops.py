"""Operations routes: liveness, readiness, region status, metrics and the OpenAPI document."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.http import appkeys
from service.http.json import json_response
from service.http.openapi import openapi_document

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """Alive: the process answers. Says nothing of the database."""
    return json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """200 while ready or degraded (no region serves reads, but verification goes on from the
    last known good keys), 503 when unavailable: the decision of
    :mod:`service.core.readiness`, shared with gRPC health and the degraded gauge."""
    report = request.app[appkeys.READINESS].report()
    body = {
        "status": report.state,
        "can_read": report.can_read,
        "can_verify": report.can_verify,
        "can_write": request.app[appkeys.REGIONS].can_write(),
    }
    return json_response(body, status=200 if report.is_serving else 503)


@routes.get("/v1/regions")
async def region_status(request: web.Request) -> web.Response:
    return json_response({"data": request.app[appkeys.REGIONS].status().to_dict()})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[appkeys.REGISTRY])
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return json_response(openapi_document())
