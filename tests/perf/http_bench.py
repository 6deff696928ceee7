"""HTTP verification throughput beside its baselines, all measured in the same run.

- raw: ``cryptography``'s own verify of the same signature, in a loop, one core;
- bare: a bare aiohttp handler returning a small JSON body (the floor of any HTTP service);
- service: ``POST /v1/tokens/verify`` for RS256, ES256 and EdDSA tokens, cache warm.

Each HTTP figure is wrk's requests/s, one server process and one wrk thread (the machine has
two cores); the median of several runs is reported, with the ratio to the bare handler and
the per-request cost over it. Nothing is asserted: these are figures, not tests.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from harness import LocalTopology

ALGORITHMS = ("RS256", "ES256", "EdDSA")
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "3"))
CONNECTIONS = 32
BARE_SERVER = """
from aiohttp import web

async def handler(request):
    await request.read()
    return web.json_response({"data": {"valid": True}})

app = web.Application()
app.router.add_post("/", handler)
web.run_app(app, host="127.0.0.1", port={port}, access_log=None, print=None)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@contextmanager
def process(
    args: list[str], env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def wrk(url: str, body: str, headers: dict[str, str]) -> float:
    """Requests/s for POST ``body`` to ``url``: the median of RUNS runs of wrk."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write('wrk.method = "POST"\n')
        script.write(f"wrk.body = {json.dumps(body)}\n")
        for name, value in {"Content-Type": "application/json", **headers}.items():
            script.write(f'wrk.headers["{name}"] = {json.dumps(value)}\n')
    rates = []
    try:
        for _ in range(RUNS):
            out = subprocess.run(
                ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{SECONDS}s", "-s", script.name, url],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
            if errors:
                raise RuntimeError(f"wrk saw {errors.group(1)} error responses:\n{out}")
            match = re.search(r"Requests/sec:\s+([\d.]+)", out)
            if match is None:
                raise RuntimeError(f"wrk printed no rate:\n{out}")
            rates.append(float(match.group(1)))
    finally:
        Path(script.name).unlink()
    return statistics.median(rates)


def raw_verify_rate(algorithm: str, seconds: float = 1.0) -> float:
    """Verifications per second with ``cryptography`` alone (median of RUNS)."""
    data = b"header.payload" * 8
    if algorithm == "RS256":
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        sig = rsa_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        rsa_pub = rsa_key.public_key()

        def check() -> None:
            rsa_pub.verify(sig, data, padding.PKCS1v15(), hashes.SHA256())
    elif algorithm == "ES256":
        ec_key = ec.generate_private_key(ec.SECP256R1())
        sig = ec_key.sign(data, ec.ECDSA(hashes.SHA256()))
        ec_pub = ec_key.public_key()

        def check() -> None:
            ec_pub.verify(sig, data, ec.ECDSA(hashes.SHA256()))
    else:
        ed_key = ed25519.Ed25519PrivateKey.generate()
        sig = ed_key.sign(data)
        ed_pub = ed_key.public_key()

        def check() -> None:
            ed_pub.verify(sig, data)

    rates = []
    for _ in range(RUNS):
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            for _ in range(100):
                check()
            count += 100
        rates.append(count / (time.perf_counter() - started))
    return statistics.median(rates)


async def make_tokens(base: str, auth_header: str) -> dict[str, str]:
    tokens = {}
    async with aiohttp.ClientSession(headers={"Authorization": auth_header}) as session:
        for algorithm in ALGORITHMS:
            async with session.post(
                f"{base}/system/v1/signing-keys", json={"algorithm": algorithm}
            ) as response:
                data = (await response.json())["data"]
            pem = base64.b64decode(data["private_key"])
            key = serialization.load_pem_private_key(pem, password=None)
            tokens[algorithm] = jwt.encode(
                {"exp": int(time.time()) + 3600, "sub": "bench", "aud": "v"},
                key,  # type: ignore[arg-type]
                algorithm=algorithm,
                headers={"kid": data["id"]},
            )
            async with session.post(
                f"{base}/v1/tokens/verify", json={"token": tokens[algorithm]}
            ) as response:
                assert (await response.json())["data"]["valid"], "bench token must verify"
    return tokens


def main() -> int:
    if shutil.which("wrk") is None:
        print("wrk is missing: apt-get install -y wrk (make bench does this as root)")
        return 1
    python = sys.executable
    cli = str(Path(python).with_name("signing-keys"))
    print(f"HTTP verification benchmark: {RUNS} runs x {SECONDS}s, wrk -t1 -c{CONNECTIONS}")
    raw = {algorithm: raw_verify_rate(algorithm) for algorithm in ALGORITHMS}
    bare_port = free_port()
    with process([python, "-c", BARE_SERVER.replace("{port}", str(bare_port))]):
        wait_for_port(bare_port)
        bare = wrk(f"http://127.0.0.1:{bare_port}/", json.dumps({"token": "x" * 600}), {})
    with LocalTopology() as topology:
        port = free_port()
        env = {
            **os.environ,
            **topology.env("aws-us-east-1"),
            "SIGNING_KEYS_HTTP_HOST": "127.0.0.1",
            "SIGNING_KEYS_HTTP_PORT": str(port),
            "SIGNING_KEYS_GRPC_ENABLED": "false",
            "SIGNING_KEYS_ACCESS_LOG": "off",
            "SIGNING_KEYS_LOG_LEVEL": "warning",
        }
        subprocess.run([cli, "migrate"], env=env, check=True, capture_output=True)
        issued = subprocess.run(
            [cli, "token", "create", "--environment", "bench"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        token = json.loads(issued)
        auth_header = (
            "Basic " + base64.b64encode(f"{token['id']}:{token['secret']}".encode()).decode()
        )
        with process([cli, "serve"], env=env):
            wait_for_port(port)
            base = f"http://127.0.0.1:{port}"
            tokens = asyncio.run(make_tokens(base, auth_header))
            service = {
                algorithm: wrk(
                    f"{base}/v1/tokens/verify",
                    json.dumps({"token": tokens[algorithm], "audience": "v"}),
                    {"Authorization": auth_header},
                )
                for algorithm in ALGORITHMS
            }
    print(
        f"\n{'':8} {'raw verify/s':>13} {'service req/s':>14} {'bare req/s':>11}"
        f" {'service/bare':>13} {'µs over bare':>13}"
    )
    for algorithm in ALGORITHMS:
        over = 1e6 / service[algorithm] - 1e6 / bare
        print(
            f"{algorithm:8} {raw[algorithm]:13.0f} {service[algorithm]:14.0f} {bare:11.0f}"
            f" {service[algorithm] / bare:13.2f} {over:13.1f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
