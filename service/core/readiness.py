"""Readiness: the one decision that ``/readyz``, the degraded gauge and gRPC health share.

Three facts decide it: can some database region serve reads; is the data the change feed has
seen fresh (within the revocation bound: a region that answers from stale data does not
count); and can verification still serve from the last known good keys (that data is within
the allowed staleness). Ready needs the first two; degraded is the third alone. The states
and what each surface says in them:

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


def decide(*, can_read: bool, can_verify: bool, is_fresh: bool = True) -> ReadinessState:
    """Ready while a region serves reads and the keys are fresh; degraded while either fails
    but verification goes on from the last known good keys; unavailable past that."""
    if can_read and is_fresh:
        return "ready"
    return "degraded" if can_verify else "unavailable"


@dataclass(frozen=True, slots=True)
class ReadinessReport:
    """One reading of both facts and the state they decide."""

    state: ReadinessState
    can_read: bool
    can_verify: bool
    is_fresh: bool = True

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
    verification can serve from the last known good keys; ``is_fresh``: whether the keys are
    within the revocation bound.
    """

    def __init__(
        self,
        *,
        can_read: Callable[[], bool],
        can_verify: Callable[[], bool],
        is_fresh: Callable[[], bool] = lambda: True,
    ) -> None:
        self._can_read = can_read
        self._can_verify = can_verify
        self._is_fresh = is_fresh

    def __repr__(self) -> str:
        report = self.report()
        return (
            f"<Readiness {report.state} can_read={report.can_read} can_verify={report.can_verify}>"
        )

    def report(self) -> ReadinessReport:
        can_read, can_verify, is_fresh = self._can_read(), self._can_verify(), self._is_fresh()
        state = decide(can_read=can_read, can_verify=can_verify, is_fresh=is_fresh)
        return ReadinessReport(state, can_read, can_verify, is_fresh)

    def state(self) -> ReadinessState:
        return self.report().state

    def is_serving(self) -> bool:
        return self.report().is_serving

    def is_degraded(self) -> bool:
        return self.report().is_degraded
