"""A TCP proxy that injects network faults between the service and one region's database.

Each :class:`FaultProxy` runs on its own event loop in its own thread, so it keeps forwarding
(or keeps *not* forwarding) while a test's event loop is busy. Every control method is
synchronous, thread-safe and has taken effect when it returns::

    proxy = FaultProxy("127.0.0.1", 5432)
    proxy.start()                 # listens on 127.0.0.1:proxy.port
    proxy.delay(0.05)             # +50 ms on every chunk, each direction
    proxy.blackhole()             # a partition: accept, swallow, never answer, never close
    proxy.reset()                 # RST every connection, existing and new
    proxy.reset_on(b"COMMIT")     # cut a connection right after its COMMIT left the client
    proxy.pass_through()          # back to normal
    proxy.retarget(5433)          # new connections go to another upstream; old ones are cut
    proxy.stop()
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import structlog

from harness.loop_thread import LoopThread

log = structlog.get_logger(__name__)

Mode = Literal["pass", "blackhole", "reset"]

DEFAULT_CONNECT_TIMEOUT = 5.0
_QUEUE_HIGH_WATER = 1 << 20  # bytes held back by a delay before the sender is paused
_LINGER_RST = struct.pack("ii", 1, 0)


class ProxyError(RuntimeError):
    """The proxy was misused (e.g. controlled after stop())."""


@dataclass(frozen=True, slots=True)
class _Arm:
    pattern: bytes | None
    after_bytes: int | None
    forward: bool
    once: bool
    generation: int


def _abort_with_rst(transport: asyncio.BaseTransport | None) -> None:
    """Close ``transport`` with a TCP RST (SO_LINGER 0) instead of a FIN."""
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    if isinstance(transport, asyncio.Transport):
        transport.abort()
    else:
        transport.close()


class _Channel:
    """One direction of a link: delivers chunks in order, each no earlier than it is due."""

    def __init__(self, link: _Link, *, to_upstream: bool) -> None:
        self._link = link
        self._to_upstream = to_upstream
        self._queue: collections.deque[tuple[float, bytes | None, bool]] = collections.deque()
        self._queued_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._paused_source = False

    def _target(self) -> asyncio.Transport | None:
        return self._link.upstream if self._to_upstream else self._link.client

    def _source(self) -> asyncio.Transport | None:
        return self._link.client if self._to_upstream else self._link.upstream

    def send(self, data: bytes | None, *, close_after: bool = False) -> None:
        """Queue ``data`` (None: end of stream); ``close_after`` closes the target after it."""
        delay = self._link.proxy.current_delay
        if delay <= 0 and not self._queue:
            self._deliver(data, close_after)
            return
        loop = self._link.proxy.loop
        self._queue.append((loop.time() + max(delay, 0.0), data, close_after))
        self._queued_bytes += len(data or b"")
        if self._queued_bytes > _QUEUE_HIGH_WATER and not self._paused_source:
            source = self._source()
            if source is not None:
                source.pause_reading()
                self._paused_source = True
        self._schedule()

    def clear(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._queue.clear()
        self._queued_bytes = 0

    def _schedule(self) -> None:
        if self._timer is None and self._queue:
            self._timer = self._link.proxy.loop.call_at(self._queue[0][0], self._flush)

    def _flush(self) -> None:
        self._timer = None
        now = self._link.proxy.loop.time()
        while self._queue and self._queue[0][0] <= now:
            _, data, close_after = self._queue.popleft()
            self._queued_bytes -= len(data or b"")
            self._deliver(data, close_after)
        if self._paused_source and self._queued_bytes <= _QUEUE_HIGH_WATER // 2:
            source = self._source()
            if source is not None:
                source.resume_reading()
            self._paused_source = False
        self._schedule()

    def _deliver(self, data: bytes | None, close_after: bool) -> None:
        if self._link.blackholed:
            return
        target = self._target()
        if target is None or target.is_closing():
            return
        if data is None:
            if target.can_write_eof():
                # The peer may be gone already (ENOTCONN): nothing is left to half-close.
                with contextlib.suppress(OSError):
                    target.write_eof()
        else:
            target.write(data)
        if close_after:
            target.close()  # graceful: what was written still reaches the peer


class _ClientSide(asyncio.Protocol):
    def __init__(self, proxy: FaultProxy) -> None:
        self._proxy = proxy
        self._link: _Link | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._link = _Link(self._proxy, transport)
        self._link.open()

    def data_received(self, data: bytes) -> None:
        if self._link is not None:
            self._link.from_client(data)

    def eof_received(self) -> bool:
        if self._link is not None:
            self._link.client_eof()
        return True  # a half-close is forwarded, not imposed on the other direction

    def connection_lost(self, exc: Exception | None) -> None:
        if self._link is not None:
            self._link.client_lost(exc)

    def pause_writing(self) -> None:
        if self._link is not None and self._link.upstream is not None:
            self._link.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self._link is not None and self._link.upstream is not None:
            self._link.upstream.resume_reading()


class _UpstreamSide(asyncio.Protocol):
    def __init__(self, link: _Link) -> None:
        self._link = link

    def data_received(self, data: bytes) -> None:
        self._link.from_upstream(data)

    def eof_received(self) -> bool:
        self._link.upstream_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._link.upstream_lost(exc)

    def pause_writing(self) -> None:
        self._link.client.pause_reading()

    def resume_writing(self) -> None:
        self._link.client.resume_reading()


class _Link:
    """One proxied connection: the client's socket, the upstream socket, two channels.

    ``closed`` means the proxy has given up on the connection (it no longer counts as open);
    the link leaves the proxy's set once both sockets have reported connection_lost.
    """

    def __init__(self, proxy: FaultProxy, client: asyncio.Transport) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream: asyncio.Transport | None = None
        self.blackholed = False
        self.closed = False
        self._client_gone = False
        self._upstream_gone = False
        self._client_eof = False
        self._upstream_eof = False
        self._connecting: asyncio.Task[None] | None = None
        self._to_upstream = _Channel(self, to_upstream=True)
        self._to_client = _Channel(self, to_upstream=False)
        self._arm_generation = -1
        self._tail = b""
        self._counted = 0

    def open(self) -> None:
        self.proxy.links.add(self)
        self.proxy.accepted += 1
        mode = self.proxy.mode
        if mode == "reset":
            self.abort()
        elif mode == "blackhole":
            self.blackholed = True
        else:
            self.client.pause_reading()  # nothing to forward to until upstream answers
            self._connecting = self.proxy.loop.create_task(self._connect())

    async def _connect(self) -> None:
        loop = self.proxy.loop
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _UpstreamSide(self), self.proxy.upstream_host, self.proxy.upstream_port
                ),
                self.proxy.connect_timeout,
            )
        except asyncio.CancelledError:
            self._connecting = None
            self._upstream_gone = True
            self._forget()
            raise
        except (OSError, TimeoutError):
            # The server is down: the closest a proxy can come to "connection refused".
            self._connecting = None
            self._upstream_gone = True
            self.abort()
            self._forget()
            return
        self._connecting = None
        assert isinstance(transport, asyncio.Transport)
        self.upstream = transport
        if self.closed:
            _abort_with_rst(transport)
            return
        if self.blackholed:
            transport.pause_reading()  # a partitioned server is neither heard nor told
        self.client.resume_reading()
        if self._client_eof:
            self._to_upstream.send(None)

    # -- data ------------------------------------------------------------------------------

    def from_client(self, data: bytes) -> None:
        if self.closed or self.blackholed:
            return
        arm = self.proxy.armed
        if arm is not None and self._trips(arm, data):
            self.proxy.fired(arm)
            if arm.forward:
                # The server gets the chunk and then a clean end of stream; whatever it
                # answers is read and dropped until it closes (from_upstream ignores a closed
                # link), so the client never sees the reply.
                self.closed = True
                self._to_client.clear()
                self._to_upstream.send(data)
                self._to_upstream.send(None)
                _abort_with_rst(self.client)
            else:
                self.abort()
            return
        self._to_upstream.send(data)

    def _trips(self, arm: _Arm, data: bytes) -> bool:
        if self._arm_generation != arm.generation:
            self._arm_generation = arm.generation
            self._tail = b""
            self._counted = 0
        tripped = False
        if arm.pattern:
            window = self._tail + data
            if arm.pattern in window:
                tripped = True
            keep = len(arm.pattern) - 1
            self._tail = window[-keep:] if keep else b""
        if arm.after_bytes is not None:
            self._counted += len(data)
            if self._counted >= arm.after_bytes:
                tripped = True
        return tripped

    def from_upstream(self, data: bytes) -> None:
        if self.closed or self.blackholed:
            return
        self._to_client.send(data)

    # -- ends ------------------------------------------------------------------------------

    def client_eof(self) -> None:
        self._client_eof = True
        if self.closed:
            return
        if self.blackholed:
            self.abort()  # the client gave up; nothing of this connection is worth keeping
            return
        if self.upstream is not None:
            self._to_upstream.send(None)
        if self._upstream_eof:
            self.close()

    def upstream_eof(self) -> None:
        self._upstream_eof = True
        if self.closed and self.upstream is not None:
            self.upstream.close()  # e.g. the server finished after a forwarded reset_on
            return
        if self.blackholed:
            return
        self._to_client.send(None)
        if self._client_eof:
            self.close()

    def client_lost(self, exc: Exception | None) -> None:
        self._client_gone = True
        if not self.closed:
            self.abort() if exc is not None else self.close()
        self._forget()

    def upstream_lost(self, exc: Exception | None) -> None:
        self._upstream_gone = True
        if not self.closed and not self.blackholed:
            if exc is not None:
                self.abort()
            else:
                # The server closed: the client still reads what is queued, then the close.
                self.closed = True
                self._to_client.send(None, close_after=True)
        self._forget()

    def _forget(self) -> None:
        upstream_done = self._upstream_gone or (self.upstream is None and not self._connecting)
        if self._client_gone and upstream_done:
            self.proxy.links.discard(self)

    # -- faults and shutdown ---------------------------------------------------------------

    def blackhole(self) -> None:
        if self.closed or self.blackholed:
            return
        self.blackholed = True
        self._to_upstream.clear()
        self._to_client.clear()
        self.client.resume_reading()  # keep swallowing whatever the client sends
        if self.upstream is not None:
            self.upstream.pause_reading()

    def abort(self) -> None:
        """RST both sides at once."""
        self.closed = True
        self._to_upstream.clear()
        self._to_client.clear()
        if self._connecting is not None:
            self._connecting.cancel()
        _abort_with_rst(self.client)
        _abort_with_rst(self.upstream)

    def close(self) -> None:
        """FIN both sides (after what is queued)."""
        self.closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        self._to_client.send(None, close_after=True)
        if self.upstream is not None:
            self._to_upstream.send(None, close_after=True)
        if self.blackholed:
            self.client.close()
            if self.upstream is not None:
                self.upstream.close()


class FaultProxy:
    """A TCP proxy in front of one upstream server, with switchable faults.

    ``mode`` is ``pass`` (forward, possibly with :meth:`delay`), ``blackhole`` or ``reset``;
    :meth:`reset_on` arms a one-shot (or repeated) cut that works in pass mode.
    ``connection_count`` is the number of client connections open now; ``accepted`` counts
    every connection accepted since start.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        name: str | None = None,
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.host = host
        self.connect_timeout = connect_timeout
        self.name = name or f"{upstream_host}:{upstream_port}"
        self.links: set[_Link] = set()
        self.accepted = 0
        self.mode: Mode = "pass"
        self.current_delay = 0.0
        self.armed: _Arm | None = None
        self._port = port
        self._hits = 0
        self._generation = 0
        self._thread: LoopThread | None = None
        self._server: asyncio.Server | None = None
        self._stopped = False

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "running" if self._server else "new"
        delay = f" delay={self.current_delay}s" if self.current_delay else ""
        armed = " armed" if self.armed else ""
        return (
            f"<FaultProxy {self.name} {self.host}:{self._port} -> "
            f"{self.upstream_host}:{self.upstream_port} {state} mode={self.mode}{delay}{armed} "
            f"connections={self.connection_count}>"
        )

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._thread is None:
            raise ProxyError(f"{self!r} is not started")
        return self._thread.loop

    @property
    def is_running(self) -> bool:
        return self._server is not None and not self._stopped

    def start(self) -> None:
        """Listen (on ``port``, or a free one) and serve from a thread of its own."""
        if self._stopped:
            raise ProxyError(f"{self!r} was stopped; create a new one")
        if self._thread is not None:
            raise ProxyError(f"{self!r} is already started")
        self._thread = LoopThread(f"fault-proxy {self.name}")
        self._thread.start()
        try:
            self._thread.run(self._listen(), timeout=10.0)
        except BaseException:
            self._thread.stop()
            self._stopped = True
            raise
        log.debug("proxy_started", proxy=self.name, port=self._port)

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _ClientSide(self), self.host, self._port, reuse_address=True
        )
        self._port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        """Close the listener and RST every connection. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        thread = self._thread
        if thread is None:
            return
        if thread.is_running:
            try:
                thread.run(self._shutdown(), timeout=5.0)
            except (TimeoutError, RuntimeError) as exc:
                log.warning("proxy_stop_incomplete", proxy=self.name, error=str(exc))
        thread.stop()
        self._server = None

    async def _shutdown(self) -> None:
        server = self._server
        if server is not None:
            server.close()
        for link in list(self.links):
            link.abort()
        if server is not None:
            await server.wait_closed()
        for _ in range(3):
            await asyncio.sleep(0)  # let the aborted transports report connection_lost

    # -- faults ----------------------------------------------------------------------------

    def _apply(self, action: str, change: Callable[[], None]) -> None:
        if self._stopped:
            raise ProxyError(f"{self!r} is stopped")
        if self._thread is None:
            change()  # not started: no loop and no connections yet, only state
        else:
            self._thread.call(change)
        log.debug("proxy_fault", proxy=self.name, action=action)

    def _drop_blackholed(self) -> None:
        for link in list(self.links):
            if link.blackholed:
                link.abort()

    def pass_through(self) -> None:
        """Forward normally again; clear the delay and any armed :meth:`reset_on`.

        Connections that were blackholed cannot carry a coherent stream any more (their bytes
        were swallowed), so they are reset now; connections cut earlier stay cut.
        """

        def change() -> None:
            self.mode = "pass"
            self.current_delay = 0.0
            self.armed = None
            self._drop_blackholed()

        self._apply("pass_through", change)

    def delay(self, seconds: float) -> None:
        """Forward with ``seconds`` of added latency on every chunk, in each direction."""
        if seconds < 0:
            raise ValueError("delay must be >= 0")

        def change() -> None:
            self.current_delay = float(seconds)
            if self.mode != "pass":
                self.mode = "pass"
                self._drop_blackholed()

        self._apply(f"delay {seconds}", change)

    def blackhole(self) -> None:
        """Swallow everything on existing and new connections; never answer, never close."""

        def change() -> None:
            self.mode = "blackhole"
            for link in list(self.links):
                link.blackhole()

        self._apply("blackhole", change)

    def reset(self) -> None:
        """RST every existing connection, and every new one at once, until pass_through()."""

        def change() -> None:
            self.mode = "reset"
            for link in list(self.links):
                link.abort()

        self._apply("reset", change)

    def reset_on(
        self,
        pattern: bytes | None = None,
        *,
        after_bytes: int | None = None,
        forward: bool = True,
        once: bool = True,
    ) -> None:
        """Arm a cut on the client->server stream of every connection, existing or new.

        It fires on the chunk in which ``pattern`` completes (a pattern may straddle chunks)
        or in which the connection has carried ``after_bytes`` bytes since arming. That chunk
        is forwarded (``forward=True``: e.g. the COMMIT reaches the server, which then sees a
        clean end of stream and whose reply is dropped) or dropped (``forward=False``: the
        server sees a RST); the client side is RST at once, so it never sees a reply.
        ``once`` disarms after the first hit.
        """
        if pattern is None and after_bytes is None:
            raise ValueError("reset_on needs a pattern or after_bytes")
        if pattern is not None and not pattern:
            raise ValueError("reset_on pattern must not be empty")
        if after_bytes is not None and after_bytes < 0:
            raise ValueError("after_bytes must be >= 0")

        def change() -> None:
            self._generation += 1
            self.armed = _Arm(pattern, after_bytes, forward, once, self._generation)

        self._apply("reset_on", change)

    def fired(self, arm: _Arm) -> None:
        """Count a hit of an armed cut (called on the proxy's loop)."""
        self._hits += 1
        if arm.once and self.armed is arm:
            self.armed = None
        log.debug("proxy_reset_on_fired", proxy=self.name, hits=self._hits)

    def retarget(self, upstream_port: int, upstream_host: str | None = None) -> None:
        """Send new connections to another upstream; RST the existing ones (they lead to the
        old upstream). A fault mode in force stays in force.

        A standby's replication link is such a proxy: when another server becomes the primary,
        the harness retargets the link rather than reconfiguring the standby, as a virtual IP
        or a DNS name moved by an HA manager would.
        """

        def change() -> None:
            self.upstream_port = upstream_port
            if upstream_host is not None:
                self.upstream_host = upstream_host
            for link in list(self.links):
                link.abort()

        self._apply(f"retarget {upstream_port}", change)

    # -- counters --------------------------------------------------------------------------

    @property
    def connection_count(self) -> int:
        """Client connections open right now."""
        return sum(1 for link in list(self.links) if not link.closed)

    @property
    def hits(self) -> int:
        """How many times an armed reset_on has fired."""
        return self._hits
