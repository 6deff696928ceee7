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
import bisect
import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Final, cast

import structlog
from aiohttp import web
from aiohttp.http_exceptions import ContentLengthError, TransferEncodingError
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from service.core.auth import CLIENT_ADDRESS
from service.core.metrics import REQUEST_LATENCY_BUCKETS
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


class HttpMetrics(Collector):
    """Request counts and latencies by route and status, as the families
    ``signing_keys_http_requests`` (``route``, ``method``, ``status``) and
    ``signing_keys_http_request_seconds`` (``route``; :data:`REQUEST_LATENCY_BUCKETS`).

    A request adds to plain counts; the families are built when the registry is scraped.
    prometheus_client's own metrics take a lock per counter and per histogram on every
    observation, a few microseconds a request that a single event loop does not need.
    Bounded: routes are the app's, and aiohttp refuses unknown methods before they reach us.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._requests: dict[tuple[str, str, int], int] = {}
        # Per route: a count per bucket (non-cumulative; the last one above every bound),
        # then the sum of the seconds.
        self._latencies: dict[str, list[float]] = {}
        registry.register(self)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        requests = self._requests
        requests[key] = requests.get(key, 0) + 1
        latency = self._latencies.get(route)
        if latency is None:
            latency = self._latencies[route] = [0.0] * (len(REQUEST_LATENCY_BUCKETS) + 2)
        latency[bisect.bisect_left(REQUEST_LATENCY_BUCKETS, seconds)] += 1
        latency[-1] += seconds

    def describe(self) -> Iterator[Metric]:
        return self._families()

    def collect(self) -> Iterator[Metric]:
        return self._families(list(self._requests.items()), list(self._latencies.items()))

    def _families(
        self,
        requests: Iterable[tuple[tuple[str, str, int], int]] = (),
        latencies: Iterable[tuple[str, list[float]]] = (),
    ) -> Iterator[Metric]:
        counts = CounterMetricFamily(
            "signing_keys_http_requests",
            "HTTP requests served, by route and status.",
            labels=("route", "method", "status"),
        )
        for (route, method, status), count in requests:
            counts.add_metric((route, method, str(status)), count)
        yield counts
        histogram = HistogramMetricFamily(
            "signing_keys_http_request_seconds",
            "HTTP request latency, by route.",
            labels=("route",),
        )
        for route, latency in latencies:
            cumulative = list(itertools.accumulate(latency[:-1]))
            histogram.add_metric(
                (route,), list(zip(_BUCKET_LABELS, cumulative, strict=True)), latency[-1]
            )
        yield histogram


# Spelled as prometheus_client spells a histogram's own bounds.
_BUCKET_LABELS: Final = (
    *(cast(Callable[[float], str], floatToGoString)(b) for b in REQUEST_LATENCY_BUCKETS),
    "+Inf",
)


def make_middleware(
    settings: Settings, metrics: HttpMetrics, connections: ConnectionGuard
) -> Middleware:
    access_log = settings.access_log
    sample_rate = settings.access_log_sample_rate
    slow = settings.slow_request_seconds
    body_timeout = settings.http_body_timeout
    certificate_required = requires_client_certificate(settings)
    bind_contextvars = structlog.contextvars.bind_contextvars
    perf_counter = time.perf_counter

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = perf_counter()
        connection = connections.request_started(request.transport)
        request_id = choose_request_id(request.headers.get(REQUEST_ID_HEADER))
        request[REQUEST_ID] = request_id
        # Neither is reset: aiohttp runs every request in a task of its own, on a copy of
        # the connection's context, so what the request binds ends with it.
        bind_contextvars(request_id=request_id)
        CLIENT_ADDRESS.set(request.remote if connection is None else connection.address)
        try:
            # All in this one coroutine (no helper awaited on the way to the handler): each
            # await of a coroutine is a frame made and unwound per request.
            if certificate_required:
                _require_client_certificate(request)
            refused = None
            if request.body_exists:
                refused = await _read_body(request, body_timeout, request_id)
            response = await handler(request) if refused is None else refused
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            response = _error_response(exc, request, request_id)
        finally:
            if connection is not None:
                connection.request_finished()
        response.headers[REQUEST_ID_HEADER] = request_id
        elapsed = perf_counter() - started
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        status = response.status
        metrics.observe(route, request.method, status, elapsed)
        if is_access_logged(access_log, sample_rate, notable=status >= 500 or elapsed >= slow):
            log.info(
                "http_request",
                request_id=request_id,
                method=request.method,
                route=route,
                status=status,
                duration_ms=round(elapsed * 1000, 3),
            )
        return response

    return middleware


async def _read_body(
    request: web.Request, body_timeout: float, request_id: str
) -> web.Response | None:
    """Read the body whole (the handlers get it from aiohttp's cache), so that no handler
    waits on a slow client; a 408 if it does not arrive within ``body_timeout``. Bounded by
    the application's client_max_size."""
    if request.content.is_eof():
        # Already in whole (a small body arrives with its head): no timer to arm.
        await request.read()
        return None
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
    return None


def _error_response(exc: Exception, request: web.Request, request_id: str) -> web.Response:
    """The answer to what a request raised (``request_id`` in every error body, as in the
    X-Request-Id header); re-raises an HTTP exception that is not an error (a redirect)."""
    if isinstance(exc, ServiceError):
        return service_error_response(exc, request_id=request_id)
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return error_response(
            413, "payload_too_large", ["the request body is too large"], request_id=request_id
        )
    if isinstance(exc, CLIENT_GONE):
        # The client hung up (mid-body, say): nothing of ours failed, and nobody is left to
        # read an answer; the status is for the metrics and the access log.
        log.debug("http_client_disconnected", method=request.method, path=request.path)
        return error_response(CLIENT_CLOSED_REQUEST, "client_closed_request", ["gone"])
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
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
