"""How much each fuzzer runs: a fixed, derandomized budget in ``make test``; ``FUZZ_EXAMPLES``
(``make fuzz``) examples from a fresh or given (``FUZZ_SEED``) seed otherwise."""

from __future__ import annotations

import os
import random
from typing import Final

from hypothesis import HealthCheck, settings

_LONG: Final = os.environ.get("FUZZ_EXAMPLES", "").strip()
# Set: the long run of `make fuzz`. Unset or empty: the bounded run of `make test`.
LONG_RUN: Final = bool(_LONG)
FUZZ_EXAMPLES: Final = int(_LONG) if LONG_RUN else 0
SEED: Final = int(os.environ.get("FUZZ_SEED") or (random.randrange(2**31) if LONG_RUN else 1))


def examples(bounded: int) -> settings:
    """Hypothesis settings: ``bounded`` derandomized examples in ``make test``; under
    ``make fuzz``, ``FUZZ_EXAMPLES`` random ones. No example database (nothing is written
    into the worktree) and no deadline (this machine is shared and noisy)."""
    return settings(
        max_examples=FUZZ_EXAMPLES if LONG_RUN else bounded,
        derandomize=not LONG_RUN,
        database=None,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
