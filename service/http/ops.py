"""Operations routes: liveness, readiness, region status, metrics and the OpenAPI document."""

from __future__ import annotations

import re
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
    401, as everywhere.

    No access token is an operator's (a ``read`` token is a tenant's), so the last errors are
    shown redacted (:func:`redact_error`): the kind of failure, never a host, a port or the
    server's words about names. The driver's full text is for whoever holds the DSNs:
    ``signing-keys status --raw-errors``."""
    status = request.app[appkeys.REGIONS].status().to_dict()
    detailed = (
        "Authorization" in request.headers and Scope.READ in (await principal(request)).scopes
    )
    shown = redacted_region_status(status) if detailed else public_region_status(status)
    response = json_response({"data": shown})
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


def redacted_region_status(status: dict[str, Any]) -> dict[str, Any]:
    """The router's status with every region's ``last_error`` passed through
    :func:`redact_error`: what a tenant's ``read`` token and the CLI's default output show."""
    return {
        **status,
        "regions": [
            {**region, "last_error": redact_error(region.get("last_error"))}
            for region in status["regions"]
        ],
    }


# What a driver or operating-system message may name, most specific first: each is replaced
# by a placeholder so that what failed (refused, timed out, authentication, …) stays readable.
# The router already strips DSNs and passwords; these are the hosts, ports, socket paths and
# quoted names (users, databases) that remain in asyncpg's and PostgreSQL's own words.
_REDACTIONS: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    (re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE), "<url>"),
    (re.compile(r"\"[^\"]*\"|'[^']*'"), "<redacted>"),
    (re.compile(r"\[[^\]\s]*\](?::\d+)?"), "<address>"),
    (re.compile(r"(?:/[\w.@-]+){2,}/?"), "<path>"),
    (
        re.compile(r"(?<![\w:])(?:[0-9a-f]{0,4}:){2,7}[0-9a-f.]*(?:%\w+)?", re.IGNORECASE),
        "<address>",
    ),
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b"), "<address>"),
    (re.compile(r"\b(?:[a-z0-9-]+\.)+[a-z][a-z0-9-]*(?::\d+)?\b", re.IGNORECASE), "<host>"),
    (
        re.compile(r"\b(host|hostaddr|user|dbname|database)(\s*[=:]\s*)\S+", re.IGNORECASE),
        r"\1\2<redacted>",
    ),
    (re.compile(r"\bport(\s*[=:]\s*|\s+)\d+", re.IGNORECASE), r"port\1<port>"),
    (re.compile(r"(<address>|<host>|<redacted>)(\s*,\s*)\d{1,5}\b"), r"\1\2<port>"),
)


def redact_error(error: str | None) -> str | None:
    """``error`` (a region's last error, as the router describes it) without the hosts,
    ports, socket paths and quoted names a driver message carries: for anyone but the
    holder of the DSNs.

    >>> redact_error("ConnectionRefusedError: [Errno 111] Connect call failed ('10.0.0.7', 5432)")
    'ConnectionRefusedError: [Errno 111] Connect call failed (<redacted>, <port>)'
    """
    if error is None:
        return None
    for pattern, placeholder in _REDACTIONS:
        error = pattern.sub(placeholder, error)
    return error


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[appkeys.REGISTRY])
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return json_response(openapi_document())
