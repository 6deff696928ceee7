"""How the clients turn answers into outcomes, and what they remember of keys (pure parts)."""

from __future__ import annotations

import json
import random

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from harness.chaos.workload import AUDIENCE, KeyBook, _http_answer


def body(payload: object) -> bytes:
    return json.dumps(payload).encode()


def test_a_created_key_is_ok_with_its_id_and_private_key() -> None:
    answer = _http_answer(
        201,
        body({"data": {"id": "k1", "private_key": "cGVt"}}),
        None,
        "info",
        created=True,
        verdict=False,
    )
    assert answer.outcome == "ok"
    assert answer.result["key_id"] == "k1" and answer.result["private_key"] == "cGVt"


def test_a_replayed_idempotency_key_acknowledges_the_key_created_first() -> None:
    message = (
        "this Idempotency-Key already created signing key Ab_c-1; its private key was "
        "returned once, by that request, and is not stored"
    )
    answer = _http_answer(
        409,
        body({"error": {"type": "conflict", "messages": [message]}}),
        None,
        "info",
        created=True,
        verdict=False,
    )
    assert answer.outcome == "ok"
    assert answer.result["key_id"] == "Ab_c-1" and answer.result["replayed"] is True


def test_a_server_error_leaves_a_write_unknown_and_fails_a_read() -> None:
    reply = body({"error": {"type": "no_writable_region", "messages": ["no"]}})
    write = _http_answer(503, reply, None, "info", created=True, verdict=False)
    read = _http_answer(503, reply, None, "fail", created=False, verdict=False)
    assert write.outcome == "info" and read.outcome == "fail"
    assert write.result["error"] == "http 503 no_writable_region"


def test_not_found_says_the_key_is_absent_and_a_caller_error_is_a_failure() -> None:
    answer = _http_answer(
        404, body({"error": {"type": "not_found"}}), None, "fail", created=False, verdict=False
    )
    assert answer.result["status"] == "absent"
    refused = _http_answer(
        409,
        body({"error": {"type": "conflict", "messages": ["other request"]}}),
        None,
        "info",
        created=True,
        verdict=False,
    )
    assert refused.outcome == "fail"


def test_a_consistency_token_in_an_answer_is_kept() -> None:
    answer = _http_answer(204, b"", "pos-17", "info", created=False, verdict=False)
    assert answer.outcome == "ok" and answer.result["consistency_token"] == "pos-17"


def test_a_verdict_is_recorded_with_its_reason() -> None:
    answer = _http_answer(
        200,
        body({"data": {"valid": False, "reason": "revoked_key"}}),
        None,
        "fail",
        created=False,
        verdict=True,
    )
    assert answer.outcome == "ok"
    assert answer.result == {"http_status": 200, "valid": False, "reason": "revoked_key"}


def test_the_key_book_signs_tokens_that_name_the_key() -> None:
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    book = KeyBook()
    book.created("k1", "EdDSA", pem)
    book.created("k2", "EdDSA", None)  # acknowledged by a replay: no private key
    token = book.token_for("k1")
    assert token is not None and book.token_for("k1") == token, "signed once, then reused"
    assert jwt.get_unverified_header(token)["kid"] == "k1"
    public = private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    assert jwt.decode(token, public, algorithms=["EdDSA"], audience=AUDIENCE)["sub"] == "chaos"
    assert book.token_for("k2") is None


def test_the_key_book_picks_keys_to_read_and_to_revoke() -> None:
    book = KeyBook()
    book.created("k1", "EdDSA", b"pem")
    book.created("k2", "EdDSA", None)
    book.created("k3", "EdDSA", None, keep=True)
    book.revoking("k1")
    assert [key.key_id for key in book.active()] == ["k2"], "k3 is kept for the whole run"
    rng = random.Random(3)
    picked = {book.pick(rng, signing=True) for _ in range(200)}
    assert "k2" not in picked, "a key without a private key cannot sign a token"
    assert "k1" in picked and any(key.startswith("unknown-") for key in picked)
