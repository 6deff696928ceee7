"""Key-management routes, shaped like the reference platform's public Signing Keys API.

Handlers translate HTTP into calls on :class:`~service.core.keys.KeyService` and back; the
rules live in the core. Paths, statuses and body shapes follow what the reference platform's
official SDKs depend on: create answers exactly 201 and accepts an empty body
with or without a JSON content type; ``created_at`` is a string of Unix seconds; ``page`` is
1-based and a page past the end answers ``"data": []``; a deleted (revoked) key is ``404`` to
a get and missing from the list, unless ``?status=revoked`` or ``?status=all`` asks for it.
"""

from __future__ import annotations

import base64
import math
import time
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import quote

import structlog
from aiohttp import web

from service.core import crypto, times
from service.core.json import dumps_bytes
from service.core.models import AuditEvent, CreatedKey, SigningKey
from service.core.requests import (
    BatchGetKeysRequest,
    CreateKeyRequest,
    CurrentKeyRequest,
    ImportKeyRequest,
    KeyRef,
    ListAuditEventsRequest,
    ListKeysRequest,
    RotateKeyRequest,
    UpdateKeyRequest,
)
from service.core.times import unix_seconds
from service.errors import InvalidRequestError
from service.http import appkeys
from service.http.context import (
    IDEMPOTENCY_HEADER,
    environment,
    principal,
    read_object,
    with_consistency_token,
)
from service.http.json import json_response

log = structlog.get_logger(__name__)

PREFIX: Final = "/system/v1/signing-keys"
# One key: any segment but "import", whose path is the import route's alone. Without the
# exclusion GET and DELETE of .../import would be a look-up of a key named "import", and a
# 405 there would list them in Allow although the API documents only POST.
KEY_PATH: Final = PREFIX + "/{id:(?!import$)[^{}/]+}"
# The environment's current key: a custom method on the collection (a colon, as Google's API
# guidelines spell one), not a path segment, because "current" is a well-formed key id and
# `GET .../signing-keys/current` is already a read of the key of that id.
CURRENT_PATH: Final = PREFIX + ":current"

routes = web.RouteTableDef()


class KeyAnswers:
    """The encoded answers to GETs of recently read keys, by key id, each with the record
    it shows: a key's JSON changes only with its record, so a key read over and over is
    encoded once (a third of a cached GET's cost), and a revocation, a new record, is
    encoded afresh. An answer that shows an active key with an expiry is kept only until
    then (it shows "expired" from that moment). Bounded: ``size`` keys (the least recently
    stored forgotten), a few MB.
    """

    def __init__(self, size: int = 4096, *, clock: Callable[[], float] = time.time) -> None:
        self._size = size
        self._clock = clock
        self._answers: dict[str, tuple[SigningKey, bytes, float]] = {}

    def __len__(self) -> int:
        return len(self._answers)

    def body(self, key: SigningKey) -> bytes:
        """``{"data": key}``, encoded."""
        now = self._clock()
        entry = self._answers.get(key.id)
        # The record the cache returns is the very object most of the time: "is" first,
        # then a comparison of every field.
        if entry is not None and (entry[0] is key or entry[0] == key) and now < entry[2]:
            return entry[1]
        body = dumps_bytes({"data": key_json(key, now)})
        expires_at = key.expires_at
        shown_until = (
            times.seconds(expires_at)
            if key.status_at(now) == "active" and expires_at is not None
            else math.inf
        )
        self._answers.pop(key.id, None)
        self._answers[key.id] = (key, body, shown_until)
        if len(self._answers) > self._size:
            del self._answers[next(iter(self._answers))]
        return body


_ANSWERS: Final = KeyAnswers()


def key_json(key: SigningKey, now: float | None = None) -> dict[str, Any]:
    """A key as the reference API shows it (``id``, ``created_at``) plus our extra fields;
    its status as of ``now`` (Unix seconds; by default the present)."""
    return {
        "id": key.id,
        "created_at": unix_seconds(key.created_at),
        "environment_id": key.environment_id,
        "algorithm": key.algorithm,
        "status": key.status_at(time.time() if now is None else now),
        "source": key.source,
        "name": key.name,
        "fingerprint": key.fingerprint,
        "public_key": crypto.public_key_pem(key.public_key),
        "updated_at": unix_seconds(key.updated_at),
        "revoked_at": unix_seconds(key.revoked_at),
        "expires_at": unix_seconds(key.expires_at),
        "not_before": unix_seconds(key.not_before),
        "rotated_to": key.rotated_to,
    }


def created_key_json(created: CreatedKey) -> dict[str, Any]:
    """A new key's JSON with its private key (base64 of its PEM), shown this once."""
    data = key_json(created.key)
    data["private_key"] = base64.b64encode(created.private_key_pem).decode("ascii")
    return data


def created_response(data: dict[str, Any]) -> web.Response:
    """201 with the key, and where it is now (RFC 9110, 15.3.2): its get's path."""
    response = json_response({"data": data}, status=201)
    response.headers["Location"] = f"{PREFIX}/{quote(data['id'], safe='')}"
    return response


def key_ref(request: web.Request, *, status: str | None = None) -> KeyRef:
    return KeyRef.parse(
        key_id=request.match_info["id"], environment_id=environment(request), status=status
    )


@routes.post(PREFIX)
async def create_key(request: web.Request) -> web.Response:
    caller = await principal(request)
    body = await read_object(request, frozenset({"algorithm", "name", "expires_at", "not_before"}))
    created = await request.app[appkeys.KEYS].create(
        caller,
        CreateKeyRequest.parse(
            environment_id=environment(request),
            idempotency_key=request.headers.get(IDEMPOTENCY_HEADER),
            **body,
        ),
    )
    return with_consistency_token(created_response(created_key_json(created)))


@routes.get(PREFIX)
async def list_keys(request: web.Request) -> web.Response:
    caller = await principal(request)
    query = request.query
    found = await request.app[appkeys.KEYS].list_page(
        caller,
        ListKeysRequest.parse(
            environment_id=environment(request),
            limit=query.get("limit"),
            page=query.get("page"),
            status=query.get("status"),
            algorithm=query.get("algorithm"),
            source=query.get("source"),
            expires_before=query.get("expires_before"),
            cursor=query.get("cursor"),
        ),
    )
    return paged_response([key_json(key) for key in found.keys], request, found.next_cursor)


def paged_response(data: list[Any], request: web.Request, cursor: str | None) -> web.Response:
    """Mux's ``{"data": [...]}``, exactly so after the last page (``"data": []`` past the end,
    as its clients expect); when a page follows, its cursor as ``next_cursor`` — a member
    those clients ignore, as every member they do not know — and in ``Link: rel="next"``."""
    if cursor is None:
        return json_response({"data": data})
    response = json_response({"data": data, "next_cursor": cursor})
    response.headers["Link"] = next_link(request, cursor)
    return response


def next_link(request: web.Request, cursor: str) -> str:
    """RFC 8288 ``rel="next"``: this request's path and query (environment, limit, filters)
    with the next page's cursor in place of ``page`` or the previous cursor."""
    query = [(name, value) for name, value in request.query.items() if name not in _PAGING]
    target = request.rel_url.with_query([*query, ("cursor", cursor)])
    return f'<{target}>; rel="next"'


_PAGING: Final = frozenset({"page", "cursor"})


@routes.get(PREFIX + ":batchGet")
async def batch_get_keys(request: web.Request) -> web.Response:
    """Many keys by id (AIP-231's ``:batchGet``): ``?ids=a,b`` or ``?ids=a&ids=b``."""
    caller = await principal(request)
    ids = request.query.getall("ids", [])
    batch = await request.app[appkeys.KEYS].batch_get(
        caller,
        BatchGetKeysRequest.parse(
            key_ids=",".join(ids) if ids else None,
            environment_id=environment(request),
            status=request.query.get("status"),
        ),
    )
    return json_response(
        {"data": [key_json(key) for key in batch.keys], "not_found": batch.not_found}
    )


AUDIT_PATH: Final = "/system/v1/audit-events"


def audit_json(event: AuditEvent) -> dict[str, Any]:
    """An audit event: ids and times only, never key material or credentials."""
    return {
        "id": event.id,
        "environment_id": event.environment_id,
        "key_id": event.key_id,
        "action": event.action,
        "actor": event.actor,
        "api": event.api,
        "request_id": event.request_id,
        "created_at": unix_seconds(event.created_at),
    }


@routes.get(AUDIT_PATH)
async def list_audit_events(request: web.Request) -> web.Response:
    caller = await principal(request)
    query = request.query
    page = await request.app[appkeys.KEYS].audit_events(
        caller,
        ListAuditEventsRequest.parse(
            environment_id=environment(request),
            limit=query.get("limit"),
            cursor=query.get("cursor"),
            key_id=query.get("key_id"),
            actor=query.get("actor"),
            action=query.get("action"),
            since=query.get("since"),
            until=query.get("until"),
        ),
    )
    return paged_response([audit_json(event) for event in page.events], request, page.next_cursor)


@routes.get(CURRENT_PATH)
async def get_current_key(request: web.Request) -> web.Response:
    caller = await principal(request)
    key = await request.app[appkeys.KEYS].current(
        caller, CurrentKeyRequest.parse(environment_id=environment(request))
    )
    return json_response({"data": key_json(key)})


@routes.post(PREFIX + "/{id}/rotate")
async def rotate_key(request: web.Request) -> web.Response:
    caller = await principal(request)
    body = await read_object(
        request,
        frozenset({"algorithm", "name", "not_before", "expires_at", "grace_period_seconds"}),
    )
    rotated = await request.app[appkeys.KEYS].rotate(
        caller,
        RotateKeyRequest.parse(
            key_id=request.match_info["id"],
            environment_id=environment(request),
            idempotency_key=request.headers.get(IDEMPOTENCY_HEADER),
            **body,
        ),
    )
    data = created_key_json(rotated.created)
    data["previous_key"] = key_json(rotated.old)
    return with_consistency_token(created_response(data))


@routes.patch(KEY_PATH)
async def update_key(request: web.Request) -> web.Response:
    caller = await principal(request)
    body = await read_object(request, frozenset({"name", "expires_at"}))
    if "expires_at" in body and body["expires_at"] is None:
        # A merge patch's null removes a member: here that would lengthen the expiry to
        # never, which an update never does (null is refused rather than ignored).
        raise InvalidRequestError(
            "expires_at cannot be removed: an update only brings a key's expiry forward",
            field="expires_at",
        )
    key = await request.app[appkeys.KEYS].update(
        caller,
        UpdateKeyRequest.parse(
            key_id=request.match_info["id"],
            environment_id=environment(request),
            name_given="name" in body,
            **body,
        ),
    )
    return with_consistency_token(json_response({"data": key_json(key)}))


@routes.post(PREFIX + "/import")
async def import_key(request: web.Request) -> web.Response:
    caller = await principal(request)
    body = await read_object(
        request, frozenset({"public_key", "algorithm", "name", "expires_at", "not_before"})
    )
    imported = await request.app[appkeys.KEYS].import_key(
        caller,
        ImportKeyRequest.parse(
            environment_id=environment(request),
            idempotency_key=request.headers.get(IDEMPOTENCY_HEADER),
            public_key=body.pop("public_key", None),
            **body,
        ),
    )
    # A replay (same Idempotency-Key, same request) created nothing: 200 with the key stored.
    if imported.replayed:
        return with_consistency_token(json_response({"data": key_json(imported.key)}, status=200))
    return with_consistency_token(created_response(key_json(imported.key)))


@routes.get(KEY_PATH)
async def get_key(request: web.Request) -> web.Response:
    caller = await principal(request)
    key = await request.app[appkeys.KEYS].get(
        caller, key_ref(request, status=request.query.get("status"))
    )
    return web.Response(body=_ANSWERS.body(key), content_type="application/json", charset="utf-8")


@routes.get(PREFIX + "/{id}/public-key")
async def get_public_key(request: web.Request) -> web.Response:
    caller = await principal(request)
    key = await request.app[appkeys.KEYS].get(
        caller, key_ref(request, status=request.query.get("status"))
    )
    return json_response(
        {
            "data": {
                "id": key.id,
                "algorithm": key.algorithm,
                "status": key.status_at(time.time()),
                "fingerprint": key.fingerprint,
                "pem": crypto.public_key_pem(key.public_key),
                "jwk": crypto.public_jwk(key.public_key, kid=key.id, algorithm=key.algorithm),
            }
        }
    )


@routes.delete(KEY_PATH)
async def revoke_key(request: web.Request) -> web.Response:
    caller = await principal(request)
    await request.app[appkeys.KEYS].revoke(caller, key_ref(request))
    return with_consistency_token(web.Response(status=204))
