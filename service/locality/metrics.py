"""Prometheus collectors of the locality router, registered on a registry passed in."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


class RouterMetrics:
    """The router's collectors. Without a registry they are kept on a private one."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.region_up = Gauge(
            "signing_keys_region_up",
            "1 while the region is up (probes and requests succeed), else 0.",
            ["region"],
            registry=self.registry,
        )
        self.region_writable = Gauge(
            "signing_keys_region_writable",
            "1 while the region accepts writes (PostgreSQL primary, or CockroachDB).",
            ["region"],
            registry=self.registry,
        )
        self.region_rtt = Gauge(
            "signing_keys_region_rtt_seconds",
            "Smoothed round-trip time of the region's health probe.",
            ["region"],
            registry=self.registry,
        )
        self.region_lag = Gauge(
            "signing_keys_region_replica_lag_seconds",
            "How old a standby region's data was at its last probe (an upper bound once the "
            "heartbeat table exists, an estimate from WAL positions before).",
            ["region"],
            registry=self.registry,
        )
        self.region_fenced = Gauge(
            "signing_keys_region_fenced",
            "1 while the region is fenced: an old primary on a lower timeline, a standby "
            "following one, another database, or one of two writable regions on one timeline.",
            ["region"],
            registry=self.registry,
        )
        self.heartbeats = Counter(
            "signing_keys_router_heartbeats",
            "Heartbeats written on the primary (they measure the standbys' data age), by outcome.",
            ["region", "outcome"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "signing_keys_region_in_flight",
            "Database operations running in the region now.",
            ["region"],
            registry=self.registry,
        )
        self.failovers = Counter(
            "signing_keys_router_failovers",
            "Changes of the region serving reads or writes.",
            ["kind"],
            registry=self.registry,
        )
        self.retries = Counter(
            "signing_keys_router_retries",
            "Operations retried on the same or another region, by reason.",
            ["kind", "reason"],
            registry=self.registry,
        )
        self.hedges = Counter(
            "signing_keys_router_hedges",
            "Hedged second reads started because the first was slow.",
            ["region"],
            registry=self.registry,
        )
        self.backends_ended = Counter(
            "signing_keys_router_abandoned_backends",
            "Server backends of writes the router gave up on, by what ending them found: "
            "ended (terminated), gone (already ended), failed (region out of reach).",
            ["region", "outcome"],
            registry=self.registry,
        )
        self.region_sync_short = Gauge(
            "signing_keys_region_sync_short",
            "1 while a PostgreSQL primary has fewer synchronous standbys streaming than a "
            "COMMIT needs (writes refused there), else 0.",
            ["region"],
            registry=self.registry,
        )
        self.probe_inconclusive = Counter(
            "signing_keys_probe_inconclusive",
            "Probes that timed out while this process's event loop was stalled, by region: "
            "not held against the region.",
            ["region"],
            registry=self.registry,
        )
        self.retries_refused = Counter(
            "signing_keys_router_retries_refused",
            "Retries not made because the retry budget was spent, by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.failures = Counter(
            "signing_keys_router_failures",
            "Operations that failed with a routing error, by kind and error type.",
            ["kind", "error"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "signing_keys_db_query_seconds",
            "Time of one database attempt, by region, kind and outcome.",
            ["region", "kind", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def region(self, name: str) -> RegionMetrics:
        """The per-operation collectors of one region, with their labels resolved once."""
        return RegionMetrics(self, name)


class RegionMetrics:
    """Labelled children of one region's hot-path collectors (``labels()`` costs a lookup
    and a lock per call; an operation touches them three times)."""

    def __init__(self, metrics: RouterMetrics, region: str) -> None:
        self._metrics = metrics
        self._region = region
        self.in_flight = metrics.in_flight.labels(region)
        self._latency: dict[tuple[str, str], Any] = {}

    def observe(self, kind: str, outcome: str, seconds: float) -> None:
        child = self._latency.get((kind, outcome))
        if child is None:
            child = self._metrics.latency.labels(self._region, kind, outcome)
            self._latency[(kind, outcome)] = child
        child.observe(seconds)
