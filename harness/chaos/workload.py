"""The clients of a chaos run: mixed load on every service instance, recorded in the history.

Per instance (one per region) there are

- a **writer** that creates keys (each with an ``Idempotency-Key``; a create whose outcome is
  unknown is repeated with the same key until it is answered) and revokes them (a revoke is
  idempotent: repeated until answered too);
- **readers** that get keys and verify tokens — over HTTP and gRPC — signed with the private
  keys the creates returned, biased towards keys just created and just revoked;
- a **watcher**: a ``WatchSigningKeys`` subscriber that keeps a replica (key id → status) and
  resumes from its last position after any stream error.

Every call is an :class:`~harness.chaos.history.Operation`. Outcomes follow Jepsen: ``ok``
when the answer says it happened, ``fail`` when it certainly did not (a 4xx, or a connection
that never opened), ``info`` when a write's fate is unknown (timeouts, 5xx, a connection lost
mid-call). Reads have no effect, so a failed read is ``fail``.

Consistency tokens: the service issues none yet. The client is ready for them — a write's
answer carrying :data:`CONSISTENCY_HEADER` (HTTP) or :data:`CONSISTENCY_METADATA` (gRPC) is
remembered, and half of the reads at that instance pass the latest one back; each read
records whether it did (``args.consistency_token``, and ``args.token_write``: the write it
came from), which the checker holds to read-your-writes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import re
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import aiohttp
import betterproto
import jwt
import structlog
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from harness.chaos.history import History, Operation, Outcome, WatchEventRecord
from service.grpc.generated.signingkeys import v1 as pb

log = structlog.get_logger(__name__)

CONSISTENCY_HEADER: Final = "X-Consistency-Token"
CONSISTENCY_METADATA: Final = "x-consistency-token"
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
SERVICE: Final = "/signingkeys.v1.SigningKeys/"
AUDIENCE: Final = "v"
DEFAULT_CLIENT_TIMEOUT: Final = 3.0  # above the service's 2 s request deadline
ALGORITHMS: Final = (("EdDSA", 0.6), ("ES256", 0.3), ("RS256", 0.1))
_REPLAYED = re.compile(r"already created signing key (\S+?);")
_STATUS = {pb.KeyStatus.ACTIVE: "active", pb.KeyStatus.REVOKED: "revoked"}
_REASON_OK = ("", "valid")
_Reply = TypeVar("_Reply", bound=betterproto.Message)


@dataclass(slots=True)
class KnownKey:
    """What the clients know of one key: how it signs, and where its revoke stands."""

    key_id: str
    algorithm: str
    private_pem: bytes | None  # None when the create was answered by a replay (409)
    revoke: str | None = None  # None, "pending" (invoked) or "acknowledged"
    token: str | None = None
    keep: bool = False  # never revoked: a key that lives the whole run


@dataclass(slots=True)
class KeyBook:
    """Keys the writers created, shared by every client of the run, and the consistency
    token each instance's writer last received."""

    keys: dict[str, KnownKey] = field(default_factory=dict)
    recently_created: deque[str] = field(default_factory=lambda: deque(maxlen=8))
    recently_revoked: deque[str] = field(default_factory=lambda: deque(maxlen=8))
    tokens: dict[str, tuple[str, int]] = field(default_factory=dict)  # instance → (token, op)
    token_lifetime: float = 3600.0

    def created(
        self, key_id: str, algorithm: str, private_pem: bytes | None, *, keep: bool = False
    ) -> None:
        if key_id not in self.keys:
            self.keys[key_id] = KnownKey(key_id, algorithm, private_pem, keep=keep)
            self.recently_created.append(key_id)

    def revoking(self, key_id: str) -> None:
        self.keys[key_id].revoke = self.keys[key_id].revoke or "pending"
        self.recently_revoked.append(key_id)

    def revoked(self, key_id: str) -> None:
        self.keys[key_id].revoke = "acknowledged"

    def active(self) -> list[KnownKey]:
        """Keys that may be revoked: not revoked yet, and not kept for the whole run."""
        return [key for key in self.keys.values() if key.revoke is None and not key.keep]

    def pick(self, rng: random.Random, *, signing: bool) -> str:
        """A key id to read: often one just revoked or created, sometimes an unknown one."""
        pool = [key for key in self.keys.values() if key.private_pem or not signing]
        roll = rng.random()
        recent: list[str] = []
        if roll < 0.35:
            recent = list(self.recently_revoked)
        elif roll < 0.6:
            recent = list(self.recently_created)
        if signing:
            recent = [key for key in recent if self.keys[key].private_pem]
        if recent:
            return rng.choice(recent)
        if pool and roll < 0.95:
            return rng.choice(pool).key_id
        return "unknown-" + secrets.token_urlsafe(12)

    def token_for(self, key_id: str) -> str | None:
        key = self.keys.get(key_id)
        if key is None or key.private_pem is None:
            return None
        if key.token is None:
            private = load_pem_private_key(key.private_pem, password=None)
            now = int(time.time())
            key.token = jwt.encode(
                {
                    "sub": "chaos",
                    "aud": AUDIENCE,
                    "iat": now,
                    "exp": now + int(self.token_lifetime),
                },
                private,  # type: ignore[arg-type]
                algorithm=key.algorithm,
                headers={"kid": key_id},
            )
        return key.token


@dataclass(slots=True)
class Answer:
    """A transport's answer, before it becomes an outcome."""

    outcome: Outcome
    result: dict[str, Any]


def _http_answer(
    status: int, raw: bytes, token: str | None, unknown: Outcome, *, created: bool, verdict: bool
) -> Answer:
    try:
        reply = json.loads(raw) if raw else None
    except ValueError:
        reply = None
    result: dict[str, Any] = {"http_status": status}
    if token is not None:
        result["consistency_token"] = token
    data = reply.get("data") if isinstance(reply, dict) else None
    if 200 <= status < 300:
        if created and isinstance(data, dict):
            result.update(key_id=data.get("id"), private_key=data.get("private_key"))
        elif verdict and isinstance(data, dict):
            result.update(valid=bool(data.get("valid")), reason=data.get("reason") or "")
        elif isinstance(data, dict):
            result.update(key_id=data.get("id"), status=data.get("status"))
        return Answer("ok", result)
    error = reply.get("error") if isinstance(reply, dict) else None
    if not isinstance(error, dict):
        error = {}
    result["error"] = f"http {status} {error.get('type', '')}".strip()
    if created and status == 409:
        replayed = _REPLAYED.search(" ".join(error.get("messages", [])))
        if replayed:
            result.update(key_id=replayed.group(1), replayed=True)
            return Answer("ok", result)
    if status == 404:
        result["status"] = "absent"
    return Answer("fail" if status < 500 else unknown, result)


class InstanceClient:
    """HTTP and gRPC clients of one service instance, recording every call.

    >>> client = InstanceClient(history, "aws-us-east-1", http_url, grpc_port, auth, "env")
    >>> op = await client.get("reader-0", "grpc", key_id)
    """

    def __init__(
        self,
        history: History,
        region: str,
        *,
        base_url: str,
        grpc_port: int,
        login: str,
        secret: str,
        environment: str,
        timeout: float = DEFAULT_CLIENT_TIMEOUT,
    ) -> None:
        self.history = history
        self.region = region
        self.environment = environment
        self.timeout = timeout
        self._authorization = aiohttp.encode_basic_auth(login, secret)
        self._session = aiohttp.ClientSession(
            base_url=base_url,
            timeout=aiohttp.ClientTimeout(total=timeout),
            headers={"Authorization": self._authorization},
        )
        self._channel = Channel("127.0.0.1", grpc_port)
        self.metadata = {"authorization": self._authorization}

    def __repr__(self) -> str:
        return f"<InstanceClient {self.region}>"

    async def __aenter__(self) -> InstanceClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._channel.close()
        await self._session.close()

    @property
    def channel(self) -> Channel:
        return self._channel

    # -- operations ------------------------------------------------------------------------

    async def create(
        self, process: str, transport: str, *, idempotency_key: str, algorithm: str, attempt: int
    ) -> Operation:
        op = self.history.invoke(
            process,
            "create",
            instance=self.region,
            transport=transport,
            idempotency_key=idempotency_key,
            algorithm=algorithm,
            attempt=attempt,
        )
        if transport == "http":
            answer = await self._http(
                "POST",
                "/system/v1/signing-keys",
                body={"algorithm": algorithm},
                headers={IDEMPOTENCY_HEADER: idempotency_key},
                write=True,
                created=True,
            )
        else:
            answer = await self._grpc(
                "CreateSigningKey",
                pb.CreateSigningKeyRequest(
                    environment_id=self.environment,
                    algorithm=algorithm,
                    idempotency_key=idempotency_key,
                ),
                pb.CreateSigningKeyResponse,
                write=True,
                created=True,
            )
        self.history.complete(op, answer.outcome, **answer.result)
        return op

    async def revoke(self, process: str, transport: str, *, key_id: str) -> Operation:
        op = self.history.invoke(
            process, "revoke", instance=self.region, transport=transport, key_id=key_id
        )
        if transport == "http":
            answer = await self._http("DELETE", f"/system/v1/signing-keys/{key_id}", write=True)
        else:
            answer = await self._grpc(
                "RevokeSigningKey",
                pb.RevokeSigningKeyRequest(environment_id=self.environment, id=key_id),
                pb.RevokeSigningKeyResponse,
                write=True,
            )
        self.history.complete(op, answer.outcome, **answer.result)
        return op

    async def get(
        self, process: str, transport: str, *, key_id: str, token: tuple[str, int] | None = None
    ) -> Operation:
        op = self.history.invoke(
            process,
            "get",
            instance=self.region,
            transport=transport,
            key_id=key_id,
            consistency_token=token[0] if token else None,
            token_write=token[1] if token else None,
        )
        extra = {CONSISTENCY_HEADER: token[0]} if token else {}
        if transport == "http":
            # status=all: a revoked key is an answer too (the Mux-compatible default hides it).
            answer = await self._http(
                "GET", f"/system/v1/signing-keys/{key_id}?status=all", headers=extra
            )
        else:
            answer = await self._grpc(
                "GetSigningKey",
                pb.GetSigningKeyRequest(environment_id=self.environment, id=key_id, status="all"),
                pb.GetSigningKeyResponse,
                metadata={CONSISTENCY_METADATA: token[0]} if token else None,
            )
        if answer.outcome == "fail" and answer.result.get("status") == "absent":
            answer.outcome = "ok"  # not found is an answer about the key
        self.history.complete(op, answer.outcome, **answer.result)
        return op

    async def verify(
        self,
        process: str,
        transport: str,
        *,
        key_id: str,
        token: str,
        consistency: tuple[str, int] | None = None,
    ) -> Operation:
        op = self.history.invoke(
            process,
            "verify",
            instance=self.region,
            transport=transport,
            key_id=key_id,
            consistency_token=consistency[0] if consistency else None,
            token_write=consistency[1] if consistency else None,
        )
        extra = {CONSISTENCY_HEADER: consistency[0]} if consistency else {}
        if transport == "http":
            answer = await self._http(
                "POST",
                "/v1/tokens/verify",
                body={"token": token, "audience": AUDIENCE},
                headers=extra,
                verdict=True,
            )
        else:
            answer = await self._grpc(
                "VerifyToken",
                pb.VerifyTokenRequest(
                    token=token, environment_id=self.environment, audience=AUDIENCE
                ),
                pb.VerifyTokenResponse,
                metadata={CONSISTENCY_METADATA: consistency[0]} if consistency else None,
                verdict=True,
            )
        self.history.complete(op, answer.outcome, **answer.result)
        return op

    # -- transports ------------------------------------------------------------------------

    async def _http(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        write: bool = False,
        created: bool = False,
        verdict: bool = False,
    ) -> Answer:
        unknown: Outcome = "info" if write else "fail"
        try:
            async with self._session.request(
                method,
                path,
                json=body,
                headers={"X-Environment-Id": self.environment, **(headers or {})},
            ) as response:
                raw = await response.read()
                token = response.headers.get(CONSISTENCY_HEADER)
                status = response.status
        except asyncio.CancelledError:
            raise
        except aiohttp.ClientConnectorError as exc:
            return Answer("fail", {"error": f"connect: {exc.os_error.__class__.__name__}"})
        except TimeoutError:
            return Answer(unknown, {"error": "client timeout"})
        except (aiohttp.ClientError, ValueError) as exc:
            return Answer(unknown, {"error": type(exc).__name__})
        return _http_answer(status, raw, token, unknown, created=created, verdict=verdict)

    async def _grpc(
        self,
        method: str,
        request: betterproto.Message,
        reply_type: type[_Reply],
        *,
        metadata: Mapping[str, str] | None = None,
        write: bool = False,
        created: bool = False,
        verdict: bool = False,
    ) -> Answer:
        unknown: Outcome = "info" if write else "fail"
        sent = False
        try:
            async with self._channel.request(
                SERVICE + method,
                Cardinality.UNARY_UNARY,
                type(request),
                reply_type,
                timeout=self.timeout,
                metadata={**self.metadata, **(metadata or {})},
            ) as stream:
                await stream.send_message(request, end=True)
                sent = True
                reply = await stream.recv_message()
                await stream.recv_trailing_metadata()
                received = {
                    **dict(stream.initial_metadata or {}),
                    **dict(stream.trailing_metadata or {}),
                }
        except asyncio.CancelledError:
            raise
        except GRPCError as exc:
            result: dict[str, Any] = {
                "error": f"grpc {exc.status.name}",
                "grpc_status": exc.status.name,
            }
            if created and exc.status is Status.ALREADY_EXISTS:
                replayed = _REPLAYED.search(exc.message or "")
                if replayed:
                    result.update(key_id=replayed.group(1), replayed=True)
                    return Answer("ok", result)
            if exc.status is Status.NOT_FOUND:
                result["status"] = "absent"
            definite = exc.status in (
                Status.INVALID_ARGUMENT,
                Status.NOT_FOUND,
                Status.ALREADY_EXISTS,
                Status.UNAUTHENTICATED,
                Status.PERMISSION_DENIED,
            )
            return Answer("fail" if definite else unknown, result)
        except TimeoutError:
            return Answer(unknown, {"error": "client timeout"})
        except (OSError, StreamTerminatedError) as exc:
            # A connection refused means nothing was sent: the write certainly did not happen.
            outcome: Outcome = (
                "fail" if isinstance(exc, ConnectionRefusedError) or not sent else unknown
            )
            return Answer(outcome, {"error": type(exc).__name__})
        result = {}
        token = received.get(CONSISTENCY_METADATA)
        if isinstance(token, str):
            result["consistency_token"] = token
        if reply is None:
            return Answer(unknown, {"error": "no reply message"})
        if created:
            created_reply: Any = reply
            result.update(key_id=created_reply.key.id, private_key=created_reply.private_key)
        elif verdict:
            verdict_reply: Any = reply
            result.update(valid=verdict_reply.valid, reason=verdict_reply.reason_text)
        else:
            keyed: Any = reply
            result.update(key_id=keyed.key.id, status=_STATUS.get(keyed.key.status))
        return Answer("ok", result)


@dataclass(slots=True)
class Clients:
    """What every client process shares: the history, the keys, the instances' clients."""

    history: History
    book: KeyBook
    instances: dict[str, InstanceClient]
    stop: asyncio.Event
    seed: int

    def rng(self, process: str) -> random.Random:
        return random.Random(f"{self.seed}:{process}")


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


class Writer:
    """Creates and revokes keys at one instance; settles every write it starts."""

    def __init__(
        self,
        clients: Clients,
        region: str,
        *,
        think: tuple[float, float] = (0.1, 0.4),
        settle_timeout: float = 15.0,
    ) -> None:
        self.clients = clients
        self.region = region
        self.process = f"writer-{region}"
        self.think = think
        self.settle_timeout = settle_timeout
        self._rng = clients.rng(self.process)
        self._count = 0
        self._kept = False

    @property
    def client(self) -> InstanceClient:
        return self.clients.instances[self.region]

    async def run(self) -> None:
        stop = self.clients.stop
        while not stop.is_set():
            active = self.clients.book.active()
            if len(active) < 5 or self._rng.random() < 0.55:
                await self.create()
            else:
                signing = [key for key in active if key.private_pem] or active
                await self.revoke(self._rng.choice(signing).key_id)
            await _pause(stop, self._rng.uniform(*self.think))

    def _transport(self) -> str:
        return self._rng.choice(("http", "grpc"))

    async def create(self) -> str | None:
        """One logical create: attempts with the same Idempotency-Key until answered."""
        self._count += 1
        claim = f"{self.clients.history.meta.environment}-{self.process}-{self._count}"
        algorithm = self._rng.choices(
            [name for name, _ in ALGORITHMS], [weight for _, weight in ALGORITHMS]
        )[0]

        async def attempt(number: int) -> Operation:
            return await self.client.create(
                self.process,
                self._transport(),
                idempotency_key=claim,
                algorithm=algorithm,
                attempt=number,
            )

        op = await self._settle(attempt)
        if op is None or not op.is_ok:
            return None
        key_id = op.result["key_id"]
        private = op.result.pop("private_key", None)
        pem = base64.b64decode(private) if private else None
        self._remember_token(op)
        # Each writer's first key lives the whole run, as long-lived production keys do
        # (and as the first keys of an empty database must, for a watcher to miss them).
        first = not self._kept
        self._kept = True
        self.clients.book.created(key_id, algorithm, pem, keep=first)
        return str(key_id)

    async def revoke(self, key_id: str) -> None:
        self.clients.book.revoking(key_id)

        async def attempt(number: int) -> Operation:
            return await self.client.revoke(self.process, self._transport(), key_id=key_id)

        op = await self._settle(attempt)
        if op is not None and op.is_ok:
            self._remember_token(op)
            self.clients.book.revoked(key_id)

    async def _settle(self, attempt: Callable[[int], Awaitable[Operation]]) -> Operation | None:
        """Repeat a write whose outcome is unknown (same idempotency) until it is answered,
        or until ``settle_timeout`` after the load stopped."""
        number = 0
        deadline: float | None = None
        while True:
            number += 1
            op = await attempt(number)
            if op.outcome != "info" and not (op.outcome == "fail" and _transient(op)):
                return op
            if self.clients.stop.is_set():
                deadline = deadline or time.monotonic() + self.settle_timeout
                if time.monotonic() > deadline:
                    return None
            await asyncio.sleep(self._rng.uniform(0.1, 0.3))

    def _remember_token(self, op: Operation) -> None:
        token = op.result.get("consistency_token")
        if isinstance(token, str):
            self.clients.book.tokens[self.region] = (token, op.index)


def _transient(op: Operation) -> bool:
    """A write that certainly failed but should be tried again (nothing reached the service,
    or the service refused it for want of a region): only 4xx answers end a logical write."""
    error = str(op.result.get("error", ""))
    return error.startswith("connect") or "Refused" in error or error.startswith("http 5")


class Reader:
    """Gets keys and verifies tokens at one instance, over HTTP and gRPC."""

    def __init__(
        self, clients: Clients, region: str, number: int, *, think: tuple[float, float]
    ) -> None:
        self.clients = clients
        self.region = region
        self.process = f"reader-{number}-{region}"
        self.think = think
        self._rng = clients.rng(self.process)

    async def run(self) -> None:
        stop = self.clients.stop
        while not stop.is_set():
            if self.clients.book.keys:
                await self.read_once()
            await _pause(stop, self._rng.uniform(*self.think))

    async def read_once(self) -> Operation:
        book = self.clients.book
        client = self.clients.instances[self.region]
        transport = self._rng.choice(("http", "grpc"))
        consistency = book.tokens.get(self.region) if self._rng.random() < 0.5 else None
        if self._rng.random() < 0.5:
            key_id = book.pick(self._rng, signing=True)
            token = book.token_for(key_id)
            if token is not None:
                return await client.verify(
                    self.process, transport, key_id=key_id, token=token, consistency=consistency
                )
        key_id = book.pick(self._rng, signing=False)
        return await client.get(self.process, transport, key_id=key_id, token=consistency)


class Watcher:
    """A ``WatchSigningKeys`` subscriber holding a replica of the environment's keys.

    Each stream is one ``watch`` operation (``ok`` when the run ended it, ``fail`` on an
    error);
    every event is recorded. After an error it resumes after the last position it saw.
    Events may repeat (delivery is at least once) and a resumed stream replays; an event is
    applied only if its position is not older than the one the replica holds for the key.
    """

    def __init__(self, clients: Clients, region: str, *, name: str | None = None) -> None:
        self.clients = clients
        self.region = region
        self.name = name or f"watcher-{region}"
        self.replica: dict[str, str] = {}
        self._versions: dict[str, int] = {}
        self.position = ""
        self.synced = asyncio.Event()
        self._rng = clients.rng(self.name)

    async def run(self) -> None:
        """Watch until cancelled (the run's end), resuming after every stream error."""
        while True:
            client = self.clients.instances[self.region]
            op = self.clients.history.invoke(
                self.name, "watch", instance=self.region, transport="grpc", after=self.position
            )
            try:
                await self._stream(client)
            except asyncio.CancelledError:
                self.clients.history.complete(op, "ok", ended="by the run")
                raise
            except Exception as exc:  # any stream error: record it, resume after the position
                self.clients.history.complete(op, "fail", error=_describe(exc))
            await asyncio.sleep(self._rng.uniform(0.1, 0.4))

    async def _stream(self, client: InstanceClient) -> int:
        """One stream, until it fails or the task is cancelled; return the events received."""
        history = self.clients.history
        count = 0
        async with client.channel.request(
            SERVICE + "WatchSigningKeys",
            Cardinality.UNARY_STREAM,
            pb.WatchSigningKeysRequest,
            pb.WatchSigningKeysResponse,
            metadata=client.metadata,
        ) as stream:
            await stream.send_message(
                pb.WatchSigningKeysRequest(environment_id=client.environment, after=self.position),
                end=True,
            )
            while True:
                event = await stream.recv_message()
                if event is None:
                    raise StreamTerminatedError("the watch stream ended")
                count += 1
                self._apply(event)
                key = event.key if betterproto.serialized_on_wire(event.key) else None
                history.watch_events.append(
                    WatchEventRecord(
                        t=history.now(),
                        watcher=self.name,
                        kind=_KIND.get(event.kind, str(event.kind)),
                        key_id=key.id if key else None,
                        status=_STATUS.get(key.status) if key else None,
                        position=event.position,
                    )
                )

    def _apply(self, event: pb.WatchSigningKeysResponse) -> None:
        if event.position:
            self.position = event.position
        if event.kind == pb.WatchEventKind.SYNCED:
            self.synced.set()
            return
        if not betterproto.serialized_on_wire(event.key):
            return
        key = event.key
        status = _STATUS.get(key.status)
        if status is None:
            return
        version = _micros(event.position)
        if version >= self._versions.get(key.id, -1):
            self._versions[key.id] = version
            self.replica[key.id] = status


_KIND = {
    pb.WatchEventKind.SNAPSHOT: "snapshot",
    pb.WatchEventKind.SYNCED: "synced",
    pb.WatchEventKind.CHANGED: "changed",
}


def _micros(position: str) -> int:
    head, _, _ = position.partition(".")
    return int(head) if head.isdigit() else -1


def _describe(exc: BaseException) -> str:
    if isinstance(exc, GRPCError):
        return f"grpc {exc.status.name}"
    return type(exc).__name__
