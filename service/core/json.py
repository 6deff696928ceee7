"""JSON shared by the transports: strict parsing of untrusted input, compact output.

One decoder and one encoder, built once: passing options to ``json.loads``/``json.dumps``
builds a new one on every call, a measurable cost on the verification hot path.
"""

from __future__ import annotations

import json
from typing import Any


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
# ASCII output: a lone surrogate echoed from a request cannot break the encoder.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def loads(data: str | bytes) -> Any:
    """Parse untrusted JSON; ``ValueError`` for anything that is not plain, finite JSON.

    Python's parser accepts ``NaN``/``Infinity`` and recurses on nesting (a kilobyte of
    ``[`` raises ``RecursionError``): both become ``ValueError`` here, as does bad UTF-8.
    """
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    try:
        return _DECODER.decode(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def dumps(value: Any) -> str:
    return _ENCODER.encode(value)
