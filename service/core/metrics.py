"""The core's own counters, for operators (and for tests, which read them like anyone else).

>>> metrics = CoreMetrics(registry)
>>> verifier = TokenVerifier(records, cache, feed, metrics=metrics, ...)
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class CoreMetrics:
    """Database look-ups the key cache could not spare, and the change feed's polls."""

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

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 before the first increment)."""
        return self.registry.get_sample_value(name, labels) or 0.0
