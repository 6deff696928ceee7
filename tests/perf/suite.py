"""``make bench``: every scenario of the performance issue beside its same-run baseline, in
one table (printed, JSON, SVG chart of the ratios).

    python -m tests.perf                      # full: 5 rounds x 3 s, 10k-key JWKS, 1M keys
    BENCH_QUICK=1 python -m tests.perf        # a few minutes: 3 rounds x 2 s, 1k-key JWKS

Environment: ``BENCH_QUICK``, ``BENCH_ROUNDS``, ``BENCH_SECONDS``, ``BENCH_JWKS_KEYS``,
``BENCH_MEMORY_KEYS`` (comma-separated counts), ``BENCH_ONLY`` (comma-separated phases of
:data:`PHASES`; default all), ``BENCH_OUT`` (the JSON path; the SVG is written beside it;
default ``bench-results/bench-<UTC time>.json``).

Each round runs every load scenario once, baselines interleaved with the service, so that a
noisy neighbour hits both; the table holds medians over rounds, and ratios of medians. A run
with a wrong status or a wrong sampled body counts as zero. Benchmarks are not tests:
nothing here fails on a figure.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from service.grpc.generated.signingkeys.v1 import signing_keys_pb2 as pb2
from service.settings import Settings
from tests.perf import loads, rawverify
from tests.perf.bare import GET_KEY_PATH
from tests.perf.loads import GrpcCase, HttpCase, Sample
from tests.perf.report import (
    NotMeasured,
    Report,
    Row,
    median,
    ratio_row,
    render_table,
    write_json,
    write_svg,
)
from tests.perf.rig import (
    ALGORITHMS,
    AUDIENCE,
    ENVIRONMENT,
    JWKS_ENVIRONMENT,
    ROOT,
    Rig,
    ServiceProcess,
    background_cpu,
    cpu_seconds,
    free_port,
    rss_kib,
    topology,
    wait_for_http,
    wait_idle,
)

VERIFY_PATH = "/signingkeys.v1.SigningKeys/VerifyToken"
MEMORY_ENVIRONMENT = "env-bench-memory"
CREATION_RATE = 5.0
JWKS_SETTLE = 4.0  # twice the default request deadline
# Whole JWK Sets (1.4 MB for 10^4 keys) and their baseline are loaded over 4 connections: a
# render after a change takes a tenth of a second of CPU, and 32 connections of 1.4 MB answers
# measure the loopback's copying more than either server. The 304 scenario is loaded like its
# baseline, the small JSON body (32 connections): it renders nothing and sends a head.
JWKS_CONNECTIONS = 4
CREATION_CONNECTIONS = 8
# The phases BENCH_ONLY chooses from, in the order they run.
PHASES = ("loads", "creation", "workers", "failover", "memory")


@dataclass(frozen=True, slots=True)
class Options:
    quick: bool
    rounds: int
    seconds: float
    jwks_keys: int
    memory_keys: tuple[int, ...]
    out: Path
    only: frozenset[str] = frozenset(PHASES)

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Options:
        quick = env.get("BENCH_QUICK", "") not in ("", "0")
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        memory = env.get("BENCH_MEMORY_KEYS", "100000" if quick else "100000,1000000")
        only = frozenset(p.strip() for p in env.get("BENCH_ONLY", "").split(",") if p.strip())
        if only - set(PHASES):
            raise SystemExit(f"BENCH_ONLY: unknown phase(s) {sorted(only - set(PHASES))}")
        return cls(
            quick=quick,
            rounds=int(env.get("BENCH_ROUNDS", "3" if quick else "5")),
            seconds=float(env.get("BENCH_SECONDS", "2" if quick else "3")),
            jwks_keys=int(env.get("BENCH_JWKS_KEYS", "1000" if quick else "10000")),
            memory_keys=tuple(int(n) for n in memory.split(",") if n.strip()),
            out=Path(env.get("BENCH_OUT", str(ROOT / "bench-results" / f"bench-{stamp}.json"))),
            only=only or frozenset(PHASES),
        )


@dataclass
class Scenario:
    """A load scenario: how to run it once, and what it is compared with."""

    name: str
    run: Callable[[], Awaitable[Sample]]
    baseline: str | None = None
    target: str | None = None
    # Seconds to wait after a run: the service finishes requests whose clients have gone
    # (wrk closes its connections at the end), and a slow scenario's tail would otherwise
    # land on the next one. The request deadline bounds that tail.
    settle: float = 0.0
    samples: list[Sample] = field(default_factory=list)


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


class Bench:
    def __init__(self, options: Options, rig: Rig) -> None:
        self.options = options
        self.rig = rig
        self.scenarios: list[Scenario] = []
        self.report = Report(
            started=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            mode="quick" if options.quick else "full",
            machine=_machine(),
        )

    # -- cases -------------------------------------------------------------------------------

    def http(
        self,
        url: str,
        check: loads.BodyCheck,
        *,
        method: str = "GET",
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> HttpCase:
        all_headers = {"Authorization": self.rig.authorization, **(headers or {})}
        if body is not None:
            all_headers["Content-Type"] = "application/json"
        return HttpCase(method, url, all_headers, None if body is None else json.dumps(body), check)

    def key_url(self, service: ServiceProcess) -> str:
        key = self.rig.key_ids["RS256"]
        return f"{service.base}/system/v1/signing-keys/{key}?environment_id={ENVIRONMENT}"

    def key_check(self) -> loads.BodyCheck:
        key = self.rig.key_ids["RS256"]

        def check(status: int, body: bytes) -> bool:
            data = (_json(body) or {}).get("data") or {}
            return (
                status == 200
                and data.get("id") == key
                and "PUBLIC KEY" in data.get("public_key", "")
            )

        return check

    def verify_check(self, algorithm: str) -> loads.BodyCheck:
        key = self.rig.key_ids[algorithm]

        def check(status: int, body: bytes) -> bool:
            data = (_json(body) or {}).get("data") or {}
            return status == 200 and data.get("valid") is True and bool(data.get("key_id") == key)

        return check

    def grpc_get_check(self) -> Callable[[bytes], bool]:
        key = self.rig.key_ids["RS256"]
        return lambda reply: pb2.GetSigningKeyResponse.FromString(reply).key.id == key

    def grpc_verify_check(self, algorithm: str) -> Callable[[bytes], bool]:
        key = self.rig.key_ids[algorithm]

        def check(reply: bytes) -> bool:
            message = pb2.VerifyTokenResponse.FromString(reply)
            return bool(message.valid and message.key_id == key)

        return check

    # -- setup -------------------------------------------------------------------------------

    def define(self, service: ServiceProcess, bare_http: str, bare_grpc: int, etag: str) -> None:
        auth = self.rig.authorization
        add = self.scenarios.append
        wrk, h2 = loads.wrk, loads.h2load
        seconds = self.options.seconds

        def on_wrk(
            case: HttpCase, connections: int = loads.WRK_CONNECTIONS
        ) -> Callable[[], Awaitable[Sample]]:
            return lambda: wrk(case, seconds, connections=connections)

        def on_h2(case: GrpcCase) -> Callable[[], Awaitable[Sample]]:
            return lambda: h2(case, seconds)

        small = "bare aiohttp, small JSON"
        add(Scenario(small, on_wrk(self.http(f"{bare_http}/small", lambda s, b: s == 200))))
        bare_grpc_name = "bare grpclib, upb messages"
        get_message = pb2.GetSigningKeyRequest(
            id=self.rig.key_ids["RS256"], environment_id=ENVIRONMENT
        ).SerializeToString()
        add(
            Scenario(
                bare_grpc_name,
                on_h2(GrpcCase(bare_grpc, GET_KEY_PATH, get_message, auth, self.grpc_get_check())),
            )
        )
        jwks_bare = f"bare aiohttp, JWKS bytes from memory, {JWKS_CONNECTIONS} connections"
        add(
            Scenario(
                jwks_bare,
                on_wrk(self.http(f"{bare_http}/jwks", lambda s, b: s == 200), JWKS_CONNECTIONS),
            )
        )
        for algorithm in ALGORITHMS:
            token = self.rig.tokens[algorithm]
            add(
                Scenario(
                    f"bare aiohttp + raw verify {algorithm}",
                    on_wrk(
                        self.http(
                            f"{bare_http}/verify/{algorithm}",
                            lambda s, b: s == 200,
                            method="POST",
                            body={"token": token, "audience": AUDIENCE},
                        )
                    ),
                )
            )

        add(
            Scenario(
                "HTTP GET key",
                on_wrk(self.http(self.key_url(service), self.key_check())),
                small,
                ">= 0.7",
            )
        )
        add(
            Scenario(
                "gRPC GetSigningKey",
                on_h2(
                    GrpcCase(
                        service.grpc_port, GET_KEY_PATH, get_message, auth, self.grpc_get_check()
                    )
                ),
                bare_grpc_name,
                ">= 0.7",
            )
        )
        for algorithm in ALGORITHMS:
            token = self.rig.tokens[algorithm]
            add(
                Scenario(
                    f"HTTP verify {algorithm}",
                    on_wrk(
                        self.http(
                            f"{service.base}/v1/tokens/verify",
                            self.verify_check(algorithm),
                            method="POST",
                            body={
                                "token": token,
                                "audience": AUDIENCE,
                                "environment_id": ENVIRONMENT,
                            },
                        )
                    ),
                    f"bare aiohttp + raw verify {algorithm}",
                    ">= 0.7",
                )
            )
        for algorithm in ALGORITHMS:
            message = pb2.VerifyTokenRequest(
                token=self.rig.tokens[algorithm], audience=AUDIENCE, environment_id=ENVIRONMENT
            ).SerializeToString()
            add(
                Scenario(
                    f"gRPC VerifyToken {algorithm}",
                    on_h2(
                        GrpcCase(
                            service.grpc_port,
                            VERIFY_PATH,
                            message,
                            auth,
                            self.grpc_verify_check(algorithm),
                        )
                    ),
                    bare_grpc_name,
                    ">= 0.6" if algorithm == "RS256" else None,
                )
            )
        list_url = f"{service.base}/system/v1/signing-keys?environment_id={ENVIRONMENT}"

        def list_check(status: int, body: bytes) -> bool:
            data = (_json(body) or {}).get("data")
            return status == 200 and isinstance(data, list) and len(data) >= len(ALGORITHMS)

        add(Scenario("HTTP list keys (page of 25)", on_wrk(self.http(list_url, list_check)), small))
        jwks_url = f"{service.base}/v1/environments/{JWKS_ENVIRONMENT}/jwks.json"
        count = self.options.jwks_keys

        def jwks_check(status: int, body: bytes) -> bool:
            return status == 200 and len((_json(body) or {}).get("keys", ())) == count

        add(
            Scenario(
                f"HTTP JWKS, {count:,} keys, {JWKS_CONNECTIONS} connections",
                on_wrk(self.http(jwks_url, jwks_check), JWKS_CONNECTIONS),
                jwks_bare,
                ">= 0.5",
                settle=JWKS_SETTLE,
            )
        )
        add(
            Scenario(
                "HTTP JWKS, If-None-Match (304)",
                on_wrk(self.http(jwks_url, lambda s, b: s == 304, headers={"If-None-Match": etag})),
                small,
                ">= 0.7",
                settle=JWKS_SETTLE,
            )
        )

    # -- rounds ------------------------------------------------------------------------------

    async def load_rounds(self, drain: list[str], pids: list[int]) -> None:
        """A discarded warm-up run of every scenario (pools, caches, allocator), then the
        rounds. After each run, the servers (``pids``) must be idle and ``drain`` URLs must
        answer 200: a server still working through the last run's abandoned requests, or
        whose router still counts regions down after a slow run (``/readyz``), would
        otherwise fail or slow the next scenario."""
        idle = {pid: await asyncio.to_thread(background_cpu, pid) + 0.15 for pid in pids}
        self.report.machine["service CPU with no load (share of a core)"] = round(
            idle[pids[0]] - 0.15, 2
        )
        for scenario in self.scenarios:
            await scenario.run()
            await asyncio.sleep(scenario.settle)
            await _drain(drain, idle)
        for number in range(self.options.rounds):
            started = time.monotonic()
            for scenario in self.scenarios:
                sample = await scenario.run()
                await asyncio.sleep(scenario.settle)
                await _drain(drain, idle)
                scenario.samples.append(sample)
                if not sample.correct:
                    print(f"  WRONG {scenario.name}: {sample}", flush=True)
            print(
                f"round {number + 1}/{self.options.rounds} done in "
                f"{time.monotonic() - started:.0f}s",
                flush=True,
            )

    def tabulate(self) -> None:
        rows: dict[str, Row] = {}
        for scenario in self.scenarios:
            rates = [sample.rps for sample in scenario.samples]
            p50 = _median_of([s.p50_ms for s in scenario.samples])
            p99 = _median_of([s.p99_ms for s in scenario.samples])
            correct_runs = [sample.correct for sample in scenario.samples]
            bad = [s for s in scenario.samples if not s.correct]
            note = _wrong_note(bad)
            if all(sample.requests == 0 for sample in scenario.samples):
                note = "no request finished within a run: each takes longer; " + note
            if scenario.baseline is None:
                row = Row(scenario.name, median(rates), p50, p99, runs=tuple(rates), note=note)
            else:
                row = ratio_row(
                    scenario.name,
                    rates,
                    rows[scenario.baseline],
                    p50_ms=p50,
                    p99_ms=p99,
                    target=scenario.target,
                    correct_runs=correct_runs,
                    note=note,
                )
            if bad and scenario.baseline is None:
                counted = [s.rps if s.correct else 0.0 for s in scenario.samples]
                row = Row(
                    row.scenario,
                    median(counted),
                    p50,
                    p99,
                    correct=False,
                    runs=tuple(counted),
                    note=note,
                )
            rows[scenario.name] = row
            self.report.rows.append(row)

    def raw_verify(self) -> None:
        budget = 0.3 if self.options.quick else 1.0
        for algorithm in ALGORITHMS:
            rates = [
                rawverify.rate(self.rig.tokens[algorithm], self.rig.public_keys[algorithm], budget)
                for _ in range(self.options.rounds)
            ]
            self.report.rows.append(
                Row(
                    f"raw verify loop {algorithm} (1 core)",
                    median(rates),
                    runs=tuple(rates),
                    note="cryptography alone, in this process",
                )
            )

    # -- creation under load -----------------------------------------------------------------

    async def creation(self, service: ServiceProcess) -> None:
        case = self.http(self.key_url(service), self.key_check())
        seconds = max(self.options.seconds, 2.0)
        idle: list[Sample] = []
        busy: list[Sample] = []
        created: list[int] = []
        for _ in range(self.options.rounds):
            idle.append(await loads.wrk(case, seconds, connections=CREATION_CONNECTIONS))
            outcome: list[int] = []
            busy.append(
                await loads.wrk(
                    case,
                    seconds,
                    connections=CREATION_CONNECTIONS,
                    during=functools.partial(self._create_keys, service, seconds, outcome),
                )
            )
            created.append(sum(1 for status in outcome if status == 201))
            if any(status != 201 for status in outcome):
                print(f"  creation statuses: {outcome}", flush=True)
        idle_name = f"HTTP GET key, {CREATION_CONNECTIONS} connections, idle"
        idle_row = Row(
            idle_name,
            median([s.rps for s in idle]),
            _median_of([s.p50_ms for s in idle]),
            _median_of([s.p99_ms for s in idle]),
            runs=tuple(s.rps for s in idle),
        )
        busy_p99 = _median_of([s.p99_ms for s in busy])
        correct = all(s.correct for s in busy) and all(
            n >= CREATION_RATE * seconds * 0.5 for n in created
        )
        self.report.rows.append(idle_row)
        self.report.rows.append(
            Row(
                f"HTTP GET key while creating RS256 keys at {CREATION_RATE:g}/s",
                median([s.rps for s in busy]) if correct else 0.0,
                _median_of([s.p50_ms for s in busy]),
                busy_p99,
                baseline=idle_name,
                ratio=(busy_p99 / idle_row.p99_ms) if busy_p99 and idle_row.p99_ms else None,
                target="<= 2",
                correct=correct,
                ratio_of="p99",
                runs=tuple(s.rps for s in busy),
                note=f"keys created per run: {created}",
            )
        )

    async def _create_keys(self, service: ServiceProcess, seconds: float, out: list[int]) -> None:
        """Starts one RSA key creation every 1/CREATION_RATE s, whether or not the last one
        has answered: the rate is the load's, not the service's."""
        url = f"{service.base}/system/v1/signing-keys?environment_id={ENVIRONMENT}"
        headers = {"Authorization": self.rig.authorization}

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

            async def one() -> None:
                try:
                    async with session.post(url, json={"algorithm": "RS256"}, headers=headers) as r:
                        await r.read()
                        out.append(r.status)
                except (aiohttp.ClientError, TimeoutError):
                    out.append(0)

            tasks = []
            for _ in range(int(seconds * CREATION_RATE)):
                tasks.append(asyncio.create_task(one()))
                await asyncio.sleep(1 / CREATION_RATE)
            await asyncio.gather(*tasks)

    # -- 1 vs 2 workers ----------------------------------------------------------------------

    async def workers(self) -> None:
        """HTTP verify RS256 against one worker and against two (SIGNING_KEYS_WORKERS=2),
        both up at once and loaded in turn, so that a noisy neighbour hits both."""
        token = self.rig.tokens["RS256"]
        body = {"token": token, "audience": AUDIENCE, "environment_id": ENVIRONMENT}
        one_worker: list[Sample] = []
        two_workers: list[Sample] = []
        with self.rig.service() as one, self.rig.service(workers=2) as two:
            pids = [one.pid, *two.workers()]
            idle = {pid: await asyncio.to_thread(background_cpu, pid) + 0.15 for pid in pids}
            drain = [f"{one.base}/readyz", f"{two.base}/readyz"]
            cases = [
                (
                    self.http(
                        f"{service.base}/v1/tokens/verify",
                        self.verify_check("RS256"),
                        method="POST",
                        body=body,
                    ),
                    samples,
                )
                for service, samples in ((one, one_worker), (two, two_workers))
            ]
            for case, _ in cases:  # warm-up, not counted
                await loads.wrk(case, self.options.seconds)
                await _drain(drain, idle)
            busy = dict.fromkeys(pids, 0.0)  # CPU seconds each process spent under load
            for _ in range(self.options.rounds):
                for case, samples in cases:
                    before = {pid: cpu_seconds(pid) for pid in pids}
                    samples.append(await loads.wrk(case, self.options.seconds))
                    for pid in pids:
                        busy[pid] += cpu_seconds(pid) - before[pid]
                    await _drain(drain, idle)
            loaded = self.options.rounds * self.options.seconds
            shares = [busy[pid] / loaded for pid in pids]
        one_name = "HTTP verify RS256, 1 worker"
        one_row = Row(
            one_name,
            median([s.rps for s in one_worker]),
            _median_of([s.p50_ms for s in one_worker]),
            _median_of([s.p99_ms for s in one_worker]),
            correct=all(s.correct for s in one_worker),
            runs=tuple(s.rps for s in one_worker),
        )
        self.report.rows.append(one_row)
        self.report.rows.append(
            ratio_row(
                "HTTP verify RS256, 2 workers (SIGNING_KEYS_WORKERS=2)",
                [s.rps for s in two_workers],
                one_row,
                p50_ms=_median_of([s.p50_ms for s in two_workers]),
                p99_ms=_median_of([s.p99_ms for s in two_workers]),
                target=">= 1.6",
                correct_runs=[s.correct for s in two_workers],
                note=(
                    f"cores busy while loaded: 1 worker {shares[0]:.2f}, 2 workers "
                    f"{' + '.join(f'{share:.2f}' for share in shares[1:])}; wrk and "
                    f"PostgreSQL share the machine's {os.cpu_count()} cores"
                ),
            )
        )

    # -- failover ----------------------------------------------------------------------------

    async def failover(self) -> None:
        """Lookups through the fault proxies, without and then with the local region
        blackholed a third of the way into the run."""
        rounds = min(self.options.rounds, 2 if self.options.quick else 3)
        seconds = max(3 * self.options.seconds, 6.0)
        proxy = self.rig.topology.region(self.rig.local).proxy
        calm: list[Sample] = []
        faulted: list[Sample] = []
        with self.rig.service(direct=False) as service:
            case = self.http(self.key_url(service), self.key_check())
            right = self.key_check()
            # While the router moves, an error status is an error (wrk counts it, and the rate
            # counts 2xx only), not a wrong answer; a 200 must still be the right key.
            lenient = HttpCase(
                case.method, case.url, case.headers, case.body, lambda s, b: s != 200 or right(s, b)
            )
            await loads.wrk(case, seconds)  # warm-up, not counted
            for _ in range(rounds):
                calm.append(await loads.wrk(case, seconds))

                async def fault() -> None:
                    await asyncio.sleep(seconds / 3)
                    await asyncio.to_thread(proxy.blackhole)

                try:
                    faulted.append(await loads.wrk(lenient, seconds, during=fault))
                finally:
                    await asyncio.to_thread(proxy.pass_through)
                await asyncio.to_thread(wait_for_http, f"{service.base}/readyz", 60.0)
                await asyncio.sleep(2)  # let the router return to the local region
        calm_name = "HTTP GET key via the fault proxies"
        calm_row = Row(
            calm_name,
            median([s.rps for s in calm]),
            _median_of([s.p50_ms for s in calm]),
            _median_of([s.p99_ms for s in calm]),
            runs=tuple(s.rps for s in calm),
        )
        good = [s.rps * (1 - s.bad_status / max(s.requests, 1)) for s in faulted]
        errors = [s.bad_status for s in faulted]
        self.report.rows.append(calm_row)
        self.report.rows.append(
            ratio_row(
                f"HTTP GET key, local region blackholed at {seconds / 3:.0f}s of {seconds:.0f}s",
                good,
                calm_row,
                p50_ms=_median_of([s.p50_ms for s in faulted]),
                p99_ms=_median_of([s.p99_ms for s in faulted]),
                correct_runs=[s.samples > 0 and s.bad_samples == 0 for s in faulted],
                note=f"rate of 2xx only; errors per run: {errors}",
            )
        )

    # -- memory ------------------------------------------------------------------------------

    async def memory(self) -> None:
        bound = Settings.from_env(self.rig.env(direct=True, http_port=0, grpc_port=0))
        # Filled as it goes: a step that fails leaves the earlier ones in the report.
        memory = self.report.memory
        memory["cache bound (SIGNING_KEYS_KEY_CACHE_SIZE)"] = bound.key_cache_size
        await self.rig.delete_keys(JWKS_ENVIRONMENT)
        idle = await self._rss(expected=0)
        memory["idle"] = _mib(idle)
        for count in self.options.memory_keys:
            for algorithm in ("EdDSA", "RS256") if count <= 100_000 else ("EdDSA",):
                if algorithm == "RS256" and self.options.quick:
                    continue
                print(f"  {count:,} {algorithm} keys", flush=True)
                took = await self.rig.insert_keys(MEMORY_ENVIRONMENT, algorithm, count)
                cached = min(count, bound.key_cache_size)
                figures = await self._rss(expected=cached)
                per_key = (figures["VmRSS"] - idle["VmRSS"]) * 1024 / cached
                memory[f"{count:,} {algorithm} keys in the database"] = (
                    f"{_mib(figures)}, {figures['cached']:,.0f} cached, "
                    f"{per_key:,.0f} B per cached key over idle (insert took {took:.0f}s)"
                )
                await self.rig.delete_keys(MEMORY_ENVIRONMENT)

    async def _rss(self, *, expected: int) -> dict[str, float]:
        # Ready means the first poll loaded every key: minutes for 10^6 on a busy machine.
        with self.rig.service(ready_within=900.0) as service:
            deadline = time.monotonic() + 300
            cached: float | None = 0.0
            while time.monotonic() < deadline:
                cached = await asyncio.to_thread(service.cached_keys)
                if (cached or 0.0) >= expected:
                    break
                await asyncio.sleep(0.5)
            await asyncio.sleep(1.0)
            return {**rss_kib(service.pid), "cached": cached or 0.0}


async def _phase(report: Report, name: str, work: Coroutine[Any, Any, None]) -> None:
    """Run one of the later phases; if it fails, say so in the report and go on: the
    figures already measured are worth more than a traceback."""
    print(name, flush=True)
    started = time.monotonic()
    try:
        await work
    except Exception as exc:  # reported in the table, not swallowed
        print(f"  {name} failed: {exc!r}", flush=True)
        report.not_measured.append(NotMeasured(name, f"the phase failed: {exc!r}"[:300]))
    print(f"  {name}: {time.monotonic() - started:.0f}s", flush=True)


async def _drain(urls: list[str], idle: dict[int, float]) -> None:
    for pid, busy_below in idle.items():
        await asyncio.to_thread(functools.partial(wait_idle, pid, busy_below=busy_below))
    for url in urls:
        await asyncio.to_thread(wait_for_http, url, 120.0)


def _mib(figures: dict[str, float]) -> str:
    return f"RSS {figures['VmRSS'] / 1024:.0f} MiB (peak {figures['VmHWM'] / 1024:.0f} MiB)"


def _median_of(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return median(present) if present else None


def _wrong_note(bad: list[Sample]) -> str:
    if not bad:
        return ""
    first = bad[0]
    return (
        f"{len(bad)} run(s) wrong or failed, first: {first.bad_status} bad statuses, "
        f"{first.bad_samples}/{first.samples} bad samples {first.first_bad[:120]}"
    )


def _machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {
        "cpus": os.cpu_count(),
        "load average at start": f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}",
        "python": platform.python_version(),
        "note": "shared, noisy machine: read the ratios, not the rates",
    }


async def _fetch(url: str, authorization: str) -> tuple[bytes, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers={"Authorization": authorization}) as response,
    ):
        response.raise_for_status()
        return await response.read(), response.headers.get("ETag", "")


async def _grpc_reply(port: int, message: bytes, authorization: str) -> bytes:
    from grpclib.client import Channel
    from grpclib.const import Cardinality

    channel = Channel("127.0.0.1", port, codec=loads.RawCodec())
    try:
        async with channel.request(
            GET_KEY_PATH,
            Cardinality.UNARY_UNARY,
            bytes,
            bytes,
            metadata={"authorization": authorization},
        ) as stream:
            await stream.send_message(message, end=True)
            reply: bytes | None = await stream.recv_message()
            if reply is None:
                raise RuntimeError("GetSigningKey answered no message")
            return reply
    finally:
        channel.close()


async def run(options: Options) -> Report:
    with topology(regions=3) as topo:
        rig = Rig(topo, topo.region_names[0])
        await asyncio.to_thread(rig.prepare)
        bench = Bench(options, rig)
        if "loads" in options.only:
            await _main_loads(bench, options, rig)
        if "creation" in options.only:
            with rig.service() as service:
                await _phase(bench.report, "creation under lookup load", bench.creation(service))
        if "workers" in options.only:
            await _phase(bench.report, "1 vs 2 workers", bench.workers())
        if "failover" in options.only:
            await _phase(bench.report, "lookups during a failover", bench.failover())
        if "memory" in options.only:
            await _phase(bench.report, "memory", bench.memory())
    for phase in PHASES:
        if phase not in options.only:
            bench.report.not_measured.append(NotMeasured(phase, "left out by BENCH_ONLY"))
    return bench.report


async def _main_loads(bench: Bench, options: Options, rig: Rig) -> None:
    """Every load scenario beside its baseline (the bare process), then the raw verify loop."""
    took = await rig.insert_keys(JWKS_ENVIRONMENT, "EdDSA", options.jwks_keys)
    print(f"{options.jwks_keys} JWKS keys inserted in {took:.1f}s", flush=True)
    with rig.service() as service, tempfile.TemporaryDirectory() as scratch:
        while (await asyncio.to_thread(service.cached_keys) or 0) < options.jwks_keys:
            await asyncio.sleep(0.2)
        jwks_url = f"{service.base}/v1/environments/{JWKS_ENVIRONMENT}/jwks.json"
        jwks, etag = await _fetch(jwks_url, rig.authorization)
        message = pb2.GetSigningKeyRequest(
            id=rig.key_ids["RS256"], environment_id=ENVIRONMENT
        ).SerializeToString()
        reply = await _grpc_reply(service.grpc_port, message, rig.authorization)
        config = Path(scratch) / "bare.json"
        (Path(scratch) / "jwks.json").write_bytes(jwks)
        http_port, grpc_port = free_port(), free_port()
        config.write_text(
            json.dumps(
                {
                    "http_port": http_port,
                    "grpc_port": grpc_port,
                    "keys": {
                        alg: base64.b64encode(der).decode() for alg, der in rig.public_keys.items()
                    },
                    "jwks_file": str(Path(scratch) / "jwks.json"),
                    "get_reply": base64.b64encode(reply).decode(),
                }
            )
        )
        bare = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.perf.bare",
            str(config),
            cwd=ROOT,
            stderr=asyncio.subprocess.DEVNULL,  # statuses and samples tell what failed
        )
        try:
            await asyncio.to_thread(wait_for_http, f"http://127.0.0.1:{http_port}/small")
            bare_base = f"http://127.0.0.1:{http_port}"
            bench.define(service, bare_base, grpc_port, etag)
            await bench.load_rounds(
                [f"{service.base}/readyz", f"{bare_base}/small"], [service.pid, bare.pid]
            )
        finally:
            bare.terminate()
            await bare.wait()
        bench.tabulate()
        bench.raw_verify()


def main() -> int:
    for tool in ("wrk", "h2load"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: `make bench-tools` (apt-get install wrk nghttp2-client)")
            return 1
    options = Options.from_env(dict(os.environ))
    # SIGTERM unwinds like Ctrl-C, so the topology and the servers are stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # The topology's own progress lines would bury the table.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    print(
        f"benchmark ({'quick' if options.quick else 'full'}): {options.rounds} rounds x "
        f"{options.seconds:g}s per scenario",
        flush=True,
    )
    report = asyncio.run(run(options))
    print()
    print(render_table(report))
    write_json(report, options.out)
    svg = options.out.with_suffix(".svg")
    write_svg(report, svg)
    print(f"\nwritten: {options.out} and {svg}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
