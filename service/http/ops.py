"""Operations routes: liveness, readiness, region status, metrics and the OpenAPI document."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.core.verify import readiness
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
    """Ready while a region can serve reads; degraded (still 200) while no region can but the
    last known good keys are within the allowed staleness, so verification goes on."""
    regions = request.app[appkeys.REGIONS]
    can_read = regions.can_read()
    status = readiness(can_read=can_read, can_verify=request.app[appkeys.VERIFIER].can_serve())
    body = {"status": status, "can_read": can_read, "can_write": regions.can_write()}
    return json_response(body, status=503 if status == "unavailable" else 200)


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
