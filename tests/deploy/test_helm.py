"""The Helm chart, linted and rendered by Helm itself (v3 and v4), its output validated.

- ``helm lint --strict`` and ``helm template`` with the real Helm binaries (tests/deploy/tools.py);
  Helm also applies values.schema.json while doing so;
- every rendered manifest against the Kubernetes OpenAPI schemas, strictly (unknown fields
  fail), at the chart's oldest supported Kubernetes version and the newest one known offline;
- every values file against values.schema.json with python-jsonschema too;
- the rendered configuration against what the service reads (service/settings.py) and serves.
No cluster: nothing is installed, so admission, scheduling and the probes themselves are not
exercised.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from service.settings import PREFIX, Settings, region_dsn_variable
from tests.deploy.support import (
    CHART,
    DUMMY_DSN,
    HELMS,
    KUBE_VERSIONS,
    MANAGED_SETTINGS,
    REGION_VALUES,
    REGIONS,
    REPO,
    ServiceVariables,
    ToolResult,
    by_kind,
    deep_merge,
    http_routes,
    load_yaml,
    one,
    read_service_variables,
)

Render = Callable[[str, str], list[dict[str, Any]]]
VARIANTS = ["defaults", *(path.name for path in REGION_VALUES)]
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
DEFAULTS = load_yaml(CHART / "values.yaml")
# Kinds the Kubernetes OpenAPI schemas do not describe (CRDs), checked by hand below.
CUSTOM_KINDS = {"ServiceMonitor"}


def pod_spec(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    spec: Mapping[str, Any] = doc["spec"]
    if doc["kind"] in ("Deployment", "Job"):
        spec = spec["template"]["spec"]
    return spec


def container_env(
    container: Mapping[str, Any], config_maps: Mapping[str, Mapping[str, str]]
) -> dict[str, str]:
    """The container's environment, with each secretKeyRef replaced by a dummy DSN."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            assert "secretKeyRef" in item["valueFrom"], item
            env[item["name"]] = DUMMY_DSN
    return env


def config_maps(docs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    return {doc["metadata"]["name"]: doc["data"] for doc in by_kind(docs, "ConfigMap")}


def values_for(variant: str) -> dict[str, Any]:
    """The values Helm sees for a variant: values.yaml coalesced with the variant's file."""
    override = (
        {"localRegion": "aws-us-east-1"} if variant == "defaults" else load_yaml(CHART / variant)
    )
    merged: dict[str, Any] = deep_merge(DEFAULTS, override)
    return merged


# --- Helm itself ---------------------------------------------------------------------------


@pytest.mark.parametrize("values", REGION_VALUES, ids=lambda p: p.name)
@pytest.mark.parametrize("helm", HELMS)
def test_helm_lint_strict(run_tool: Callable[..., ToolResult], helm: str, values: Path) -> None:
    result = run_tool(helm, "lint", "--strict", str(CHART), "--values", str(values))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[ERROR]" not in result.stdout and "[WARNING]" not in result.stdout, result.stdout


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("helm", HELMS)
def test_helm_renders_every_variant(rendered: Render, helm: str, variant: str) -> None:
    kinds = {doc["kind"] for doc in rendered(helm, variant)}
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount"} <= kinds


@pytest.mark.parametrize("variant", VARIANTS)
def test_helm3_and_helm4_render_the_same_objects(rendered: Render, variant: str) -> None:
    assert rendered("helm3", variant) == rendered("helm4", variant)


def test_every_template_is_rendered_by_some_variant(rendered: Render) -> None:
    """The example values files between them exercise every optional template."""
    kinds = {doc["kind"] for variant in VARIANTS for doc in rendered("helm4", variant)}
    assert kinds >= {
        "Deployment",
        "Service",
        "ConfigMap",
        "ServiceAccount",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
        "NetworkPolicy",
        "Job",
        "Pod",
    }


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"localRegion": "gcp-europe-west4"}, "is not one of regions"),
        ({"localRegion": "AWS_US_EAST_1"}, "localRegion"),
        ({"localRegion": "aws-us-east-1", "settings": {"LOG_LEVL": "info"}}, "LOG_LEVL"),
        ({"localRegion": "aws-us-east-1", "tls": {"enabled": True}}, "secretName"),
        (
            {"localRegion": "aws-us-east-1", "securityContext": {"readOnlyRootFilesystem": False}},
            "readOnlyRootFilesystem",
        ),
        ({"localRegion": "aws-us-east-1", "containerPorts": {"grpc": 8080}}, "must differ"),
    ],
)
@pytest.mark.parametrize("helm", HELMS)
def test_helm_refuses_a_bad_release(
    helm_template: Callable[..., ToolResult],
    tmp_path: Path,
    helm: str,
    values: dict[str, Any],
    message: str,
) -> None:
    """The schema and the template checks have teeth: Helm itself refuses these releases."""
    bad = tmp_path / "values.yaml"
    bad.write_text(json.dumps(values))
    result = helm_template(helm, [bad])
    assert result.returncode != 0, "helm rendered a release it should refuse"
    assert message in result.stderr


def test_helm_refuses_a_region_listed_twice(
    helm_template: Callable[..., ToolResult], tmp_path: Path
) -> None:
    regions = DEFAULTS["regions"] + DEFAULTS["regions"][:1]
    bad = tmp_path / "values.yaml"
    bad.write_text(json.dumps({"localRegion": "aws-us-east-1", "regions": regions}))
    result = helm_template("helm4", [bad])
    assert result.returncode != 0
    assert "listed twice" in result.stderr


@pytest.mark.parametrize("values", REGION_VALUES, ids=lambda p: p.name)
def test_notes_tell_the_operator_the_region_and_the_secrets(
    run_tool: Callable[..., ToolResult], values: Path
) -> None:
    """NOTES.txt, rendered by a client-only dry-run install (Helm 4; Helm 3 wants a cluster)."""
    result = run_tool(
        "helm4",
        "install",
        "signing-keys",
        str(CHART),
        "--namespace",
        "signing-keys",
        "--dry-run=client",
        "--values",
        str(values),
    )
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    local = load_yaml(values)["localRegion"]
    assert f"serving region {local}" in notes
    for region in DEFAULTS["regions"]:
        variable = region_dsn_variable(region["name"])
        line = next(line for line in notes.splitlines() if variable in line)
        assert region["dsnSecret"]["name"] in line
        assert ("(local region)" in line) == (region["name"] == local)


# --- Kubernetes schemas --------------------------------------------------------------------


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_manifests_are_valid_kubernetes_objects(
    rendered: Render, variant: str, kube_version: str
) -> None:
    for doc in rendered("helm4", variant):
        if doc["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} at {path}: {exc.message}")


def test_kubernetes_validate_rejects_an_unknown_field(rendered: Render) -> None:
    """The check has teeth: strict validation refuses a misspelt field."""
    deployment = json.loads(json.dumps(one(rendered("helm4", "defaults"), "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[0], strict=True)


def test_service_monitor_shape(rendered: Render) -> None:
    """No schema offline for the Prometheus Operator CRD: the fields it needs, by hand."""
    docs = rendered("helm4", "values-aws-us-east-1.yaml")
    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = one(docs, "Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics" and "/metrics" in http_routes()
    assert set(endpoint["authorization"]["credentials"]) == {"name", "key"}
    assert set(monitor["spec"]) == {"selector", "namespaceSelector", "endpoints"}


# --- values.schema.json --------------------------------------------------------------------


def test_the_schema_is_a_valid_json_schema() -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_values_file_satisfies_the_schema(variant: str) -> None:
    jsonschema.Draft7Validator(SCHEMA).validate(values_for(variant))


def test_the_schema_offers_exactly_the_settings_the_service_reads() -> None:
    read = {name.removeprefix(PREFIX) for name in read_service_variables().names}
    service_settings = read - MANAGED_SETTINGS - {"SQL_DIR"}
    offered = set(SCHEMA["properties"]["settings"]["properties"])
    assert offered - service_settings == set(), "the chart offers settings the service ignores"
    assert service_settings - offered == set(), "settings the chart cannot set yet"


@pytest.mark.parametrize(
    "values",
    [
        {"localRegion": "aws-us-east-1", "regions": []},
        {"localRegion": "aws-us-east-1", "podSecurityContext": {"runAsNonRoot": False}},
        {"localRegion": "aws-us-east-1", "securityContext": {"capabilities": {"drop": []}}},
        {
            "localRegion": "aws-us-east-1",
            "podDisruptionBudget": {"minAvailable": 1, "maxUnavailable": 1},
        },
        {"localRegion": "aws-us-east-1", "networkPolicy": {"enabled": True}},
        {"localRegion": "aws-us-east-1", "unknownTopLevel": True},
    ],
)
def test_the_schema_refuses_unsafe_or_inconsistent_values(values: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(SCHEMA).validate(deep_merge(DEFAULTS, values))


# --- The rendered release against the service ----------------------------------------------


DB_FILE_SETTINGS = (f"{PREFIX}DB_CA_FILE", f"{PREFIX}DB_CERT_FILE", f"{PREFIX}DB_KEY_FILE")


def mounted_secret(doc: Mapping[str, Any], container: Mapping[str, Any], path: str) -> str:
    """The Secret (``name/key``) that the file at ``path`` in ``container`` comes from."""
    volumes = {volume["name"]: volume for volume in pod_spec(doc)["volumes"]}
    for mount in container.get("volumeMounts", []):
        prefix = mount["mountPath"].rstrip("/") + "/"
        if path.startswith(prefix) and "secret" in volumes[mount["name"]]:
            secret = volumes[mount["name"]]["secret"]
            relative = path.removeprefix(prefix)
            items = {item["path"]: item["key"] for item in secret.get("items", [])}
            assert mount.get("readOnly") is True, path
            return f"{secret['secretName']}/{items.get(relative, relative)}"
    raise AssertionError(f"{path} is on no mounted Secret of {container['name']}")


def workload_containers(docs: Sequence[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any], Any]]:
    """(workload, container) for every container and init container of our image."""
    pairs = []
    for doc in [*by_kind(docs, "Deployment"), *by_kind(docs, "Job")]:
        spec = pod_spec(doc)
        pairs += [(doc, c) for c in [*spec.get("initContainers", []), *spec["containers"]]]
    return pairs


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_service_accepts_the_rendered_configuration(
    rendered: Render,
    variant: str,
    service_variables: ServiceVariables,
    tmp_path: Path,
) -> None:
    docs = rendered("helm4", variant)
    maps = config_maps(docs)
    values = values_for(variant)
    readable = tmp_path / "mounted.pem"
    readable.write_text("a file the Secret would hold")
    for workload, container in workload_containers(docs):
        env = container_env(container, maps)
        for name in DB_FILE_SETTINGS:
            if name in env:  # mounted from a Secret here; the service checks it is readable
                mounted_secret(workload, container, env[name])
                env[name] = str(readable)
        unknown = {n for n in env if not service_variables.is_read(n)}
        assert not unknown, f"{workload['kind']} sets variables the service never reads: {unknown}"
        settings = Settings.from_env(env)
        assert settings.local_region == values["localRegion"]
        assert [(r.name, r.cloud) for r in settings.regions] == [
            (r["name"], r["cloud"]) for r in values["regions"]
        ]
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        if ports:
            assert ports == {"http": settings.http_port, "grpc": settings.grpc_port}


@pytest.mark.parametrize("variant", VARIANTS)
def test_dsns_come_only_from_secrets(rendered: Render, variant: str) -> None:
    docs = rendered("helm4", variant)
    values = values_for(variant)
    expected = {
        region_dsn_variable(r["name"]): (r["dsnSecret"]["name"], r["dsnSecret"]["key"])
        for r in values["regions"]
    }
    migration = {
        name: (values["migrations"]["dsnSecretName"], key) for name, (_, key) in expected.items()
    }
    for workload, container in workload_containers(docs):
        refs = {
            item["name"]: (
                item["valueFrom"]["secretKeyRef"]["name"],
                item["valueFrom"]["secretKeyRef"]["key"],
            )
            for item in container["env"]
            if "valueFrom" in item
        }
        # The migration Job connects as the DDL role; every serving container as the data role.
        assert refs == (migration if workload["kind"] == "Job" else expected)
    for name, data in config_maps(docs).items():
        assert not any(key.startswith(f"{PREFIX}DSN_") for key in data), name


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_credential_is_rendered_in_clear(rendered: Render, variant: str) -> None:
    text = json.dumps(rendered("helm4", variant))
    assert not re.search(r"postgres(ql)?://[^\s\"@/]+:[^\s\"@/]+@", text)
    assert not by_kind(rendered("helm4", variant), "Secret"), "secrets are referenced, not made"


@pytest.mark.parametrize("variant", VARIANTS)
def test_probes_use_the_service_health_paths_on_its_http_port(
    rendered: Render, variant: str
) -> None:
    routes = http_routes()
    deployment = one(rendered("helm4", variant), "Deployment")
    (container,) = pod_spec(deployment)["containers"]
    paths = {
        probe: container[probe]["httpGet"]["path"]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert paths == {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    assert set(paths.values()) <= routes, "a probe path the service does not serve"
    scheme = "HTTPS" if values_for(variant)["tls"]["enabled"] else "HTTP"
    for probe in paths:
        assert container[probe]["httpGet"]["port"] == "http"
        assert container[probe]["httpGet"]["scheme"] == scheme


@pytest.mark.parametrize("variant", VARIANTS)
def test_service_ports_and_selectors_reach_the_pods(rendered: Render, variant: str) -> None:
    docs = rendered("helm4", variant)
    deployment = one(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (container,) = pod_spec(deployment)["containers"]
    port_names = {port["name"] for port in container["ports"]}
    service = one(docs, "Service")
    assert {p["name"] for p in service["spec"]["ports"]} == {"http", "grpc"}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    assert service["spec"]["selector"].items() <= pod_labels.items()
    for doc in [*by_kind(docs, "PodDisruptionBudget"), *serving_policies(docs)]:
        selector = doc["spec"]["selector" if doc["kind"] != "NetworkPolicy" else "podSelector"]
        assert selector["matchLabels"].items() <= pod_labels.items(), doc["kind"]
    for hpa in by_kind(docs, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
        assert "replicas" not in deployment["spec"], "the HPA and the Deployment would fight"


@pytest.mark.parametrize("variant", VARIANTS)
def test_only_serving_pods_are_selected(rendered: Render, variant: str) -> None:
    """The migration Job and the helm test pod get no traffic, no PDB and no serving policy."""
    docs = rendered("helm4", variant)
    selectors = [one(docs, "Service")["spec"]["selector"]]
    selectors += [
        d["spec"]["selector"]["matchLabels"] for d in by_kind(docs, "PodDisruptionBudget")
    ]
    selectors += [d["spec"]["podSelector"]["matchLabels"] for d in serving_policies(docs)]
    others = [j["spec"]["template"]["metadata"]["labels"] for j in by_kind(docs, "Job")]
    others += [p["metadata"]["labels"] for p in by_kind(docs, "Pod")]
    assert others, "the helm test pod is always rendered"
    for labels in others:
        for selector in selectors:
            assert not selector.items() <= labels.items(), (selector, labels)


def serving_policies(docs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The NetworkPolicies of the serving pods (the Job's and the test pod's have their own)."""
    return [
        doc
        for doc in by_kind(docs, "NetworkPolicy")
        if "app.kubernetes.io/component" not in doc["spec"]["podSelector"]["matchLabels"]
    ]


def test_a_network_policy_lets_helm_test_and_prometheus_in(rendered: Render) -> None:
    docs = rendered("helm4", "values-aws-us-east-1.yaml")
    (policy,) = serving_policies(docs)
    (rule,) = policy["spec"]["ingress"]
    test_pod = one(docs, "Pod")["metadata"]["labels"]
    pod_peers = [
        peer["podSelector"]["matchLabels"] for peer in rule["from"] if "podSelector" in peer
    ]
    assert any(peer.items() <= test_pod.items() for peer in pod_peers)
    monitor_namespace = {"kubernetes.io/metadata.name": "monitoring"}
    assert {"namespaceSelector": {"matchLabels": monitor_namespace}} in rule["from"]
    assert {port["port"] for port in rule["ports"]} == {"http", "grpc"}


@pytest.mark.parametrize("variant", VARIANTS)
def test_pods_run_non_root_read_only_without_capabilities(rendered: Render, variant: str) -> None:
    for doc in rendered("helm4", variant):
        if doc["kind"] not in ("Deployment", "Job", "Pod"):
            continue
        spec = pod_spec(doc) if doc["kind"] != "Pod" else doc["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec.get("automountServiceAccountToken") is False
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert "add" not in context["capabilities"]
            assert context["seccompProfile"]["type"] == "RuntimeDefault"
            assert "resources" in container


def test_the_grpc_port_serves_the_standard_health_service() -> None:
    """The Service's grpc port carries grpc.health.v1 (grpclib's Health), for load balancers."""
    imported = set()
    for path in (REPO / "service" / "grpc").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "grpclib.health.service":
                imported |= {alias.name for alias in node.names}
    assert "Health" in imported


def test_every_region_has_a_values_file_and_the_chart_agrees_with_compose() -> None:
    files = {path.name for path in REGION_VALUES}
    assert files == {f"values-{region}.yaml" for region in REGIONS}
    assert {(r["name"], r["cloud"]) for r in DEFAULTS["regions"]} == set(REGIONS.items())
    for path in REGION_VALUES:
        assert load_yaml(path)["localRegion"] == path.stem.removeprefix("values-")
    assert len({r["cloud"] for r in DEFAULTS["regions"]}) >= 2, "at least two clouds"


def test_yamllint_accepts_the_chart_yaml_files() -> None:
    config = (
        "{extends: default, rules: {line-length: {max: 130}, document-start: disable,"
        " truthy: {check-keys: false}, comments: {min-spaces-from-content: 1}}}"
    )
    files = [CHART / "Chart.yaml", CHART / "values.yaml", *REGION_VALUES]
    done = subprocess.run(
        [sys.executable, "-m", "yamllint", "--strict", "-d", config, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout
