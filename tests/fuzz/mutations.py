"""Hypothesis strategies that damage valid inputs: a fuzzer that starts from a valid token,
key or message gets past the first length or syntax check, where random bytes rarely do."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st

# Bytes that mean something to the parsers under test: JSON and JOSE punctuation, base64url
# and PEM characters, protobuf tags and varint continuation bits, UTF-8 lead bytes.
_INTERESTING = b'.:{}[]",=-_/+ \n\r\t\x00\x7f\x80\xff\xc3\xed\x08\x0a\x12\x1a\x22\x2a'


@st.composite
def mutated_bytes(draw: st.DrawFn, seeds: Sequence[bytes]) -> bytes:
    """One of ``seeds`` after one to five random edits: bit flips, replaced, inserted,
    deleted and duplicated runs, truncation, and splices with another seed."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 5))):
        edit = draw(
            st.sampled_from(["flip", "replace", "insert", "delete", "duplicate", "cut", "splice"])
        )
        at = draw(st.integers(0, len(data)))
        if edit == "flip" and data:
            at = min(at, len(data) - 1)
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif edit == "replace" and data:
            at = min(at, len(data) - 1)
            data[at] = draw(st.sampled_from(_INTERESTING) | st.integers(0, 255))
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8) | st.sampled_from([b"." * 3]))
        elif edit == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif edit == "duplicate":
            end = at + draw(st.integers(1, 16))
            data[at:at] = data[at:end]
        elif edit == "cut":
            del data[at:]
        elif edit == "splice":
            other = draw(st.sampled_from(seeds))
            data[at:] = other[draw(st.integers(0, len(other))) :]
    return bytes(data)


@st.composite
def mutated_text(draw: st.DrawFn, seeds: Sequence[str]) -> str:
    """As :func:`mutated_bytes`, for text: the edited bytes read as UTF-8 where they are,
    as Latin-1 where they are not (what a transport hands over for a stray byte), and now
    and then with arbitrary characters inserted."""
    raw = draw(mutated_bytes([seed.encode("utf-8") for seed in seeds]))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    if draw(st.booleans()):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.text(min_size=1, max_size=4)) + text[at:]
    return text


def json_values(max_leaves: int = 20) -> st.SearchStrategy[object]:
    """Any JSON value, as ``json.loads`` returns them."""
    scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=40)
    )
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
        ),
        max_leaves=max_leaves,
    )
