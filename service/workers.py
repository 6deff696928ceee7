"""Every core: ``SIGNING_KEYS_WORKERS=N`` serving processes behind one pair of ports.

One Python process serves from one event loop, so it uses one core. With ``N`` above 1,
``signing-keys serve`` becomes a :class:`Supervisor`: it starts ``N`` workers, each
``signing-keys serve --worker I`` — a whole :class:`~service.server.Server` with its own
router, key cache, credentials and change feed — and each binds the HTTP and gRPC ports with
``SO_REUSEPORT``, so that the kernel spreads new connections among them. The supervisor
serves nothing itself and holds no socket.

- A worker that dies (a crash, an OOM kill, ``kill -9``) is started again after a backoff
  (:class:`Backoff`: 0.5 s doubling to 30 s, back to 0.5 s once a worker has lived a
  minute), logged as ``worker_exited``; the others keep serving the ports meanwhile.
- SIGTERM (or SIGINT) is forwarded to every worker, each of which drains as a lone process
  does (``/readyz`` fails, ``DRAIN_DELAY``, then the close); the supervisor waits for them
  all, at most ``stop_bound`` seconds (``DRAIN_DELAY`` + the close bound + a margin), kills
  what is left after that, and exits 0 if every worker exited 0, else 1.
- A worker whose supervisor is gone (killed with SIGKILL, say) drains and exits by itself
  (:func:`watch_parent`), rather than hold the ports for ever.

Each worker has its own ``/metrics``: a scrape of the shared port reads the worker that
accepted its connection. ``signing_keys_worker_info{worker, pid}`` says which.

>>> supervisor = Supervisor(workers=2, stop_bound=25.0)
>>> exit_code = await supervisor.run()
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import structlog
from prometheus_client import CollectorRegistry, Gauge

log = structlog.get_logger(__name__)

FIRST_RESTART_DELAY: Final = 0.5
MAX_RESTART_DELAY: Final = 30.0
# A worker that lived this long was healthy: its successor starts after the first delay again.
HEALTHY_LIFETIME: Final = 60.0
PARENT_CHECK_INTERVAL: Final = 1.0


def worker_command(index: int) -> list[str]:
    """How a worker is started: this interpreter, the same package, ``serve --worker I``;
    it reads the same ``SIGNING_KEYS_*`` environment as its supervisor."""
    return [sys.executable, "-m", "service", "serve", "--worker", str(index)]


@dataclass
class Backoff:
    """The delay before a dead worker starts again: doubling while workers keep dying young,
    reset by one that lived ``healthy_lifetime`` seconds."""

    first: float = FIRST_RESTART_DELAY
    maximum: float = MAX_RESTART_DELAY
    healthy_lifetime: float = HEALTHY_LIFETIME
    _next: float = field(default=0.0, init=False)

    def after(self, lifetime: float) -> float:
        """The delay before a restart, for a worker that lived ``lifetime`` seconds."""
        if lifetime >= self.healthy_lifetime or self._next == 0.0:
            self._next = self.first
        delay = self._next
        self._next = min(self._next * 2, self.maximum)
        return delay


@dataclass
class Worker:
    """One worker slot: the process now in it, and how many times it was started."""

    index: int
    process: asyncio.subprocess.Process | None = None
    starts: int = 0
    exit_code: int | None = None
    backoff: Backoff = field(default_factory=Backoff)


class Supervisor:
    """Starts ``workers`` serving processes, restarts the dead, drains all on SIGTERM."""

    def __init__(
        self,
        *,
        workers: int,
        stop_bound: float,
        command: Callable[[int], Sequence[str]] = worker_command,
        backoff: Callable[[], Backoff] = Backoff,
    ) -> None:
        if workers < 1:
            raise ValueError("a supervisor needs at least one worker")
        self.workers = [Worker(index, backoff=backoff()) for index in range(1, workers + 1)]
        self.stop_bound = stop_bound
        self._command = command
        self._stopping = asyncio.Event()

    def __repr__(self) -> str:
        pids = [worker.process.pid if worker.process else None for worker in self.workers]
        return f"<Supervisor workers={pids} stopping={self._stopping.is_set()}>"

    @property
    def pids(self) -> list[int]:
        """The processes in the slots now (started, maybe already dead)."""
        return [w.process.pid for w in self.workers if w.process is not None]

    def request_stop(self) -> None:
        """Begin the shutdown (idempotent): for signal handlers."""
        self._stopping.set()

    async def run(self) -> int:
        """Supervise until SIGTERM or SIGINT (or :meth:`request_stop`); the exit code."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop)
        try:
            slots = [asyncio.create_task(self._keep(worker)) for worker in self.workers]
            log.info("supervisor_started", workers=len(self.workers), pid=os.getpid())
            await self._stopping.wait()
            return await self._stop(slots)
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)

    async def _keep(self, worker: Worker) -> None:
        """Keep a process in ``worker``'s slot until the shutdown."""
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                process = await asyncio.create_subprocess_exec(*self._command(worker.index))
            except OSError:  # no process (out of memory, of pids): try again later
                delay = worker.backoff.after(0.0)
                log.exception("worker_not_started", worker=worker.index, retry_in=delay)
            else:
                worker.process, worker.exit_code = process, None
                worker.starts += 1
                log.info(
                    "worker_started", worker=worker.index, pid=process.pid, starts=worker.starts
                )
                code = await process.wait()
                worker.exit_code = code
                if self._stopping.is_set():
                    return
                delay = worker.backoff.after(time.monotonic() - started)
                log.warning(
                    "worker_exited",
                    worker=worker.index,
                    pid=process.pid,
                    exit_code=code,
                    restart_in=delay,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def _stop(self, slots: list[asyncio.Task[None]]) -> int:
        """Forward SIGTERM to every worker, wait for all within the bound, kill the rest."""
        log.info("supervisor_draining", workers=self.pids, bound=self.stop_bound)
        for worker in self.workers:
            _signal(worker.process, signal.SIGTERM)
        _, late = await asyncio.wait(slots, timeout=self.stop_bound)
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                log.warning("worker_killed", worker=worker.index, pid=worker.process.pid)
                _signal(worker.process, signal.SIGKILL)
        if late:
            await asyncio.wait(late)
        codes = [worker.exit_code for worker in self.workers]
        log.info("supervisor_stopped", exit_codes=codes)
        return 0 if all(code == 0 for code in codes) else 1


def _signal(process: asyncio.subprocess.Process | None, signum: int) -> None:
    if process is not None and process.returncode is None:
        with contextlib.suppress(ProcessLookupError):  # it has just exited
            process.send_signal(signum)


async def watch_parent(on_orphaned: Callable[[], object]) -> None:
    """In a worker: call ``on_orphaned`` once the supervisor is gone (the process's parent
    changes when its parent dies), so that an orphan drains and frees the ports."""
    parent = os.getppid()
    # Polled: nothing notifies a process of its parent's death short of a signal set up
    # through prctl, which the standard library does not offer.
    while os.getppid() == parent:  # noqa: ASYNC110
        await asyncio.sleep(PARENT_CHECK_INTERVAL)
    log.warning("worker_orphaned", supervisor=parent)
    on_orphaned()


def register_worker_info(registry: CollectorRegistry, index: int) -> None:
    """``signing_keys_worker_info{worker, pid} 1``: which worker answered a scrape."""
    info = Gauge(
        "signing_keys_worker_info",
        "The worker (of SIGNING_KEYS_WORKERS) this /metrics answer comes from, and its pid.",
        ["worker", "pid"],
        registry=registry,
    )
    info.labels(str(index), str(os.getpid())).set(1)
