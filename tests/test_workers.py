"""``SIGNING_KEYS_WORKERS=N``: N processes share the HTTP and gRPC ports; the supervisor
restarts a dead one and drains them all on SIGTERM.

The real ``signing-keys serve`` process, real signals. Which worker answered is read from
``signing_keys_worker_info{worker, pid}`` in ``/metrics``, over a new connection each time
(the kernel spreads connections, not requests, among the workers).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from grpclib.client import Channel
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from harness import LocalTopology
from service.server import CLOSE_BOUND
from service.settings import Settings, SettingsError, usable_cpus
from service.workers import Backoff, Supervisor
from tests.support.service import service_env

ROOT = Path(__file__).resolve().parents[1]
DRAIN_DELAY = 0.5
WORKER_INFO = re.compile(r"^signing_keys_worker_info\{(.*)\} 1\.0$", re.M)
PID_LABEL = re.compile(r'\bpid="(\d+)"')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def alive(pid: int) -> bool:
    try:
        # A zombie (exited, not yet reaped by its parent) counts as gone.
        status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return status != "Z"


def ignores(pid: int, signum: int) -> bool:
    """Whether a process ignores a signal (``SigIgn`` of its status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    ignored = next(line for line in status.splitlines() if line.startswith("SigIgn:"))
    return bool(int(ignored.split()[1], 16) & (1 << (signum - 1)))


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        await asyncio.sleep(0.05)


# --- units ------------------------------------------------------------------------------------


def test_backoff_doubles_while_workers_die_young_and_resets_after_a_healthy_one() -> None:
    backoff = Backoff(first=0.5, maximum=4.0, healthy_lifetime=60.0)
    assert [backoff.after(1.0) for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert backoff.after(61.0) == 0.5
    assert backoff.after(1.0) == 1.0


def test_usable_cpus_follows_the_cgroup_quota(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cores = len(os.sched_getaffinity(0))
    cpu_max.write_text("max 100000\n")
    assert usable_cpus(cpu_max) == cores
    cpu_max.write_text("50000 100000\n")  # half a core: one worker, not none
    assert usable_cpus(cpu_max) == 1
    cpu_max.write_text(f"{100000 * (cores + 8)} 100000\n")  # a quota above the cores
    assert usable_cpus(cpu_max) == cores
    assert usable_cpus(tmp_path / "absent") == cores


def test_workers_setting(migrated_topology: LocalTopology) -> None:
    fixed = service_env(migrated_topology, http_port="8081", grpc_port="50052")
    assert Settings.from_env(fixed).workers == 1
    assert Settings.from_env({**fixed, "SIGNING_KEYS_WORKERS": "3"}).workers == 3
    assert Settings.from_env({**fixed, "SIGNING_KEYS_WORKERS": "auto"}).workers == usable_cpus()
    for bad in ("0", "x", "-2"):
        with pytest.raises(SettingsError, match="SIGNING_KEYS_WORKERS"):
            Settings.from_env({**fixed, "SIGNING_KEYS_WORKERS": bad})
    # Port 0 would give each worker a port of its own.
    with pytest.raises(SettingsError, match="SIGNING_KEYS_WORKERS=2 needs fixed ports"):
        Settings.from_env({**service_env(migrated_topology), "SIGNING_KEYS_WORKERS": "2"})


GRACEFUL = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); "
DEAF = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "


async def test_the_supervisor_replaces_an_exited_worker_and_stops_all() -> None:
    """Stand-in workers: the first exits at once each time, the second waits for SIGTERM."""
    supervisor = Supervisor(
        workers=2,
        stop_bound=10.0,
        command=lambda index: [
            sys.executable,
            "-c",
            GRACEFUL + ("sys.exit(3)" if index == 1 else "time.sleep(60)"),
        ],
        backoff=lambda: Backoff(first=0.05, maximum=0.1),
    )
    running = asyncio.create_task(supervisor.run())

    async def restarted() -> bool:
        return supervisor.workers[0].starts >= 3 and supervisor.workers[1].starts == 1

    await eventually(restarted)
    supervisor.request_stop()
    async with asyncio.timeout(10):
        code = await running
    assert supervisor.workers[1].exit_code == 0  # stopped by the forwarded SIGTERM
    assert code == 1  # the other's last exit was 3


async def test_a_worker_that_ignores_sigterm_is_killed_at_the_bound() -> None:
    supervisor = Supervisor(
        workers=1,
        stop_bound=0.5,
        command=lambda _: [sys.executable, "-c", DEAF + "time.sleep(60)"],
    )
    running = asyncio.create_task(supervisor.run())

    async def ignoring_sigterm() -> bool:  # else the SIGTERM would come before its SIG_IGN
        return bool(supervisor.pids) and ignores(supervisor.pids[0], signal.SIGTERM)

    await eventually(ignoring_sigterm)
    stopping = time.monotonic()
    supervisor.request_stop()
    async with asyncio.timeout(10):
        code = await running
    assert 0.5 <= time.monotonic() - stopping < 5
    assert supervisor.workers[0].exit_code == -signal.SIGKILL
    assert code == 1


# --- the real process -------------------------------------------------------------------------


class Workers:
    """A ``serve`` process with WORKERS=2 on fixed ports, and what the tests ask of it."""

    def __init__(self, process: asyncio.subprocess.Process, http_port: int, grpc_port: int):
        self.process = process
        self.base = f"http://127.0.0.1:{http_port}"
        self.grpc_port = grpc_port

    async def answering_pid(self) -> int | None:
        """The pid of the worker that accepts a new connection, or None if none answered."""
        connector = aiohttp.TCPConnector(force_close=True)
        try:
            async with (
                aiohttp.ClientSession(connector=connector) as session,
                session.get(f"{self.base}/metrics", timeout=aiohttp.ClientTimeout(5)) as response,
            ):
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError):
            return None
        info = WORKER_INFO.search(text)
        assert info is not None, "no signing_keys_worker_info in /metrics"
        pid = PID_LABEL.search(info.group(1))
        assert pid is not None, info.group(0)
        return int(pid.group(1))

    async def pids_seen(self, tries: int = 40) -> set[int]:
        seen = set()
        for _ in range(tries):
            pid = await self.answering_pid()
            if pid is not None:
                seen.add(pid)
        return seen


@pytest.fixture
async def workers(migrated_topology: LocalTopology) -> AsyncIterator[Workers]:
    http_port, grpc_port = free_port(), free_port()
    env = {
        **os.environ,
        **service_env(
            migrated_topology,
            http_port=str(http_port),
            grpc_port=str(grpc_port),
            drain_delay=str(DRAIN_DELAY),
            workers="2",
            log_level="warning",
        ),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", "serve", cwd=ROOT, env=env
    )
    running = Workers(process, http_port, grpc_port)
    try:
        yield running
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                async with asyncio.timeout(DRAIN_DELAY + CLOSE_BOUND + 10):
                    await process.wait()
            except TimeoutError:
                process.kill()  # the workers see their parent gone and drain themselves
                await process.wait()


async def test_two_workers_share_both_ports(workers: Workers) -> None:
    first: set[int] = set()

    async def both_answer() -> bool:
        first.update(await workers.pids_seen(10))
        return len(first) == 2

    await eventually(both_answer)
    assert workers.process.pid not in first  # the supervisor serves nothing
    # Neither is crash-looping (a worker that could not bind the gRPC port would be replaced
    # by a new pid): the same two keep answering.
    assert await workers.pids_seen() == first
    channel = Channel("127.0.0.1", workers.grpc_port)
    try:
        for _ in range(4):
            reply = await HealthStub(channel).Check(HealthCheckRequest())
            assert reply.status == HealthCheckResponse.SERVING
    finally:
        channel.close()


async def test_a_killed_worker_is_restarted_and_the_port_keeps_answering(
    workers: Workers,
) -> None:
    first: set[int] = set()

    async def both_answer() -> bool:
        first.update(await workers.pids_seen(10))
        return len(first) == 2

    await eventually(both_answer)
    victim, survivor = sorted(first)
    os.kill(victim, signal.SIGKILL)
    # The port keeps answering: the survivor (and soon the replacement) takes every new
    # connection; at most a connection or two caught in the dead worker's queue is reset.
    answers = [await workers.answering_pid() for _ in range(20)]
    assert victim not in answers
    assert answers.count(None) <= 2, answers

    async def replaced() -> bool:
        pids = await workers.pids_seen(10)
        return survivor in pids and len(pids) == 2 and victim not in pids

    await eventually(replaced)
    assert workers.process.returncode is None


async def test_sigterm_drains_every_worker_and_the_supervisor_exits_0(workers: Workers) -> None:
    pids: set[int] = set()

    async def both_answer() -> bool:
        pids.update(await workers.pids_seen(10))
        return len(pids) == 2

    await eventually(both_answer)
    signalled = time.monotonic()
    workers.process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(DRAIN_DELAY + CLOSE_BOUND + 10):
        code = await workers.process.wait()
    took = time.monotonic() - signalled
    print(f"\nsupervisor exited {code} {took:.2f} s after SIGTERM")
    assert code == 0
    # Each worker kept its drain delay, and every one is gone with the supervisor.
    assert DRAIN_DELAY <= took < DRAIN_DELAY + CLOSE_BOUND
    assert not any(alive(pid) for pid in pids)
    assert await workers.answering_pid() is None
