"""``make bench``: every benchmark under tests/perf, each printing its figures and ratios."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import tests.perf


def main() -> int:
    names = sorted(
        info.name
        for info in pkgutil.iter_modules(tests.perf.__path__)
        if info.name.endswith("_bench")
    )
    failures = 0
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        module = importlib.import_module(f"tests.perf.{name}")
        failures += 1 if module.main() else 0
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
