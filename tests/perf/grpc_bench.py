"""gRPC throughput: ``GetSigningKey`` against bare grpclib unary handlers, in the same run.

    python -m tests.perf.grpc_bench [--runs 3] [--duration 3] [--connections 4] [--streams 16]

(``make bench`` runs it with the defaults; BENCH_RUNS and BENCH_SECONDS override them.)

Starts a one-region local topology (PostgreSQL, reached directly rather than through the
fault proxy, whose Python event loop would share this process), the service's GrpcServer,
and two bare grpclib servers answering the same path with the same reply:

- ``bare-protobuf``: the reply prebuilt as a protobuf (upb) message — grpclib's floor;
- ``bare-betterproto``: the reply as the betterproto message our servicer sends, encoded per
  call — the floor for any servicer built on the generated betterproto code;
- ``same-work-protobuf``: GetSigningKey's work (credentials, KeyService.get, translation)
  with upb messages in place of betterproto's — what switching the servicer's messages
  would buy.

Each round loads every target in turn with h2load (``apt-get install -y nghttp2-client``)
over the same pre-framed request; the report gives medians, the ratios to the baselines and
the server CPU per call. h2load counts HTTP statuses only, so a grpclib client checks the
``grpc-status`` of one call per target before and after. Without h2load, a grpclib load
generator in another process is used (its figures are lower bounds). Nothing is asserted:
this is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import shutil
import statistics
import struct
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from grpclib.client import Channel
from grpclib.const import Cardinality, Handler
from grpclib.server import Server as GrpclibServer
from grpclib.server import Stream

from harness import DEFAULT_REGIONS, LocalTopology
from service.core import crypto
from service.core.models import Scope
from service.core.requests import CreateKeyRequest, KeyRef
from service.grpc import messages
from service.grpc.generated.signingkeys import v1 as pb
from service.grpc.generated.signingkeys.v1 import signing_keys_pb2
from service.server import Server
from service.settings import Settings, region_dsn_variable
from service.store.migrations import migrate
from tests.support.service import build_grpc_server

PATH = "/signingkeys.v1.SigningKeys/GetSigningKey"
ENVIRONMENT = "env-bench"


@dataclass
class Target:
    name: str
    port: int
    rps: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)


def _at_path(
    handle: Callable[[Stream[Any, Any]], Awaitable[None]], request_type: Any, reply_type: Any
) -> dict[str, Handler]:
    """A grpclib service table of one unary method, at GetSigningKey's path."""
    return {PATH: Handler(handle, Cardinality.UNARY_UNARY, request_type, reply_type)}


class _BareService:
    """One unary method answering a prebuilt reply: nothing but grpclib and the codec."""

    def __init__(self, request_type: type[Any], reply_factory: Callable[[], Any]) -> None:
        self._request_type = request_type
        self._reply = reply_factory

    def __mapping__(self) -> dict[str, Handler]:
        return _at_path(self._handle, self._request_type, type(self._reply()))

    async def _handle(self, stream: Stream[Any, Any]) -> None:
        await stream.recv_message()
        await stream.send_message(self._reply())


class _SameWorkOnProtobuf:
    """What GetSigningKey does — authenticate, KeyService.get, translate — with the upb
    (``_pb2``) messages instead of betterproto's: how much of the servicer's cost is
    betterproto's pure-Python encoding. Not the servicer: no strict codec, limits or
    error mapping."""

    def __init__(self, server: Server) -> None:
        self._server = server

    def __mapping__(self) -> dict[str, Handler]:
        return _at_path(
            self._handle,
            signing_keys_pb2.GetSigningKeyRequest,
            signing_keys_pb2.GetSigningKeyResponse,
        )

    async def _handle(self, stream: Stream[Any, Any]) -> None:
        request: Any = await stream.recv_message()
        metadata: Any = stream.metadata
        caller = await self._server.authenticator.authenticate_header(
            metadata.get("authorization"), api="grpc"
        )
        environment = caller.default_environment(request.environment_id or None)
        key = await self._server.keys.get(
            caller, KeyRef(environment_id=environment, key_id=request.id)
        )
        await stream.send_message(
            signing_keys_pb2.GetSigningKeyResponse(
                key=signing_keys_pb2.SigningKey(
                    id=key.id,
                    created_at=messages.unix(key.created_at),
                    environment_id=key.environment_id,
                    algorithm=key.algorithm,
                    status=f"KEY_STATUS_{key.status.upper()}",
                    source=f"KEY_SOURCE_{key.source.upper()}",
                    name=key.name or "",
                    fingerprint=key.fingerprint,
                    public_key=crypto.public_key_pem(key.public_key),
                    updated_at=messages.unix(key.updated_at),
                    revoked_at=messages.unix(key.revoked_at),
                    expires_at=messages.unix(key.expires_at),
                )
            )
        )


async def _start(server: GrpclibServer) -> int:
    await server.start("127.0.0.1", 0)
    listener: Any = server._server
    port: int = listener.sockets[0].getsockname()[1]
    return port


async def _check_grpc_status(
    port: int, request: pb.GetSigningKeyRequest, md: dict[str, str]
) -> str:
    channel = Channel("127.0.0.1", port)
    try:
        reply = await pb.SigningKeysStub(channel).get_signing_key(request, metadata=md, timeout=5)
        return f"OK ({reply.key.id[:8]}…)"
    finally:
        channel.close()


async def _h2load(
    port: int, body_file: Path, authorization: str, args: argparse.Namespace
) -> tuple[float, int, int]:
    command = [
        "h2load",
        f"--duration={args.duration:g}",
        f"--warm-up-time={args.warm_up:g}",
        f"--clients={args.connections}",
        f"--max-concurrent-streams={args.streams}",
        "--threads=1",
        f"--data={body_file}",
        "--header=content-type: application/grpc",
        "--header=te: trailers",
        f"--header=authorization: {authorization}",
        f"http://127.0.0.1:{port}{PATH}",
    ]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output = (await process.communicate())[0].decode()
    rps = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", output)
    done = re.search(
        r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed", output
    )
    if rps is None or done is None:
        raise RuntimeError(f"cannot read h2load's output:\n{output}")
    return float(rps.group(1)), int(done.group(1)), int(done.group(2))


async def _python_load(
    port: int, body_file: Path, authorization: str, args: argparse.Namespace
) -> tuple[float, int, int]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.perf.grpc_load",
        str(port),
        str(body_file),
        authorization,
        str(args.duration),
        str(args.connections * args.streams),
        stdout=asyncio.subprocess.PIPE,
    )
    result = json.loads((await process.communicate())[0])
    return float(result["rps"]), int(result["ok"]), int(result["failed"])


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


async def run(args: argparse.Namespace) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    # h2load drops its connections mid-write when a run ends; asyncio warns for each one.
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    load = _h2load if shutil.which("h2load") else _python_load
    local = DEFAULT_REGIONS[0].name
    with LocalTopology(regions=DEFAULT_REGIONS[:1]) as topology:
        env = {
            **topology.env(local),
            # Straight to PostgreSQL: the fault proxy's event loop would share this process.
            region_dsn_variable(local): topology.region(local).direct_dsn,
            "SIGNING_KEYS_HTTP_HOST": "127.0.0.1",
            "SIGNING_KEYS_HTTP_PORT": "0",
            "SIGNING_KEYS_GRPC_HOST": "127.0.0.1",
            "SIGNING_KEYS_GRPC_PORT": "0",
            "SIGNING_KEYS_GRPC_ENABLED": "false",
            "SIGNING_KEYS_ACCESS_LOG": "off",
            "SIGNING_KEYS_LOG_LEVEL": "error",
        }
        settings = Settings.from_env(env)
        migrator = Server(settings)
        await migrator.database.start()
        try:
            await migrate(migrator.database)
        finally:
            await migrator.database.aclose()

        async with Server(settings) as server:
            token, secret = await server.authenticator.issue(list(Scope), [ENVIRONMENT])
            principal = await server.authenticator.authenticate(token.id, secret, api="grpc")
            created = await server.keys.create(
                principal, CreateKeyRequest(environment_id=ENVIRONMENT)
            )
            request = pb.GetSigningKeyRequest(id=created.key.id)
            body = bytes(request)
            authorization = f"Bearer {token.id}:{secret}"
            md = {"authorization": authorization}

            service = build_grpc_server(server)
            await service.start("127.0.0.1", 0)
            assert service.port is not None
            channel = Channel("127.0.0.1", service.port)
            reply = await pb.SigningKeysStub(channel).get_signing_key(request, metadata=md)
            channel.close()
            upb_reply = signing_keys_pb2.GetSigningKeyResponse.FromString(bytes(reply))
            bare_upb = GrpclibServer(
                [_BareService(signing_keys_pb2.GetSigningKeyRequest, lambda: upb_reply)]
            )
            bare_bp = GrpclibServer([_BareService(pb.GetSigningKeyRequest, lambda: reply)])
            same_work = GrpclibServer([_SameWorkOnProtobuf(server)])
            targets = [
                Target("bare-protobuf", await _start(bare_upb)),
                Target("bare-betterproto", await _start(bare_bp)),
                Target("GetSigningKey", service.port),
                Target("same-work-protobuf", await _start(same_work)),
            ]
            with tempfile.NamedTemporaryFile(suffix=".bin") as body_file:
                body_file.write(struct.pack(">?I", False, len(body)) + body)
                body_file.flush()
                path = Path(body_file.name)
                print(
                    f"load generator: {'h2load' if load is _h2load else 'python (fallback)'}; "
                    f"{args.connections} connections x {args.streams} streams, "
                    f"{args.duration}s per run after {args.warm_up}s warm-up, {args.runs} rounds"
                )
                for target in targets:
                    status = await _check_grpc_status(target.port, request, md)
                    print(f"  grpc-status check {target.name}: {status}")
                for round_number in range(args.runs):
                    for target in targets:
                        cpu = _cpu_seconds()
                        rps, ok, failed = await load(target.port, path, authorization, args)
                        cpu = _cpu_seconds() - cpu
                        target.rps.append(rps)
                        target.cpu_us.append(cpu / max(ok, 1) * 1e6)
                        print(
                            f"  round {round_number + 1} {target.name:17} {rps:9.0f} req/s"
                            f"  ({ok} ok, {failed} failed)"
                        )
                for target in targets:
                    status = await _check_grpc_status(target.port, request, md)
                    print(f"  grpc-status check {target.name} after: {status}")
            for grpclib_server in (bare_upb, bare_bp, same_work):
                grpclib_server.close()
                await grpclib_server.wait_closed()
            await service.aclose()

    print("\nmedians (req/s; server CPU per call includes warm-up, so an upper bound):")
    for target in targets:
        print(
            f"  {target.name:17} {statistics.median(target.rps):9.0f} req/s"
            f"   {statistics.median(target.cpu_us):6.0f} µs CPU/call"
            f"   runs: {', '.join(f'{rps:.0f}' for rps in target.rps)}"
        )
    service_rps = statistics.median(targets[2].rps)
    for other in (targets[0], targets[1], targets[3]):
        ratio = service_rps / statistics.median(other.rps)
        print(f"  GetSigningKey / {other.name}: {ratio:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "3")))
    parser.add_argument(
        "--duration", type=float, default=float(os.environ.get("BENCH_SECONDS", "3"))
    )
    parser.add_argument("--warm-up", type=float, default=1.0)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--streams", type=int, default=16)
    args, _ = parser.parse_known_args(sys.argv[1:] if __name__ == "__main__" else [])
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
