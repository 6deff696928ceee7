"""What the benchmark and the profiler run against: the local topology, service processes
started from this checkout, an access token, keys, signed tokens and bulk-inserted keys.

The service runs as its own process (``python -m service.cli serve``), as in production, so
its event loop has a core of its own; the load generators are other processes. The local
topology's fault proxies run on a thread of *this* process: scenarios that do not need a
fault point the service straight at PostgreSQL (``direct``), so the proxies cost nothing.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from harness import LocalTopology
from service.core import crypto
from service.settings import region_dsn_variable

ROOT = Path(__file__).resolve().parents[2]
ALGORITHMS = ("RS256", "ES256", "EdDSA")
ENVIRONMENT = "env-bench"
JWKS_ENVIRONMENT = "env-bench-jwks"
AUDIENCE = "bench"
_WORKER_PID = re.compile(r'^signing_keys_worker_info\{.*\bpid="(\d+)".*\} 1\.0$', re.M)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer 200 within {timeout:g}s")
        time.sleep(0.1)


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of a process, in KiB."""
    figures = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            figures[name] = int(value.split()[0])
    return figures


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def background_cpu(pid: int, seconds: float = 2.0) -> float:
    """The share of a core a process uses with no load on it (its pollers and probes)."""
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return (cpu_seconds(pid) - before) / seconds


def wait_idle(pid: int, *, busy_below: float = 0.15, timeout: float = 120.0) -> None:
    """Until the process uses less than ``busy_below`` of a core over half a second: the
    service keeps working on requests whose clients have left (aiohttp does not cancel
    them), and CPU-bound work (a large JWKS) does not even notice its deadline. Pass its
    :func:`background_cpu` plus a margin when it is busy on its own."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(0.5)
        if cpu_seconds(pid) - before < busy_below * 0.5:
            return


def metric(url: str, name: str) -> float | None:
    with urllib.request.urlopen(url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return None


@dataclass
class ServiceProcess:
    """One ``serve`` process and where it listens."""

    proc: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cached_keys(self) -> float | None:
        return metric(f"{self.base}/metrics", "signing_keys_cached_keys")

    def workers(self) -> list[int]:
        """The worker processes of a supervisor (none: this process serves alone)."""
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        return [int(pid) for pid in children.read_text().split()] if children.exists() else []

    def serving_workers(self) -> set[int]:
        """The workers seen answering ``/metrics`` over 20 new connections."""
        seen = set()
        for _ in range(20):
            try:
                with urllib.request.urlopen(f"{self.base}/metrics", timeout=2) as response:
                    found = _WORKER_PID.search(response.read().decode())
            except OSError:
                continue
            if found:
                seen.add(int(found.group(1)))
        return seen


@dataclass
class Rig:
    """The topology and what the scenarios share: credentials, keys and signed tokens."""

    topology: LocalTopology
    local: str
    authorization: str = ""
    key_ids: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    public_keys: dict[str, bytes] = field(default_factory=dict)

    def env(
        self, *, direct: bool, http_port: int, grpc_port: int, workers: int = 1
    ) -> dict[str, str]:
        env = {
            **os.environ,
            **self.topology.env(self.local),
            "SIGNING_KEYS_HTTP_HOST": "127.0.0.1",
            "SIGNING_KEYS_HTTP_PORT": str(http_port),
            "SIGNING_KEYS_GRPC_HOST": "127.0.0.1",
            "SIGNING_KEYS_GRPC_PORT": str(grpc_port),
            "SIGNING_KEYS_GRPC_ENABLED": "true",
            "SIGNING_KEYS_ACCESS_LOG": "off",
            "SIGNING_KEYS_LOG_LEVEL": "error",
            "SIGNING_KEYS_WORKERS": str(workers),
        }
        if direct:
            for region in self.topology.regions:
                env[region_dsn_variable(region.name)] = region.direct_dsn
        return env

    def cli(self, *args: str) -> str:
        env = self.env(direct=True, http_port=0, grpc_port=0)
        return subprocess.run(
            [sys.executable, "-m", "service.cli", *args],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    @contextmanager
    def service(
        self, *, direct: bool = True, ready_within: float = 60.0, workers: int = 1
    ) -> Iterator[ServiceProcess]:
        """A ``serve`` process from this checkout, ready (``/readyz`` 200) when yielded; with
        ``workers`` above 1, a supervisor whose workers (:meth:`ServiceProcess.workers`)
        have all started serving."""
        http_port, grpc_port = free_port(), free_port()
        env = self.env(direct=direct, http_port=http_port, grpc_port=grpc_port, workers=workers)
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        service = ServiceProcess(proc, http_port, grpc_port)
        try:
            wait_for_http(f"{service.base}/readyz", ready_within)
            deadline = time.monotonic() + ready_within
            while workers > 1 and len(service.serving_workers()) < workers:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"not all {workers} workers serve /readyz")
                time.sleep(0.2)
            yield service
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def prepare(self) -> None:
        """Schema, an access token for both bench environments, one key per algorithm
        created through the API and a token signed by each."""
        self.cli("migrate")
        issued = json.loads(
            self.cli(
                "token",
                "create",
                "--environment",
                ENVIRONMENT,
                "--environment",
                JWKS_ENVIRONMENT,
            )
        )
        self.authorization = "Basic " + base64.b64encode(
            f"{issued['id']}:{issued['secret']}".encode()
        ).decode("ascii")
        with self.service() as service:
            for algorithm in ALGORITHMS:
                data = self._create_key(service, algorithm)
                pem = base64.b64decode(data["private_key"])
                private = serialization.load_pem_private_key(pem, password=None)
                self.key_ids[algorithm] = data["id"]
                self.public_keys[algorithm] = base64.b64decode(
                    "".join(data["public_key"].splitlines()[1:-1])
                )
                self.tokens[algorithm] = jwt.encode(
                    {"exp": int(time.time()) + 6 * 3600, "sub": "bench", "aud": AUDIENCE},
                    private,  # type: ignore[arg-type]
                    algorithm=algorithm,
                    headers={"kid": data["id"]},
                )

    def _create_key(self, service: ServiceProcess, algorithm: str) -> dict[str, str]:
        request = urllib.request.Request(
            f"{service.base}/system/v1/signing-keys?environment_id={ENVIRONMENT}",
            data=json.dumps({"algorithm": algorithm}).encode(),
            headers={"Authorization": self.authorization, "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            data: dict[str, str] = json.loads(response.read())["data"]
        return data

    async def insert_keys(self, environment: str, algorithm: str, count: int) -> float:
        """Insert ``count`` keys straight into the primary (COPY): the API would take minutes
        for 10^5 keys, and the bench measures serving them, not creating them. Public keys
        cycle through a pool of distinct ones; each row is still parsed into its own object.
        Returns the seconds it took."""
        started = time.monotonic()
        pool = _public_keys(algorithm, 1000 if algorithm != "RS256" else 40)
        now = datetime.now(UTC)
        records = [
            (
                f"bench{environment[-6:]}{algorithm}{index:08d}",
                environment,
                algorithm,
                pool[index % len(pool)],
                crypto.fingerprint(pool[index % len(pool)]),
                "active",
                "imported",
                now,
                now,
            )
            for index in range(count)
        ]
        conn = await asyncpg.connect(self.topology.region(self.topology.primary).direct_dsn)
        try:
            await conn.copy_records_to_table(
                "signing_keys",
                records=records,
                columns=[
                    "id",
                    "environment_id",
                    "algorithm",
                    "public_key",
                    "fingerprint",
                    "status",
                    "source",
                    "created_at",
                    "updated_at",
                ],
            )
        finally:
            await conn.close()
        return time.monotonic() - started

    async def delete_keys(self, environment: str) -> None:
        conn = await asyncpg.connect(self.topology.region(self.topology.primary).direct_dsn)
        try:
            await conn.execute("DELETE FROM signing_keys WHERE environment_id = $1", environment)
        finally:
            await conn.close()


def _public_keys(algorithm: str, count: int) -> list[bytes]:
    keys: list[bytes] = []
    for _ in range(count):
        if algorithm == "RS256":
            public: crypto.PublicKey = rsa.generate_private_key(65537, 2048).public_key()
        elif algorithm == "ES256":
            public = ec.generate_private_key(ec.SECP256R1()).public_key()
        else:
            public = ed25519.Ed25519PrivateKey.generate().public_key()
        keys.append(crypto.public_key_der(public))
    return keys


@contextmanager
def topology(regions: int) -> Iterator[LocalTopology]:
    from harness import DEFAULT_REGIONS

    with LocalTopology(regions=DEFAULT_REGIONS[:regions]) as topo:
        yield topo
