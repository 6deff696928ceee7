"""What ships: the wheel and the image hold the service alone; the harness stays behind.

The development harness (``harness/``: the local topology, the fault proxies, ``make run``)
and the tests are development tools. These checks build the real wheel, run the installed
command, read the Docker build context as Docker would, and walk every module of ``service``
for an import of ``harness``.
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.support import dockerignore_rules, is_ignored

REPO = Path(__file__).resolve().parents[1]
DEVELOPMENT_ONLY = ("harness", "tests")
# What a wheel build must not see or write in the repository itself.
NOT_SOURCE = (
    ".git",
    ".venv",
    "node_modules",
    "__pycache__",
    "*.egg-info",
    "build",
    "dist",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
)


# --- the wheel -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """The wheel ``pip install .`` (the image's build step) makes, built from a copy of the
    repository (harness/ and tests/ included, as in a checkout) so that nothing is written
    here."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*NOT_SOURCE), symlinks=True)
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            "--wheel-dir",
            str(base / "out"),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (path,) = (base / "out").glob("signing_keys-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_holds_the_service_package_and_its_metadata_only(
    wheel: zipfile.ZipFile,
) -> None:
    tops = {name.split("/")[0] for name in wheel.namelist()}
    metadata = {top for top in tops if top.endswith(".dist-info")}
    assert len(metadata) == 1
    assert tops - metadata == {"service"}


def test_every_service_module_is_in_the_wheel(wheel: zipfile.ZipFile) -> None:
    modules = {
        path.relative_to(REPO).as_posix()
        for path in (REPO / "service").rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert "service/cli.py" in modules and "service/locality/router.py" in modules
    missing = modules - set(wheel.namelist())
    assert not missing, f"not shipped: {sorted(missing)}"
    assert "service/py.typed" in wheel.namelist()


def test_the_wheel_holds_no_development_code(wheel: zipfile.ZipFile) -> None:
    offenders = [
        name
        for name in wheel.namelist()
        if name.split("/")[0] in DEVELOPMENT_ONLY
        or any("topology" in part for part in name.split("/"))
        or name.endswith("/dev.py")
    ]
    assert not offenders, f"development code in the wheel: {offenders}"


def test_the_wheel_installs_the_signing_keys_command(wheel: zipfile.ZipFile) -> None:
    (entry_points,) = (n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt"))
    text = wheel.read(entry_points).decode()
    assert re.search(r"^signing-keys\s*=\s*service\.cli:main$", text, re.MULTILINE), text


# --- the command ---------------------------------------------------------------------------


def subcommands(usage: str) -> set[str]:
    """``{serve,migrate,status,token}`` in argparse's usage → the set of names."""
    match = re.search(r"\{([\w,-]+)\}", usage)
    assert match, f"no subcommand list in:\n{usage}"
    return set(match.group(1).split(","))


def run_outside_the_repository(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run from elsewhere, so that the harness (not installed) cannot be imported by accident."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("how", ["console script", "python -m service"])
def test_signing_keys_help_lists_no_dev_command(how: str, tmp_path: Path) -> None:
    if how == "console script":
        script = Path(sys.executable).parent / "signing-keys"
        assert script.exists(), f"{script}: the package's console script is not installed"
        argv = [str(script), "--help"]
    else:
        argv = [sys.executable, "-m", "service", "--help"]
    done = run_outside_the_repository(argv, tmp_path)
    assert done.returncode == 0, done.stderr
    commands = subcommands(done.stdout)
    assert {"serve", "migrate", "status", "token"} <= commands
    assert "dev" not in commands
    assert "topology" not in done.stdout


def test_signing_keys_dev_is_an_unknown_command(tmp_path: Path) -> None:
    done = run_outside_the_repository([sys.executable, "-m", "service", "dev"], tmp_path)
    assert done.returncode == 2
    assert "invalid choice: 'dev'" in done.stderr


# --- the service never imports the harness -------------------------------------------------


IMPORT_FUNCTIONS = {"__import__", "import_module"}


def _called_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def harness_imports(source: str) -> list[tuple[int, str]]:
    """(line, module) for every import of ``harness`` in ``source``: statements, and
    ``importlib.import_module("harness…")`` / ``__import__("harness…")`` with a literal name."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.stmt | ast.expr):
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif (
            isinstance(node, ast.Call)
            and _called_name(node.func) in IMPORT_FUNCTIONS
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names = [node.args[0].value]
        found += [
            (node.lineno, name)
            for name in names
            if name == "harness" or name.startswith("harness.")
        ]
    return sorted(found)


def test_the_import_check_sees_every_way_of_importing_the_harness() -> None:
    source = (
        "import harness\n"
        "from harness.cluster import LocalTopology\n"
        "def f():\n"
        "    import harness.proxy as proxy\n"
        "    return importlib.import_module('harness.dev'), __import__('harness')\n"
        "from service import errors\n"
        "import harnessed\n"
        "from . import harness\n"
    )
    assert [line for line, _ in harness_imports(source)] == [1, 2, 4, 5, 5]


def test_no_service_module_imports_the_harness() -> None:
    files = [p for p in (REPO / "service").rglob("*.py") if "__pycache__" not in p.parts]
    assert len(files) > 30, "the walk found too few modules to mean anything"
    offenders = [
        f"{path.relative_to(REPO)}:{line}: {name}"
        for path in files
        for line, name in harness_imports(path.read_text())
    ]
    assert not offenders, "service imports the development harness:\n" + "\n".join(offenders)


# --- the image -----------------------------------------------------------------------------


def repository_files(top: str) -> list[str]:
    """Every file under ``top``, relative to the repository (installed JS packages and caches
    aside)."""
    found = []
    for root, dirs, files in os.walk(REPO / top):
        dirs[:] = [d for d in dirs if d not in {"node_modules", "__pycache__"}]
        found += [(Path(root) / name).relative_to(REPO).as_posix() for name in files]
    return found


@pytest.mark.parametrize("top", DEVELOPMENT_ONLY)
def test_the_image_build_context_leaves_out_development_code(top: str) -> None:
    rules = dockerignore_rules((REPO / ".dockerignore").read_text())
    files = repository_files(top)
    assert files
    sent = [path for path in files if not is_ignored(path, rules)]
    assert not sent, f".dockerignore sends development files to the builder: {sent}"
    assert not is_ignored("service/cli.py", rules), "the service itself must still be sent"


def test_no_dockerfile_copy_takes_development_code() -> None:
    dockerfile: Any = importlib.import_module("dockerfile")
    sources = [
        source
        for command in dockerfile.parse_file(str(REPO / "Dockerfile"))
        if command.cmd in {"COPY", "ADD"}
        and not any(flag.startswith("--from=") for flag in command.flags)
        for source in command.value[:-1]
    ]
    assert "service" in sources
    for source in sources:
        copied = (REPO / source).resolve()
        for top in DEVELOPMENT_ONLY:
            development = REPO / top
            assert not (copied.is_relative_to(development) or development.is_relative_to(copied)), (
                f"COPY {source} takes {top}/ into the image"
            )
