"""JSON responses with one compact encoder."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from service.core.json import dumps_bytes


def json_response(data: Any, *, status: int = 200) -> web.Response:
    # Bytes straight from the encoder: text= would decode them only for aiohttp to encode
    # them again.
    return web.Response(
        body=dumps_bytes(data), status=status, content_type="application/json", charset="utf-8"
    )
