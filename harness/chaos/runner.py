"""One chaos run, start to finish: topology, instances, load, nemesis, final state, check.

The phases, on the history's clock:

1. a fresh three-region topology, migrated and with one access token for the run's
   environment (``python -m service migrate`` and ``token create``); one service instance per
   region (``python -m service serve``);
2. watch subscribers, then writers and readers on every instance, while the nemesis applies
   faults for ``seconds``;
3. the nemesis heals what is active and restores everything (servers running in their roles,
   fenced ones rejoined, instances serving); the writers settle the writes whose outcome was
   unknown; the load stops;
4. a quiet period, then the final reads: keys drawn at random through every instance, and
   the tokens of the revoked ones among them (recorded like any other read);
5. the final state: every region's keys, the idempotency records, each watcher's replica,
   stuck backends while the instances run, and any backend left after they stop;
6. everything stopped and removed; the history written; the checker run.

>>> history, report = await run(RunOptions(seconds=60, seed=7, faults=("handled",)))
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import structlog

from harness.chaos.checker import Bounds, Report, check
from harness.chaos.history import Backend, History, Meta
from harness.chaos.instances import ServiceInstance
from harness.chaos.monitor import ProcessMonitor, TopologyMonitor
from harness.chaos.nemesis import Nemesis, World, select
from harness.chaos.workload import Clients, InstanceClient, KeyBook, Reader, Watcher, Writer
from harness.cluster import ROLE, LocalTopology

log = structlog.get_logger(__name__)

Progress = Callable[[str], None]

KEYS_SQL = "SELECT id, status FROM signing_keys WHERE environment_id = $1"
IDEMPOTENCY_SQL = "SELECT key, signing_key_id FROM idempotency_keys WHERE environment_id = $1"
BACKENDS_SQL = """
SELECT pid, state, wait_event,
       extract(epoch FROM now() - state_change)::float8 AS seconds_in_state,
       application_name, query
FROM pg_stat_activity
WHERE usename = $1 AND backend_type = 'client backend'
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    """What to run. ``faults`` names entries of the fault table (or ``all``/``handled``).

    ``watch_from_empty`` subscribes the watchers before the environment has any key, in a
    database that has none yet (the service once sent such watchers no first keys at all);
    when False a first key is created and seen by every instance before they subscribe.
    """

    seconds: float
    seed: int
    faults: Sequence[str] = ("all",)
    out: Path | None = None
    quiet: float = 5.0
    final_reads: int = 100  # keys read through each instance after the quiet period
    watch_from_empty: bool = True
    readers: int = 2
    writer_think: tuple[float, float] = (0.1, 0.4)
    reader_think: tuple[float, float] = (0.03, 0.12)
    nemesis_gap: tuple[float, float] = (1.0, 4.0)
    nemesis_duration: tuple[float, float] = (2.0, 6.0)
    max_replica_lag: float = 1.0
    bounds: Bounds = field(default_factory=Bounds)
    log_dir: Path | None = None
    service_env: Mapping[str, str] = field(default_factory=dict)


def service_settings(options: RunOptions) -> dict[str, str]:
    """The service settings every instance runs with (besides the topology's DSNs)."""
    return {
        "SIGNING_KEYS_LOG_LEVEL": "warning",
        "SIGNING_KEYS_ACCESS_LOG": "off",
        "SIGNING_KEYS_MAX_REPLICA_LAG": str(options.max_replica_lag),
        **options.service_env,
    }


async def run(options: RunOptions, *, progress: Progress | None = None) -> tuple[History, Report]:
    """Run the whole chaos test; return the history and the checker's report."""
    say = progress or (lambda message: None)
    faults = select(options.faults)
    run_dir = Path(tempfile.mkdtemp(prefix="sk-chaos-"))
    topology = LocalTopology()
    instances: dict[str, ServiceInstance] = {}
    clients: dict[str, InstanceClient] = {}
    history: History | None = None
    try:
        say("starting the topology")
        await asyncio.to_thread(topology.start)
        environment = f"chaos-{options.seed}-{secrets.token_hex(3)}"
        settings = service_settings(options)
        cli_env = {**os.environ, **topology.env(topology.primary), **settings}
        await _command(cli_env, "migrate")
        history = History(
            Meta(
                seed=options.seed,
                seconds=options.seconds,
                started_wall=time.time(),
                environment=environment,
                instances=list(topology.region_names),
                regions=list(topology.region_names),
                faults=[],
                bounds=options.bounds.to_dict(),
                settings=settings,
                scratch=[str(run_dir), str(topology.base_dir)],
            )
        )
        env = {**topology.env(), **settings}
        for name in topology.region_names:
            instances[name] = ServiceInstance(name, env=env, log_path=run_dir / f"{name}.log")
        say("starting the service instances")
        issuing = asyncio.create_task(_issue_token(cli_env, environment))
        try:
            pids = await asyncio.gather(*(instance.start() for instance in instances.values()))
        finally:
            login, secret = await issuing
        for name, pid in zip(instances, pids, strict=True):
            history.instance_event(name, "ready", pid)
        for name, instance in instances.items():
            clients[name] = InstanceClient(
                history,
                name,
                base_url=instance.base_url,
                grpc_port=instance.grpc_port,
                login=login,
                secret=secret,
                environment=environment,
            )
        world = World(topology, instances, history)
        nemesis = Nemesis(
            world,
            faults,
            random.Random(options.seed),
            gap=options.nemesis_gap,
            duration=options.nemesis_duration,
        )
        history.meta.faults = [fault.name for fault in nemesis.faults]
        history.meta.skipped_faults = nemesis.unavailable
        if nemesis.unavailable:
            say(f"faults the harness does not offer (skipped): {', '.join(nemesis.unavailable)}")
        async with TopologyMonitor(topology, history), ProcessMonitor(instances, history):
            await _exercise(options, history, clients, nemesis, say)
            history.final.backends += await _backends(topology, "running")
        say("stopping the service instances")
        await asyncio.gather(*(instance.stop() for instance in instances.values()))
        for name in instances:
            history.instance_event(name, "stopped", None)
        history.final.backends += await _leftover_backends(topology)
        history.meta.ended = history.now()
    finally:
        for client in clients.values():
            await client.aclose()
        for instance in instances.values():
            instance.kill()
        await asyncio.to_thread(topology.stop)
        _remove_run_dir(run_dir, keep_logs=options.log_dir)
        if history is not None and options.out is not None:
            history.dump(options.out)
    assert history is not None
    return history, check(history)


def _remove_run_dir(run_dir: Path, *, keep_logs: Path | None) -> None:
    if keep_logs is not None:
        keep_logs.mkdir(parents=True, exist_ok=True)
        for path in run_dir.glob("*.log"):
            shutil.copy(path, keep_logs / path.name)
    shutil.rmtree(run_dir, ignore_errors=True)


async def _issue_token(env: Mapping[str, str], environment: str) -> tuple[str, str]:
    """The run's access token, every scope on its environment, issued as an operator does."""
    issued = json.loads(
        await _command(
            env, "token", "create", "--environment", environment, "--scopes", "read,write,verify"
        )
    )
    return str(issued["id"]), str(issued["secret"])


async def _command(env: Mapping[str, str], *args: str, timeout: float = 60.0) -> str:
    """``python -m service ARGS``; its standard output, or an error with its output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        *args,
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await process.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        raise RuntimeError(
            f"signing-keys {args[0]} exited with {process.returncode}: {err.decode()[-2000:]}"
        )
    return out.decode()


async def _exercise(
    options: RunOptions,
    history: History,
    instances: dict[str, InstanceClient],
    nemesis: Nemesis,
    say: Progress,
) -> None:
    """Phases 2-5 of the module docstring (everything that runs while instances serve)."""
    stop_load = asyncio.Event()
    clients = Clients(history, KeyBook(), instances, stop_load, options.seed)
    writers = {name: Writer(clients, name, think=options.writer_think) for name in instances}
    if not options.watch_from_empty:
        first = next(iter(writers.values()))
        for _ in range(50):
            if await first.create() is not None:
                break
        await asyncio.sleep(1.0)  # several change-feed polls on every instance
    watchers = [Watcher(clients, name) for name in instances]
    watching = [asyncio.create_task(watcher.run()) for watcher in watchers]
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10.0):
                await asyncio.gather(*(watcher.synced.wait() for watcher in watchers))
        load = [asyncio.create_task(writer.run()) for writer in writers.values()]
        load += [
            asyncio.create_task(Reader(clients, name, n, think=options.reader_think).run())
            for name in instances
            for n in range(options.readers)
        ]
        stop_nemesis = asyncio.Event()
        striking = asyncio.create_task(nemesis.run(stop_nemesis))
        say(f"load and faults for {options.seconds:g} s (seed {options.seed})")
        try:
            await _watch_tasks([*load, striking], options.seconds)
        finally:
            stop_nemesis.set()
            say("healing every fault")
            await striking
            stop_load.set()
            say("settling writes of unknown outcome")
            await asyncio.gather(*load)
        say(f"quiet period ({options.quiet:g} s)")
        await asyncio.sleep(options.quiet)
        say("final reads")
        await _final_reads(clients, options.final_reads)
        history.final.replicas = {watcher.name: dict(watcher.replica) for watcher in watchers}
        try:
            await _final_state(nemesis.world.topology, history)
        except Exception as exc:  # the checker reports the run as incomplete
            log.warning("chaos_final_state_unread", error=str(exc))
            say(f"the final state could not be read: {exc}")
    finally:
        for task in watching:
            task.cancel()
        await asyncio.gather(*watching, return_exceptions=True)


async def _watch_tasks(tasks: Sequence[asyncio.Task[Any]], seconds: float) -> None:
    """Sleep ``seconds``, but fail at once if a client or the nemesis crashed."""
    done, _ = await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_EXCEPTION)
    for task in done:
        if task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


async def _final_reads(clients: Clients, per_instance: int, readers: int = 2) -> None:
    """Through every instance, ``per_instance`` keys drawn at random (seeded): a GET of each,
    and a verification of each revoked one's token. ``readers`` at a time per instance, as
    during the load (a burst would measure the machine, not the service). Recorded as
    ordinary reads, so every check applies to them; the watch replicas and the regions'
    copies cover every key."""
    book = clients.book
    rng = clients.rng("final-reader")
    keys = sorted(book.keys)

    async def reader(client: InstanceClient, queue: list[str]) -> None:
        while queue:
            key_id = queue.pop()
            await client.get("final-reader", "http", key_id=key_id)
            token = book.token_for(key_id)
            if token is not None and book.keys[key_id].revoke is not None:
                await client.verify("final-reader", "grpc", key_id=key_id, token=token)

    work = []
    for client in clients.instances.values():
        queue = rng.sample(keys, min(per_instance, len(keys)))
        work += [reader(client, queue) for _ in range(readers)]
    await asyncio.gather(*work)


async def _final_state(topology: LocalTopology, history: History) -> None:
    final = history.final
    environment = history.meta.environment
    with contextlib.suppress(Exception):
        await asyncio.to_thread(topology.wait_replayed, 10.0)
    final.primary = topology.primary
    for name in topology.region_names:
        rows = await asyncio.to_thread(topology.query, name, KEYS_SQL, environment)
        final.regions[name] = dict(rows)
    final.keys = dict(final.regions[topology.primary])
    rows = await asyncio.to_thread(topology.query, topology.primary, IDEMPOTENCY_SQL, environment)
    final.idempotency = dict(rows)
    final.complete = True


async def _backends(topology: LocalTopology, phase: Literal["running", "stopped"]) -> list[Backend]:
    found = []
    for name in topology.region_names:
        if not topology.region(name).is_running:
            continue
        for pid, state, wait_event, seconds, application, query in await asyncio.to_thread(
            topology.query, name, BACKENDS_SQL, ROLE
        ):
            stuck = wait_event == "SyncRep" or (state or "").startswith("idle in transaction")
            if phase == "stopped" or stuck:
                found.append(
                    Backend(
                        region=name,
                        phase=phase,
                        pid=pid,
                        state=state,
                        wait_event=wait_event,
                        seconds_in_state=seconds,
                        application_name=application,
                        query=query,
                    )
                )
    return found


async def _leftover_backends(topology: LocalTopology, timeout: float = 5.0) -> list[Backend]:
    """Backends of the service's role still there ``timeout`` seconds after the instances
    stopped (a server notices a closed connection at once; give it a moment anyway)."""
    deadline = time.monotonic() + timeout
    while True:
        left = await _backends(topology, "stopped")
        if not left or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.2)
