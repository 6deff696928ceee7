"""The core's imports point nowhere but at itself, the shared errors and the lifecycle base:
it owns its ports, and storage, transports and the locality router plug into them from
outside."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import service.core

CORE = Path(service.core.__file__).parent
# What the core may import from this project; everything else of ``service`` is outside it.
ALLOWED = ("service.core", "service.errors", "service.lifecycle")


def project_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {name for name in names if name == "service" or name.startswith("service.")}


@pytest.mark.parametrize("module", sorted(CORE.glob("*.py")), ids=lambda path: path.name)
def test_the_core_imports_only_itself_and_the_errors(module: Path) -> None:
    outside = {
        name
        for name in project_imports(module)
        if not any(name == allowed or name.startswith(allowed + ".") for allowed in ALLOWED)
    }
    assert outside == set(), f"{module.name} reaches out of the core"


def test_the_check_sees_imports_at_all() -> None:
    """A guard on the guard: the parser finds the core's own imports."""
    assert "service.core.ports" in project_imports(CORE / "keys.py")
