"""The ``signingkeys.v1.SigningKeys`` servicer: translate, delegate to the core, translate back.

No rules live here: each handler decodes its message into one of the core's request types
(:mod:`service.core.requests`, which validate themselves exactly as for HTTP) and makes one
call; scopes, environments and idempotency are the core's. Each RPC runs inside
:meth:`SigningKeysServicer._serve`, which binds the request id to the log context, bounds the
call by the client's deadline and turns a domain error into a status
(:mod:`service.grpc.errors`) with the error's ``type`` in the trailing metadata.

The handlers grpclib calls take its stream rather than the decoded request that the generated
base class passes, because credentials (``authorization`` metadata) and the deadline live on
the stream; :meth:`SigningKeysServicer.__mapping__` declares the paths and message types
itself, as any grpclib service does. A unary method is written as its *answer* — the decoded
request and the :class:`Call` (which holds the credentials) in, the reply out — and
:meth:`SigningKeysServicer._unary` makes the handler around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar, cast

import betterproto
import structlog
from grpclib.const import Cardinality, Handler
from grpclib.server import Stream
from h2.exceptions import StreamClosedError

from service.core import consistency
from service.core.auth import Authenticator
from service.core.changes import ChangeFeed, WatchEvent
from service.core.keys import KeyService
from service.core.models import AuditEvent, Principal
from service.core.requests import (
    BatchGetKeysRequest,
    CreateKeyRequest,
    CurrentKeyRequest,
    ImportKeyRequest,
    JwksRequest,
    KeyRef,
    ListAuditEventsRequest,
    ListKeysRequest,
    RotateKeyRequest,
    UpdateKeyRequest,
    VerifyRequest,
    WatchRequest,
    choose_request_id,
)
from service.core.verify import TokenVerifier
from service.errors import DeadlineExceededError, DependencyError, InvalidRequestError
from service.grpc import messages
from service.grpc.errors import error_status, grpc_error
from service.grpc.generated.signingkeys import v1 as pb
from service.grpc.generated.signingkeys.v1 import signing_keys_pb2 as pb2
from service.grpc.messages import absent

log = structlog.get_logger(__name__)

AUTHORIZATION_METADATA: Final = "authorization"
CONSISTENCY_METADATA: Final = "x-consistency-token"
REQUEST_ID_METADATA: Final = "x-request-id"
SERVICE_NAME: Final = "signingkeys.v1.SigningKeys"
_SERVER_STREAMS: Final = frozenset({"WatchSigningKeys"})
# The hot RPCs' messages are the protobuf runtime's (upb): the codec parses them once, in C,
# strictly, and encodes the reply in C. betterproto (the Python client API) would parse each
# request a second time, in Python, and encode the reply in Python.
_UPB_METHODS: Final = frozenset({"GetSigningKey", "VerifyToken"})

RequestT = TypeVar("RequestT", bound=betterproto.Message)
ReplyT = TypeVar("ReplyT", bound=betterproto.Message)


class CallObserver:
    """Told about every finished call (metrics, access log); the default does nothing."""

    def finished(self, method: str, status: str, elapsed: float, request_id: str) -> None:
        return None


@dataclass(slots=True)
class Call(Generic[RequestT, ReplyT]):
    """One RPC in progress: its stream, request id, deadline and credentials."""

    stream: Stream[RequestT, ReplyT]
    request_id: str
    authenticator: Authenticator
    headers_sent: bool = False

    async def send_headers(self, metadata: tuple[tuple[str, str], ...] | None = None) -> None:
        """Send the initial metadata, once: the request id (``x-request-id``, as HTTP's
        ``X-Request-Id`` header) and ``metadata``; a later call does nothing. (An error
        carries the request id in its trailing metadata: a refusal is trailers-only.)"""
        if self.headers_sent:
            return
        self.headers_sent = True
        request_id = ((REQUEST_ID_METADATA, self.request_id),)
        await self.stream.send_initial_metadata(
            metadata=request_id if metadata is None else request_id + metadata
        )

    def remaining(self) -> float | None:
        """Seconds left before the client's deadline (``grpc-timeout``), if it set one."""
        deadline = self.stream.deadline
        return None if deadline is None else deadline.time_remaining()

    async def receive(self) -> RequestT:
        request = await self.stream.recv_message()
        if request is None:
            raise InvalidRequestError("the call carries no request message")
        return request

    async def principal(self) -> Principal:
        metadata = self.stream.metadata
        header = None if metadata is None else metadata.get(AUTHORIZATION_METADATA)
        if isinstance(header, bytes):  # only "-bin" keys carry bytes; refuse, don't guess
            header = None
        caller = await self.authenticator.authenticate_header(
            header, api="grpc", request_id=self.request_id
        )
        # The call's consistency scope starts here, as HTTP's does with its credentials.
        token = None if metadata is None else metadata.get(CONSISTENCY_METADATA)
        consistency.bind(token if isinstance(token, str) else None)
        return caller


# A unary method's translation: the request and its call in, the reply out.
Answer = Callable[[RequestT, Call[Any, Any]], Awaitable[ReplyT]]


class SigningKeysServicer:
    """Serves ``signingkeys.v1.SigningKeys`` from the same core as the HTTP API.

    >>> servicer = SigningKeysServicer(
    ...     key_service=keys, authenticator=auth, verifier=verifier, changes=feed)
    >>> server = grpclib.server.Server([servicer])
    """

    def __init__(
        self,
        *,
        key_service: KeyService,
        authenticator: Authenticator,
        verifier: TokenVerifier,
        changes: ChangeFeed,
        observer: CallObserver | None = None,
    ) -> None:
        self._keys = key_service
        self._authenticator = authenticator
        self._verifier = verifier
        self._changes = changes
        self._observer = observer or CallObserver()
        self._in_flight = 0  # unary calls; watch streams run until cancelled
        self._idle = asyncio.Event()
        self._idle.set()
        self._accepting = True
        self._key_replies = messages.KeyReplies()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def stop_accepting(self) -> None:
        """From now on every new call answers UNAVAILABLE, so the calls in flight can drain
        even while clients keep their connections open and send more."""
        self._accepting = False

    async def drained(self) -> None:
        """Return once no unary call is in flight."""
        await self._idle.wait()

    def __mapping__(self) -> dict[str, Handler]:
        """The service's methods, as grpclib serves any service (the generated base declares
        the same table); each handler takes the stream, where credentials and deadline are.
        Messages follow the proto's naming: ``<Method>Request`` in, ``<Method>Response`` out."""
        unary: dict[str, Answer[Any, Any]] = {
            "CreateSigningKey": self._create,
            "ImportSigningKey": self._import,
            "GetSigningKey": self._get,
            "ListSigningKeys": self._list,
            "RevokeSigningKey": self._revoke,
            "VerifyToken": self._verify,
            "BatchGetSigningKeys": self._batch_get,
            "ListAuditEvents": self._audit_events,
            "RotateSigningKey": self._rotate,
            "UpdateSigningKey": self._update,
            "GetCurrentSigningKey": self._current,
            "GetJwks": self._get_jwks,
        }
        handlers = {name: self._unary(name, answer) for name, answer in unary.items()}
        handlers["WatchSigningKeys"] = self._watch
        return {
            f"/{SERVICE_NAME}/{name}": Handler(
                func,
                Cardinality.UNARY_STREAM if name in _SERVER_STREAMS else Cardinality.UNARY_UNARY,
                getattr(pb2 if name in _UPB_METHODS else pb, f"{name}Request"),
                getattr(pb2 if name in _UPB_METHODS else pb, f"{name}Response"),
            )
            for name, func in handlers.items()
        }

    async def _serve(
        self,
        method: str,
        body: Callable[[Call[Any, Any]], Awaitable[None]],
        unary: bool,
        stream: Stream[Any, Any],
    ) -> None:
        """Run ``body`` as the call on ``stream``: with its request id bound to the log
        context, bounded by the client's deadline, a domain error sent as its status (the
        request id in the trailers), and counted when it ends. It wraps every call: one
        coroutine, with no context manager but the deadline's, when the client set one."""
        if not self._accepting:
            raise grpc_error(DependencyError("the server is shutting down; retry elsewhere"))
        started = time.perf_counter()
        metadata = stream.metadata
        call_id = choose_request_id(
            metadata.get(REQUEST_ID_METADATA) if metadata is not None else None
        )
        call = Call(stream, call_id, self._authenticator)
        outcome = "OK"
        if unary:
            self._in_flight += 1
            self._idle.clear()
        bound = structlog.contextvars.bind_contextvars(request_id=call_id)
        try:
            remaining = call.remaining()
            if remaining is None:
                await body(call)
            else:
                async with asyncio.timeout(remaining):
                    await body(call)
        except asyncio.CancelledError:
            remaining = call.remaining()
            # grpclib cancels the handler when the client's deadline passes.
            expired = remaining is not None and remaining <= 0
            outcome = "DEADLINE_EXCEEDED" if expired else "CANCELLED"
            raise
        except Exception as exc:  # a domain error, or refused by the codec or size limit
            if isinstance(exc, TimeoutError) and not isinstance(exc, DeadlineExceededError):
                failure = DeadlineExceededError("the call's deadline passed")
                failure.__cause__ = exc
                exc = failure
            outcome = await self._fail(stream, method, call_id, exc)
        finally:
            if unary:
                self._in_flight -= 1
                if not self._in_flight:
                    self._idle.set()
            self._observer.finished(method, outcome, time.perf_counter() - started, call_id)
            structlog.contextvars.reset_contextvars(**bound)

    async def _fail(
        self, stream: Stream[Any, Any], method: str, call_id: str, exc: Exception
    ) -> str:
        """Send ``exc`` as the call's status; the status's name."""
        failure = error_status(exc)
        if failure.is_internal:
            log.exception("grpc_call_failed", method=method)
        elif isinstance(exc, DependencyError):
            log.warning("grpc_call_unavailable", method=method, error_type=failure.error_type)
        # Sent here rather than by grpclib, so that the request id goes with it; a stream the
        # client has closed is ignored, as grpclib does.
        with contextlib.suppress(StreamClosedError):
            await stream.send_trailing_metadata(
                status=failure.status,
                status_message=failure.message,
                status_details=failure.details,
                metadata={**failure.metadata(), REQUEST_ID_METADATA: call_id},
            )
        return failure.status.name

    def _unary(
        self, method: str, answer: Answer[RequestT, ReplyT]
    ) -> Callable[[Stream[RequestT, ReplyT]], Awaitable[None]]:
        """grpclib's handler for a unary method: receive the request, send ``answer``'s reply."""

        async def reply(call: Call[Any, Any]) -> None:
            response = await answer(await call.receive(), call)
            scope = consistency.current()
            token = None if scope is None else scope.token()
            # A write's position, before its reply.
            await call.send_headers(None if token is None else ((CONSISTENCY_METADATA, token),))
            await call.stream.send_message(response)

        return functools.partial(self._serve, method, reply, True)

    async def _create(
        self, request: pb.CreateSigningKeyRequest, call: Call[Any, Any]
    ) -> pb.CreateSigningKeyResponse:
        created = await self._keys.create(
            await call.principal(),
            CreateKeyRequest.parse(
                environment_id=absent(request.environment_id),
                algorithm=absent(request.algorithm),
                name=absent(request.name),
                expires_at=unset_time(request.expires_at),
                idempotency_key=absent(request.idempotency_key),
                not_before=unset_time(request.not_before),
            ),
        )
        return pb.CreateSigningKeyResponse(
            key=messages.signing_key(created.key),
            private_key=messages.private_key(created.private_key_pem),
        )

    async def _import(
        self, request: pb.ImportSigningKeyRequest, call: Call[Any, Any]
    ) -> pb.ImportSigningKeyResponse:
        caller = await call.principal()
        imported = await self._keys.import_key(
            caller,
            ImportKeyRequest.parse(
                public_key=messages.public_key(request),
                environment_id=absent(request.environment_id),
                algorithm=absent(request.algorithm),
                name=absent(request.name),
                expires_at=unset_time(request.expires_at),
                idempotency_key=absent(request.idempotency_key),
                not_before=unset_time(request.not_before),
            ),
        )
        return pb.ImportSigningKeyResponse(key=messages.signing_key(imported.key))

    async def _get(
        self, request: pb2.GetSigningKeyRequest, call: Call[Any, Any]
    ) -> pb2.GetSigningKeyResponse:
        ref = KeyRef.parse(
            key_id=request.id,
            environment_id=absent(request.environment_id),
            status=absent(request.status),
        )
        return self._key_replies.reply(await self._keys.get(await call.principal(), ref))

    async def _list(
        self, request: pb.ListSigningKeysRequest, call: Call[Any, Any]
    ) -> pb.ListSigningKeysResponse:
        page = ListKeysRequest.parse(
            environment_id=absent(request.environment_id),
            limit=_page_size(request.limit, request.page_size),
            page=absent(request.page),
            status=absent(request.status),
            algorithm=absent(request.algorithm),
            source=absent(request.source),
            expires_before=absent(request.expires_before),
            cursor=absent(request.page_token),
            cursor_name="page_token",
        )
        found = await self._keys.list_page(await call.principal(), page)
        keys = found.keys
        full = len(keys) == page.limit
        return pb.ListSigningKeysResponse(
            keys=[messages.signing_key(key) for key in keys],
            # As before for numbered pages (a full page names the next one); none by token.
            next_page=page.page + 1 if full and page.cursor is None else 0,
            next_page_token=found.next_cursor or "",
        )

    async def _batch_get(
        self, request: pb.BatchGetSigningKeysRequest, call: Call[Any, Any]
    ) -> pb.BatchGetSigningKeysResponse:
        batch = await self._keys.batch_get(
            await call.principal(),
            BatchGetKeysRequest.parse(
                key_ids=list(request.ids),
                environment_id=absent(request.environment_id),
                status=absent(request.status),
            ),
        )
        return pb.BatchGetSigningKeysResponse(
            keys=[messages.signing_key(key) for key in batch.keys], not_found_ids=batch.not_found
        )

    async def _audit_events(
        self, request: pb.ListAuditEventsRequest, call: Call[Any, Any]
    ) -> pb.ListAuditEventsResponse:
        page = await self._keys.audit_events(
            await call.principal(),
            ListAuditEventsRequest.parse(
                environment_id=absent(request.environment_id),
                limit=absent(request.page_size),
                cursor=absent(request.page_token),
                cursor_name="page_token",
                key_id=absent(request.key_id),
                actor=absent(request.actor),
                action=absent(request.action),
                since=absent(request.since),
                until=absent(request.until),
            ),
        )
        return pb.ListAuditEventsResponse(
            events=[_audit_event(event) for event in page.events],
            next_page_token=page.next_cursor or "",
        )

    async def _revoke(
        self, request: pb.RevokeSigningKeyRequest, call: Call[Any, Any]
    ) -> pb.RevokeSigningKeyResponse:
        ref = KeyRef.parse(key_id=request.id, environment_id=absent(request.environment_id))
        key = await self._keys.revoke(await call.principal(), ref)
        return pb.RevokeSigningKeyResponse(key=messages.signing_key(key))

    async def _rotate(
        self, request: pb.RotateSigningKeyRequest, call: Call[Any, Any]
    ) -> pb.RotateSigningKeyResponse:
        rotated = await self._keys.rotate(
            await call.principal(),
            RotateKeyRequest.parse(
                key_id=request.id,
                environment_id=absent(request.environment_id),
                algorithm=absent(request.algorithm),
                name=absent(request.name),
                not_before=unset_time(request.not_before),
                expires_at=unset_time(request.expires_at),
                grace_period_seconds=absent(request.grace_period_seconds),
                idempotency_key=absent(request.idempotency_key),
            ),
        )
        return pb.RotateSigningKeyResponse(
            key=messages.signing_key(rotated.created.key),
            private_key=messages.private_key(rotated.created.private_key_pem),
            previous_key=messages.signing_key(rotated.old),
        )

    async def _update(
        self, request: pb.UpdateSigningKeyRequest, call: Call[Any, Any]
    ) -> pb.UpdateSigningKeyResponse:
        # `name` is proto3 `optional`: set (even to "") renames, "" clearing the name.
        name_given = request.is_set("name")
        key = await self._keys.update(
            await call.principal(),
            UpdateKeyRequest.parse(
                key_id=request.id,
                environment_id=absent(request.environment_id),
                name_given=name_given,
                name=absent(request.name) if name_given else None,
                expires_at=unset_time(request.expires_at),
            ),
        )
        return pb.UpdateSigningKeyResponse(key=messages.signing_key(key))

    async def _current(
        self, request: pb.GetCurrentSigningKeyRequest, call: Call[Any, Any]
    ) -> pb.GetCurrentSigningKeyResponse:
        key = await self._keys.current(
            await call.principal(),
            CurrentKeyRequest.parse(environment_id=absent(request.environment_id)),
        )
        return pb.GetCurrentSigningKeyResponse(key=messages.signing_key(key))

    async def _verify(
        self, request: pb2.VerifyTokenRequest, call: Call[Any, Any]
    ) -> pb2.VerifyTokenResponse:
        verdict = await self._verifier.verify(
            await call.principal(),
            VerifyRequest.parse(
                token=request.token,
                environment_id=absent(request.environment_id),
                audience=absent(request.audience),
                subject=absent(request.subject),
            ),
        )
        return messages.verification_upb(verdict)

    async def _get_jwks(
        self, request: pb.GetJwksRequest, call: Call[Any, Any]
    ) -> pb.GetJwksResponse:
        """HTTP's JWKS bytes and ETag; ``if_none_match`` as HTTP's header."""
        caller = await call.principal()
        document = await self._verifier.jwks(
            caller,
            JwksRequest.parse(
                environment_id=caller.default_environment(absent(request.environment_id))
            ),
        )
        if document.matches(request.if_none_match):
            return pb.GetJwksResponse(
                etag=document.etag, not_modified=True, key_count=document.key_count
            )
        return pb.GetJwksResponse(
            jwks_json=document.body, etag=document.etag, key_count=document.key_count
        )

    async def _watch(
        self, stream: Stream[pb.WatchSigningKeysRequest, pb.WatchSigningKeysResponse]
    ) -> None:
        await self._serve("WatchSigningKeys", self._send_events, False, stream)

    async def _send_events(self, call: Call[Any, Any]) -> None:
        request = await call.receive()
        events = self._changes.watch(
            await call.principal(),
            WatchRequest.parse(
                environment_id=absent(request.environment_id), after=absent(request.after)
            ),
        )
        async with _closing(events) as stream_of_events:
            async for event in stream_of_events:
                await call.send_headers()  # with the first event; a refusal has none
                await call.stream.send_message(watch_response(event))


def unset_time(value: str) -> str | None:
    """A time field of a request: proto3's default (``""``) and ``"0"`` both mean "not
    given" — ``"0"`` is what a client sends for a zero timestamp, never a wish for 1970."""
    return None if value in ("", "0") else value


def _audit_event(event: AuditEvent) -> pb.AuditEvent:
    message = pb.AuditEvent(
        id=event.id,
        environment_id=event.environment_id,
        key_id=event.key_id or "",
        action=event.action,
        actor=event.actor,
        api=event.api,
        request_id=event.request_id or "",
        created_at=messages.unix(event.created_at),
    )
    if event.created_at is not None:
        message.create_time = event.created_at
    return message


def _page_size(limit: int, page_size: int) -> int | None:
    """``page_size`` (AIP-158's name) and ``limit`` (the first name) are one setting: either
    may be given, or both if they agree."""
    if limit and page_size and limit != page_size:
        raise InvalidRequestError("limit and page_size differ: give one (they mean the same)")
    return page_size or limit or None


def watch_response(event: WatchEvent) -> pb.WatchSigningKeysResponse:
    response = pb.WatchSigningKeysResponse(
        kind=messages.watch_kind(event.kind), position=event.position
    )
    if event.key is not None:
        response.key = messages.signing_key(event.key)
    return response


@contextlib.asynccontextmanager
async def _closing(events: AsyncIterator[WatchEvent]) -> AsyncIterator[AsyncIterator[WatchEvent]]:
    """Close the feed's generator when the stream ends, not whenever it is collected."""
    try:
        yield events
    finally:
        if isinstance(events, AsyncGenerator):
            await cast(AsyncGenerator[WatchEvent, None], events).aclose()
