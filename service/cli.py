"""The ``signing-keys`` command: serve, migrate, status and token admin.

signing-keys serve                 # HTTP + gRPC, configured from SIGNING_KEYS_* variables
signing-keys migrate               # apply sql/migrations (and the CockroachDB script)
signing-keys migrate --check --wait 600   # wait until they are applied (no DDL; exit 1 if not)
signing-keys status                # per-region state as the router sees it (JSON)
signing-keys status --table        # the same, as a table for people
signing-keys status --raw-errors   # errors as the driver wrote them (hosts, ports, names)
signing-keys token create --environment ENV --scopes read,write,verify
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.core.models import Scope
from service.lifecycle import cancel_and_wait
from service.logs import configure_logging
from service.settings import Settings, SettingsError

if TYPE_CHECKING:
    from service.locality.router import LocalityRouter
    from service.locality.status import RouterStatus
    from service.server import Server

# How long a one-shot command waits for a writable region before it tries anyway (and
# fails with a clear "no writable region" error).
READY_TIMEOUT = 10.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = args.settings_factory()
    except SettingsError as exc:
        print(f"signing-keys: invalid configuration: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level if settings else "info")
    handler: Callable[[argparse.Namespace, Any], Coroutine[Any, Any, int]] = args.handler
    try:
        return asyncio.run(handler(args, settings))
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="signing-keys", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve HTTP and gRPC")
    # Set by the supervisor (service/workers.py) on the processes it starts.
    serve.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    serve.set_defaults(handler=_serve, settings_factory=Settings.from_env)

    migrate = commands.add_parser("migrate", help="apply the SQL migrations")
    migrate.add_argument(
        "--check", action="store_true", help="apply nothing: exit 0 once all are applied, else 1"
    )
    migrate.add_argument(
        "--wait", type=float, default=0.0, metavar="SECONDS", help="with --check: wait this long"
    )
    migrate.set_defaults(handler=_migrate, settings_factory=Settings.from_env)

    status = commands.add_parser("status", help="show each region's state")
    status.add_argument("--table", action="store_true", help="a table for people instead of JSON")
    status.add_argument(
        "--raw-errors",
        action="store_true",
        help="show each region's last error as the driver wrote it, hosts and ports included "
        "(by default they are redacted, so the output can be pasted anywhere)",
    )
    status.set_defaults(handler=_status, settings_factory=Settings.from_env)

    token = commands.add_parser("token", help="access-token administration")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    create = token_commands.add_parser("create", help="issue an access token")
    create.add_argument("--environment", action="append", required=True, dest="environments")
    create.add_argument("--scopes", default="read,write,verify")
    create.add_argument("--name")
    create.set_defaults(handler=_token_create, settings_factory=Settings.from_env)

    return parser


async def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from prometheus_client import CollectorRegistry

    from service import workers
    from service.server import CLOSE_BOUND, Server

    if settings.workers > 1 and args.worker is None:
        # Each worker's own drain and close, plus a margin for its start-up and exit.
        bound = settings.drain_delay + CLOSE_BOUND + 5.0
        return await workers.Supervisor(workers=settings.workers, stop_bound=bound).run()
    registry = CollectorRegistry()
    if args.worker is not None:
        # Before the ports open: the first scrape a worker answers already says which it is.
        workers.register_worker_info(registry, args.worker)
    async with Server(settings, registry=registry) as server:
        _stop_on_signals(server)
        orphan_watch = None
        if args.worker is not None:
            orphan_watch = asyncio.create_task(workers.watch_parent(server.request_close))
        await server.wait_closed()
        await cancel_and_wait(orphan_watch)
    return 0


@contextlib.asynccontextmanager
async def open_database(
    settings: Settings, *, writable: bool, timeout: float = READY_TIMEOUT
) -> AsyncIterator[LocalityRouter]:
    """The locality router alone, started and given ``timeout`` to find a region that
    serves reads (and writes, when asked): what a one-shot command needs, without the
    servers, caches and change feed of a whole :class:`~service.server.Server`."""
    from service.locality.router import LocalityRouter

    router = LocalityRouter(
        settings.regions, local_region=settings.local_region, settings=settings.router
    )
    async with router:
        await router.wait_ready(writable=writable, timeout=timeout)
        yield router


async def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    from service.store.migrations import (
        DEFAULT_SQL_DIR,
        load_migrations,
        migrate,
        wait_until_applied,
    )

    migrations = load_migrations(Path(settings.sql_dir) if settings.sql_dir else DEFAULT_SQL_DIR)
    if args.check:  # a pod's init container: the serving role, which may not run DDL
        async with open_database(
            settings, writable=False, timeout=min(args.wait, READY_TIMEOUT)
        ) as database:
            pending = await wait_until_applied(database, migrations, wait=args.wait)
        print(json.dumps({"pending": pending}))
        return 1 if pending else 0
    async with open_database(settings, writable=True) as database:
        applied = await migrate(database, migrations, regions=settings.regions)
    print(json.dumps({"applied": applied}))
    return 0


async def _status(args: argparse.Namespace, settings: Settings) -> int:
    from service.http.ops import redacted_region_status

    wait = settings.router.probe_timeout * 2
    async with open_database(settings, writable=False, timeout=wait) as database:
        status = database.status()
        if args.table:
            print(format_status(status, raw_errors=args.raw_errors))
        else:
            shown = (
                status.to_dict() if args.raw_errors else redacted_region_status(status.to_dict())
            )
            print(json.dumps(shown, indent=2, default=str))
    return 0


def format_status(status: RouterStatus, *, raw_errors: bool = False) -> str:
    """The router's status as a table: one line per region, and what needs attention.

    A region's last error is redacted (no host, port or quoted name: status output ends up
    in tickets and CI logs) unless ``raw_errors``."""
    from service.http.ops import redact_error

    rows = [("REGION", "CLOUD", "STATE", "ROLE", "TIMELINE", "DATA AGE", "RTT", "NOTES")]
    for region in status.regions:
        notes = []
        if region.name == status.local_region:
            notes.append("local")
        if region.name == status.read_region:
            notes.append("reads")
        if region.name == status.write_region:
            notes.append("writes")
        if region.fence_reason is not None:
            notes.append(f"fenced: {region.fence_reason}")
        if region.data_age_source == "wal":
            notes.append("age estimated")
        if region.receiver not in (None, "streaming"):
            notes.append(f"walreceiver {region.receiver}")
        if region.slow:
            notes.append("slow")
        if region.held_down:
            notes.append("held down")
        if region.state == "down" and region.last_error:
            notes.append(region.last_error if raw_errors else str(redact_error(region.last_error)))
        rows.append(
            (
                region.name,
                region.cloud,
                region.state,
                region.role,
                "-" if region.timeline is None else str(region.timeline),
                "-" if region.lag_seconds is None else f"{region.lag_seconds:.3f} s",
                "-" if region.rtt_ms is None else f"{region.rtt_ms:.1f} ms",
                ", ".join(notes),
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    lines = [
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    ]
    if status.writes_refused:
        lines.append(f"writes refused: {status.writes_refused}")
    elif status.write_region is None:
        lines.append("writes refused: no writable region is reachable")
    if status.read_region is None:
        lines.append("reads refused: no region can serve reads")
    return "\n".join(line.rstrip() for line in lines)


async def _token_create(args: argparse.Namespace, settings: Settings) -> int:
    from service.core.auth import Authenticator
    from service.store.routing import RoutedDatabase
    from service.store.tokens import PostgresTokenRecords

    try:
        scopes = [Scope(scope.strip()) for scope in args.scopes.split(",") if scope.strip()]
    except ValueError:
        print("signing-keys: --scopes must list read, write and/or verify", file=sys.stderr)
        return 2
    async with open_database(settings, writable=True) as database:
        # The server's write path: the router's, with the server-side bound on the write
        # transaction that key writes have (the credential tables' overlap counts on it).
        store = RoutedDatabase(database, write_bound=settings.longest_write)
        authenticator = Authenticator(
            PostgresTokenRecords(store),
            cache_ttl=settings.credential_cache_ttl,
            max_staleness=settings.max_staleness,
        )
        token, secret = await authenticator.issue(scopes, args.environments, name=args.name)
    # The secret is printed to the operator's terminal once, never logged.
    print(json.dumps({"id": token.id, "secret": secret, "scopes": sorted(token.scopes)}))
    return 0


def _stop_on_signals(server: Server) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, server.request_close)


if __name__ == "__main__":
    sys.exit(main())
