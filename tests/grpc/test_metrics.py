"""gRPC call metrics and the access log."""

from __future__ import annotations

import dataclasses

import pytest
import structlog
from prometheus_client import CollectorRegistry

from service.grpc.metrics import GrpcMetrics
from service.settings import RegionSettings, Settings

SETTINGS = Settings(
    regions=(RegionSettings("aws-us-east-1", "aws", "postgresql://u@h/db"),),
    local_region="aws-us-east-1",
    access_log="off",
    slow_request_seconds=0.5,
)


def count(registry: CollectorRegistry, method: str, status: str) -> float:
    labels = {"method": method, "status": status}
    return registry.get_sample_value("signing_keys_grpc_requests_total", labels) or 0.0


def test_calls_are_counted_by_method_and_status() -> None:
    registry = CollectorRegistry()
    metrics = GrpcMetrics(SETTINGS, registry)
    metrics.finished("GetSigningKey", "OK", 0.001, "r1")
    metrics.finished("GetSigningKey", "OK", 0.002, "r2")
    metrics.finished("GetSigningKey", "NOT_FOUND", 0.001, "r3")
    assert count(registry, "GetSigningKey", "OK") == 2
    assert count(registry, "GetSigningKey", "NOT_FOUND") == 1
    latency = registry.get_sample_value(
        "signing_keys_grpc_request_seconds_count", {"method": "GetSigningKey"}
    )
    assert latency == 3


@pytest.mark.parametrize(
    ("access_log", "method", "status", "elapsed", "logged"),
    [
        ("off", "GetSigningKey", "OK", 0.001, False),
        ("off", "GetSigningKey", "NOT_FOUND", 0.001, False),
        ("off", "GetSigningKey", "INTERNAL", 0.001, True),
        ("off", "GetSigningKey", "OK", 0.6, True),  # slow
        ("off", "WatchSigningKeys", "CANCELLED", 60.0, False),  # streams are long by nature
        ("all", "GetSigningKey", "OK", 0.001, True),
    ],
)
def test_the_access_log_follows_the_settings(
    access_log: str, method: str, status: str, elapsed: float, logged: bool
) -> None:
    settings = dataclasses.replace(SETTINGS, access_log=access_log)  # type: ignore[arg-type]
    with structlog.testing.capture_logs() as logs:
        GrpcMetrics(settings, None).finished(method, status, elapsed, "req-1")
    lines = [line for line in logs if line["event"] == "grpc_call"]
    assert bool(lines) is logged
    if logged:
        assert lines[0]["request_id"] == "req-1" and lines[0]["status"] == status
