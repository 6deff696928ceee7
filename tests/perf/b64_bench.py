"""The cost of decoding a token's three base64url segments, on the verification hot path.

Figures for :func:`service.core.crypto.b64url_decode` on each segment of a typical RS256 token
(header, payload, a 256-byte signature), and for the whole split of the token into its parts,
beside the raw RSA verify of the same token for scale. Microseconds per call, the best of
several repeats (the floor is the steadiest figure on a busy machine). Nothing is asserted.
"""

from __future__ import annotations

import json
import os
import time
import timeit

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from service.core import crypto
from service.core.verify import _split

REPEATS = int(os.environ.get("BENCH_REPEATS", "7"))
NUMBER = int(os.environ.get("BENCH_NUMBER", "20000"))


def per_call_us(call: object) -> float:
    timer = timeit.Timer(call)  # type: ignore[arg-type]
    return min(timer.repeat(repeat=REPEATS, number=NUMBER)) / NUMBER * 1e6


def main() -> int:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = {"sub": "playback-id", "aud": "v", "exp": int(time.time()) + 600, "kid": "k" * 32}
    token = jwt.encode(claims, private, algorithm="RS256", headers={"kid": "k" * 32})
    header, payload, signature = token.split(".")
    signing_input = f"{header}.{payload}".encode()
    raw_signature = crypto.b64url_decode(signature)
    public = private.public_key()

    def rsa_verify() -> None:
        public.verify(raw_signature, signing_input, padding.PKCS1v15(), hashes.SHA256())

    figures = {
        f"header ({len(header)} chars)": per_call_us(lambda: crypto.b64url_decode(header)),
        f"payload ({len(payload)} chars)": per_call_us(lambda: crypto.b64url_decode(payload)),
        f"signature ({len(signature)} chars)": per_call_us(lambda: crypto.b64url_decode(signature)),
        "split (3 decodes + 2 JSON parses)": per_call_us(lambda: _split(token)),
        "RSA-2048 verify, for scale": per_call_us(rsa_verify),
    }
    print(f"base64url decoding: best of {REPEATS} x {NUMBER} calls, µs per call")
    for name, value in figures.items():
        print(f"  {name:<36} {value:8.3f}")
    print(json.dumps({name: round(value, 3) for name, value in figures.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
