"""Conventions the code keeps everywhere: one log-event style (a snake_case event name, the
rest as fields), so that logs can be searched and counted by event."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import harness
import service

EVENT = re.compile(r"[a-z][a-z0-9_]*")
LEVELS = frozenset({"debug", "info", "warning", "error", "exception", "critical"})
PACKAGES = (Path(service.__file__).parent, Path(harness.__file__).parent)


def log_events(path: Path) -> list[tuple[int, str]]:
    """(line, event) of every ``log.<level>("event", ...)`` call in the file."""
    events = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in LEVELS
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "log"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            events.append((node.lineno, node.args[0].value))
    return events


@pytest.mark.parametrize("package", PACKAGES, ids=lambda path: path.name)
def test_log_events_are_snake_case_names(package: Path) -> None:
    prose = [
        f"{path.relative_to(package.parent)}:{line}: {event!r}"
        for path in sorted(package.rglob("*.py"))
        if "generated" not in path.parts
        for line, event in log_events(path)
        if not EVENT.fullmatch(event)
    ]
    assert prose == []


def test_the_scan_finds_log_calls() -> None:
    events = {event for _, event in log_events(Path(service.__file__).parent / "server.py")}
    assert "serving" in events
