"""One local PostgreSQL server process and the binaries that run it.

PostgreSQL refuses to run as root; when the harness runs as root every server tool runs as the
``postgres`` user through ``runuser -u postgres --`` and the folders it writes are handed to
that user. Servers are started with ``postgres -D`` directly (not ``pg_ctl``) so that this
process stays their ancestor and reaps them: nothing is left as a zombie after a hard kill.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog

log = structlog.get_logger(__name__)

SERVICE_USER = "postgres"
# What can be frozen: the whole server, or one of its processes (found by its title).
PausedPart = Literal["server", "walreceiver", "startup"]
SUPERUSER = "postgres"
_INSTALL_HINT = "install the PostgreSQL server: apt-get install -y postgresql"


class TopologyError(RuntimeError):
    """The local topology could not do what was asked; the message says why."""


@dataclass(frozen=True, slots=True)
class PostgresBinaries:
    """Where the server binaries are, and as whom they run."""

    bindir: Path
    run_as: str | None  # the unprivileged user when we are root, else None
    version: int

    @classmethod
    def find(cls) -> PostgresBinaries:
        """The newest ``/usr/lib/postgresql/<major>/bin``, else ``pg_config --bindir``."""
        candidates: list[tuple[int, Path]] = []
        root = Path("/usr/lib/postgresql")
        if root.is_dir():
            for entry in root.iterdir():
                if entry.name.isdigit() and (entry / "bin" / "postgres").exists():
                    candidates.append((int(entry.name), entry / "bin"))
        if not candidates:
            pg_config = shutil.which("pg_config")
            if pg_config is not None:
                bindir = Path(
                    subprocess.run(
                        [pg_config, "--bindir"], capture_output=True, text=True, check=False
                    ).stdout.strip()
                )
                if (bindir / "postgres").exists() and (bindir / "initdb").exists():
                    candidates.append((_major_version(bindir), bindir))
        if not candidates:
            raise TopologyError(
                f"PostgreSQL server binaries (initdb, postgres) not found in {root}/<version>/bin "
                f"nor by pg_config: {_INSTALL_HINT}"
            )
        version, bindir = max(candidates)
        if version < 13:
            raise TopologyError(f"PostgreSQL {version} is too old (13 or newer needed)")
        run_as = None
        if os.geteuid() == 0:
            run_as = SERVICE_USER
            try:
                pwd.getpwnam(SERVICE_USER)
            except KeyError:
                raise TopologyError(
                    f"running as root, but there is no {SERVICE_USER!r} user to run PostgreSQL "
                    f"as: {_INSTALL_HINT}"
                ) from None
            if shutil.which("runuser") is None:
                raise TopologyError(
                    "running as root needs runuser (util-linux) to drop to postgres"
                )
        return cls(bindir=bindir, run_as=run_as, version=version)

    def command(self, tool: str, *args: str) -> list[str]:
        argv = [str(self.bindir / tool), *args]
        if self.run_as is not None:
            return ["runuser", "-u", self.run_as, "--", *argv]
        return argv

    def run(self, tool: str, *args: str, cwd: Path, timeout: float = 60.0) -> str:
        """Run a tool to completion; raise :class:`TopologyError` with its output on failure."""
        argv = self.command(tool, *args)
        try:
            done = subprocess.run(
                argv,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise TopologyError(f"{tool} did not finish within {timeout} s") from exc
        if done.returncode != 0:
            raise TopologyError(
                f"{tool} failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()}"
            )
        return done.stdout

    def spawn(self, tool: str, *args: str, cwd: Path, log_path: Path) -> subprocess.Popen[bytes]:
        with log_path.open("ab") as log_file:
            return subprocess.Popen(
                self.command(tool, *args),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal is ours to handle, not theirs
            )

    def give(self, *paths: Path) -> None:
        """Hand ``paths`` to the user the servers run as (no-op when not root)."""
        if self.run_as is None:
            return
        for path in paths:
            shutil.chown(path, self.run_as, self.run_as)


def _major_version(bindir: Path) -> int:
    out = subprocess.run(
        [str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=False
    ).stdout
    match = re.search(r"(\d+)", out)
    return int(match.group(1)) if match else 0


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now, taken below the ephemeral range when possible.

    Ports handed out by ``bind(0)`` come from the ephemeral range, where every outgoing
    connection also takes its local port; a server started a moment later on such a port can
    lose the race. Below that range only other listeners compete.
    """
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.SystemRandom()
    if low > 11000:
        for _ in range(50):
            port = rng.randrange(10000, low - 1)
            if _is_bindable(host, port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _is_bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_is_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


# -- processes --------------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        stat = _proc_stat(int(entry.name))
        if stat is not None:
            children.setdefault(stat[1], []).append(int(entry.name))
    found: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def _process_title(pid: int) -> str:
    """What ``ps`` shows for ``pid``: PostgreSQL writes each process's role into its argv
    (``postgres: gcp-us-central1: walreceiver streaming 0/3000148``)."""
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _is_alive(pid: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def _signal(pids: Iterable[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _wait_until(predicate: object, timeout: float, interval: float = 0.005) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# -- one server -------------------------------------------------------------------------------


class PostgresServer:
    """One data directory and, while it runs, one postmaster listening on 127.0.0.1:``port``."""

    def __init__(
        self, name: str, *, binaries: PostgresBinaries, data_dir: Path, port: int, log_path: Path
    ) -> None:
        self.name = name
        self.binaries = binaries
        self.data_dir = data_dir
        self.port = port
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._postmaster_pid: int | None = None
        self._paused: tuple[PausedPart, list[int]] | None = None

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        if self._paused is not None:
            state += f" ({self._paused[0]} paused)"
        return f"<PostgresServer {self.name} 127.0.0.1:{self.port} {state}>"

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def postmaster_pid(self) -> int | None:
        return self._postmaster_pid if self.is_running else None

    def process_ids(self) -> list[int]:
        """The postmaster and every process under it (for checks that nothing is left)."""
        if self._process is None:
            return []
        pids = [self._process.pid, *_descendants(self._process.pid)]
        return [pid for pid in pids if _is_alive(pid)]

    @property
    def paused(self) -> PausedPart | None:
        """What :meth:`pause` froze (``None``: nothing is frozen)."""
        return self._paused[0] if self._paused is not None else None

    # -- creating a data directory ---------------------------------------------------------

    def initdb(self) -> None:
        self.binaries.run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            SUPERUSER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            cwd=self.data_dir.parent,
        )

    def base_backup_command(self, source_port: int) -> list[str]:
        return self.binaries.command(
            "pg_basebackup",
            "-D",
            str(self.data_dir),
            "-h",
            "127.0.0.1",
            "-p",
            str(source_port),
            "-U",
            SUPERUSER,
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-sync",
        )

    def wipe(self) -> None:
        if self.is_running:
            raise TopologyError(f"{self.name}: cannot wipe a running server")
        shutil.rmtree(self.data_dir, ignore_errors=True)

    # -- running ---------------------------------------------------------------------------

    def start(self, *, timeout: float = 30.0) -> None:
        """Start the postmaster and wait until it accepts connections (primary or standby)."""
        self.launch()
        self.wait_ready(timeout=timeout)

    def launch(self) -> None:
        """Start the postmaster without waiting (see :meth:`wait_ready`)."""
        if self.is_running:
            raise TopologyError(f"{self.name} is already running")
        with contextlib.suppress(FileNotFoundError):
            # Left behind by a hard kill; the postmaster checks it anyway, but a stale
            # "ready" line in it would fool wait_ready().
            (self.data_dir / "postmaster.pid").unlink()
        self._postmaster_pid = None
        self._process = self.binaries.spawn(
            "postgres", "-D", str(self.data_dir), cwd=self.data_dir, log_path=self.log_path
        )

    def wait_ready(self, *, timeout: float = 30.0) -> None:
        """Wait until the postmaster says it is ready (primary) or accepts reads (standby)."""
        if self._process is None:
            raise TopologyError(f"{self.name} was not launched")
        pid_file = self.data_dir / "postmaster.pid"
        deadline = time.monotonic() + timeout
        while True:
            status = self._pid_file_status(pid_file)
            if status == "ready":  # a hot standby reports "ready" once it accepts reads
                break
            if self._process.poll() is not None:
                self._process = None
                raise TopologyError(
                    f"{self.name}: postgres exited while starting; log tail:\n{self.log_tail()}"
                )
            if time.monotonic() >= deadline:
                self.kill()
                raise TopologyError(
                    f"{self.name}: not ready within {timeout} s; log tail:\n{self.log_tail()}"
                )
            time.sleep(0.005)
        log.debug("postgres_started", region=self.name, port=self.port, status=status)

    def _pid_file_status(self, pid_file: Path) -> str | None:
        try:
            lines = pid_file.read_text().splitlines()
        except (FileNotFoundError, PermissionError):
            return None
        if len(lines) < 8:
            return None
        self._postmaster_pid = int(lines[0])
        return lines[7].strip()

    def pause(self, part: PausedPart = "server", *, timeout: float = 5.0) -> None:
        """Freeze the server (SIGSTOP), or only one of its processes, until :meth:`resume`.

        ``server``: the postmaster first (so that it forks nothing new), then every process
        under it — the server holds its connections open and answers nothing, as a host
        stuck in a long GC-like stall or a frozen VM would. ``walreceiver``: only the process
        that receives WAL from upstream — the server keeps answering queries with ever older
        data, which no connection-level check can notice. ``startup``: only the process that
        replays WAL — WAL is still received (and acknowledged as written), not applied.
        A process of that kind must exist (a standby's walreceiver may be between attempts:
        it is waited for up to ``timeout``).
        """
        if not self.is_running or self._postmaster_pid is None:
            raise TopologyError(f"{self.name} is not running")
        if self._paused is not None:
            raise TopologyError(f"{self.name} is already paused ({self._paused[0]})")
        root = self._postmaster_pid
        if part == "server":
            _signal([root], signal.SIGSTOP)
            pids = [root, *(pid for pid in _descendants(root) if _is_alive(pid))]
            _signal(pids, signal.SIGSTOP)
        else:
            found: list[int] = []

            def find() -> bool:
                found[:] = [
                    pid
                    for pid in _descendants(root)
                    if _is_alive(pid) and f": {part} " in _process_title(pid) + " "
                ]
                return bool(found)

            if not _wait_until(find, timeout, 0.01):
                raise TopologyError(f"{self.name} has no {part} process to pause")
            pids = found
            _signal(pids, signal.SIGSTOP)
        self._paused = (part, pids)
        log.debug("postgres_paused", region=self.name, part=part, pids=pids)

    def resume(self) -> None:
        """Let what :meth:`pause` froze run again (SIGCONT). No-op when nothing is paused."""
        if self._paused is None:
            return
        part, pids = self._paused
        self._paused = None
        wrapper = [self._process.pid] if self._process is not None else []
        # runuser stops itself when the postmaster (its child) stops: wake it as well.
        _signal([*pids, *wrapper], signal.SIGCONT)
        log.debug("postgres_resumed", region=self.name, part=part)

    def stop(self, *, timeout: float = 10.0) -> None:
        """Immediate shutdown (SIGQUIT): no checkpoint, like a crash, but orderly. Falls back
        to :meth:`kill`. No-op when not running."""
        self.resume()  # a frozen process would hold its signal until woken
        if not self.is_running:
            self._reap()
            return
        pid = self._postmaster_pid
        if pid is not None:
            _signal([pid], signal.SIGQUIT)
            if self._wait_exit(timeout):
                self._wait_port_closed(timeout)
                return
        self.kill()

    def kill(self, *, timeout: float = 10.0) -> None:
        """Kill the server hard, as a crash would, and wait until its port is closed.

        The postmaster is frozen (SIGSTOP) so that it forks nothing new, every process under
        it gets SIGKILL, then the postmaster is let go: it reaps them and exits at once, as it
        may not restart after a crash (``restart_after_crash = off``); if it lingers it gets
        SIGKILL too. Letting it reap its children matters here: a zombie whose parent dies is
        inherited by init, which on this kind of machine never reaps it.
        """
        if self._process is None:
            return
        self.resume()
        root = self._postmaster_pid
        if root is None or not _is_alive(root):
            root = self._process.pid
        _signal([root], signal.SIGSTOP)
        children = [pid for pid in _descendants(root) if _is_alive(pid)]
        _signal(children, signal.SIGKILL)
        _signal([root], signal.SIGCONT)
        if not self._wait_exit(min(timeout, 3.0)):
            _signal([root, *_descendants(root)], signal.SIGKILL)
            if not self._wait_exit(timeout):
                raise TopologyError(f"{self.name}: postmaster {root} survived SIGKILL")
        _signal(children, signal.SIGKILL)  # anything that outlived its parent
        self._wait_port_closed(timeout)
        log.debug("postgres_killed", region=self.name, port=self.port)

    def _wait_exit(self, timeout: float) -> bool:
        process = self._process
        if process is None:
            return True
        deadline = time.monotonic() + timeout
        while True:
            try:
                process.wait(0.01)
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline:
                    return False
                # runuser stops itself when its child is stopped (job control, as su does),
                # possibly after our SIGCONT: keep nudging it until it has reaped its child.
                _signal([process.pid], signal.SIGCONT)
        self._reap()
        return True

    def _reap(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            self._process = None
            self._postmaster_pid = None

    def _wait_port_closed(self, timeout: float) -> None:
        if not _wait_until(lambda: not port_is_open(self.port), timeout, 0.01):
            raise TopologyError(f"{self.name}: port {self.port} still open after {timeout} s")

    # -- configuration files ---------------------------------------------------------------

    def write_node_conf(self, settings: dict[str, str]) -> None:
        """This node's own settings (port, name), included last from postgresql.conf."""
        _write_conf(self.data_dir / "node.conf", settings)
        self.binaries.give(self.data_dir / "node.conf")

    def write_auto_conf(self, settings: dict[str, str]) -> None:
        """Replace postgresql.auto.conf (what ALTER SYSTEM writes) while the server is down."""
        path = self.data_dir / "postgresql.auto.conf"
        _write_conf(path, settings, header="# Do not edit this file manually!\n")
        self.binaries.give(path)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _write_conf(path: Path, settings: dict[str, str], header: str = "") -> None:
    body = "".join(f"{key} = {quote_conf(value)}\n" for key, value in settings.items())
    path.write_text(header + body)


def quote_conf(value: str) -> str:
    """A postgresql.conf string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def run_parallel(commands: Sequence[list[str]], *, cwd: Path, timeout: float = 60.0) -> None:
    """Run several commands at once (e.g. one pg_basebackup per standby); raise if any fails."""
    processes = [
        subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for argv in commands
    ]
    failures = []
    for argv, process in zip(commands, processes, strict=True):
        try:
            out, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            out, _ = process.communicate()
            failures.append(f"{argv[-1]}: timed out after {timeout} s")
            continue
        if process.returncode != 0:
            failures.append(f"{' '.join(argv)} (exit {process.returncode}): {out.decode().strip()}")
    if failures:
        raise TopologyError("; ".join(failures))
