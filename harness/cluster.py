"""The local multi-region PostgreSQL topology: one primary, streaming hot standbys, and a
fault proxy in front of every region and of every replication link.

It is the dev/test harness (``make run`` and the test fixtures use it); the service never
imports it. The API is synchronous so that sync pytest fixtures and a CLI can drive it before
any event loop exists::

    with LocalTopology() as topo:                   # aws-us-east-1 primary, two standbys
        env = topo.env("aws-us-east-1")              # SIGNING_KEYS_* for the service
        topo.region("gcp-us-central1").proxy.blackhole()
        topo.region("aws-eu-west-1").replication_proxy.reset()  # cut it off its primary
        topo.pause("aws-eu-west-1", "walreceiver")  # it answers, with ever older data
        topo.kill(topo.primary)
        new_primary = topo.failover()                # as an HA manager would
        topo.rogue_promote("gcp-us-central1")        # split brain: the old primary stays up
        topo.fork("aws-eu-west-1")                   # split brain on one timeline

Replication is synchronous (``remote_apply``, ``ANY k`` of the standbys, ``k`` = 1 unless
``sync_count`` says otherwise) and never silently asynchronous: with no standby left to name,
the primary still names the other regions, so its COMMITs wait (and the service refuses
writes) until one is back. A promotion picks only a standby that holds every acknowledged
write (:func:`promotion_quorum`), and refuses with :class:`PromotionRefusedError` when it
cannot tell one. Each region has two
proxies: ``proxy``, the service's own network path to it, and ``replication_proxy``, its path
to its upstream while it is a standby (its ``primary_conninfo`` names that proxy, which the
harness points at whichever server is the primary, as an HA manager moves a virtual IP). So a
test can cut, delay or blackhole one standby's replication while the service still reaches it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import re
import secrets
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import asyncpg
import structlog

from harness.loop_thread import LoopThread
from harness.postgres import (
    SUPERUSER,
    PausedPart,
    PostgresBinaries,
    PostgresServer,
    TopologyError,
    free_port,
    quote_conf,
    run_parallel,
)
from harness.proxy import FaultProxy
from service.settings import PREFIX, region_dsn_variable

log = structlog.get_logger(__name__)

DATABASE = "signing_keys"
ROLE = "signing_keys"
HOST = "127.0.0.1"
DIR_PREFIX = "sk-topo-"

Role = Literal["primary", "standby", "fenced", "rogue"]
_REGION_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")  # as service.settings accepts them
_CLOUD_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
T = TypeVar("T")

# Small, fast, test-friendly settings shared by every node (copied to standbys by
# pg_basebackup); each node's own port and name live in node.conf, included last.
SERVER_CONF: dict[str, str] = {
    "listen_addresses": HOST,
    "unix_socket_directories": "",
    "max_connections": "200",
    "shared_buffers": "16MB",
    # Segments as files in the data directory (itself in memory by default), not in
    # /dev/shm where a killed server would leave them behind.
    "dynamic_shared_memory_type": "mmap",
    "fsync": "off",
    "synchronous_commit": "remote_apply",
    "wal_level": "replica",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "wal_keep_size": "64MB",
    "hot_standby": "on",
    "hot_standby_feedback": "on",
    "wal_receiver_status_interval": "1s",
    "wal_retrieve_retry_interval": "100ms",
    "wal_sender_timeout": "10s",
    "wal_receiver_timeout": "10s",
    "restart_after_crash": "off",  # a killed server stays dead (and kill() leaves no zombie)
    "max_wal_size": "128MB",
    "checkpoint_timeout": "30min",
    "jit": "off",
    "log_checkpoints": "off",
    "log_line_prefix": "%m [%p] %q%a ",
    "password_encryption": "scram-sha-256",
}

PG_HBA = f"""\
# TYPE  DATABASE     USER        ADDRESS        METHOD
local   all          all                        trust
host    all          {SUPERUSER}    {HOST}/32   trust
host    replication  {SUPERUSER}    {HOST}/32   trust
host    all          all         {HOST}/32      scram-sha-256
"""


class PromotionRefusedError(TopologyError):
    """No standby can be promoted without risking an acknowledged write."""


def promotion_quorum(listed: Sequence[str], count: int, reachable: Sequence[str]) -> list[str]:
    """The standbys among which a promotion must choose, or :class:`PromotionRefusedError`.

    With ``ANY count`` of the ``listed`` standbys, every acknowledged write is on ``count`` of
    them, so any ``len(listed) - count + 1`` of them include at least one that has it; on one
    timeline the most advanced of those (by replay position) has every acknowledged write.
    Fewer than that reachable: the ones missing may hold the only copies, and no choice is
    safe. (An empty list means asynchronous replication, which this topology never runs.)
    """
    if not listed:
        raise PromotionRefusedError(
            "refusing to promote: the primary named no synchronous standby, so no standby is "
            "known to hold every acknowledged write"
        )
    needed = len(listed) - count + 1
    present = [name for name in listed if name in reachable]
    if len(present) < needed:
        missing = [name for name in listed if name not in reachable]
        raise PromotionRefusedError(
            f"refusing to promote: writes were acknowledged by ANY {count} of "
            f"{', '.join(listed)}, so {needed} of them must be reachable to be sure of holding "
            f"every acknowledged write; only {', '.join(present) or 'none'} "
            f"{'is' if len(present) == 1 else 'are'} ({', '.join(missing)} down or not a "
            "standby). Bring one back, or accept the loss by promoting by hand."
        )
    return present


@dataclass(frozen=True, slots=True)
class RegionSpec:
    """A region of the topology: its name (as the service knows it) and its cloud."""

    name: str
    cloud: str


DEFAULT_REGIONS: tuple[RegionSpec, ...] = (
    RegionSpec("aws-us-east-1", "aws"),
    RegionSpec("gcp-us-central1", "gcp"),
    RegionSpec("aws-eu-west-1", "aws"),
)


class Region:
    """A handle on one region: its server, its proxies, and the DSNs that reach them.

    ``dsn`` goes through the region's :class:`FaultProxy` and is the only way the service
    reaches the region; ``direct_dsn`` goes straight to the server (for the harness and for
    tests' own checks); ``admin_dsn`` is the superuser's, straight to the server.
    ``replication_proxy`` carries the region's WAL stream from its upstream while it is a
    standby.
    """

    def __init__(
        self,
        topology: LocalTopology,
        spec: RegionSpec,
        server: PostgresServer,
        proxy: FaultProxy,
        replication_proxy: FaultProxy,
        password: str,
    ) -> None:
        self._topology = topology
        self.name = spec.name
        self.cloud = spec.cloud
        self.server = server
        self.proxy = proxy
        self.replication_proxy = replication_proxy
        self._password = password

    def __repr__(self) -> str:
        state = "running" if self.is_running else "down"
        if self.server.paused is not None:
            state += f" ({self.server.paused} paused)"
        return (
            f"<Region {self.name} ({self.cloud}) {self.role} {state} "
            f"server=127.0.0.1:{self.server_port} proxy={self.proxy.port} {self.proxy.mode} "
            f"replication={self.replication_proxy.mode}>"
        )

    @property
    def server_port(self) -> int:
        return self.server.port

    @property
    def is_running(self) -> bool:
        return self.server.is_running

    @property
    def paused(self) -> PausedPart | None:
        """What :meth:`LocalTopology.pause` froze in this region's server, if anything."""
        return self.server.paused

    @property
    def role(self) -> Role:
        return self._topology.role(self.name)

    @property
    def dsn(self) -> str:
        return f"postgresql://{ROLE}:{self._password}@{HOST}:{self.proxy.port}/{DATABASE}"

    @property
    def direct_dsn(self) -> str:
        return f"postgresql://{ROLE}:{self._password}@{HOST}:{self.server.port}/{DATABASE}"

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://{SUPERUSER}@{HOST}:{self.server.port}/{DATABASE}"


class LocalTopology:
    """PostgreSQL servers in temporary directories, one per region, each behind a proxy.

    The first region starts as the primary; the others are hot standbys by synchronous
    streaming replication. Everything is removed by :meth:`stop` (also on a failed start,
    on ``with`` exit, and at interpreter exit as a last resort).

    ``base_dir`` is where the topology makes its own temporary directory (default:
    ``/dev/shm`` when it exists, else the temp directory). Methods are thread-safe and
    blocking; from async code call them through ``asyncio.to_thread``.
    """

    def __init__(
        self,
        regions: Sequence[RegionSpec] = DEFAULT_REGIONS,
        base_dir: str | os.PathLike[str] | None = None,
        *,
        sync_count: int = 1,
    ) -> None:
        names = [spec.name for spec in regions]
        if not names:
            raise ValueError("a topology needs at least one region")
        if len(set(names)) != len(names):
            raise ValueError(f"region names must be unique: {names}")
        for spec in regions:
            if not _REGION_NAME.match(spec.name):
                raise ValueError(f"region name {spec.name!r}: lower-case letters, digits and '-'")
            if not _CLOUD_NAME.match(spec.cloud):
                raise ValueError(f"cloud {spec.cloud!r}: letters, digits, '-' and '_'")
        if sync_count < 1:
            raise ValueError("sync_count: a COMMIT waits for at least one standby")
        self._sync_count = sync_count
        self._specs = tuple(regions)
        self._parent_dir = Path(base_dir) if base_dir is not None else default_parent_dir()
        self._lock = threading.RLock()
        self._state: Literal["new", "starting", "running", "stopped"] = "new"
        self._base: Path | None = None
        self._binaries: PostgresBinaries | None = None
        self._sql: LoopThread | None = None
        self._servers: dict[str, PostgresServer] = {}
        self._proxies: dict[str, FaultProxy] = {}
        self._replication_proxies: dict[str, FaultProxy] = {}
        self._regions: dict[str, Region] = {}
        self._roles: dict[str, Role] = {}
        self._sync: list[str] = []
        self._primary = names[0]
        self._password = secrets.token_hex(16)
        self.start_seconds: float | None = None
        self.last_failover_seconds: float | None = None
        # When the last promotion began its new timeline, on the time.monotonic() clock: for
        # tests that measure how soon clients noticed.
        self.last_promoted_at: float | None = None

    def __repr__(self) -> str:
        parts = []
        for name in self.region_names:
            server = self._servers.get(name)
            running = server is not None and server.is_running
            parts.append(f"{name}={self._roles.get(name, '?')}{'' if running else '(down)'}")
        return f"<LocalTopology {self._state} primary={self._primary} {' '.join(parts)}>"

    def __enter__(self) -> LocalTopology:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- what is there ---------------------------------------------------------------------

    @property
    def region_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self._specs)

    @property
    def regions(self) -> tuple[Region, ...]:
        self._check_running()
        return tuple(self._regions[name] for name in self.region_names)

    def region(self, name: str) -> Region:
        self._check_running()
        try:
            return self._regions[name]
        except KeyError:
            raise KeyError(f"no region {name!r}; regions are {self.region_names}") from None

    @property
    def primary(self) -> str:
        """The region that is (or last was) the primary; it may be down until a failover."""
        return self._primary

    @property
    def base_dir(self) -> Path | None:
        return self._base

    def role(self, name: str) -> Role:
        """``primary``, ``standby``, ``fenced`` (an old primary the harness stopped, until it
        is rejoined) or ``rogue`` (a server that takes writes without being the primary — the
        old primary :meth:`rogue_promote` left running, or a :meth:`fork` — until it is
        rejoined)."""
        try:
            return self._roles[name]
        except KeyError:
            raise KeyError(f"no region {name!r}; regions are {self.region_names}") from None

    def env(self, local_region: str | None = None) -> dict[str, str]:
        """The ``SIGNING_KEYS_*`` variables that point the service at this topology."""
        self._check_running()
        env = {
            f"{PREFIX}REGIONS": ",".join(f"{spec.name}:{spec.cloud}" for spec in self._specs),
        }
        for name in self.region_names:
            env[region_dsn_variable(name)] = self._regions[name].dsn
        if local_region is not None:
            if local_region not in self.region_names:
                raise KeyError(f"no region {local_region!r}; regions are {self.region_names}")
            env[f"{PREFIX}LOCAL_REGION"] = local_region
        return env

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Create, start and connect every server and proxy; wait until standbys stream."""
        with self._lock:
            if self._state != "new":
                raise TopologyError(f"{self!r} cannot be started again")
            self._state = "starting"
            atexit.register(self.stop)
            started = time.monotonic()
            try:
                self._start()
            except BaseException:
                log.warning("topology_start_failed", base_dir=str(self._base))
                self.stop()
                raise
            self._state = "running"
            self.start_seconds = time.monotonic() - started
            log.info(
                "topology_started",
                seconds=round(self.start_seconds, 3),
                primary=self._primary,
                regions=[repr(region) for region in self._regions.values()],
            )

    def _start(self) -> None:
        binaries = self._binaries = PostgresBinaries.find()
        reap_stale_topologies(self._parent_dir)
        self._base = Path(tempfile.mkdtemp(prefix=DIR_PREFIX, dir=self._parent_dir))
        (self._base / "owner.pid").write_text(f"{os.getpid()}\n")
        binaries.give(self._base)
        self._sql = LoopThread("topology-sql")
        self._sql.start()

        for spec in self._specs:
            self._servers[spec.name] = PostgresServer(
                spec.name,
                binaries=binaries,
                data_dir=self._base / spec.name,
                port=free_port(),
                log_path=self._base / f"{spec.name}.log",
            )
        primary = self._servers[self._primary]
        primary.initdb()
        with (primary.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# signing-keys local topology\n")
            conf.writelines(f"{key} = {quote_conf(value)}\n" for key, value in SERVER_CONF.items())
            conf.write("include_if_exists = 'node.conf'\n")
        (primary.data_dir / "pg_hba.conf").write_text(PG_HBA)
        binaries.give(primary.data_dir / "pg_hba.conf")
        self._start_fresh([primary])
        self._roles[self._primary] = "primary"
        self._sql_run(self._bootstrap(primary.port))
        for spec in self._specs:
            replication = FaultProxy(HOST, primary.port, name=f"{spec.name} replication")
            self._replication_proxies[spec.name] = replication
            replication.start()

        standbys = [self._servers[name] for name in self.region_names if name != self._primary]
        if standbys:
            run_parallel(
                [server.base_backup_command(primary.port) for server in standbys],
                cwd=self._base,
            )
            for server in standbys:
                self._write_standby_conf(server, primary)
            self._start_fresh(standbys)
            for server in standbys:
                self._roles[server.name] = "standby"
            self._wait_streaming([server.name for server in standbys])
            self._set_sync([server.name for server in standbys])

        for spec in self._specs:
            proxy = FaultProxy(HOST, self._servers[spec.name].port, name=spec.name)
            self._proxies[spec.name] = proxy
            proxy.start()
            self._regions[spec.name] = Region(
                self,
                spec,
                self._servers[spec.name],
                proxy,
                self._replication_proxies[spec.name],
                self._password,
            )

    def _start_fresh(self, servers: Sequence[PostgresServer], attempts: int = 3) -> None:
        """First start of new servers; a port lost to another process is replaced."""
        for server in servers:
            server.write_node_conf({"port": str(server.port), "cluster_name": server.name})
            server.launch()
        for server in servers:
            for attempt in range(attempts):
                try:
                    server.wait_ready()
                    break
                except TopologyError as exc:
                    if "already in use" not in str(exc) or attempt == attempts - 1:
                        raise
                    server.port = free_port()
                    server.write_node_conf({"port": str(server.port), "cluster_name": server.name})
                    server.launch()

    def _write_standby_conf(self, server: PostgresServer, primary: PostgresServer) -> None:
        """``server`` follows ``primary`` through its own replication proxy."""
        self._replication_proxies[server.name].retarget(primary.port)
        server.write_node_conf({"port": str(server.port), "cluster_name": server.name})
        server.write_auto_conf({"primary_conninfo": self._replication_conninfo(server.name)})

    def _replication_conninfo(self, name: str) -> str:
        return self._conninfo(name, self._replication_proxies[name].port)

    @staticmethod
    def _conninfo(application_name: str, port: int) -> str:
        return (
            f"host={HOST} port={port} user={SUPERUSER} "
            f"application_name={application_name} connect_timeout=2"
        )

    def stop(self) -> None:
        """Stop the proxies, stop every server at once, remove the directory. Idempotent."""
        with self._lock:
            if self._state == "stopped":
                return
            self._state = "stopped"
            atexit.unregister(self.stop)
            for proxy in [*self._proxies.values(), *self._replication_proxies.values()]:
                try:
                    proxy.stop()
                except Exception as exc:  # keep cleaning up whatever failed
                    log.warning("topology_proxy_stop_failed", proxy=proxy.name, error=str(exc))
            for server in self._servers.values():
                try:
                    server.stop(timeout=5.0)
                except Exception as exc:
                    log.warning("topology_server_stop_failed", region=server.name, error=str(exc))
                    with contextlib.suppress(Exception):
                        server.kill(timeout=5.0)
            if self._sql is not None:
                self._sql.stop()
            if self._base is not None:
                shutil.rmtree(self._base, ignore_errors=True)
            log.info("topology_stopped", base_dir=str(self._base))

    def _check_running(self) -> None:
        if self._state != "running":
            raise TopologyError(f"the topology is {self._state}, not running")

    # -- faults ----------------------------------------------------------------------------

    def kill(self, name: str) -> None:
        """SIGKILL the region's server (postmaster and all its processes); port closed after."""
        with self._lock:
            self._check_running()
            self._server(name).kill()
            log.info("topology_killed", region=name)

    def restart(self, name: str) -> None:
        """Start the region's data directory again (stopping it first if it runs).

        A standby is waited for until it streams; a restarted primary until its synchronous
        standbys stream again. A *fenced* old primary comes back as a (split-brain) primary
        whose commits wait forever for standbys that follow someone else: use :meth:`rejoin`.
        """
        with self._lock:
            self._check_running()
            server = self._server(name)
            if server.is_running:
                server.stop()
            server.start()
            role = self._roles[name]
            primary = self._servers[self._primary]
            if role == "primary":
                running = [
                    n
                    for n in self._sync
                    if self._servers[n].is_running and self._roles[n] == "standby"
                ]
                if running:
                    self._wait_streaming(running)
            elif role == "standby" and primary.is_running:
                self._wait_streaming([name])
                if name not in self._sync:
                    self._set_sync([*self._sync, name])
            log.info("topology_restarted", region=name, role=role)

    def failover(self) -> str:
        """Fence the primary and promote the most advanced standby of the quorum that holds
        every acknowledged write (:func:`promotion_quorum`); return its name.

        Raises :class:`PromotionRefusedError`, leaving the primary as it was (fenced only
        if it was already), when too few of its synchronous standbys are running.
        """
        with self._lock:
            self._check_running()
            started = time.monotonic()
            candidates = self._running_standbys()
            if not candidates:
                raise TopologyError("failover: no running standby to promote")
            quorum = promotion_quorum(self._sync, self._sync_count, candidates)
            self._fence(self._primary)
            best = self._most_advanced(quorum)
            self._promote(best, candidates, started)
            return best

    def promote(self, name: str) -> None:
        """Fence the primary and promote the standby ``name`` (which must be running), once
        it has replayed all the primary wrote (when the primary runs); refused, as by
        :meth:`failover`, when ``name`` cannot be shown to hold every acknowledged write."""
        with self._lock:
            self._check_running()
            if name == self._primary:
                raise TopologyError(f"{name} is already the primary")
            if self._roles[name] != "standby" or not self._server(name).is_running:
                raise TopologyError(f"{name} is not a running standby")
            started = time.monotonic()
            candidates = self._running_standbys()
            quorum = promotion_quorum(self._sync, self._sync_count, candidates)
            if self._servers[self._primary].is_running:
                with contextlib.suppress(TopologyError, TimeoutError):
                    self.wait_replayed(standbys=[name])
            self._fence(self._primary)
            lsns = {other: self._replay_lsn(other) for other in {*quorum, name}}
            behind = [other for other in quorum if lsns[other] > lsns[name]]
            if behind:
                raise PromotionRefusedError(
                    f"refusing to promote {name}: {', '.join(behind)} replayed more "
                    f"({format_lsn(max(lsns.values()))} against {format_lsn(lsns[name])}), so "
                    f"{name} may lack acknowledged writes; the primary {self._primary} is "
                    "fenced: call failover() to promote the most advanced"
                )
            self._promote(name, candidates, started)

    def _most_advanced(self, names: Sequence[str]) -> str:
        """The one of ``names`` that replayed the most WAL (ties: the first region)."""
        lsns = {name: self._replay_lsn(name) for name in names}
        order = {name: index for index, name in enumerate(self.region_names)}
        return max(names, key=lambda name: (lsns[name], -order[name]))

    def rogue_promote(self, name: str, *, old_primary_commits: bool = False) -> None:
        """Promote the standby ``name`` without fencing the primary, which stays up, reachable
        and writable on its old timeline: what an HA manager does across a partition it cannot
        see through. The other running standbys follow ``name`` — first as its cascading
        standbys, so that none of them receives WAL the old primary writes after the fork —
        and the old primary's role is ``rogue`` until :meth:`rejoin` makes it a standby of
        the new timeline.

        The old primary's commits then wait for a synchronous standby that no longer follows
        it. ``old_primary_commits`` also takes it off synchronous replication, so that it
        acknowledges writes on its own: the worst split brain, two primaries that both commit.
        """
        with self._lock:
            self._check_running()
            old = self._primary
            if name == old:
                raise TopologyError(f"{name} is already the primary")
            if self._roles[name] != "standby" or not self._server(name).is_running:
                raise TopologyError(f"{name} is not a running standby")
            if not self._servers[old].is_running:
                raise TopologyError(f"the primary {old} is down: use promote() or failover()")
            started = time.monotonic()
            chosen = self._servers[name]
            followers = [other for other in self._running_standbys() if other != name]
            for follower in followers:
                self._follow(follower, chosen)
            self._sql_run(_wait_streaming(chosen.port, followers, 10.0), 15.0)
            self._sql_run(_promote(chosen.port, 10.0), 15.0)
            self.last_promoted_at = _promotion_time(chosen)
            self._primary = name
            self._roles[name] = "primary"
            self._roles[old] = "rogue"
            if old_primary_commits:
                self._sql_run(
                    _alter_system(self._servers[old].port, {"synchronous_standby_names": ""})
                )
            self._set_sync(followers)
            self.last_failover_seconds = time.monotonic() - started
            log.info(
                "topology_rogue_promoted",
                old_primary=old,
                new_primary=name,
                followers=followers,
                old_primary_commits=old_primary_commits,
                seconds=round(self.last_failover_seconds, 3),
            )

    def fork(self, name: str) -> None:
        """Restart the standby ``name`` as a primary without promoting it, as when its
        ``standby.signal`` is removed by mistake: it replays what it has and takes writes on
        the *same* timeline as the primary — a split brain that no timeline can settle. Its
        role is ``rogue`` until :meth:`rejoin`."""
        with self._lock:
            self._check_running()
            if self._roles[name] != "standby" or not self._server(name).is_running:
                raise TopologyError(f"{name} is not a running standby")
            server = self._server(name)
            server.stop()
            (server.data_dir / "standby.signal").unlink()
            server.start()
            self._roles[name] = "rogue"
            if name in self._sync:
                self._set_sync([other for other in self._sync if other != name])
            log.info("topology_forked", region=name, primary=self._primary)

    def pause(self, name: str, part: PausedPart = "server") -> None:
        """Freeze the region's whole server (SIGSTOP), or only its ``walreceiver`` or its
        ``startup`` (replay) process, until :meth:`resume`. A frozen walreceiver leaves a
        standby that answers every query from data that no longer moves."""
        with self._lock:
            self._check_running()
            self._server(name).pause(part)
            log.info("topology_paused", region=name, part=part)

    def resume(self, name: str) -> None:
        """Undo :meth:`pause` (no-op when nothing is paused)."""
        with self._lock:
            self._check_running()
            self._server(name).resume()
            log.info("topology_resumed", region=name)

    def rejoin(self, name: str) -> None:
        """Make ``name`` a fresh standby of the current primary (wipe + pg_basebackup),
        on the same server port so that its proxy stays valid; wait until it streams."""
        with self._lock:
            self._check_running()
            if name == self._primary:
                raise TopologyError(f"{name} is the primary; it cannot rejoin itself")
            primary = self._servers[self._primary]
            if not primary.is_running:
                raise TopologyError(f"the primary {self._primary} is down: fail over first")
            server = self._server(name)
            server.stop()
            server.wipe()
            run_parallel([server.base_backup_command(primary.port)], cwd=self._base_path())
            self._write_standby_conf(server, primary)
            server.start()
            self._roles[name] = "standby"
            self._wait_streaming([name])
            if name not in self._sync:
                self._set_sync([*self._sync, name])
            log.info("topology_rejoined", region=name, primary=self._primary)

    def wait_replayed(
        self, timeout: float = 10.0, *, standbys: Sequence[str] | None = None
    ) -> None:
        """Wait until every running standby (or those named) has replayed the primary's
        current WAL position."""
        self._check_running()
        primary = self._servers[self._primary]
        if not primary.is_running:
            raise TopologyError(f"the primary {self._primary} is down")
        names = self._running_standbys() if standbys is None else list(standbys)
        standbys_ports = {name: self._server(name).port for name in names}
        self._sql_run(_wait_replayed(primary.port, standbys_ports, timeout), timeout + 5.0)

    # -- SQL -------------------------------------------------------------------------------

    def query(
        self, name: str, sql: str, *args: Any, timeout: float = 30.0
    ) -> list[tuple[Any, ...]]:
        """Run one statement as the superuser directly on the region's server (no proxy)."""
        self._check_running()
        port = self._server(name).port
        return self._sql_run(_fetch(port, DATABASE, sql, args, timeout), timeout + 5.0)

    def execute(self, name: str, sql: str, *, timeout: float = 30.0) -> str:
        """Run a script (several statements, no arguments) as the superuser; its status."""
        self._check_running()
        port = self._server(name).port
        return self._sql_run(_execute(port, DATABASE, sql, timeout), timeout + 5.0)

    # -- internals -------------------------------------------------------------------------

    def _server(self, name: str) -> PostgresServer:
        try:
            return self._servers[name]
        except KeyError:
            raise KeyError(f"no region {name!r}; regions are {self.region_names}") from None

    def _base_path(self) -> Path:
        assert self._base is not None
        return self._base

    def _sql_run(self, coro: Coroutine[Any, Any, T], timeout: float = 35.0) -> T:
        assert self._sql is not None
        return self._sql.run(coro, timeout)

    def _running_standbys(self) -> list[str]:
        return [
            name
            for name in self.region_names
            if self._roles.get(name) == "standby" and self._servers[name].is_running
        ]

    async def _bootstrap(self, port: int) -> None:
        conn = await _connect(port, "postgres", 10.0)
        try:
            # Utility statements take no parameters; the password is hex, safe to inline,
            # and kept out of the server log even if the statement fails.
            await conn.execute("SET log_min_error_statement = panic; SET log_statement = none")
            await conn.execute(
                f"CREATE ROLE {ROLE} LOGIN PASSWORD '{self._password}' IN ROLE pg_monitor"
            )
            await conn.execute(f"CREATE DATABASE {DATABASE} OWNER {ROLE}")
        finally:
            await _close(conn)

    def _wait_streaming(self, names: Sequence[str], timeout: float = 10.0) -> None:
        primary = self._servers[self._primary]
        self._sql_run(_wait_streaming(primary.port, list(names), timeout), timeout + 5.0)

    @property
    def synchronous_standbys(self) -> tuple[str, ...]:
        """The standbys the primary names in ``synchronous_standby_names`` (``ANY k`` of them)."""
        return tuple(self._sync)

    def _set_sync(self, names: Sequence[str]) -> None:
        ordered = [name for name in self.region_names if name in names]
        if not ordered:
            # Never '' (asynchronous: acknowledged writes lost at the next failover): name the
            # other regions, none streaming now, so that COMMITs wait until one is back.
            ordered = [name for name in self.region_names if name != self._primary]
        self._sync = ordered
        value = ""
        if ordered:
            listed = ", ".join(f'"{name}"' for name in ordered)
            value = f"ANY {self._sync_count} ({listed})"
        port = self._servers[self._primary].port
        self._sql_run(_alter_system(port, {"synchronous_standby_names": value}))
        self._sql_run(_wait_sync_applied(port, ordered, 5.0), 10.0)

    def _replay_lsn(self, name: str) -> int:
        rows = self.query(name, "SELECT pg_last_wal_replay_lsn()::text", timeout=5.0)
        return parse_lsn(rows[0][0]) if rows and rows[0][0] else 0

    def _fence(self, name: str) -> None:
        server = self._servers[name]
        if server.is_running:
            server.stop()
        self._roles[name] = "fenced"

    def _promote(self, name: str, candidates: Sequence[str], started: float) -> None:
        old = self._primary
        server = self._servers[name]
        self._sql_run(_promote(server.port, 10.0), 15.0)
        self.last_promoted_at = _promotion_time(server)
        self._primary = name
        self._roles[name] = "primary"
        followers = [other for other in candidates if other != name]
        for follower in followers:
            self._follow(follower, server)
        for other in self.region_names:
            stopped = self._servers[other]
            if self._roles[other] == "standby" and other not in followers and other != name:
                # A standby that is down follows the new primary once restarted.
                self._write_standby_conf(stopped, server)
        try:
            self._wait_streaming(followers, timeout=5.0)
        except TopologyError:
            for follower in followers:
                if not self._is_streaming(follower):
                    log.warning("topology_follower_diverged", region=follower, primary=name)
                    self.rejoin(follower)
        self._set_sync(followers)
        self.last_failover_seconds = time.monotonic() - started
        log.info(
            "topology_promoted",
            old_primary=old,
            new_primary=name,
            followers=followers,
            seconds=round(self.last_failover_seconds, 3),
        )

    def _follow(self, name: str, upstream: PostgresServer) -> None:
        """Point the running standby ``name`` at ``upstream``: its replication proxy moves
        (cutting the old stream, so its walreceiver reconnects there) and its
        ``primary_conninfo`` is reset to name that proxy, in case a test changed it."""
        self._replication_proxies[name].retarget(upstream.port)
        self._sql_run(
            _alter_system(
                self._servers[name].port, {"primary_conninfo": self._replication_conninfo(name)}
            )
        )

    def _is_streaming(self, name: str) -> bool:
        rows = self.query(
            self._primary,
            "SELECT 1 FROM pg_stat_replication WHERE application_name = $1 AND state = 'streaming'",
            name,
            timeout=5.0,
        )
        return bool(rows)


def _promotion_time(server: PostgresServer) -> float:
    """When ``server`` began its newest timeline, as a time.monotonic() reading: its timeline
    history file is written as the promotion starts, before any WAL of the new timeline."""
    wall, now = time.time(), time.monotonic()
    try:
        written = max(
            path.stat().st_mtime for path in (server.data_dir / "pg_wal").glob("*.history")
        )
    except (OSError, ValueError):  # unreadable, or no history file: now is the best bound
        return now
    return now - max(0.0, wall - written)


def default_parent_dir() -> Path:
    """Where topologies live by default: memory (``/dev/shm``) when there is such a place,
    which makes initdb and pg_basebackup about twice as fast; else the temp directory."""
    shm = Path("/dev/shm")  # noqa: S108 - only a parent: mkdtemp makes a private dir in it
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return Path(tempfile.gettempdir())


def format_lsn(lsn: int) -> str:
    """The inverse of :func:`parse_lsn`: 0x16B374D848 → ``'16/B374D848'``."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    """``'16/B374D848'`` → an integer that orders like the WAL position."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


# -- coroutines run on the harness's own SQL loop --------------------------------------------


async def _connect(port: int, database: str, timeout: float) -> Any:
    return await asyncpg.connect(
        host=HOST,
        port=port,
        user=SUPERUSER,
        database=database,
        timeout=timeout,
        server_settings={"application_name": "topology-harness"},
    )


async def _close(conn: Any) -> None:
    try:
        await asyncio.wait_for(conn.close(), 2.0)
    except asyncio.CancelledError:
        conn.terminate()
        raise
    except Exception:
        conn.terminate()


async def _fetch(
    port: int, database: str, sql: str, args: Sequence[Any], timeout: float
) -> list[tuple[Any, ...]]:
    conn = await _connect(port, database, timeout)
    try:
        rows = await conn.fetch(sql, *args, timeout=timeout)
    finally:
        await _close(conn)
    return [tuple(row) for row in rows]


async def _execute(port: int, database: str, sql: str, timeout: float) -> str:
    conn = await _connect(port, database, timeout)
    try:
        return str(await conn.execute(sql, timeout=timeout))
    finally:
        await _close(conn)


async def _alter_system(port: int, settings: dict[str, str]) -> None:
    conn = await _connect(port, "postgres", 5.0)
    try:
        for key, value in settings.items():
            if value:
                await conn.execute(f"ALTER SYSTEM SET {key} = {quote_conf(value)}")
            else:
                await conn.execute(f"ALTER SYSTEM RESET {key}")
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await _close(conn)


async def _promote(port: int, timeout: float) -> None:
    conn = await _connect(port, "postgres", 5.0)
    try:
        await conn.execute("SELECT pg_promote(wait => false)")
        deadline = time.monotonic() + timeout
        while await conn.fetchval("SELECT pg_is_in_recovery()"):
            if time.monotonic() > deadline:
                raise TopologyError(f"server on port {port} still in recovery after {timeout} s")
            await asyncio.sleep(0.01)
    finally:
        await _close(conn)


async def _wait_streaming(port: int, names: list[str], timeout: float) -> None:
    if not names:
        return
    conn = await _connect(port, "postgres", 5.0)
    try:
        deadline = time.monotonic() + timeout
        while True:
            rows = await conn.fetch("SELECT application_name, state FROM pg_stat_replication")
            streaming = {row[0] for row in rows if row[1] == "streaming"}
            missing = [name for name in names if name not in streaming]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise TopologyError(f"standbys not streaming after {timeout} s: {missing}")
            await asyncio.sleep(0.01)
    finally:
        await _close(conn)


async def _wait_sync_applied(port: int, names: list[str], timeout: float) -> None:
    """Wait until the walsenders have reloaded synchronous_standby_names (it is asynchronous)."""
    conn = await _connect(port, "postgres", 5.0)
    try:
        deadline = time.monotonic() + timeout
        while True:
            rows = await conn.fetch("SELECT application_name, sync_state FROM pg_stat_replication")
            wrong = [
                name
                for name, state in rows
                if (state in ("sync", "quorum", "potential")) != (name in names)
            ]
            if not wrong:
                return
            if time.monotonic() > deadline:
                log.warning("topology_sync_state_unsettled", standbys=wrong)
                return
            await asyncio.sleep(0.005)
    finally:
        await _close(conn)


async def _wait_replayed(primary_port: int, standbys: dict[str, int], timeout: float) -> None:
    conn = await _connect(primary_port, "postgres", 5.0)
    try:
        target = await conn.fetchval("SELECT pg_current_wal_lsn()::text")
    finally:
        await _close(conn)
    deadline = time.monotonic() + timeout
    for name, port in standbys.items():
        conn = await _connect(port, "postgres", 5.0)
        try:
            while not await conn.fetchval(
                "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", target
            ):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} has not replayed {target} within {timeout} s")
                await asyncio.sleep(0.005)
        finally:
            await _close(conn)


# -- leftovers of killed test runs -----------------------------------------------------------


def reap_stale_topologies(parent: Path | None = None) -> None:
    """Stop servers and remove directories of topologies whose owning process is gone
    (a test run killed with SIGKILL never ran its cleanup)."""
    root = parent if parent is not None else default_parent_dir()
    with contextlib.suppress(OSError):
        for base in root.glob(f"{DIR_PREFIX}*"):
            owner_file = base / "owner.pid"
            try:
                owner = int(owner_file.read_text().strip())
            except (OSError, ValueError):
                continue
            if _pid_alive(owner):
                continue
            for pid_file in base.glob("*/postmaster.pid"):
                with contextlib.suppress(OSError, ValueError, IndexError):
                    pid = int(pid_file.read_text().splitlines()[0])
                    cwd = os.readlink(f"/proc/{pid}/cwd")
                    if Path(cwd) == pid_file.parent:
                        os.kill(pid, signal.SIGQUIT)
            log.info("topology_reaped_stale", base_dir=str(base))
            shutil.rmtree(base, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
