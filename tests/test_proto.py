"""The proto as stock tooling reads it: ``buf lint`` clean (with every element commented),
no breaking change since the last release (``buf breaking`` against its commit), and a
gRPC service config beside it that a stock client (grpcio) accepts and retries with.

buf comes from npm, pinned in ``tools/buf/package.json``; ``make test`` installs it, and
so does this module when it is missing (a clean clone has no ``node_modules``).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest

from service.grpc.generated.signingkeys.v1 import signing_keys_pb2

ROOT = Path(__file__).resolve().parents[1]
BUF_DIR = ROOT / "tools" / "buf"
BUF = BUF_DIR / "node_modules" / ".bin" / "buf"
SERVICE_CONFIG = ROOT / "protos" / "signingkeys" / "v1" / "signing_keys.service_config.json"
SERVICE = "signingkeys.v1.SigningKeys"
# The last release: the commit whose proto deployed clients were generated from.
RELEASE = "bb8b140"
# What changed since on purpose, and breaks no deployed client on the wire or in JSON:
# the options that let stock protoc generate importable Go and idiomatic Java (code
# generated from the old options keeps working; regenerating moves it).
DELIBERATE = (
    'File option "go_package" changed from "signingkeys/v1;signingkeysv1" to '
    '"github.com/example/signing-keys/gen/go/signingkeys/v1;signingkeysv1".',
    'File option "java_multiple_files" changed from "false" to "true".',
    'File option "java_outer_classname" changed from "" to "SigningKeysProto".',
    'File option "java_package" changed from "" to "com.example.signingkeys.v1".',
)


@pytest.fixture(scope="module")
def buf() -> Path:
    if not BUF.exists():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--silent"],
            cwd=BUF_DIR,
            check=True,
            timeout=300,
        )
    return BUF


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_buf_lint_is_clean(buf: Path) -> None:
    result = run(str(buf), "lint")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_nothing_breaks_since_the_last_release_but_the_deliberate_options(buf: Path) -> None:
    present = run("git", "cat-file", "-e", f"{RELEASE}^{{commit}}")
    assert present.returncode == 0, (
        f"the release commit {RELEASE} is not in this clone (a shallow clone?): "
        "fetch the history (git fetch --unshallow) to compare the proto with it"
    )
    result = run(str(buf), "breaking", "--against", f".git#ref={RELEASE},subdir=protos")
    assert result.stderr == ""
    found = [line.split(":", 3)[3] for line in result.stdout.splitlines()]
    assert sorted(found) == sorted(DELIBERATE), result.stdout


def _config() -> dict[str, Any]:
    config: dict[str, Any] = json.loads(SERVICE_CONFIG.read_text())
    return config


def _retried() -> set[str]:
    return {
        name["method"]
        for method_config in _config()["methodConfig"]
        if "retryPolicy" in method_config
        for name in method_config["name"]
    }


def test_the_service_config_retries_only_what_is_safe_to_repeat() -> None:
    methods = set(signing_keys_pb2.DESCRIPTOR.services_by_name["SigningKeys"].methods_by_name)
    assert _retried() <= methods
    # A create or an import answered UNAVAILABLE may have committed (an ambiguous commit):
    # repeated blindly it would store a second key. Only with an idempotency key, which a
    # service config cannot see, is it safe: the caller retries those. A rotation repeated
    # stores no second key (a key rotates once), but its answer, the new private key, is lost.
    # An update sets values (repeating it sets them again).
    assert methods - _retried() == {"CreateSigningKey", "ImportSigningKey", "RotateSigningKey"}
    for method_config in _config()["methodConfig"]:
        policy = method_config["retryPolicy"]
        assert policy["retryableStatusCodes"] == ["UNAVAILABLE"]
        assert 2 <= policy["maxAttempts"] <= 5  # gRPC caps attempts at 5


async def _attempts(method: str) -> tuple[grpc.StatusCode, int]:
    """Call ``method`` on a server that answers UNAVAILABLE twice, then OK, through a
    grpcio channel configured with the shipped service config: the final status and how
    many attempts the server saw."""
    seen: list[str] = []

    async def answer(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        seen.append(method)
        if len(seen) <= 2:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no region can serve the call")
        return b""

    handler = grpc.method_handlers_generic_handler(
        SERVICE, {method: grpc.unary_unary_rpc_method_handler(answer)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        options = [("grpc.service_config", SERVICE_CONFIG.read_text()), ("grpc.enable_retries", 1)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            call = channel.unary_unary(f"/{SERVICE}/{method}")
            try:
                await call(b"", timeout=30)
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as error:
                code = error.code()
    finally:
        await server.stop(None)
    return code, len(seen)


async def test_a_stock_client_retries_unavailable_reads_with_the_shipped_config() -> None:
    assert await _attempts("VerifyToken") == (grpc.StatusCode.OK, 3)
    assert await _attempts("CreateSigningKey") == (grpc.StatusCode.UNAVAILABLE, 1)
