"""JSON responses with one compact encoder."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from service.core.json import dumps


def json_response(data: Any, *, status: int = 200) -> web.Response:
    return web.Response(text=dumps(data), status=status, content_type="application/json")
