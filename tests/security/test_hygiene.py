"""The secret-hygiene plugin (tests/support/hygiene.py) finds each kind of leak, reports
where and which kind but never the secret, and fails the run."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support.hygiene import scan, with_bytea_decoded

ROOT = Path(__file__).resolve().parents[2]
SECRET = secrets.token_urlsafe(32)
TOKEN_ID = "skt_AbCdEfGhIjKlMnOp"


def private_pem() -> str:
    return (
        Ed25519PrivateKey.generate()
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )


def public_pem() -> str:
    return (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


BASIC = base64.b64encode(f"{TOKEN_ID}:{SECRET}".encode()).decode()


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        (json.dumps({"event": "x", "key": private_pem()}), "PEM private key"),
        (
            repr({"private_key": base64.b64encode(private_pem().encode()).decode()}),
            "PEM private key",
        ),
        (json.dumps({"jwk": {"kty": "OKP", "crv": "Ed25519", "d": "A" * 43}}), "JWK private"),
        ("jwk kty=RSA qi=" + "B" * 170, "JWK private"),
        (json.dumps({"headers": {"Authorization": f"Basic {BASIC}"}}), "Authorization value"),
        (f"authorization='Bearer {TOKEN_ID}:{SECRET}'", "Authorization value"),
        (f"credentials were {BASIC}", "Authorization value"),
        (f"token_id={TOKEN_ID} secret={SECRET}", "access-token secret"),
        (json.dumps({"note": f"x:{SECRET}"}), "access-token secret"),
    ],
)
def test_each_kind_of_leak_is_found(text: str, kind: str) -> None:
    found = scan(text, frozenset({SECRET}))
    assert any(name.startswith(kind) for name in found), found
    assert all(SECRET not in name and "PRIVATE" not in name[3:] for name in found)


def test_a_secret_stored_as_bytes_is_found() -> None:
    row = "(abc,\\x" + f"{TOKEN_ID}:{SECRET}".encode().hex() + ",2026-01-01)"
    assert scan(row, frozenset({SECRET})) == []
    assert scan(with_bytea_decoded(row), frozenset({SECRET})) == ["access-token secret"]


def test_what_the_service_logs_and_stores_is_not_a_leak() -> None:
    lines = [
        json.dumps({"event": "access_token_issued", "token_id": TOKEN_ID, "scopes": ["read"]}),
        json.dumps({"event": "request", "authorization": "[redacted]", "secret": "[redacted]"}),
        json.dumps({"jwk": {"kty": "OKP", "crv": "Ed25519", "x": "A" * 43, "kid": "B" * 32}}),
        json.dumps({"public_key": public_pem()}),
        "refused: the field 'name' holds a PEM private key marker (… PRIVATE KEY …)",
        "Basic authentication failed; Bearer tokens are id:secret",
        f"key_id={secrets.token_urlsafe(24)} id={secrets.token_urlsafe(32)}",
    ]
    assert scan("\n".join(lines), frozenset({SECRET})) == []


def test_a_leaking_run_fails_and_the_report_names_no_secret(tmp_path: Path) -> None:
    """A whole (small) run with the plugin, in a process of its own: the tests pass, the run
    fails on the leaks, and the report says where and what, not the secret."""
    pem = private_pem()
    (tmp_path / "test_leaks.py").write_text(
        textwrap.dedent(
            f"""
            import logging
            import structlog

            def test_structlog():
                structlog.get_logger("x").info("oops", key={pem!r})

            def test_stdlib():
                logging.getLogger("y").warning("headers %s", {{"Authorization": "Basic {BASIC}"}})

            def test_clean():
                structlog.get_logger("x").info("fine", key_id="abc")
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.support.hygiene", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        # No third-party plugins: the run needs none, and loading them takes seconds.
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout
    assert "3 passed" in output, output
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, output
    assert "PEM private key: log lines of test_leaks.py::test_structlog" in output
    assert "Authorization value: log lines of test_leaks.py::test_stdlib" in output
    assert "test_clean" not in output
    assert pem.splitlines()[1] not in output and BASIC not in output
