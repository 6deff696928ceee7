"""Key material: generation, import and the encodings served (pure, no database)."""

from __future__ import annotations

import secrets

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


def rsa_key(bits: int, *, e: int = crypto.RSA_PUBLIC_EXPONENT, even: bool = False) -> bytes:
    """The DER of an RSA public key with a modulus of exactly ``bits`` bits: a random odd
    number stands in for a real modulus (nothing that reads a public key can tell)."""
    n = (1 << (bits - 1)) | secrets.randbits(bits - 1) | 1
    public = rsa.RSAPublicNumbers(e, n ^ 1 if even else n).public_key()
    return crypto.public_key_der(public)


def forms(der: bytes) -> list[object]:
    """The key as a customer would send it: PEM, and a JWK."""
    numbers = serialization.load_der_public_key(der).public_numbers()  # type: ignore[union-attr]
    n, e = numbers.n, numbers.e  # type: ignore[union-attr]
    jwk = {"kty": "RSA", "n": crypto.b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))}
    jwk["e"] = crypto.b64url(e.to_bytes((e.bit_length() + 7) // 8, "big"))
    return [crypto.public_key_pem(der), jwk]


@pytest.mark.parametrize(
    ("der", "problem"),
    [
        (rsa_key(2047), "2048 to 4096 bits"),
        (rsa_key(4097), "2048 to 4096 bits"),
        (rsa_key(16384), "2048 to 4096 bits"),
        (rsa_key(32768), "2048 to 4096 bits"),
        (rsa_key(2048, e=(1 << 2040) + 1), "public exponent 65537"),
        (rsa_key(2048, e=3), "public exponent 65537"),
        (rsa_key(2048, e=65539), "public exponent 65537"),
        (rsa_key(2048, even=True), "modulus must be odd"),
    ],
    ids=["2047", "4097", "16384", "32768", "e-2^2040", "e-3", "e-65539", "even-modulus"],
)
def test_rsa_keys_that_would_make_verification_costly_are_refused(der: bytes, problem: str) -> None:
    for form in forms(der):
        with pytest.raises(InvalidRequestError, match=problem):
            crypto.parse_customer_public_key(form)
    assert crypto.usable_key(der, "RS256") is None, "nor is one stored earlier ever used"


@pytest.mark.parametrize("bits", [2048, 3072, 4096])
def test_rsa_keys_of_2048_to_4096_bits_with_the_usual_exponent_are_accepted(bits: int) -> None:
    der = rsa_key(bits)
    for form in forms(der):
        assert crypto.parse_customer_public_key(form) == ("RS256", der)
    assert crypto.usable_key(der, "RS256") is not None


def test_a_stored_key_is_used_only_for_its_own_algorithm_and_only_if_it_loads() -> None:
    eddsa = crypto.generate_key_pair("EdDSA").public_der
    assert isinstance(crypto.usable_key(eddsa, "EdDSA"), ed25519.Ed25519PublicKey)
    assert crypto.usable_key(eddsa, "RS256") is None
    assert crypto.usable_key(b"not a key", "EdDSA") is None
    assert crypto.usable_key(b"", "ES256") is None


@pytest.mark.parametrize(
    "der", [rsa_key(4096), *(crypto.generate_key_pair(a).public_der for a in crypto.ALGORITHMS)]
)
def test_the_pem_is_written_without_loading_the_key_exactly_as_cryptography_writes_it(
    der: bytes,
) -> None:
    expected = serialization.load_der_public_key(der).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert crypto.public_key_pem(der) == expected.decode()


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


ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@pytest.mark.parametrize("length", range(1, 9))
def test_only_the_canonical_base64url_spelling_decodes(length: int) -> None:
    """Every last character is tried: of the spellings that decode to the same bytes, only
    the one ``b64url`` writes is accepted, so a signature (or header, or JWK member) has one
    spelling; and the last character's unused bits must be zero, so the other spellings that
    decode at all carry other bytes."""
    data = secrets.token_bytes(length)
    canonical = crypto.b64url(data)
    accepted = []
    for last in ALPHABET:
        spelling = canonical[:-1] + last
        try:
            accepted.append((spelling, crypto.b64url_decode(spelling)))
        except ValueError:
            continue
    assert [spelling for spelling, decoded in accepted if decoded == data] == [canonical]
    unused_bits = {0: 0, 1: 4, 2: 2}[length % 3]
    assert len(accepted) == 64 >> unused_bits


@pytest.mark.parametrize(
    "text", ["", "QQ==", "QQ=", "QUJD=", " QUJD", "QUJD\n", "QU JD", "QU+D", "QU/D", "QUJDR", "Q"]
)
def test_padding_whitespace_and_foreign_characters_are_not_base64url(text: str) -> None:
    with pytest.raises(ValueError, match="base64url"):
        crypto.b64url_decode(text)
