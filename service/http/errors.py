"""Domain errors → HTTP statuses, and the reference platform's error body.

The status comes from :data:`service.errors.ERROR_KINDS`, the table gRPC reads too. The body
is ``{"error": {"type": …, "messages": […]}}``, as the reference platform sends it, plus what
a client can act on without parsing the words: ``field`` (the request field at fault) and
the error's metadata (``key_id``, ``environment_id``), each a member of ``error``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

from aiohttp import web

from service import errors
from service.core.json import dumps


def status_of(error: errors.ServiceError) -> int:
    return error.kind.http_status


# Both schemes the service reads (RFC 9110, 11.6.1: one challenge per scheme).
WWW_AUTHENTICATE: Final = 'Basic realm="signing-keys", Bearer realm="signing-keys"'


def error_response(
    status: int,
    error_type: str,
    messages: list[str],
    *,
    retry_after: float | None = errors.DEFAULT_RETRY_AFTER,
    field: str | None = None,
    metadata: Mapping[str, str] | None = None,
    request_id: str | None = None,
) -> web.Response:
    """The error body; with ``request_id`` (the X-Request-Id header's), so that a body
    pasted into a ticket still names the request."""
    body: dict[str, Any] = {"type": error_type, "messages": messages}
    if request_id is not None:
        body["request_id"] = request_id
    if field is not None:
        body["field"] = field
    for name, value in (metadata or {}).items():
        body.setdefault(name, value)  # never over type, messages, request_id or field
    response = web.Response(
        status=status, text=dumps({"error": body}), content_type="application/json"
    )
    if status == 401:
        response.headers["WWW-Authenticate"] = WWW_AUTHENTICATE
    if status in (429, 503):
        # Whole seconds, at least one: RFC 9110 allows no fraction, and 0 invites a storm.
        wait = errors.DEFAULT_RETRY_AFTER if retry_after is None else retry_after
        response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
    return response


def service_error_response(
    error: errors.ServiceError, *, request_id: str | None = None
) -> web.Response:
    return error_response(
        status_of(error),
        error.type,
        error.messages,
        retry_after=error.retry_after,
        field=error.field,
        metadata=error.metadata,
        request_id=request_id,
    )
