"""The same-run baselines: the least an aiohttp or grpclib server can do for the same request.

    python -m tests.perf.bare CONFIG_JSON

One process, one event loop, HTTP and gRPC beside each other as in the service. CONFIG_JSON
names the ports, the public keys (SubjectPublicKeyInfo DER, base64), a file of JWKS bytes and
a prebuilt GetSigningKeyResponse (protobuf bytes, base64). Routes:

- ``GET /small``: a small JSON body (the floor of any HTTP handler);
- ``POST /verify/{alg}``: parses the JSON body, splits the token, decodes the signature and
  does one raw ``cryptography`` verify with the key — no claim checks, no credentials;
- ``GET /jwks``: the JWKS bytes from memory;
- gRPC at GetSigningKey's path: parse the upb request, answer a prebuilt upb reply
  (grpclib's floor; the issue's baseline for both hot RPCs).
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from grpclib.const import Cardinality, Handler
from grpclib.server import Server, Stream

from service.grpc.generated.signingkeys.v1 import signing_keys_pb2 as pb2

GET_KEY_PATH = "/signingkeys.v1.SigningKeys/GetSigningKey"
SMALL = json.dumps({"data": {"id": "k" * 32, "status": "active"}}).encode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def verifier(der: bytes) -> Any:
    """A function (signing input, signature) -> None that raises on a bad signature."""
    key = serialization.load_der_public_key(der)
    if isinstance(key, rsa.RSAPublicKey):
        rsa_key = key
        return lambda data, sig: rsa_key.verify(sig, data, padding.PKCS1v15(), hashes.SHA256())
    if isinstance(key, ec.EllipticCurvePublicKey):
        ec_key = key

        def check(data: bytes, sig: bytes) -> None:
            der_sig = encode_dss_signature(
                int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
            )
            ec_key.verify(der_sig, data, ec.ECDSA(hashes.SHA256()))

        return check
    assert isinstance(key, ed25519.Ed25519PublicKey)
    ed_key = key
    return lambda data, sig: ed_key.verify(sig, data)


def http_app(config: dict[str, Any]) -> web.Application:
    checks = {alg: verifier(base64.b64decode(der)) for alg, der in config["keys"].items()}
    jwks = Path(config["jwks_file"]).read_bytes()

    async def small(request: web.Request) -> web.Response:
        return web.Response(body=SMALL, content_type="application/json")

    async def verify(request: web.Request) -> web.Response:
        token = (await request.json())["token"]
        signing_input, _, signature = token.rpartition(".")
        checks[request.match_info["alg"]](signing_input.encode(), b64url_decode(signature))
        return web.Response(body=b'{"data":{"valid":true}}', content_type="application/json")

    async def jwks_document(request: web.Request) -> web.Response:
        return web.Response(body=jwks, content_type="application/json")

    app = web.Application()
    app.router.add_get("/small", small)
    app.router.add_post("/verify/{alg}", verify)
    app.router.add_get("/jwks", jwks_document)
    return app


class BareGrpc:
    """GetSigningKey's path: parse the upb request, send a prebuilt upb reply."""

    def __init__(self, get_reply: bytes) -> None:
        self._get_reply = pb2.GetSigningKeyResponse.FromString(get_reply)

    def __mapping__(self) -> dict[str, Handler]:
        return {
            GET_KEY_PATH: Handler(
                self._get,
                Cardinality.UNARY_UNARY,
                pb2.GetSigningKeyRequest,
                pb2.GetSigningKeyResponse,
            ),
        }

    async def _get(self, stream: Stream[Any, Any]) -> None:
        await stream.recv_message()
        await stream.send_message(self._get_reply)


async def serve(config: dict[str, Any]) -> None:
    runner = web.AppRunner(http_app(config), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", config["http_port"]).start()
    grpc = Server([BareGrpc(base64.b64decode(config["get_reply"]))])
    await grpc.start("127.0.0.1", config["grpc_port"])
    try:
        await asyncio.Event().wait()
    finally:
        grpc.close()
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(serve(json.loads(Path(sys.argv[1]).read_text())))
