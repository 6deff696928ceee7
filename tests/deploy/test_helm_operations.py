"""The chart in operation, as far as rendering shows it: TLS to the databases from mounted
Secrets, the migration role apart from the serving role, pods that wait for the schema,
drain on termination within the grace period, pods that roll when a Secret they read
changes, and network policies for every pod the release runs.

The behaviour behind each is tested against the running service elsewhere (DB TLS files:
tests/store/test_tls.py; drain: tests/test_shutdown.py; certificate reload:
tests/test_tls_reload.py; schema wait: tests/store/test_migrations.py).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.cli import _parser
from service.server import CLOSE_BOUND
from service.settings import PREFIX
from tests.deploy.support import CHART, ToolResult, by_kind, deep_merge, load_yaml, one
from tests.deploy.test_helm import (
    DEFAULTS,
    config_maps,
    container_env,
    mounted_secret,
    pod_spec,
    values_for,
)

Render = Callable[[str, str], list[dict[str, Any]]]
Template = Callable[..., ToolResult]


def render_with(template: Template, tmp_path: Path, values: Mapping[str, Any]) -> list[Any]:
    path = tmp_path / f"values-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(json.dumps({"localRegion": "aws-us-east-1", **values}))
    result = template("helm4", [path])
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def refused(template: Template, tmp_path: Path, values: Mapping[str, Any]) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps({"localRegion": "aws-us-east-1", **values}))
    result = template("helm4", [path])
    assert result.returncode != 0, "helm rendered a release it should refuse"
    return result.stderr


def serving_container(docs: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    containers: list[Mapping[str, Any]] = pod_spec(one(docs, "Deployment"))["containers"]
    (container,) = containers
    return container


# --- TLS to the databases ---------------------------------------------------------------


def test_the_database_ca_and_client_certificate_come_from_mounted_secrets(
    rendered: Render,
) -> None:
    """verify-full needs the CA (asyncpg's fallback, ~/.postgresql/root.crt, does not exist
    in the image); every container of ours that connects gets it from the Secret."""
    docs = rendered("helm4", "values-gcp-us-central1.yaml")
    maps = config_maps(docs)
    deployment = one(docs, "Deployment")
    spec = pod_spec(deployment)
    for container in [*spec["initContainers"], *spec["containers"]]:
        env = container_env(container, maps)
        assert mounted_secret(deployment, container, env[f"{PREFIX}DB_CA_FILE"]) == (
            "signing-keys-db-ca/ca.crt"
        )
        assert mounted_secret(deployment, container, env[f"{PREFIX}DB_CERT_FILE"]) == (
            "signing-keys-db-client/tls.crt"
        )
        assert mounted_secret(deployment, container, env[f"{PREFIX}DB_KEY_FILE"]) == (
            "signing-keys-db-client/tls.key"
        )


def test_without_a_database_ca_secret_nothing_is_mounted_or_set(rendered: Render) -> None:
    docs = rendered("helm4", "defaults")
    env = container_env(serving_container(docs), config_maps(docs))
    assert not {f"{PREFIX}DB_CA_FILE", f"{PREFIX}DB_CERT_FILE"} & set(env)
    volumes = {v["name"] for v in pod_spec(one(docs, "Deployment"))["volumes"]}
    assert not {"db-ca", "db-client"} & volumes


def test_the_migration_job_gets_the_ca_and_its_own_client_certificate(
    helm_template: Template, tmp_path: Path
) -> None:
    """On CockroachDB the client certificate's CN is the SQL user: the migration role's."""
    docs = render_with(
        helm_template,
        tmp_path,
        {
            "database": {"caSecret": {"name": "db-ca"}, "clientCertSecret": {"name": "app-cert"}},
            "migrations": {
                "enabled": True,
                "dsnSecretName": "migration-dsn",
                "clientCertSecret": {"name": "migrator-cert"},
            },
        },
    )
    job = one(docs, "Job")
    (container,) = pod_spec(job)["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert mounted_secret(job, container, env[f"{PREFIX}DB_CA_FILE"]) == "db-ca/ca.crt"
    assert mounted_secret(job, container, env[f"{PREFIX}DB_CERT_FILE"]) == "migrator-cert/tls.crt"
    deployment = one(docs, "Deployment")
    app_env = container_env(serving_container(docs), config_maps(docs))
    assert mounted_secret(
        deployment, serving_container(docs), app_env[f"{PREFIX}DB_CERT_FILE"]
    ) == ("app-cert/tls.crt")


def test_the_schema_takes_the_database_settings_and_refuses_unknown_ones(
    helm_template: Template, tmp_path: Path
) -> None:
    message = refused(helm_template, tmp_path, {"database": {"caSecret": {"nmae": "x"}}})
    assert "nmae" in message


# --- the migration role and the schema wait ---------------------------------------------


def test_migrations_need_a_migration_role_secret(helm_template: Template, tmp_path: Path) -> None:
    message = refused(helm_template, tmp_path, {"migrations": {"enabled": True}})
    assert "dsnSecretName" in message


def test_every_pod_waits_for_the_schema_with_the_serving_role(rendered: Render) -> None:
    for variant in ("defaults", "values-aws-eu-west-1.yaml"):
        docs = rendered("helm4", variant)
        (init,) = pod_spec(one(docs, "Deployment"))["initContainers"]
        args = _parser().parse_args(init["args"])
        assert args.command == "migrate" and args.check is True
        assert args.wait == values_for(variant)["migrations"]["waitForSchema"]["timeoutSeconds"]
        secrets = {i["valueFrom"]["secretKeyRef"]["name"] for i in init["env"] if "valueFrom" in i}
        assert secrets == {r["dsnSecret"]["name"] for r in values_for(variant)["regions"]}
        assert init["securityContext"]["readOnlyRootFilesystem"] is True


# --- draining ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "variant", ["defaults", "values-aws-us-east-1.yaml", "values-gcp-us-central1.yaml"]
)
def test_pods_drain_within_their_grace_period(rendered: Render, variant: str) -> None:
    docs = rendered("helm4", variant)
    values = values_for(variant)
    container = serving_container(docs)
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop == ["sleep", str(values["drain"]["preStopSeconds"])]
    env = container_env(container, config_maps(docs))
    delay = float(env[f"{PREFIX}DRAIN_DELAY"])
    assert delay == values["drain"]["delaySeconds"]
    grace = pod_spec(one(docs, "Deployment"))["terminationGracePeriodSeconds"]
    assert grace > values["drain"]["preStopSeconds"] + delay + CLOSE_BOUND


def test_the_chart_knows_the_service_s_close_bound() -> None:
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    (bound,) = re.findall(r'define "signing-keys.closeBound" -}}(\d+){{', helpers)
    assert float(bound) == CLOSE_BOUND


def test_a_grace_period_shorter_than_the_drain_is_refused(
    helm_template: Template, tmp_path: Path
) -> None:
    message = refused(helm_template, tmp_path, {"terminationGracePeriodSeconds": 20})
    assert "terminationGracePeriodSeconds (20) must exceed" in message


# --- pods roll when a Secret they read changes --------------------------------------------


def secret_references(doc: Mapping[str, Any]) -> set[str]:
    spec = pod_spec(doc)
    names = {v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        names |= {
            item["valueFrom"]["secretKeyRef"]["name"]
            for item in container.get("env", [])
            if "valueFrom" in item
        }
    return names


def test_the_secrets_checksum_covers_every_secret_the_pods_read(
    helm_template: Template, tmp_path: Path
) -> None:
    """Each Secret the Deployment references is in the checksum: renaming any one changes it.
    (The checksum also covers each Secret's data, read by `lookup` from the cluster at
    install/upgrade; `helm template` has no cluster, so that part never ran here.)"""
    base: dict[str, Any] = {
        "tls": {"enabled": True, "secretName": "tls", "clientCaSecretName": "client-ca"},
        "database": {"caSecret": {"name": "db-ca"}, "clientCertSecret": {"name": "db-client"}},
    }
    deployment = one(render_with(helm_template, tmp_path, base), "Deployment")
    checksum = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/secrets"]
    referenced = secret_references(deployment)
    assert referenced == {"signing-keys-dsn", "tls", "client-ca", "db-ca", "db-client"}
    renames: list[dict[str, Any]] = [
        {
            "regions": [
                {**r, "dsnSecret": {**r["dsnSecret"], "name": "other"}} for r in DEFAULTS["regions"]
            ]
        },
        {"tls": {**base["tls"], "secretName": "other"}},
        {"tls": {**base["tls"], "clientCaSecretName": "other"}},
        {"database": {**base["database"], "caSecret": {"name": "other"}}},
        {"database": {**base["database"], "clientCertSecret": {"name": "other"}}},
    ]
    for rename in renames:
        changed = one(render_with(helm_template, tmp_path, {**base, **rename}), "Deployment")
        assert secret_references(changed) != referenced  # the rename took
        annotations = changed["spec"]["template"]["metadata"]["annotations"]
        assert annotations["checksum/secrets"] != checksum, rename


# --- network policies for every pod of the release ----------------------------------------


def policies(docs: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {
        doc["metadata"]["name"].rsplit("-", 1)[-1]: doc for doc in by_kind(docs, "NetworkPolicy")
    }


def selects(policy: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    wanted: Mapping[str, str] = policy["spec"]["podSelector"]["matchLabels"]
    return wanted.items() <= labels.items()


def allows_dns(policy: Mapping[str, Any], *, node_local: str | None) -> bool:
    for rule in policy["spec"]["egress"]:
        if {p["port"] for p in rule["ports"]} != {53}:
            continue
        blocks = [peer["ipBlock"]["cidr"] for peer in rule["to"] if "ipBlock" in peer]
        if node_local is None:
            return not blocks
        return any(
            ipaddress.ip_address(node_local) in ipaddress.ip_network(cidr) for cidr in blocks
        )
    return False


def test_the_migration_job_and_the_test_pod_have_egress_of_their_own(rendered: Render) -> None:
    docs = rendered("helm4", "values-aws-us-east-1.yaml")
    values = values_for("values-aws-us-east-1.yaml")
    node_local = values["networkPolicy"]["nodeLocalDNS"]["address"]
    found = policies(docs)
    job = one(docs, "Job")
    migrate = found["migrate"]
    assert selects(migrate, job["spec"]["template"]["metadata"]["labels"])
    # A hook like the Job, created before it: a pre-install Job runs before regular objects.
    hook = migrate["metadata"]["annotations"]
    assert hook["helm.sh/hook"] == job["metadata"]["annotations"]["helm.sh/hook"]
    assert int(hook["helm.sh/hook-weight"]) < int(
        job["metadata"]["annotations"]["helm.sh/hook-weight"]
    )
    cidrs = {
        peer["ipBlock"]["cidr"]
        for rule in migrate["spec"]["egress"]
        for peer in rule["to"]
        if "ipBlock" in peer
    }
    assert set(values["networkPolicy"]["databaseCIDRs"]) <= cidrs
    test = found["test"]
    assert selects(test, one(docs, "Pod")["metadata"]["labels"])
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    (to_service,) = [r for r in test["spec"]["egress"] if "podSelector" in r["to"][0]]
    assert to_service["to"][0]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert {p["port"] for p in to_service["ports"]} == {values["containerPorts"]["http"]}
    for policy in found.values():
        assert allows_dns(policy, node_local=node_local), policy["metadata"]["name"]


def test_without_node_local_dns_only_the_cluster_dns_is_allowed(
    helm_template: Template, tmp_path: Path
) -> None:
    values = load_yaml(CHART / "values-aws-us-east-1.yaml")
    values = deep_merge(values, {"networkPolicy": {"nodeLocalDNS": {"enabled": False}}})
    docs = render_with(helm_template, tmp_path, values)
    for policy in policies(docs).values():
        assert allows_dns(policy, node_local=None), policy["metadata"]["name"]


# --- write deadlines --------------------------------------------------------------------


def test_writes_get_a_deadline_that_fits_global_table_commits(rendered: Render) -> None:
    for variant in ("defaults", "values-gcp-us-central1.yaml"):
        docs = rendered("helm4", variant)
        env = container_env(serving_container(docs), config_maps(docs))
        assert float(env[f"{PREFIX}WRITE_DEADLINE"]) > float(env[f"{PREFIX}REQUEST_DEADLINE"])
