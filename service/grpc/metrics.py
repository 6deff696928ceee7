"""gRPC call metrics (Prometheus) and the access log, fed by the servicer after every call.

Like HTTP's: counts and latencies always; a log line for failures of ours (INTERNAL,
UNKNOWN), slow unary calls, and otherwise as ``SIGNING_KEYS_ACCESS_LOG`` says (off, sampled,
all) — a line per call would cost as much as serving it.
"""

from __future__ import annotations

from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram

from service.core.metrics import request_latency
from service.grpc.servicer import CallObserver
from service.logs import is_access_logged
from service.settings import Settings

log = structlog.get_logger(__name__)


class GrpcMetrics(CallObserver):
    """Call counts and latencies by method and status, and the access log."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None) -> None:
        self._access_log = settings.access_log
        self._sample_rate = settings.access_log_sample_rate
        self._slow = settings.slow_request_seconds
        self._requests: Counter | None = None
        self._latency: Histogram | None = None
        if registry is not None:
            self._requests = Counter(
                "signing_keys_grpc_requests",
                "gRPC calls served, by method and status.",
                ["method", "status"],
                registry=registry,
            )
            self._latency = request_latency(
                "signing_keys_grpc_request_seconds",
                "gRPC call latency, by method (streams: until they end).",
                ["method"],
                registry,
            )
        # Label children resolved once per (method, status), as HTTP's are per route:
        # .labels() takes a lock and builds tuples on every call. Bounded: methods are the
        # services', statuses grpclib's.
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}

    def finished(self, method: str, status: str, elapsed: float, request_id: str) -> None:
        if self._requests is not None and self._latency is not None:
            children = self._children.get((method, status))
            if children is None:
                children = self._children[method, status] = (
                    self._requests.labels(method, status),
                    self._latency.labels(method),
                )
            children[0].inc()
            children[1].observe(elapsed)
        unary = method != "WatchSigningKeys"
        notable = status in ("INTERNAL", "UNKNOWN") or (unary and elapsed >= self._slow)
        if is_access_logged(self._access_log, self._sample_rate, notable=notable):
            log.info(
                "grpc_call",
                request_id=request_id,
                method=method,
                status=status,
                duration_ms=round(elapsed * 1000, 3),
            )
