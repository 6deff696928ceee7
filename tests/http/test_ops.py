"""Operations endpoints and the OpenAPI document."""

from __future__ import annotations

import aiohttp

from service.core.models import Scope
from service.http.openapi import openapi_document
from service.server import Server
from tests.support.service import Credentials, TokenFactory


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


async def test_region_status_shows_its_details_only_to_a_reader(
    http: aiohttp.ClientSession, issue_token: TokenFactory, auth: Credentials, environment: str
) -> None:
    """Anyone sees which regions exist, their state and role, and which serve reads and
    writes; RTTs, lag, load and the last errors (hosts, faults) only a token with ``read``."""
    public_fields = {"name", "cloud", "state", "role"}

    async def regions(headers: dict[str, str]) -> dict[str, object]:
        async with http.get("/v1/regions", headers=headers) as response:
            assert response.status == 200
            assert response.headers["Cache-Control"] == "no-store"
            assert "Authorization" in response.headers["Vary"]
            data: dict[str, object] = (await response.json())["data"]
            return data

    verify_only = await issue_token([environment], [Scope.VERIFY])
    for headers in ({}, verify_only.headers):
        shown = await regions(headers)
        assert set(shown) == {"local_region", "read_region", "write_region", "regions"}
        assert shown["read_region"] == shown["local_region"] == "aws-us-east-1"
        assert isinstance(shown["regions"], list) and len(shown["regions"]) == 3
        assert all(set(region) == public_fields for region in shown["regions"])
    detailed = await regions(auth.headers)
    assert isinstance(detailed["regions"], list)
    for region in detailed["regions"]:
        assert public_fields < set(region)
        assert {"last_error", "rtt_ms", "lag_seconds", "in_flight"} <= set(region)
    wrong = Credentials(auth.login, "x" * len(auth.password))
    async with http.get("/v1/regions", headers=wrong.headers) as response:
        assert response.status == 401
