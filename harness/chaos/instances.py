"""Service instances as real processes: ``python -m service serve``, one per region.

The chaos run talks to the service the way production callers do, over HTTP and gRPC to a
separate process, so that a ``kill -9`` is a real crash and file descriptors and memory are
the process's own::

    instance = ServiceInstance("aws-us-east-1", env=topology.env("aws-us-east-1"),
                               log_path=run_dir / "aws-us-east-1.log")
    await instance.start()          # waits until /readyz answers 200 and gRPC accepts
    instance.kill()                 # SIGKILL, as a crash
    await instance.start()          # same ports: clients reconnect to the new process
    await instance.stop()           # SIGTERM, then SIGKILL after a deadline
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import aiohttp
import structlog

from harness.postgres import free_port

log = structlog.get_logger(__name__)

DEFAULT_START_TIMEOUT = 30.0
DEFAULT_STOP_TIMEOUT = 10.0


class InstanceError(RuntimeError):
    """A service instance did not start (the message carries its log's tail)."""


class ServiceInstance:
    """One service process for one region, restartable on the same ports."""

    def __init__(
        self,
        region: str,
        *,
        env: Mapping[str, str],
        log_path: Path,
        http_port: int | None = None,
        grpc_port: int | None = None,
    ) -> None:
        self.region = region
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.log_path = log_path
        self._env = {
            **os.environ,
            **env,
            "SIGNING_KEYS_LOCAL_REGION": region,
            "SIGNING_KEYS_HTTP_HOST": "127.0.0.1",
            "SIGNING_KEYS_HTTP_PORT": str(self.http_port),
            "SIGNING_KEYS_GRPC_HOST": "127.0.0.1",
            "SIGNING_KEYS_GRPC_PORT": str(self.grpc_port),
        }
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.starts = 0

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.is_running else "down"
        return (
            f"<ServiceInstance {self.region} http={self.http_port} grpc={self.grpc_port} {state}>"
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.is_running and self._process is not None else None

    async def start(self, *, timeout: float = DEFAULT_START_TIMEOUT) -> int:
        """Spawn the process and wait until it serves; return its pid."""
        if self.is_running:
            raise InstanceError(f"{self!r} is already running")
        pid = self._spawn()
        try:
            await self._wait_ready(timeout)
        except BaseException:
            self.kill()
            raise
        log.debug("instance_started", region=self.region, pid=pid)
        return pid

    async def __aenter__(self) -> ServiceInstance:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the process for good (as :meth:`stop`; named as every closer here is)."""
        await self.stop()

    def _spawn(self) -> int:
        self._reap()
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve"],
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.starts += 1
        return self._process.pid

    async def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        probe_timeout = aiohttp.ClientTimeout(total=1.0)
        async with aiohttp.ClientSession(timeout=probe_timeout) as session:
            while True:
                if not self.is_running:
                    raise InstanceError(
                        f"{self.region}: the service exited while starting; log tail:\n"
                        + self.log_tail()
                    )
                if await _answers(session, self.base_url + "/readyz") and await _accepts(
                    self.grpc_port
                ):
                    return
                if time.monotonic() > deadline:
                    raise InstanceError(
                        f"{self.region}: not ready within {timeout} s; log tail:\n"
                        + self.log_tail()
                    )
                await asyncio.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, as a crash; waits until the process is gone."""
        process = self._process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGKILL)
            process.wait()
        self._reap()

    async def stop(self, *, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """SIGTERM (a graceful shutdown), then SIGKILL if it outlives ``timeout``."""
        process = self._process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, timeout)
            except subprocess.TimeoutExpired:
                log.warning("instance_stop_forced", region=self.region, pid=process.pid)
        self.kill()

    def _reap(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            self._process = None
        if self._process is None and self._log is not None:
            self._log.close()
            self._log = None

    def stats(self) -> tuple[int, int] | None:
        """(open file descriptors, resident bytes) of the running process, or None."""
        pid = self.pid
        if pid is None:
            return None
        try:
            fds = len(os.listdir(f"/proc/{pid}/fd"))
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return None
        rss = 0
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
                break
        return fds, rss

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


async def _answers(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.get(url) as response:
            return response.status == 200
    except asyncio.CancelledError:
        raise
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False


async def _accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1.0)
    except asyncio.CancelledError:
        raise
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
