"""An asyncio event loop of its own, running in a daemon thread, driven by synchronous callers.

The fault proxies and the harness's SQL helper live on such loops so that they keep working
while a test's own event loop is busy (or before any event loop exists, as in a sync CLI).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import structlog

log = structlog.get_logger(__name__)

T = TypeVar("T")


class LoopThread:
    """One event loop in one daemon thread; :meth:`run` hands it a coroutine and waits.

    >>> worker = LoopThread("example")
    >>> worker.start()
    >>> worker.run(asyncio.sleep(0, result=42))
    42
    >>> worker.stop()
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "running" if self.is_running else "new"
        return f"<LoopThread {self._name} {state}>"

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopped

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError(f"{self!r} is not started")
        return self._loop

    def in_loop_thread(self) -> bool:
        return self._thread is not None and threading.get_ident() == self._thread.ident

    def start(self) -> None:
        if self._thread is not None or self._stopped:
            raise RuntimeError(f"{self!r} cannot be started twice")
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._main, args=(self._loop, ready), name=self._name, daemon=True
        )
        self._thread.start()
        ready.wait()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and return its result; raise TimeoutError after ``timeout``."""
        if not self.is_running or self._loop is None:
            coro.close()
            raise RuntimeError(f"{self!r} is not running")
        if self.in_loop_thread():
            coro.close()
            raise RuntimeError(f"{self!r}: run() called from its own thread would deadlock")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"{self._name}: no result within {timeout} s") from None

    def call(self, fn: Callable[[], T], timeout: float | None = 10.0) -> T:
        """Run the plain function ``fn`` on the loop thread (directly when already there)."""
        if self.in_loop_thread():
            return fn()

        async def invoke() -> T:
            return fn()

        return self.run(invoke(), timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel what still runs on the loop, close it and join the thread. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._loop is None or self._thread is None:
            return
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("loop_thread_stuck", name=self._name, timeout=timeout)

    @staticmethod
    def _main(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            try:
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                asyncio.set_event_loop(None)
                loop.close()
