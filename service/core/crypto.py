"""Key material: generation, parsing, and the encodings a public key is served in.

Pure functions over ``cryptography`` objects; nothing here does I/O or keeps state. Private
keys exist only as return values of :func:`generate_key_pair` and are never logged.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias, cast, get_args

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from service.errors import InvalidRequestError

Algorithm = Literal["RS256", "ES256", "EdDSA"]
ALGORITHMS: Final[tuple[Algorithm, ...]] = get_args(Algorithm)
DEFAULT_ALGORITHM: Final[Algorithm] = "RS256"
RSA_KEY_BITS: Final = 2048
# What an imported RSA key may be. Verification costs grow with the modulus (cubically for
# the private half, quadratically here) and with the exponent's length: a 2^2040 exponent
# cost ten times a normal check. 65537 alone, because it is what every library generates,
# FIPS 186-5 requires an exponent above 2^16 (3 is out), and small exponents are where
# signature-forgery attacks on lax verifiers lived.
MIN_IMPORTED_RSA_BITS: Final = 2048
MAX_IMPORTED_RSA_BITS: Final = 4096
RSA_PUBLIC_EXPONENT: Final = 65537

# What gives a private key away: the marker every PEM private key block carries (PKCS#8,
# PKCS#1, SEC 1, OpenSSH, PGP), and the JWK members only a private or secret key has
# (RFC 7518: d, p, q, dp, dq, qi, oth for RSA and EC; k for a symmetric key).
PRIVATE_KEY_MARKER: Final = "PRIVATE KEY"
PRIVATE_JWK_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
# One public key block and nothing else: whitespace around it, base64 lines within it. PEM
# readers skip whatever surrounds a block, which would let a private key's body travel
# (and be taken for accepted) beside a public one.
_PUBLIC_PEM: Final = re.compile(
    r"\s*-----BEGIN (PUBLIC KEY|RSA PUBLIC KEY)-----[ \t]*\r?\n"
    r"(?:[A-Za-z0-9+/=]+[ \t]*\r?\n)+"
    r"-----END \1-----\s*"
)

PublicKey: TypeAlias = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
PrivateKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A freshly generated key pair; ``private_pem`` must leave the process exactly once."""

    algorithm: Algorithm
    public_der: bytes
    private_pem: bytes

    def __repr__(self) -> str:  # never show the private key, even in a traceback
        return f"KeyPair(algorithm={self.algorithm!r}, public_der=<{len(self.public_der)} bytes>)"


def parse_algorithm(value: object) -> Algorithm:
    if value not in ALGORITHMS:
        raise InvalidRequestError(
            f"algorithm must be one of {', '.join(ALGORITHMS)}, not {str(value)[:40]!r}"
        )
    return value


def generate_key_pair(algorithm: Algorithm) -> KeyPair:
    """Generate a key pair (CPU-bound: RSA takes tens of ms; call it off the event loop)."""
    private: PrivateKey
    if algorithm == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    elif algorithm == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        private = ed25519.Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return KeyPair(
        algorithm=algorithm,
        public_der=public_key_der(private.public_key()),
        private_pem=private_pem,
    )


def public_key_der(key: PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key(der: bytes) -> PublicKey:
    """Load a stored SubjectPublicKeyInfo DER (trusted input: written by us)."""
    return cast(PublicKey, serialization.load_der_public_key(der))


def fingerprint(der: bytes) -> str:
    """SHA-256 of the SubjectPublicKeyInfo DER, lower-case hex."""
    return hashlib.sha256(der).hexdigest()


def usable_key(der: bytes, algorithm: Algorithm) -> PublicKey | None:
    """A stored key, loaded, if today's rules (:func:`algorithm_of`) accept it for
    ``algorithm``; ``None`` otherwise, so that a key stored before a rule existed (an RSA key
    with a huge exponent, say) is never used. Never raises."""
    try:
        key = load_public_key(der)
        return key if algorithm_of(key) == algorithm else None
    except (ValueError, UnsupportedAlgorithm):  # InvalidRequestError is a ValueError
        return None


def public_key_pem(der: bytes) -> str:
    """The SubjectPublicKeyInfo DER as PEM: base64 in 64-character lines between the
    markers, as ``cryptography`` writes it, without loading the key (no cost, no failure)."""
    body = base64.b64encode(der).decode("ascii")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "\n".join(["-----BEGIN PUBLIC KEY-----", *lines, "-----END PUBLIC KEY-----", ""])


def algorithm_of(key: PublicKey) -> Algorithm:
    """The one JWS algorithm a key is used with; a key outside the rules is refused."""
    if isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        if not MIN_IMPORTED_RSA_BITS <= key.key_size <= MAX_IMPORTED_RSA_BITS:
            raise InvalidRequestError(
                f"RSA keys must have {MIN_IMPORTED_RSA_BITS} to {MAX_IMPORTED_RSA_BITS} bits"
            )
        if numbers.e != RSA_PUBLIC_EXPONENT:
            raise InvalidRequestError(
                f"RSA keys must use the public exponent {RSA_PUBLIC_EXPONENT}"
            )
        if numbers.n % 2 == 0:
            raise InvalidRequestError("an RSA modulus must be odd")
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise InvalidRequestError("EC keys must use the P-256 curve (ES256)")
        return "ES256"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    raise InvalidRequestError("unsupported key type: use RSA (RS256), P-256 (ES256) or Ed25519")


def refuse_private_material(value: object, name: str) -> None:
    """Raise :class:`InvalidRequestError` if ``value`` (text, or JSON such as a JWK) carries
    private key material: the ``PRIVATE KEY`` marker in any string or member name within
    it, or, for an object, a member only a private key has. The message names the field and
    the members, never the value, so the value reaches neither the answer nor a log.

    >>> refuse_private_material({"kty": "RSA", "n": "…", "e": "AQAB", "p": "…"}, "public_key")
    Traceback (most recent call last):
    InvalidRequestError: public_key is a private key (it has the member p): ...
    """
    if isinstance(value, dict):
        found = PRIVATE_JWK_MEMBERS & value.keys()
        if found:
            members = ", ".join(sorted(found))
            raise InvalidRequestError(
                f"{name} is a private key (it has the member{'s' if len(found) > 1 else ''} "
                f"{members}): send only the public key, never a private one"
            )
    pending = [value]
    while pending:  # a loop, not recursion: the JSON may nest as deep as its parser allows
        item = pending.pop()
        if isinstance(item, str):
            if PRIVATE_KEY_MARKER in item:
                # Not the marker itself: log scanners alert on it, and gRPC's status message
                # can reach a debug log (hpack's).
                raise InvalidRequestError(
                    f"{name} carries a private key (a PEM private key marker): "
                    "send only the public key, never a private one"
                )
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)


def parse_customer_public_key(value: object) -> tuple[Algorithm, bytes]:
    """Parse an imported public key (PEM text or a JWK object) → (algorithm, SPKI DER).

    Private keys are refused, and so is anything carrying one: a customer must never send
    us one. PEM text must be one public key block and nothing else.
    """
    refuse_private_material(value, "public_key")
    if isinstance(value, str):
        if _PUBLIC_PEM.fullmatch(value) is None:
            raise InvalidRequestError(
                "public_key must be exactly one PEM block '-----BEGIN PUBLIC KEY-----', "
                "with nothing before or after it"
            )
        try:
            key = serialization.load_pem_public_key(value.encode("utf-8"))
        except (ValueError, UnsupportedAlgorithm):
            raise InvalidRequestError(
                "public_key is not a valid PEM SubjectPublicKeyInfo"
            ) from None
    elif isinstance(value, dict):
        key = _public_key_from_jwk(value)
    else:
        raise InvalidRequestError("public_key must be a PEM string or a JWK object")
    public = cast(PublicKey, key)
    return algorithm_of(public), public_key_der(public)


def public_jwk(der: bytes, *, kid: str, algorithm: Algorithm) -> dict[str, str]:
    """The public key as a JWK (RFC 7517) with ``kid``, ``alg`` and ``use``."""
    return jwk_of(load_public_key(der), kid=kid, algorithm=algorithm)


def jwk_of(key: PublicKey, *, kid: str, algorithm: Algorithm) -> dict[str, str]:
    """A loaded public key as a JWK, as :func:`public_jwk`."""
    jwk: dict[str, str]
    if isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        jwk = {"kty": "RSA", "n": _b64_uint(numbers.n), "e": _b64_uint(numbers.e)}
    elif isinstance(key, ec.EllipticCurvePublicKey):
        numbers_ec = key.public_numbers()
        jwk = {
            "kty": "EC",
            "crv": "P-256",
            "x": _b64_uint(numbers_ec.x, 32),
            "y": _b64_uint(numbers_ec.y, 32),
        }
    else:
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
    return {**jwk, "kid": kid, "alg": algorithm, "use": "sig"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode canonical unpadded base64url; raise ``ValueError`` on anything else.

    Canonical: the alphabet only (no ``=``, no whitespace), and the bits of the last
    character that fall beyond the data are zero. Otherwise four encodings of one signature
    (sixteen, for some lengths) would all verify: the token would be malleable.
    """
    if _B64URL.fullmatch(text) is None:
        raise ValueError("not base64url")
    remainder = len(text) % 4
    if remainder and (remainder == 1 or text[-1] not in _LAST_CHARACTERS[remainder]):
        raise ValueError("not canonical base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# Checked in C: on the verification hot path a per-character loop cost more than the
# RSA signature check itself.
_B64URL: Final = re.compile(r"[A-Za-z0-9_-]+")
# The characters that may end an encoding of 2 or 3 (modulo 4) characters: those whose 4 or
# 2 unused low bits are zero. One set look-up, so canonical decoding costs nothing more.
_LAST_CHARACTERS: Final = {2: frozenset("AQgw"), 3: frozenset("AEIMQUYcgkosw048")}


def _b64_uint(value: int, length: int | None = None) -> str:
    size = length or max(1, (value.bit_length() + 7) // 8)
    return b64url(value.to_bytes(size, "big"))


def _jwk_int(jwk: dict[str, Any], name: str) -> int:
    field = jwk.get(name)
    if not isinstance(field, str):
        raise InvalidRequestError(f"JWK member {name!r} is missing or not a string")
    try:
        return int.from_bytes(b64url_decode(field), "big")
    except ValueError:
        raise InvalidRequestError(f"JWK member {name!r} is not base64url") from None


def _public_key_from_jwk(jwk: dict[str, Any]) -> PublicKey:
    kty = jwk.get("kty")
    try:
        if kty == "RSA":
            return rsa.RSAPublicNumbers(_jwk_int(jwk, "e"), _jwk_int(jwk, "n")).public_key()
        if kty == "EC":
            if jwk.get("crv") != "P-256":
                raise InvalidRequestError("EC JWK must use crv P-256")  # noqa: TRY301
            return ec.EllipticCurvePublicNumbers(
                _jwk_int(jwk, "x"), _jwk_int(jwk, "y"), ec.SECP256R1()
            ).public_key()
        if kty == "OKP" and jwk.get("crv") == "Ed25519":
            raw = b64url_decode(str(jwk.get("x", "")))
            return ed25519.Ed25519PublicKey.from_public_bytes(raw)
    except InvalidRequestError:
        raise
    except ValueError:
        raise InvalidRequestError("JWK does not describe a valid public key") from None
    raise InvalidRequestError(
        f"unsupported JWK kty/crv {json.dumps(kty)[:20]}: use RSA, EC P-256 or OKP Ed25519"
    )
