"""Load runs: wrk (HTTP) and h2load (gRPC), each with a sampler checking answers meanwhile.

A run's figures are the load generator's rate and latency percentiles; its correctness is
the load generator's status counts (wrk: non-2xx/3xx and socket errors; h2load: failed and
errored requests) and a sampler that, during the load, sends the same request every
``SAMPLE_EVERY`` seconds from this process and checks the whole answer (body; for gRPC the
``grpc-status`` too, which h2load cannot see). A run with any wrong answer is wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import struct
import tempfile
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError, StreamTerminatedError

from tests.perf.report import median

SAMPLE_EVERY = 0.05
WRK_CONNECTIONS = 32
H2_CLIENTS = 4
H2_STREAMS = 16

BodyCheck = Callable[[int, bytes], bool]


@dataclass(frozen=True, slots=True)
class Sample:
    """One load run: rate, latency percentiles (ms), how many requests, how many wrong."""

    rps: float
    p50_ms: float | None
    p99_ms: float | None
    requests: int
    bad_status: int
    samples: int
    bad_samples: int
    first_bad: str = ""

    @property
    def correct(self) -> bool:
        return self.bad_status == 0 and self.bad_samples == 0 and self.samples > 0


@dataclass(frozen=True, slots=True)
class HttpCase:
    method: str
    url: str
    headers: dict[str, str]
    body: str | None
    check: BodyCheck


@dataclass(frozen=True, slots=True)
class GrpcCase:
    port: int
    path: str
    message: bytes  # the serialised request, without gRPC framing
    authorization: str
    check: Callable[[bytes], bool]


class RawCodec(CodecBase):
    """grpclib codec passing bytes through: the sampler checks replies with upb itself."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        return data


# -- wrk -------------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _wrk_script(case: HttpCase) -> str:
    lines = [f"wrk.method = {json.dumps(case.method)}"]
    if case.body is not None:
        lines.append(f"wrk.body = {json.dumps(case.body)}")
    for name, value in case.headers.items():
        lines.append(f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def parse_wrk(output: str) -> tuple[float, float | None, float | None, int, int]:
    """(rps, p50 ms, p99 ms, requests, bad) from ``wrk --latency`` output."""
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    if rate is None or total is None:
        raise RuntimeError(f"cannot read wrk's output:\n{output}")
    percentiles = {
        match.group(1): float(match.group(2)) * _UNITS[match.group(3)]
        for match in re.finditer(r"^\s+(50|99)(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
    }
    bad = 0
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        bad += int(non_2xx.group(1))
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if errors:
        bad += sum(int(value) for value in errors.groups())
    requests = int(total.group(1))
    if requests == 0:  # wrk prints zero latencies when nothing came back
        return 0.0, None, None, 0, bad
    return float(rate.group(1)), percentiles.get("50"), percentiles.get("99"), requests, bad


async def wrk(
    case: HttpCase,
    seconds: float,
    *,
    connections: int = WRK_CONNECTIONS,
    during: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> Sample:
    """One wrk run (one thread: the machine has two cores) with the sampler beside it;
    ``during`` runs concurrently too (a fault, a writer)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(_wrk_script(case))
        script.flush()
        process = await asyncio.create_subprocess_exec(
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "--latency",
            # Slow answers (a big JWKS on a busy machine) are slow, not failed: wrk's 2 s
            # default would count them as socket errors.
            "--timeout=10s",
            "-s",
            script.name,
            case.url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        stop = asyncio.Event()
        sampler = asyncio.create_task(_sample_http(case, stop))
        side = asyncio.create_task(during()) if during else None
        output = (await process.communicate())[0].decode()
        stop.set()
        samples, bad_samples, first_bad = await sampler
        if side is not None:
            await side
    rps, p50, p99, requests, bad = parse_wrk(output)
    return Sample(rps, p50, p99, requests, bad, samples, bad_samples, first_bad)


async def _sample_http(case: HttpCase, stop: asyncio.Event) -> tuple[int, int, str]:
    count = bad = 0
    first_bad = ""
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while not stop.is_set():
            count += 1
            try:
                async with session.request(
                    case.method, case.url, headers=case.headers, data=case.body
                ) as response:
                    status, body = response.status, await response.read()
                ok = case.check(status, body)
            except (aiohttp.ClientError, TimeoutError) as exc:
                ok, status, body = False, 0, repr(exc).encode()
            if not ok:
                bad += 1
                first_bad = first_bad or f"{status} {body[:200]!r}"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SAMPLE_EVERY)
    return count, bad, first_bad


# -- h2load ----------------------------------------------------------------------------------


def parse_h2load(output: str) -> tuple[float, int, int]:
    """(rps, requests done, failed + errored) from h2load's summary."""
    rate = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", output)
    done = re.search(
        r"requests: \d+ total, \d+ started, (\d+) done, \d+ succeeded, (\d+) failed, "
        r"(\d+) errored",
        output,
    )
    if rate is None or done is None:
        raise RuntimeError(f"cannot read h2load's output:\n{output}")
    return float(rate.group(1)), int(done.group(1)), int(done.group(2)) + int(done.group(3))


def log_percentiles(log: str) -> tuple[float | None, float | None]:
    """p50 and p99 (ms) of h2load's ``--log-file`` (start µs, status, duration µs)."""
    durations = sorted(
        int(fields[2]) / 1000 for line in log.splitlines() if len(fields := line.split()) >= 3
    )
    if not durations:
        return None, None
    return median(durations), durations[min(len(durations) - 1, int(len(durations) * 0.99))]


async def h2load(case: GrpcCase, seconds: float) -> Sample:
    with (
        tempfile.NamedTemporaryFile(suffix=".bin") as body,
        tempfile.NamedTemporaryFile(suffix=".log") as log,
    ):
        body.write(struct.pack(">?I", False, len(case.message)) + case.message)
        body.flush()
        process = await asyncio.create_subprocess_exec(
            "h2load",
            # h2load's durations take units but no fractions of a second.
            f"--duration={round(seconds * 1000)}ms",
            "--warm-up-time=300ms",
            f"--clients={H2_CLIENTS}",
            f"--max-concurrent-streams={H2_STREAMS}",
            "--threads=1",
            f"--data={body.name}",
            f"--log-file={log.name}",
            "--header=content-type: application/grpc",
            "--header=te: trailers",
            f"--header=authorization: {case.authorization}",
            f"http://127.0.0.1:{case.port}{case.path}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        stop = asyncio.Event()
        sampler = asyncio.create_task(_sample_grpc(case, stop))
        output = (await process.communicate())[0].decode()
        stop.set()
        samples, bad_samples, first_bad = await sampler
        p50, p99 = log_percentiles(Path(log.name).read_text())
    rps, requests, bad = parse_h2load(output)
    return Sample(rps, p50, p99, requests, bad, samples, bad_samples, first_bad)


async def _sample_grpc(case: GrpcCase, stop: asyncio.Event) -> tuple[int, int, str]:
    count = bad = 0
    first_bad = ""
    channel = Channel("127.0.0.1", case.port, codec=RawCodec())
    try:
        while not stop.is_set():
            count += 1
            try:
                async with channel.request(
                    case.path,
                    Cardinality.UNARY_UNARY,
                    bytes,
                    bytes,
                    timeout=10,
                    metadata={"authorization": case.authorization},
                ) as stream:
                    await stream.send_message(case.message, end=True)
                    reply = await stream.recv_message()
                ok = reply is not None and case.check(reply)
                detail = repr(reply)[:200]
            except (GRPCError, StreamTerminatedError, OSError, TimeoutError) as exc:
                ok, detail = False, repr(exc)[:200]
            if not ok:
                bad += 1
                first_bad = first_bad or detail
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SAMPLE_EVERY)
    finally:
        channel.close()
    return count, bad, first_bad
