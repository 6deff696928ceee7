"""JSON shared by the transports: strict parsing of untrusted input, compact output.

msgspec does the work: a verification decodes three JSON documents (the body, the token's
header and payload) and encodes one, and msgspec does each in a fraction of the standard
library's time (measured on a verify body and answer: decode 6.6 → 3.2 µs, header and
payload 21 → 3.6 µs, encode 18 → 2.2 µs). orjson is a little faster still, but turns an
integer beyond 64 bits into a float, so a verdict would echo such a claim inexactly; msgspec
keeps it exact, as the standard library does.

What it accepts is plain, finite JSON only, as before: ``NaN``/``Infinity`` and numbers beyond
a float (``1e999``) are refused, as are bad UTF-8, lone surrogate escapes and nesting deeper
than the interpreter's recursion limit — all as ``ValueError``. On output, a non-finite float
becomes ``null`` (the standard library's ``allow_nan=False`` raised instead); no value this
service encodes can hold one, since it parses none.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

_DECODER = msgspec.json.Decoder()
_ENCODER = msgspec.json.Encoder()
# For what msgspec will not encode (a lone surrogate echoed from a request, a non-string
# key): ASCII output, so the answer is still JSON. Built once: options given to
# ``json.dumps`` build a new encoder on every call.
_FALLBACK = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def loads(data: str | bytes) -> Any:
    """Parse untrusted JSON; ``ValueError`` for anything that is not plain, finite JSON."""
    try:
        return _DECODER.decode(data)
    except msgspec.DecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except UnicodeError:  # text holding a lone surrogate: it has no UTF-8 form
        raise ValueError("not valid JSON: not valid Unicode") from None


def dumps_bytes(value: Any) -> bytes:
    """Compact UTF-8 JSON of ``value``."""
    try:
        return _ENCODER.encode(value)
    except (TypeError, ValueError):
        return _FALLBACK.encode(value).encode("ascii")


def dumps(value: Any) -> str:
    return dumps_bytes(value).decode("utf-8")
