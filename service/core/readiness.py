"""Readiness: the one decision that ``/readyz``, the degraded gauge and gRPC health share.

Two facts decide it: can some database region serve reads, and can verification still serve
from the last known good keys (the change feed read the database within the allowed
staleness). The states and what each surface says in them:

============  ===================  =========================  ==========================
state         ``GET /readyz``      ``signing_keys_degraded``  gRPC health (``""`` and
                                                              ``signingkeys.v1.SigningKeys``)
============  ===================  =========================  ==========================
ready         200 ``ready``        0                          SERVING
degraded      200 ``degraded``     1                          SERVING
unavailable   503 ``unavailable``  0                          NOT_SERVING
============  ===================  =========================  ==========================

gRPC health says SERVING while degraded, for the reason ``/readyz`` answers 200: the
instance still does the work most callers need — verification, from cached keys — while key
reads and writes fail call by call with ``UNAVAILABLE``. A database outage strikes every
instance at once; were health NOT_SERVING then, load balancers and orchestrators would take
every instance out together and turn a partial outage into a total one, which is what the
last known good keys exist to prevent. Health answers "send traffic here?"; the gauge is what
says "degraded".

>>> readiness = Readiness(can_read=router.can_read, can_verify=verifier.can_serve)
>>> readiness.report().state
'ready'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

ReadinessState = Literal["ready", "degraded", "unavailable"]


def decide(*, can_read: bool, can_verify: bool) -> ReadinessState:
    """Ready while a region serves reads; degraded while none does but verification goes on
    from the last known good keys; unavailable past that."""
    if can_read:
        return "ready"
    return "degraded" if can_verify else "unavailable"


@dataclass(frozen=True, slots=True)
class ReadinessReport:
    """One reading of both facts and the state they decide."""

    state: ReadinessState
    can_read: bool
    can_verify: bool

    @property
    def is_serving(self) -> bool:
        """Whether traffic should come here: ready or degraded."""
        return self.state != "unavailable"

    @property
    def is_degraded(self) -> bool:
        return self.state == "degraded"


class Readiness:
    """Reads both facts live (never cached) and decides the state.

    ``can_read``: whether some database region can serve reads now; ``can_verify``: whether
    verification can serve from the last known good keys.
    """

    def __init__(self, *, can_read: Callable[[], bool], can_verify: Callable[[], bool]) -> None:
        self._can_read = can_read
        self._can_verify = can_verify

    def __repr__(self) -> str:
        report = self.report()
        return (
            f"<Readiness {report.state} can_read={report.can_read} can_verify={report.can_verify}>"
        )

    def report(self) -> ReadinessReport:
        can_read = self._can_read()
        can_verify = self._can_verify()
        return ReadinessReport(
            decide(can_read=can_read, can_verify=can_verify), can_read, can_verify
        )

    def state(self) -> ReadinessState:
        return self.report().state

    def is_serving(self) -> bool:
        return self.report().is_serving

    def is_degraded(self) -> bool:
        return self.report().is_degraded
