"""Key material: generation, import and the encodings served (pure, no database)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from service.core import crypto
from service.errors import InvalidRequestError


@pytest.mark.parametrize("algorithm", crypto.ALGORITHMS)
def test_generated_pairs_match_and_the_jwk_round_trips(algorithm: crypto.Algorithm) -> None:
    pair = crypto.generate_key_pair(algorithm)
    private = serialization.load_pem_private_key(pair.private_pem, password=None)
    assert crypto.public_key_der(private.public_key()) == pair.public_der  # type: ignore[arg-type]
    jwk = crypto.public_jwk(pair.public_der, kid="k1", algorithm=algorithm)
    assert jwk["kid"] == "k1" and jwk["alg"] == algorithm and jwk["use"] == "sig"
    public_members = {k: v for k, v in jwk.items() if k not in ("kid", "alg", "use")}
    assert crypto.parse_customer_public_key(public_members) == (algorithm, pair.public_der)
    assert crypto.parse_customer_public_key(crypto.public_key_pem(pair.public_der)) == (
        algorithm,
        pair.public_der,
    )
    assert "PRIVATE" not in repr(pair) and str(len(pair.private_pem)) not in repr(pair)


def test_weak_or_unusual_keys_are_refused() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    with pytest.raises(InvalidRequestError, match="2048"):
        crypto.algorithm_of(small)
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(InvalidRequestError, match="P-256"):
        crypto.algorithm_of(p384)


def test_private_keys_are_refused_in_either_form() -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    with pytest.raises(InvalidRequestError, match="private key"):
        crypto.parse_customer_public_key(pem)
    with pytest.raises(InvalidRequestError, match="private key"):
        crypto.parse_customer_public_key({"kty": "OKP", "crv": "Ed25519", "x": "AA", "d": "AA"})


@pytest.mark.parametrize(
    "jwk",
    [
        {"kty": "RSA", "n": 5, "e": "AQAB"},
        {"kty": "RSA", "n": "!!", "e": "AQAB"},
        {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"},
        {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"},
        {"kty": "OKP", "crv": "Ed25519", "x": "AA"},
        {"kty": "oct", "k": "AA"},
        {},
    ],
)
def test_malformed_jwks_are_refused_with_a_clear_error(jwk: dict[str, object]) -> None:
    with pytest.raises(InvalidRequestError):
        crypto.parse_customer_public_key(jwk)


def test_fingerprint_is_sha256_of_the_spki_der() -> None:
    pair = crypto.generate_key_pair("EdDSA")
    import hashlib

    assert crypto.fingerprint(pair.public_der) == hashlib.sha256(pair.public_der).hexdigest()
