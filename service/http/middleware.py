"""The HTTP middleware: request context (request id, client address), the client-certificate
rule of mutual TLS (:mod:`service.tls`), the body read within its timeout, error mapping and
the access log, in one pass; it also tells the listener's
:class:`~service.http.listener.ConnectionGuard` when a request head has arrived.

One middleware rather than three keeps the per-request cost down (each aiohttp middleware
adds a few microseconds of its own). Domain errors become HTTP statuses here and
nowhere else.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

import structlog
from aiohttp import web
from aiohttp.http_exceptions import ContentLengthError, TransferEncodingError
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CollectorRegistry, Counter

from service.core.auth import CLIENT_ADDRESS
from service.core.metrics import request_latency
from service.core.requests import choose_request_id
from service.errors import ServiceError, UnauthenticatedError
from service.http.errors import error_response, service_error_response
from service.http.listener import ConnectionGuard
from service.logs import is_access_logged
from service.settings import Settings
from service.tls import (
    CERTIFICATE_EXEMPT_HTTP_PATHS,
    CERTIFICATE_REQUIRED,
    has_client_certificate,
    requires_client_certificate,
)

log = structlog.get_logger(__name__)

REQUEST_ID_HEADER: Final = "X-Request-Id"
# What a request's reads raise when its client has hung up; nginx's status for the case.
CLIENT_GONE: Final = (ConnectionError, ContentLengthError, TransferEncodingError)
CLIENT_CLOSED_REQUEST: Final = 499
# The validated id, stored on the request for handlers (the audit trail records it).
REQUEST_ID: Final = web.RequestKey("request_id", str)


class HttpMetrics:
    """Request counts and latencies by route and status."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "signing_keys_http_requests",
            "HTTP requests served, by route and status.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.latency = request_latency(
            "signing_keys_http_request_seconds",
            "HTTP request latency, by route.",
            ["route"],
            registry,
        )
        # Label children resolved once per (route, method, status): .labels() takes a lock
        # and builds tuples on every call. Bounded: routes are the app's, and aiohttp refuses
        # unknown methods before they reach us.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(route, method, str(status)),
                self.latency.labels(route),
            )
        children[0].inc()
        children[1].observe(seconds)


def make_middleware(
    settings: Settings, metrics: HttpMetrics, connections: ConnectionGuard
) -> Middleware:
    access_log = settings.access_log
    sample_rate = settings.access_log_sample_rate
    slow = settings.slow_request_seconds
    body_timeout = settings.http_body_timeout
    certificate_required = requires_client_certificate(settings)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        transport = request.transport
        connections.request_started(transport)
        request_id = choose_request_id(request.headers.get(REQUEST_ID_HEADER))
        request[REQUEST_ID] = request_id
        structlog.contextvars.bind_contextvars(request_id=request_id)
        client = CLIENT_ADDRESS.set(request.remote)
        try:
            response = await _handle(request, handler, body_timeout, certificate_required)
        finally:
            CLIENT_ADDRESS.reset(client)
            structlog.contextvars.unbind_contextvars("request_id")
            connections.request_finished(transport)
        response.headers[REQUEST_ID_HEADER] = request_id
        elapsed = time.perf_counter() - started
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        metrics.observe(route, request.method, response.status, elapsed)
        notable = response.status >= 500 or elapsed >= slow
        if is_access_logged(access_log, sample_rate, notable=notable):
            log.info(
                "http_request",
                request_id=request_id,
                method=request.method,
                route=route,
                status=response.status,
                duration_ms=round(elapsed * 1000, 3),
            )
        return response

    return middleware


async def _handle(
    request: web.Request, handler: Handler, body_timeout: float, certificate_required: bool
) -> web.StreamResponse:
    request_id = request[REQUEST_ID]  # in every error body, as in the X-Request-Id header
    try:
        if certificate_required:
            _require_client_certificate(request)
        if request.body_exists:
            # Read whole here, within its timeout, so that no handler waits on a slow client
            # (the body is bounded by the application's client_max_size; handlers get it
            # from aiohttp's cache).
            try:
                async with asyncio.timeout(body_timeout):
                    await request.read()
            except TimeoutError:
                log.debug("http_body_timeout", method=request.method, path=request.path)
                response = error_response(
                    408,
                    "request_timeout",
                    [f"the request body did not arrive within {body_timeout:g} s"],
                    request_id=request_id,
                )
                response.force_close()
                return response
        return await handler(request)
    except ServiceError as exc:
        return service_error_response(exc, request_id=request_id)
    except web.HTTPRequestEntityTooLarge:
        return error_response(
            413, "payload_too_large", ["the request body is too large"], request_id=request_id
        )
    except CLIENT_GONE:
        # The client hung up (mid-body, say): nothing of ours failed, and nobody is left to
        # read an answer; the status is for the metrics and the access log.
        log.debug("http_client_disconnected", method=request.method, path=request.path)
        return error_response(CLIENT_CLOSED_REQUEST, "client_closed_request", ["gone"])
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reason = exc.reason or "error"
        error_type = reason.lower().replace(" ", "_")
        response = error_response(
            exc.status,
            error_type,
            [f"{reason}: {request.method} {request.path}"],
            request_id=request_id,
        )
        if "Allow" in exc.headers:
            # A 405 must say which methods the resource has (RFC 9110, 15.5.6).
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("http_unhandled_error", method=request.method, path=request.path)
        return error_response(500, "internal_error", ["internal error"], request_id=request_id)


def _require_client_certificate(request: web.Request) -> None:
    """Mutual TLS: refuse a request whose connection presented no client certificate, unless
    it is a probe (:mod:`service.tls`)."""
    if request.path in CERTIFICATE_EXEMPT_HTTP_PATHS:
        return
    transport = request.transport
    ssl_object = None if transport is None else transport.get_extra_info("ssl_object")
    if not has_client_certificate(ssl_object):
        raise UnauthenticatedError(CERTIFICATE_REQUIRED)
