"""Shared, pure helpers of the deploy checks: constants, YAML helpers, what the service reads."""

from __future__ import annotations

import ast
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import PREFIX

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "signing-keys"
REGION_VALUES = sorted(CHART.glob("values-*.yaml"))
HELMS = ("helm3", "helm4")
# The chart declares kubeVersion >= 1.27; manifests are checked at that floor and at the newest
# schema kubernetes-validate ships.
KUBE_VERSIONS = ("1.27.0", "1.37.0")
RELEASE = "signing-keys"
NAMESPACE = "signing-keys"
DUMMY_DSN = "postgresql://user:secret@db.invalid:26257/signing_keys"
# The regions every artefact describes (compose, chart, sql/cockroach reference script).
REGIONS = {"aws-us-east-1": "aws", "gcp-us-central1": "gcp", "aws-eu-west-1": "aws"}


@dataclass(frozen=True)
class ToolResult:
    returncode: int
    stdout: str
    stderr: str


def venv_tool(name: str, install_hint: str) -> Path:
    """A console script installed by pip next to this interpreter (or on PATH)."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return beside
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: {install_hint}", pytrace=False)
    return Path(found)


def by_kind(docs: Sequence[Mapping[str, Any]], kind: str) -> list[Mapping[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: Sequence[Mapping[str, Any]], kind: str) -> Mapping[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def deep_merge(base: Any, override: Any) -> Any:
    """Helm's coalescing of values files: maps merge, anything else replaces, null deletes."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = deep_merge(base.get(key), value)
        return merged
    return override


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


# --- What the service reads ----------------------------------------------------------------

_VALUE_READERS = {
    "number_or_none",
    "required",
    "text",
    "optional_text",
    "integer",
    "number",
    "optional_number",
    "boolean",
    "choice",
}
_VARIABLE = re.compile(rf"^{PREFIX}[A-Z0-9_]+$")


@dataclass(frozen=True)
class ServiceVariables:
    """The SIGNING_KEYS_* variables the service reads, found in its source."""

    names: frozenset[str]  # fixed names
    dsn_prefix: str  # plus one SIGNING_KEYS_DSN_<REGION> per configured region

    def is_read(self, name: str) -> bool:
        return name in self.names or (
            name.startswith(self.dsn_prefix) and len(name) > len(self.dsn_prefix)
        )


def _settings_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        # values.number("CONNECT_TIMEOUT", …), values.required("LOCAL_REGION"), …
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _VALUE_READERS
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(PREFIX + node.args[0].value)
        # environ.get(f"{PREFIX}CONFIG_FILE")
        if (
            isinstance(node, ast.JoinedStr)
            and len(node.values) == 2
            and isinstance(node.values[0], ast.FormattedValue)
            and isinstance(node.values[0].value, ast.Name)
            and node.values[0].value.id == "PREFIX"
            and isinstance(node.values[1], ast.Constant)
            and isinstance(node.values[1].value, str)
            and re.fullmatch(r"[A-Z0-9_]+", node.values[1].value)
        ):
            names.add(PREFIX + node.values[1].value)
    return names


def read_service_variables() -> ServiceVariables:
    settings_py = REPO / "service" / "settings.py"
    names = _settings_names(ast.parse(settings_py.read_text()))
    # Elsewhere in the package, a variable would be read by its literal name.
    for path in (REPO / "service").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and _VARIABLE.match(node.value)
            ):
                names.add(node.value)
    return ServiceVariables(frozenset(names), f"{PREFIX}DSN_")


# Variables that only choose where a setting comes from, or that the deploy artefacts derive
# from other values (regions, ports, TLS files): the chart's free-form `settings` map must not
# offer them.
MANAGED_SETTINGS = {
    "REGIONS",
    "LOCAL_REGION",
    "HTTP_PORT",
    "GRPC_PORT",
    "TLS_CERT_FILE",
    "TLS_KEY_FILE",
    "TLS_CLIENT_CA_FILE",
    "DB_CA_FILE",
    "DB_CERT_FILE",
    "DB_KEY_FILE",
    "DRAIN_DELAY",
    "CONFIG_FILE",
}


def http_routes() -> set[str]:
    """Paths the HTTP app registers (``@routes.get("/healthz")`` / ``add_get("/x", …)``)."""
    pattern = re.compile(
        r"""\.(?:get|post|put|delete|patch|head|add_get|add_route)\(\s*"""
        r"""(?:"[A-Z]+",\s*)?["'](/[^"']*)["']"""
    )
    paths: set[str] = set()
    for path in (REPO / "service" / "http").rglob("*.py"):
        paths |= set(pattern.findall(path.read_text()))
    return paths


# --- .dockerignore -------------------------------------------------------------------------


def _glob_regex(pattern: str) -> str:
    """Go's filepath.Match syntax plus ``**``, as Docker's patternmatcher reads it."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        char = pattern[i]
        end = pattern.find("]", i + 1) if char == "[" else -1
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif end != -1:
            body = pattern[i + 1 : end]
            if body[:1] in ("!", "^"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end + 1
            continue
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """(negated, regex) per rule, with Docker's syntax: ``!`` re-includes, ``**`` spans dirs."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = (line[1:].strip() if negated else line).strip("/")
        rules.append((negated, re.compile(_glob_regex(pattern))))
    return rules


def is_ignored(path: str, rules: Sequence[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether the build context leaves ``path`` out: the last rule matching it or a parent wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for negated, regex in rules:
        if any(regex.fullmatch(candidate) for candidate in candidates):
            ignored = not negated
    return ignored
