"""``python -m harness run`` (what ``make run`` runs): the local topology plus the service.

Starts the three-region PostgreSQL topology behind its fault proxies, migrates, issues a
development access token, serves HTTP and gRPC with ``aws-us-east-1`` as the local region
(or the region ``SIGNING_KEYS_LOCAL_REGION`` names: any region of the topology, a standby's
included, so the service can be seen as an instance in another region sees it), prints the
endpoints and a ready-to-paste example, and cleans everything up on SIGINT/SIGTERM.
This is development tooling: the service itself never imports the harness.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import sys

from harness.cluster import LocalTopology
from service.core.models import Scope
from service.server import Server
from service.settings import Settings
from service.store.migrations import migrate

DEV_LOCAL_REGION = "aws-us-east-1"
# What a developer may set for `make run`; the topology decides the regions and their DSNs.
PASSED_THROUGH = ("HTTP_PORT", "GRPC_PORT", "LOG_LEVEL", "ACCESS_LOG")


class DevError(Exception):
    """The development run cannot start as asked; the message says why."""


async def run_dev(*, environment: str) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    topology = LocalTopology()
    local_region = os.environ.get("SIGNING_KEYS_LOCAL_REGION") or DEV_LOCAL_REGION
    if local_region not in topology.region_names:
        raise DevError(
            f"SIGNING_KEYS_LOCAL_REGION={local_region!r} is not a region of the local topology "
            f"({', '.join(topology.region_names)})"
        )
    try:
        await asyncio.to_thread(topology.start)
        env = {
            **topology.env(local_region),
            "SIGNING_KEYS_HTTP_HOST": "127.0.0.1",
            "SIGNING_KEYS_GRPC_HOST": "127.0.0.1",
        }
        for name in PASSED_THROUGH:
            value = os.environ.get(f"SIGNING_KEYS_{name}")
            if value:
                env[f"SIGNING_KEYS_{name}"] = value
        settings = Settings.from_env(env)
        async with Server(settings) as server:
            await server.database.wait_ready(writable=True, timeout=10.0)
            await migrate(server.database)
            # Every standby has the schema before anything reads it there (the local region
            # may be a standby's, and synchronous replication waits for one standby only).
            await asyncio.to_thread(topology.wait_replayed)
            token, secret = await server.authenticator.issue(
                list(Scope), [environment], name="make run"
            )
            _print_banner(server, token.id, secret, local_region)
            await stop.wait()
            print("\nstopping…", file=sys.stderr)
    finally:
        await asyncio.to_thread(topology.stop)
    return 0


def _print_banner(server: Server, token_id: str, secret: str, local_region: str) -> None:
    base = f"http://127.0.0.1:{server.http_port}"
    credentials = shlex.quote(f"{token_id}:{secret}")
    lines = [f"http: {base}"]
    if server.grpc_port is not None:
        lines.append(f"grpc: 127.0.0.1:{server.grpc_port}")
    lines.append(f"local region: {local_region}")
    lines += [
        f"token id: {token_id}",
        f"token secret: {secret}",
        "",
        "Create a signing key, then list them:",
        f"  curl -s -u {credentials} -X POST {base}/system/v1/signing-keys",
        f"  curl -s -u {credentials} {base}/system/v1/signing-keys",
        "Region status:",
        f"  curl -s {base}/v1/regions",
        "Ctrl-C stops everything.",
    ]
    print("\n".join(lines), flush=True)
