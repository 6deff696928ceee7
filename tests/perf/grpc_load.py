"""A small gRPC load generator, used by grpc_bench.py only where h2load is not installed.

    python -m tests.perf.grpc_load PORT BODY_FILE AUTHORIZATION DURATION CONCURRENCY

Sends the pre-framed request in BODY_FILE as fast as CONCURRENCY tasks can over one
connection for DURATION seconds; prints ``{"rps": …, "ok": …, "failed": …}``. Its own CPU
cost is far higher than h2load's, so its figures are lower bounds.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.exceptions import GRPCError

from tests.perf.loads import RawCodec

PATH = "/signingkeys.v1.SigningKeys/GetSigningKey"


async def load(
    port: int, body: bytes, authorization: str, duration: float, concurrency: int
) -> dict[str, float]:
    message = body[5:]  # drop the gRPC frame prefix: grpclib adds its own
    channel = Channel("127.0.0.1", port, codec=RawCodec())
    ok = failed = 0
    stop = time.monotonic() + duration

    async def worker() -> None:
        nonlocal ok, failed
        while time.monotonic() < stop:
            try:
                async with channel.request(
                    PATH,
                    Cardinality.UNARY_UNARY,
                    bytes,
                    bytes,
                    metadata={"authorization": authorization},
                ) as stream:
                    await stream.send_message(message, end=True)
                    await stream.recv_message()
                ok += 1
            except GRPCError:
                failed += 1

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - started
    channel.close()
    return {"rps": ok / elapsed, "ok": ok, "failed": failed}


if __name__ == "__main__":
    port, body_file, authorization, duration, concurrency = sys.argv[1:6]
    result = asyncio.run(
        load(
            int(port),
            Path(body_file).read_bytes(),
            authorization,
            float(duration),
            int(concurrency),
        )
    )
    print(json.dumps(result))
