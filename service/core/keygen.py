"""Key generation off the event loop, bounded: a few threads and a short queue.

An RSA-2048 key takes ≈ 35 ms of CPU (160 ms in the tail); on the event loop that would stall
every lookup and verification behind it. ``cryptography`` releases the GIL while OpenSSL
generates, so a thread is enough to keep the loop free. What a thread pool alone does not
give is a bound: ``asyncio.to_thread`` queues without limit, so a burst of creations would
pile up minutes of work (and memory) that callers have long given up on. Here at most
``threads`` keys are generated at once and ``queue`` more wait; past that, a creation is
refused at once with :class:`~service.errors.DependencyError` (HTTP 503 with ``Retry-After``,
gRPC ``UNAVAILABLE``): this instance is at capacity, another or a later try may not be.

On Linux the generating threads run at the lowest CPU priority (nice 19): when the cores are
busy, lookups and verifications — the latency that matters — go first, and a creation
takes a little longer.

>>> generator = KeyGenerator(threads=2, queue=16)
>>> pair = await generator.generate("RS256")
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import sys
import threading
from typing import Final

import structlog

from service.core import crypto
from service.core.crypto import Algorithm, KeyPair
from service.errors import DependencyError

log = structlog.get_logger(__name__)

DEFAULT_THREADS: Final = 2
DEFAULT_QUEUE: Final = 16
LOWEST_PRIORITY: Final = 19
AT_CAPACITY: Final = (
    "key generation is at capacity on this instance ({pending} in progress or waiting); "
    "retry after a moment"
)


def _lower_priority() -> None:
    """In each generating thread: yield the CPU to the event loop's thread when both want it.
    Linux applies a nice value to one thread (by its native id); elsewhere the call would
    renice the whole process, so it is not made."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError):  # not permitted: generate at normal priority
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOWEST_PRIORITY)


class KeyGenerator:
    """Generates key pairs in ``threads`` threads, with at most ``queue`` more waiting."""

    def __init__(self, *, threads: int = DEFAULT_THREADS, queue: int = DEFAULT_QUEUE) -> None:
        if threads < 1 or queue < 0:
            raise ValueError("a key generator needs a thread, and a queue of 0 or more")
        self.threads = threads
        self.capacity = threads + queue
        self._pending = 0
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="keygen", initializer=_lower_priority
        )

    def __repr__(self) -> str:
        return f"<KeyGenerator pending={self._pending}/{self.capacity} threads={self.threads}>"

    @property
    def pending(self) -> int:
        """Generations running or waiting."""
        return self._pending

    async def generate(self, algorithm: Algorithm) -> KeyPair:
        """A new key pair; :class:`DependencyError` at once if ``capacity`` are pending."""
        if self._pending >= self.capacity:
            log.warning("keygen_at_capacity", pending=self._pending, algorithm=algorithm)
            raise DependencyError(AT_CAPACITY.format(pending=self._pending))
        loop = asyncio.get_running_loop()
        submitted = self._executor.submit(crypto.generate_key_pair, algorithm)
        self._pending += 1
        # Counted until the thread is done with it, not until the caller stops waiting: a
        # caller that gives up cannot stop a generation already running, and the bound is
        # on the work, not on the waiters.
        submitted.add_done_callback(lambda _: loop.call_soon_threadsafe(self._finished))
        return await asyncio.wrap_future(submitted)

    def _finished(self) -> None:
        self._pending -= 1

    def close(self) -> None:
        """Let running generations finish in the background; start no queued one."""
        self._executor.shutdown(wait=False, cancel_futures=True)
