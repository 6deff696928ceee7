"""The packages of ``service`` import downwards only, and never in a circle.

Ranks, lowest first: the shared foundation (errors, settings, logging, the lifecycle base);
the core and the TLS helper; what plugs into the core from below (store, the locality
router); the transports (HTTP, gRPC); the composition root; the command line. A package may
import only packages of a lower rank, so the core cannot reach storage or a transport, and
the two transports cannot lean on each other. The core's own narrower rule (only itself, the
errors and the lifecycle base) is in tests/core.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import service

ROOT = Path(service.__file__).parent
RANK = {
    "errors": 0,
    "lifecycle": 0,
    "settings": 0,
    "logs": 0,
    "tls": 1,
    "core": 1,
    "store": 2,
    "locality": 2,
    "http": 3,
    "grpc": 3,
    "server": 4,
    "workers": 4,
    "cli": 5,
    "__main__": 6,
}


def unit(module: str) -> str:
    """The package (or top-level module) of ``service`` that ``module`` belongs to."""
    return module.split(".")[1]


def import_graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for path in ROOT.rglob("*.py"):
        if "generated" in path.parts:
            continue
        source = unit(".".join(("service", *path.relative_to(ROOT).with_suffix("").parts)))
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                if name.startswith("service.") and unit(name) != source:
                    edges[source].add(unit(name))
    return edges


def test_every_package_has_a_rank() -> None:
    packages = {path.stem for path in ROOT.glob("*.py")} | {
        path.name for path in ROOT.iterdir() if (path / "__init__.py").exists()
    }
    assert packages - {"__init__"} == set(RANK)


def test_imports_point_down_only() -> None:
    graph = import_graph()
    assert graph["server"] >= {"core", "store", "locality", "http", "grpc"}, "the guard sees"
    upward = sorted(
        f"{source} -> {target}"
        for source, targets in graph.items()
        for target in targets
        if RANK[target] >= RANK[source]
    )
    assert upward == []


def test_no_cycle_between_packages() -> None:
    graph = import_graph()
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            assert state.get(target) != "open", " -> ".join([*path, node, target])
            if target not in state:
                visit(target, [*path, node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
