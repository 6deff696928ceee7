"""deploy/healthcheck.py (the image's HEALTHCHECK) against real local HTTP(S) servers."""

from __future__ import annotations

import http.server
import importlib.util
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import pytest

from service.settings import Settings
from tests.deploy.support import REPO
from tests.support.tls import write_self_signed

SCRIPT = REPO / "deploy" / "healthcheck.py"
BASE_ENV = {
    "SIGNING_KEYS_REGIONS": "aws-us-east-1:aws",
    "SIGNING_KEYS_LOCAL_REGION": "aws-us-east-1",
    "SIGNING_KEYS_DSN_AWS_US_EAST_1": "postgresql://u:p@127.0.0.1:1/db",
    "SIGNING_KEYS_HTTP_HOST": "0.0.0.0",
}


def run_check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SIGNING_KEYS_")}
    clean["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, str(SCRIPT)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@contextmanager
def server(
    status: int, context: ssl.SSLContext | None = None, seen: list[str] | None = None
) -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if seen is not None:
                seen.append(self.path)
            self.send_response(status if self.path == "/healthz" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if context is not None:
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def test_healthy_when_healthz_answers_200() -> None:
    seen: list[str] = []
    with server(200, seen=seen) as port:
        done = run_check({**BASE_ENV, "SIGNING_KEYS_HTTP_PORT": str(port)})
    assert done.returncode == 0, done.stderr
    assert seen == ["/healthz"]


def test_unhealthy_when_healthz_answers_an_error() -> None:
    with server(503) as port:
        done = run_check({**BASE_ENV, "SIGNING_KEYS_HTTP_PORT": str(port)})
    assert done.returncode == 1
    assert "503" in done.stderr


def test_unhealthy_when_nothing_listens() -> None:
    # A bound socket that does not listen: connecting to it is refused at once.
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        done = run_check({**BASE_ENV, "SIGNING_KEYS_HTTP_PORT": str(port)})
    assert done.returncode == 1
    assert "unhealthy" in done.stderr


def test_unhealthy_when_the_settings_do_not_load() -> None:
    done = run_check({"SIGNING_KEYS_HTTP_PORT": "8080"})  # no regions at all
    assert done.returncode == 1
    assert "SIGNING_KEYS_REGIONS" in done.stderr


def test_speaks_https_when_the_service_has_tls(tmp_path: Path) -> None:
    cert_file, key_file = write_self_signed(tmp_path, "signing-keys.example")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    env = {
        **BASE_ENV,
        "SIGNING_KEYS_TLS_CERT_FILE": str(cert_file),
        "SIGNING_KEYS_TLS_KEY_FILE": str(key_file),
    }
    with server(200, context=context) as port:
        done = run_check({**env, "SIGNING_KEYS_HTTP_PORT": str(port)})
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("0.0.0.0", "http://127.0.0.1:8080/healthz"),
        ("::", "http://127.0.0.1:8080/healthz"),
        ("10.1.2.3", "http://10.1.2.3:8080/healthz"),
        ("fd00::1", "http://[fd00::1]:8080/healthz"),
    ],
)
def test_the_url_follows_the_listen_address(host: str, expected: str) -> None:
    healthz_url: Callable[[Settings], str] = _load_script().healthz_url
    settings = Settings.from_env({**BASE_ENV, "SIGNING_KEYS_HTTP_HOST": host})
    assert healthz_url(settings) == expected


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_healthcheck", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
