"""The shared JSON codec: plain, finite JSON in, exactly; compact JSON out, whatever it holds."""

from __future__ import annotations

import pytest

from service.core.json import dumps, dumps_bytes, loads


@pytest.mark.parametrize(
    "text",
    [
        b"NaN",
        b"[Infinity]",
        b'{"exp": 1e999}',  # beyond a float: once parsed as inf
        b"[" * 100_000,
        b'"\\ud800"',  # a lone surrogate escape
        b'"\xff"',  # not UTF-8
        b"\xef\xbb\xbf{}",  # a byte order mark
        b"[1,]",
        b"",
        "\ud800",  # text with no UTF-8 form
    ],
)
def test_anything_but_plain_finite_json_is_a_value_error(text: bytes | str) -> None:
    with pytest.raises(ValueError):
        loads(text)


def test_numbers_and_text_are_read_exactly() -> None:
    value = loads(b'{"n": 123456789012345678901234567890, "f": 0.1, "s": "\\u00e9\\ud83d\\ude00"}')
    assert value == {"n": 123456789012345678901234567890, "f": 0.1, "s": "é😀"}
    assert loads('{"a": [true, null]}') == {"a": [True, None]}


def test_output_is_compact_utf8_and_survives_what_the_fast_encoder_refuses() -> None:
    assert dumps_bytes({"k": "é", "n": 2**70}) == '{"k":"é","n":1180591620717411303424}'.encode()
    assert dumps({"a": [1, None]}) == '{"a":[1,null]}'
    # A lone surrogate echoed from a request: still an answer, in ASCII escapes.
    assert dumps({"bad": "\ud800"}) == '{"bad":"\\ud800"}'
