"""JSON shared by the transports: strict parsing of untrusted input, compact output."""

from __future__ import annotations

import json
from typing import Any


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads(data: str | bytes) -> Any:
    """Parse untrusted JSON; ``ValueError`` for anything that is not plain, finite JSON.

    Python's parser accepts ``NaN``/``Infinity`` and recurses on nesting (a kilobyte of
    ``[`` raises ``RecursionError``): both become ``ValueError`` here.
    """
    try:
        return json.loads(data, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def dumps(value: Any) -> str:
    # ASCII output: a lone surrogate echoed from a request cannot break the encoder.
    return json.dumps(value, separators=(",", ":"), allow_nan=False)
