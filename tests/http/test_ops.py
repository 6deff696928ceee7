"""Operations endpoints and the OpenAPI document."""

from __future__ import annotations

import aiohttp

from service.http.openapi import openapi_document
from service.server import Server


async def test_healthz_and_readyz_answer_while_the_database_is_reachable(
    http: aiohttp.ClientSession,
) -> None:
    async with http.get("/healthz") as response:
        assert response.status == 200
        assert (await response.json())["status"] == "ok"
    async with http.get("/readyz") as response:
        assert response.status == 200
        body = await response.json()
    assert body["status"] == "ready" and body["can_read"] is True


async def test_openapi_describes_exactly_the_routes_the_server_has(
    http: aiohttp.ClientSession, server: Server
) -> None:
    async with http.get("/openapi.json") as response:
        assert response.status == 200
        document = await response.json()
    assert document == openapi_document()
    documented = {
        (path, method.upper())
        for path, operations in document["paths"].items()
        for method in operations
    }
    app = server.app
    served = {
        (route.resource.canonical, route.method)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    assert documented == served


async def test_metrics_count_requests_by_route_and_status(http: aiohttp.ClientSession) -> None:
    async with http.get("/healthz") as response:
        assert response.status == 200
    async with http.get("/metrics") as response:
        assert response.status == 200
        text = await response.text()
    assert 'signing_keys_http_requests_total{method="GET",route="/healthz",status="200"}' in text


async def test_every_response_carries_a_request_id(http: aiohttp.ClientSession) -> None:
    async with http.get("/healthz", headers={"X-Request-Id": "abc-123"}) as response:
        assert response.headers["X-Request-Id"] == "abc-123"
    async with http.get("/healthz", headers={"X-Request-Id": "bad id\twith spaces"}) as response:
        generated = response.headers["X-Request-Id"]
    assert generated != "bad id\twith spaces" and len(generated) == 16
