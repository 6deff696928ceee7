"""Fixtures for the deploy checks: the real tools, rendered charts, and what the service reads.

Every check here runs a real tool or reads the real artefact; a missing tool fails the test
with the command that installs it (``tests/deploy/tools.py``), it never skips.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import PREFIX
from tests.deploy import tools
from tests.deploy.support import (
    CHART,
    KUBE_VERSIONS,
    NAMESPACE,
    RELEASE,
    REPO,
    ServiceVariables,
    ToolResult,
    read_service_variables,
)


@pytest.fixture(scope="session")
def tool() -> Callable[[str], Path]:
    """``tool("helm4")`` → the binary; fails (never skips) with the install command if missing."""

    def find(name: str) -> Path:
        try:
            path = tools.tool(name)
        except FileNotFoundError as exc:
            pytest.fail(str(exc), pytrace=False)
        return path

    return find


@pytest.fixture(scope="session")
def tool_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment that keeps Helm's and Compose's config, cache and data out of $HOME."""
    base = tmp_path_factory.mktemp("tool-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
    for name in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME", "DOCKER_CONFIG"):
        (base / name).mkdir()
        env[name] = str(base / name)
    env.pop("DOCKER_HOST", None)
    env.pop("COMPOSE_FILE", None)
    # No cluster: should a command try one anyway, it meets a closed loopback port at once
    # (never whatever happens to listen on localhost:8080, kubectl's old default).
    kubeconfig = base / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: none\n"
        "clusters: [{name: none, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "contexts: [{name: none, context: {cluster: none, user: none}}]\n"
        "users: [{name: none, user: {}}]\n"
    )
    kubeconfig.chmod(0o600)
    env["KUBECONFIG"] = str(kubeconfig)
    return env


@pytest.fixture(scope="session")
def run_tool(tool: Callable[[str], Path], tool_env: dict[str, str]) -> Callable[..., ToolResult]:
    def run(name: str, *args: str, cwd: Path = REPO) -> ToolResult:
        done = subprocess.run(
            [str(tool(name)), *args],
            cwd=cwd,
            env=tool_env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return ToolResult(done.returncode, done.stdout, done.stderr)

    return run


# --- Helm ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def helm_template(run_tool: Callable[..., ToolResult]) -> Callable[..., ToolResult]:
    """``helm_template("helm4", ["values-x.yaml"], "--set", "a=b")`` → the raw result."""

    def template(helm: str, values: Sequence[Path], *extra: str, chart: Path = CHART) -> ToolResult:
        args = [
            "template",
            RELEASE,
            str(chart),
            "--namespace",
            NAMESPACE,
            "--kube-version",
            KUBE_VERSIONS[0],
            "--api-versions",
            "monitoring.coreos.com/v1",
        ]
        for path in values:
            args += ["--values", str(path)]
        return run_tool(helm, *args, *extra)

    return template


@pytest.fixture(scope="session")
def rendered(
    helm_template: Callable[..., ToolResult],
) -> Callable[[str, str], list[dict[str, Any]]]:
    """``rendered("helm4", "values-aws-us-east-1.yaml")`` → the manifests (cached per session).

    The variant ``"defaults"`` renders values.yaml alone with only localRegion set.
    """
    cache: dict[tuple[str, str], list[dict[str, Any]]] = {}

    def render(helm: str, variant: str) -> list[dict[str, Any]]:
        if (helm, variant) not in cache:
            if variant == "defaults":
                result = helm_template(helm, [], "--set", "localRegion=aws-us-east-1")
            else:
                result = helm_template(helm, [CHART / variant])
            assert result.returncode == 0, result.stderr
            docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
            assert docs, "helm template rendered nothing"
            cache[helm, variant] = docs
        return cache[helm, variant]

    return render


@pytest.fixture(scope="session")
def service_variables() -> ServiceVariables:
    found = read_service_variables()
    # Guard the reader itself: if it found none of these, it is broken, not the artefacts.
    for name in ("REGIONS", "LOCAL_REGION", "HTTP_PORT", "GRPC_PORT", "CONFIG_FILE"):
        assert PREFIX + name in found.names, f"could not find {PREFIX}{name} in settings.py"
    return found
