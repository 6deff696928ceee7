"""The middleware's part in slow and vanishing clients: a body that trickles in is cut off
at the body timeout, and a client that hangs up mid-body is nobody's error; and its request
metrics, which read as prometheus_client's own counter and histogram would."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from harness import LocalTopology
from service.core.metrics import REQUEST_LATENCY_BUCKETS
from service.http.middleware import HttpMetrics
from service.server import Server
from service.settings import Settings
from tests.http.test_listener import SLACK, connect
from tests.support.service import closed_by_server, errors_logged, log_lines, service_env

BODY_TIMEOUT = 1.0
VERIFY_HEAD = (
    b"POST /v1/tokens/verify HTTP/1.1\r\nHost: localhost\r\n"
    b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
)


@pytest.fixture
async def timed(migrated_topology: LocalTopology) -> AsyncIterator[Server]:
    env = service_env(migrated_topology, http_body_timeout=str(BODY_TIMEOUT))
    async with Server(Settings.from_env(env)) as running:
        yield running


def requests_with_status(server: Server, status: int) -> float:
    return sum(
        sample.value
        for metric in server.registry.collect()
        if metric.name == "signing_keys_http_requests"
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels["status"] == str(status)
    )


async def test_a_body_that_trickles_in_gets_408_at_the_body_timeout(timed: Server) -> None:
    """Before: 20 slow-body connections were all still open after 20 s."""
    started = time.monotonic()
    reader, writer = await connect(timed)
    writer.write(VERIFY_HEAD + b"{")

    async def trickle() -> None:
        for _ in range(99):
            await asyncio.sleep(0.2)
            writer.write(b" ")

    trickling = asyncio.create_task(trickle())
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BODY_TIMEOUT + SLACK)
        assert head.startswith(b"HTTP/1.1 408 "), head
        assert b"Connection: close" in head
        await closed_by_server(reader, SLACK)
    finally:
        trickling.cancel()
        writer.close()
    assert time.monotonic() - started >= BODY_TIMEOUT


async def test_a_client_that_hangs_up_mid_body_is_not_an_error(
    timed: Server, log_stream: io.StringIO
) -> None:
    """Before: logged as http_unhandled_error, with a traceback, and counted as a 500."""
    _, writer = await connect(timed)
    writer.write(VERIFY_HEAD + b'{"token": ')
    await writer.drain()
    await asyncio.sleep(0)
    writer.transport.abort()
    async with asyncio.timeout(5):
        while not requests_with_status(timed, 499):
            await asyncio.sleep(0.01)
    assert requests_with_status(timed, 500) == 0
    assert errors_logged(log_stream) == []
    events = [line["event"] for line in log_lines(log_stream)]
    assert "http_client_disconnected" in events


def test_request_metrics_read_as_a_prometheus_counter_and_histogram() -> None:
    """Same names, labels, buckets (bounds included: a request of exactly 1 ms is in
    le="0.001"), counts and sums as prometheus_client's metrics fed the same requests."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    metrics = HttpMetrics(ours)
    counter = Counter(
        "signing_keys_http_requests", "", ["route", "method", "status"], registry=theirs
    )
    histogram = Histogram(
        "signing_keys_http_request_seconds",
        "",
        ["route"],
        registry=theirs,
        buckets=REQUEST_LATENCY_BUCKETS,
    )
    requests = [
        ("/healthz", "GET", 200, 0.0001),
        ("/healthz", "GET", 200, 0.001),
        ("/healthz", "HEAD", 200, 0.3),
        ("/v1/tokens/verify", "POST", 200, 0.0004),
        ("/v1/tokens/verify", "POST", 401, 2.5),
        ("unmatched", "GET", 404, 99.0),
    ]
    for route, method, status, seconds in requests:
        metrics.observe(route, method, status, seconds)
        counter.labels(route, method, str(status)).inc()
        histogram.labels(route).observe(seconds)

    def samples(
        registry: CollectorRegistry,
    ) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for metric in registry.collect()
            for sample in metric.samples
            if not sample.name.endswith("_created")
        }

    assert samples(ours) == samples(theirs)
    assert (
        ours.get_sample_value(
            "signing_keys_http_request_seconds_bucket", {"route": "/healthz", "le": "0.001"}
        )
        == 2
    )
