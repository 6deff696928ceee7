"""Where the hot paths' time goes: py-spy samples the service process while wrk or h2load
loads one path at a time.

    python -m tests.perf.profile            # or: make profile  (PROFILE_SECONDS=10)

For each path it writes the collapsed stacks (``bench-results/profile-<path>.txt``: load them
into speedscope.app or flamegraph.pl for the flame graph) and prints the main thread's top
frames as a share of wall time: *inclusive* (the frame is anywhere on the stack) and *self*
(the frame is the leaf). ``--idle`` sampling makes the shares add up to wall time, so the
event loop waiting in ``select`` shows how much of the time the process had nothing to do.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from service.grpc.generated.signingkeys.v1 import signing_keys_pb2 as pb2
from tests.perf import loads
from tests.perf.bare import GET_KEY_PATH
from tests.perf.loads import GrpcCase, HttpCase, Sample
from tests.perf.rig import AUDIENCE, ENVIRONMENT, ROOT, Rig, ServiceProcess, topology

RATE = 250
TOP = 18
_PLUMBING = (
    "<frozen runpy>",
    "asyncio/runners.py",
    "run_forever (",
    "_run_once (",
    "service/cli.py",
    "Handle._run (",
)
_LINE = re.compile(r" \(([^)]*?)(?::\d+)?\)$")


@dataclass(frozen=True, slots=True)
class Profile:
    """Sample counts of the main thread's stacks (root first), by frame ``name (file)``."""

    stacks: Counter[tuple[str, ...]]

    @classmethod
    def parse(cls, collapsed: str) -> Profile:
        """py-spy's ``--format raw --threads`` output: ``thread;frame;…;frame count`` lines.
        Keeps the main thread only, and drops line numbers so a function is one frame."""
        stacks: Counter[tuple[str, ...]] = Counter()
        for line in collapsed.splitlines():
            stack, _, count = line.rpartition(" ")
            frames = stack.split(";")
            if not frames or "MainThread" not in frames[0]:
                continue
            stacks[tuple(_short(frame) for frame in frames[1:])] += int(count)
        return cls(stacks)

    @property
    def total(self) -> int:
        return sum(self.stacks.values())

    def inclusive(self) -> Counter[str]:
        """By frame, the samples with it on the stack; the frames every request passes
        through (interpreter start, the event loop's run loop) are left out: they say 100%."""
        counts: Counter[str] = Counter()
        for stack, count in self.stacks.items():
            for frame in set(stack):
                if not any(part in frame for part in _PLUMBING):
                    counts[frame] += count
        return counts

    def self_time(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for stack, count in self.stacks.items():
            if stack:
                counts[stack[-1]] += count
        return counts

    def share(self, predicate: Callable[[tuple[str, ...]], bool]) -> float:
        hit = sum(count for stack, count in self.stacks.items() if predicate(stack))
        return hit / self.total if self.total else 0.0

    def summary(self, top: int = TOP) -> str:
        lines = [f"{self.total} samples of the main thread"]
        for title, counts in (("inclusive", self.inclusive()), ("self", self.self_time())):
            lines.append(f"  top {top} {title} (% of wall):")
            for frame, count in counts.most_common(top):
                lines.append(f"    {100 * count / self.total:5.1f}%  {frame}")
        return "\n".join(lines)


def _short(frame: str) -> str:
    """``handler (/x/site-packages/aiohttp/web_app.py:563)`` → ``handler (aiohttp/web_app.py)``."""
    match = _LINE.search(frame)
    if match is None:
        return frame
    path = match.group(1)
    for marker in ("site-packages/", "/lib/python3.11/", str(ROOT) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{frame[: match.start()]} ({path})"


async def record(
    service: ServiceProcess,
    name: str,
    seconds: float,
    load: Callable[[], Coroutine[Any, Any, Sample]],
    out_dir: Path,
) -> tuple[Profile, Sample]:
    out = out_dir / f"profile-{name}.txt"
    spy = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("py-spy")),
        "record",
        "--pid",
        str(service.pid),
        "--rate",
        str(RATE),
        "--duration",
        str(round(seconds)),
        "--format",
        "raw",
        "--threads",
        "--idle",
        "--nonblocking",  # do not pause the service per sample: the figures stay honest
        "--output",
        str(out),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    await asyncio.sleep(0.5)
    sample = await load()
    _, err = await spy.communicate()
    if spy.returncode != 0:
        raise RuntimeError(f"py-spy failed: {err.decode()}")
    return Profile.parse(out.read_text()), sample


async def run(seconds: float, out_dir: Path) -> None:
    with topology(regions=1) as topo:
        rig = Rig(topo, topo.region_names[0])
        await asyncio.to_thread(rig.prepare)
        auth = rig.authorization
        kid = rig.key_ids["RS256"]
        get_message = pb2.GetSigningKeyRequest(id=kid, environment_id=ENVIRONMENT)
        with rig.service() as service:
            verify = HttpCase(
                "POST",
                f"{service.base}/v1/tokens/verify",
                {"Authorization": auth, "Content-Type": "application/json"},
                json.dumps(
                    {
                        "token": rig.tokens["RS256"],
                        "audience": AUDIENCE,
                        "environment_id": ENVIRONMENT,
                    }
                ),
                lambda status, body: status == 200 and b'"valid":true' in body.replace(b" ", b""),
            )
            get = HttpCase(
                "GET",
                f"{service.base}/system/v1/signing-keys/{kid}?environment_id={ENVIRONMENT}",
                {"Authorization": auth},
                None,
                lambda status, body: status == 200 and kid.encode() in body,
            )
            grpc_get = GrpcCase(
                service.grpc_port,
                GET_KEY_PATH,
                get_message.SerializeToString(),
                auth,
                lambda reply: pb2.GetSigningKeyResponse.FromString(reply).key.id == kid,
            )
            paths: list[tuple[str, Callable[[], Coroutine[Any, Any, Sample]]]] = [
                ("http-verify-rs256", lambda: loads.wrk(verify, seconds)),
                ("http-get-key", lambda: loads.wrk(get, seconds)),
                ("grpc-get-signing-key", lambda: loads.h2load(grpc_get, seconds)),
            ]
            for name, load in paths:
                await load()  # warm-up, not recorded
                profile, sample = await record(service, name, seconds, load, out_dir)
                print(
                    f"\n=== {name}: {sample.rps:,.0f} req/s, p50 {sample.p50_ms} ms, "
                    f"p99 {sample.p99_ms} ms, correct={sample.correct} ===",
                    flush=True,
                )
                print(profile.summary(), flush=True)
                print(_categories(profile), flush=True)


CATEGORIES: dict[str, Callable[[tuple[str, ...]], bool]] = {
    "idle (event loop waiting in epoll)": lambda s: (
        bool(s) and s[-1].startswith("EpollSelector.select")
    ),
    "asyncpg / database round trip": lambda s: any("asyncpg/" in f for f in s),
    "locality router": lambda s: any("service/locality/" in f for f in s),
    "credential check (service/core/auth.py)": lambda s: any(
        "service/core/auth.py" in f for f in s
    ),
    # cryptography's verify is Rust: its time shows as the self time of the caller.
    "signature verify (_signature_ok)": lambda s: any(f.startswith("_signature_ok (") for f in s),
    "socket send (loopback send(): the kernel delivers to the reader in the writer's time)": (
        lambda s: bool(s) and s[-1].startswith("_SelectorSocketTransport.write")
    ),
    "access-token table poller": lambda s: any("CredentialTable" in f for f in s),
    "JSON encode/decode": lambda s: any(f.split(" ")[0] in ("dumps", "loads") for f in s),
    "prometheus metrics": lambda s: any("prometheus_client/" in f for f in s),
    "structlog": lambda s: any("structlog/" in f for f in s),
    "betterproto": lambda s: any("betterproto/" in f for f in s),
    "grpclib": lambda s: any("grpclib/" in f for f in s),
    "h2 (HTTP/2 framing)": lambda s: any("h2/" in f and "grpclib" not in f for f in s),
    "aiohttp web_protocol (parsing, writing)": lambda s: any(
        "aiohttp/web_protocol" in f for f in s
    ),
}


def _categories(profile: Profile) -> str:
    lines = ["  by category (inclusive, % of wall; categories overlap):"]
    for name, predicate in CATEGORIES.items():
        lines.append(f"    {100 * profile.share(predicate):5.1f}%  {name}")
    return "\n".join(lines)


def main() -> int:
    if shutil.which("wrk") is None or shutil.which("h2load") is None:
        print("wrk or h2load is missing: make bench-tools")
        return 1
    if not Path(sys.executable).with_name("py-spy").exists():
        print("py-spy is missing: pip install py-spy (a dev dependency)")
        return 1
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    seconds = float(os.environ.get("PROFILE_SECONDS", "10"))
    out_dir = Path(os.environ.get("PROFILE_OUT", str(ROOT / "bench-results")))
    out_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(run(seconds, out_dir))
    print(f"\ncollapsed stacks written to {out_dir}/profile-*.txt")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
