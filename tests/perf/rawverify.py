"""The raw verify loop: ``cryptography`` alone checking the bench tokens' signatures — the
floor under any verification, measured in the same run as the service."""

from __future__ import annotations

import time

from tests.perf.bare import b64url_decode, verifier


def rate(token: str, public_key_der: bytes, seconds: float) -> float:
    """Verifications per second of ``token``'s signature, one core, for about ``seconds``."""
    check = verifier(public_key_der)
    signing_input, _, signature = token.rpartition(".")
    data, sig = signing_input.encode(), b64url_decode(signature)
    count, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(50):
            check(data, sig)
        count += 50
    return count / elapsed
