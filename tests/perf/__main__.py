"""``make bench``: the one-table benchmark (tests/perf/suite.py).

The older single-purpose benchmarks still run alone: ``python -m tests.perf.grpc_bench``
(GetSigningKey against betterproto and upb floors) and ``python -m tests.perf.b64_bench``.
"""

from __future__ import annotations

import sys

from tests.perf import suite

if __name__ == "__main__":
    sys.exit(suite.main())
