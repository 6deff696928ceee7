"""The core's own counters, for operators (and for tests, which read them like anyone else);
and the request-latency histogram that both transports build alike.

>>> metrics = CoreMetrics(registry)
>>> verifier = TokenVerifier(records, cache, feed, metrics=metrics, ...)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram

# From half a millisecond (a cached verification) to seconds (a failover); one set for HTTP and
# gRPC, so that their latencies compare bucket for bucket.
AUTH_FAILURE_REASONS: Final = ("missing", "malformed", "unknown_token", "wrong_secret", "revoked")
# auth_client / auth_token: failed authentications from one client address / for one token
# id; watch_streams / watch_streams_instance: open watch streams of one caller / of this
# instance.
LIMITS: Final = ("auth_client", "auth_token", "watch_streams", "watch_streams_instance")

REQUEST_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


def request_latency(
    name: str, documentation: str, labels: Sequence[str], registry: CollectorRegistry
) -> Histogram:
    """A transport's latency histogram, on :data:`REQUEST_LATENCY_BUCKETS`."""
    return Histogram(
        name, documentation, labels, registry=registry, buckets=REQUEST_LATENCY_BUCKETS
    )


class CoreMetrics:
    """Database look-ups the key cache could not spare, the change feed's and the credential
    table's polls, failed authentications, and what per-caller limits refused."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.key_lookups = Counter(
            "signing_keys_key_lookups",
            "Database look-ups of a kid the key cache did not hold (verification misses).",
            registry=self.registry,
        )
        polls = Counter(
            "signing_keys_change_polls",
            "Polls of the change feed, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.polls_ok = polls.labels("ok")
        self.polls_failed = polls.labels("failed")
        credential_polls = Counter(
            "signing_keys_credential_polls",
            "Polls of the access-token records by the credential table, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.credential_polls_ok = credential_polls.labels("ok")
        self.credential_polls_failed = credential_polls.labels("failed")
        failures = Counter(
            "signing_keys_auth_failures",
            "Failed authentications, by reason (missing, malformed, unknown_token, "
            "wrong_secret, revoked).",
            ["reason"],
            registry=self.registry,
        )
        self.auth_failures = {reason: failures.labels(reason) for reason in AUTH_FAILURE_REASONS}
        limited = Counter(
            "signing_keys_limited",
            "Requests refused by a per-caller limit, by limit.",
            ["limit"],
            registry=self.registry,
        )
        self.limited = {limit: limited.labels(limit) for limit in LIMITS}

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 before the first increment)."""
        return self.registry.get_sample_value(name, labels) or 0.0
