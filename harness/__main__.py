"""``python -m harness``: the development commands (not part of the ``signing-keys`` CLI).

python -m harness run [--environment dev]   # local three-region topology + service (``make run``)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from harness.dev import DevError, run_dev
from service.logs import configure_logging


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the local three-region topology and the service")
    run.add_argument("--environment", default="dev")
    args = parser.parse_args(argv)
    configure_logging("info")
    try:
        return asyncio.run(run_dev(environment=args.environment))
    except DevError as exc:
        print(f"python -m harness run: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
