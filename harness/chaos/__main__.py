"""``python -m harness.chaos``: run the chaos test, or check a recorded history again.

python -m harness.chaos run --seconds 600 --seed 42 --out history.json   # make chaos
python -m harness.chaos check history.json                              # replay the checker
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from harness.chaos.checker import Bounds, check
from harness.chaos.history import History
from harness.chaos.nemesis import FAULTS
from harness.chaos.report import format_report
from harness.chaos.runner import RunOptions, run
from service.logs import configure_logging


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.chaos", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    go = commands.add_parser("run", help="run load and faults, then check the history")
    go.add_argument("--seconds", type=float, default=60.0, help="load and faults (default 60)")
    go.add_argument("--seed", type=int, default=None, help="default: from the clock")
    go.add_argument("--out", type=Path, default=Path("chaos-history.json"))
    go.add_argument(
        "--faults",
        default="all",
        help="comma-separated entries of the fault table, 'handled' (what the service "
        f"handles today) or 'all' (default); entries: {', '.join(FAULTS)}",
    )
    go.add_argument("--quiet", type=float, default=5.0, help="quiet period before final reads")
    go.add_argument(
        "--seed-key-first",
        action="store_true",
        help="create a first key before the watchers subscribe (see the README)",
    )
    go.add_argument("--logs", type=Path, default=None, help="keep the instances' logs here")
    again = commands.add_parser("check", help="check a recorded history again")
    again.add_argument("history", type=Path)
    for name in Bounds().to_dict():
        again.add_argument(f"--{name.replace('_', '-')}", type=float, default=None, dest=name)
    args = parser.parse_args(argv)
    configure_logging("error")
    if args.command == "check":
        history = History.load(args.history)
        overrides = {
            name: getattr(args, name)
            for name in Bounds().to_dict()
            if getattr(args, name) is not None
        }
        bounds = Bounds.from_dict({**history.meta.bounds, **overrides})
        report = check(history, bounds)
    else:
        seed = args.seed if args.seed is not None else int(time.time())
        options = RunOptions(
            seconds=args.seconds,
            seed=seed,
            faults=tuple(name.strip() for name in args.faults.split(",") if name.strip()),
            out=args.out,
            quiet=args.quiet,
            watch_from_empty=not args.seed_key_first,
            log_dir=args.logs,
        )
        print(f"chaos: seed {seed}, history -> {args.out}", file=sys.stderr, flush=True)
        started = time.monotonic()

        def progress(line: str) -> None:
            print(
                f"chaos: {time.monotonic() - started:6.1f} s  {line}", file=sys.stderr, flush=True
            )

        history, report = asyncio.run(run(options, progress=progress))
    print(format_report(history, report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
