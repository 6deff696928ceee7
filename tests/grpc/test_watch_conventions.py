"""gRPC conventions against one running service with a short progress interval and maximum
stream age: PROGRESS on an idle watch, the end at the maximum age (UNAVAILABLE) and a resume
from the last position that misses nothing, positions that do not expire, and the request
id echoed in every call's initial metadata and bound to its log lines."""

from __future__ import annotations

import asyncio
import io
import json
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from grpclib.client import Channel, Stream
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError

from harness import LocalTopology
from service.core.changes import parse_position
from service.grpc.generated.signingkeys import v1 as pb
from service.server import Server
from service.settings import Settings
from tests.grpc.conftest import metadata
from tests.grpc.test_limits import _raw_call
from tests.grpc.test_servicer import next_event, watching
from tests.support.service import TokenFactory, service_env

PROGRESS_INTERVAL = 0.3
MAX_AGE = 3.0
WITHIN = 5.0  # generous bounds: a loaded machine is late by fractions of a second
SERVICE = "/signingkeys.v1.SigningKeys"

WatchStream = Stream[pb.WatchSigningKeysRequest, pb.WatchSigningKeysResponse]


@pytest.fixture
async def paced(migrated_topology: LocalTopology) -> AsyncIterator[Server]:
    env = service_env(
        migrated_topology,
        watch_progress_interval=str(PROGRESS_INTERVAL),
        watch_max_age=str(MAX_AGE),
    )
    async with Server(Settings.from_env(env)) as running:
        yield running


@pytest.fixture
async def paced_channel(paced: Server) -> AsyncIterator[Channel]:
    assert paced.grpc_port is not None
    async with Channel("127.0.0.1", paced.grpc_port) as channel:
        yield channel


@pytest.fixture
async def paced_md(paced: Server, environment: str) -> dict[str, str]:
    return metadata(await TokenFactory(paced)([environment]))


async def create_key(channel: Channel, md: dict[str, str]) -> str:
    reply = await pb.SigningKeysStub(channel).create_signing_key(
        pb.CreateSigningKeyRequest(algorithm="EdDSA"), metadata=md
    )
    return reply.key.id


async def until_synced(stream: WatchStream) -> list[pb.WatchSigningKeysResponse]:
    """The events before SYNCED."""
    events = []
    while (event := await next_event(stream, WITHIN)).kind != pb.WatchEventKind.SYNCED:
        events.append(event)
    return events


async def test_an_idle_watch_gets_progress_within_the_interval(
    paced_channel: Channel, paced_md: dict[str, str]
) -> None:
    async with watching(paced_channel, paced_md) as stream:
        synced = await next_event(stream, WITHIN)
        assert synced.kind == pb.WatchEventKind.SYNCED  # an empty environment
        started = time.monotonic()
        progress = await next_event(stream, WITHIN)
        assert progress.kind == pb.WatchEventKind.PROGRESS
        assert time.monotonic() - started < PROGRESS_INTERVAL + WITHIN
        assert progress.key.id == "", "no key"
        assert parse_position(progress.position) >= parse_position(synced.position)
        again = await next_event(stream, WITHIN)
        assert again.kind == pb.WatchEventKind.PROGRESS
        assert parse_position(again.position) >= parse_position(progress.position)


async def test_the_stream_ends_at_its_maximum_age_and_a_resume_misses_nothing(
    paced_channel: Channel, paced_md: dict[str, str]
) -> None:
    """Keys are created without pause while the stream ages out, so that some are created
    right at its end: each one reaches the watcher on the first stream or on the resumed."""
    created: list[str] = []
    stop = asyncio.Event()

    async def keep_creating() -> None:
        while not stop.is_set():
            created.append(await create_key(paced_channel, paced_md))
            await asyncio.sleep(0.03)

    seen: set[str] = set()
    async with watching(paced_channel, paced_md) as stream:
        await until_synced(stream)
        started = time.monotonic()
        creator = asyncio.create_task(keep_creating())
        try:
            last: pb.WatchSigningKeysResponse | None = None
            async with asyncio.timeout(MAX_AGE + WITHIN):
                while (event := await stream.recv_message()) is not None:
                    last = event
                    if event.key.id:
                        seen.add(event.key.id)
                with pytest.raises(GRPCError) as ended:
                    await stream.recv_trailing_metadata()
            lived = time.monotonic() - started
            at_end = len(created)
            async with asyncio.timeout(2 * WITHIN):  # and a few more keys after the end
                while len(created) < at_end + 2:
                    await asyncio.sleep(0.02)
        finally:
            stop.set()
            await creator
    assert ended.value.status is Status.UNAVAILABLE
    assert "maximum age" in (ended.value.message or "")
    assert stream.trailing_metadata is not None
    assert stream.trailing_metadata.get("error-type") == "watch_max_age"
    assert stream.initial_metadata is not None
    request_id = stream.initial_metadata["x-request-id"]
    assert stream.trailing_metadata.get("x-request-id") == request_id, "at both ends"
    # From the client's receipt of SYNCED, which may come late on a loaded machine.
    assert 0.9 * MAX_AGE - 0.5 <= lived < MAX_AGE + WITHIN
    assert last is not None and last.kind == pb.WatchEventKind.PROGRESS, "a last position"
    assert set(created) & seen, "keys created during the stream reached it"
    assert set(created) - seen, "keys were created after the end"

    async with watching(paced_channel, paced_md, after=last.position) as resumed:
        replay = await until_synced(resumed)
    assert {event.kind for event in replay} == {pb.WatchEventKind.CHANGED}
    missing = set(created) - seen - {event.key.id for event in replay}
    assert not missing, f"{len(missing)} keys never reached the watcher"


async def test_positions_do_not_expire(paced_channel: Channel, paced_md: dict[str, str]) -> None:
    """A position older than anything the feed remembers — the very beginning — resumes:
    every key changed since, in its latest state, and no error."""
    stub = pb.SigningKeysStub(paced_channel)
    first, second = (
        await create_key(paced_channel, paced_md),
        await create_key(paced_channel, paced_md),
    )
    await stub.revoke_signing_key(pb.RevokeSigningKeyRequest(id=first), metadata=paced_md)
    async with watching(paced_channel, paced_md, after="0.") as stream:
        replay = await until_synced(stream)
    assert {event.kind for event in replay} == {pb.WatchEventKind.CHANGED}
    latest = {event.key.id: event.key for event in replay}
    assert set(latest) == {first, second}
    assert latest[first].status == pb.KeyStatus.REVOKED


# --- Request ids ---------------------------------------------------------------------------


async def call(
    channel: Channel, method: str, request: Any, reply: type[Any], md: dict[str, str]
) -> tuple[dict[str, Any], Any]:
    """One unary call: its reply's initial metadata and the reply, or its error's trailing
    metadata and the error."""
    async with channel.request(
        f"{SERVICE}/{method}", Cardinality.UNARY_UNARY, type(request), reply, metadata=md
    ) as stream:
        try:
            await stream.send_message(request, end=True)
            await stream.recv_initial_metadata()
            answer = await stream.recv_message()
        except GRPCError as exc:
            return dict(stream.trailing_metadata or {}), exc
        return dict(stream.initial_metadata or {}), answer


def logged_request_ids(log_stream: io.StringIO, event: str) -> list[str]:
    lines = [json.loads(line) for line in log_stream.getvalue().splitlines() if event in line]
    return [line.get("request_id") for line in lines]


async def test_the_request_id_is_echoed_and_bound_to_the_calls_log_lines(
    paced_channel: Channel, paced_md: dict[str, str], log_stream: io.StringIO
) -> None:
    create = pb.CreateSigningKeyRequest(algorithm="EdDSA")
    reply = pb.CreateSigningKeyResponse
    sent = {**paced_md, "x-request-id": "trace-grpc-7"}
    initial, created = await call(paced_channel, "CreateSigningKey", create, reply, sent)
    assert isinstance(created, reply)
    assert initial["x-request-id"] == "trace-grpc-7", "the caller's own"
    assert logged_request_ids(log_stream, "signing_key_stored") == ["trace-grpc-7"]

    for offered in ({}, {"x-request-id": "not one; " + "x" * 80}):
        initial, created = await call(
            paced_channel, "CreateSigningKey", create, reply, {**paced_md, **offered}
        )
        assert isinstance(created, reply)
        generated = initial["x-request-id"]
        assert generated and generated != offered.get("x-request-id")
        assert logged_request_ids(log_stream, "signing_key_stored")[-1] == generated

    trailing, failed = await call(
        paced_channel,
        "GetSigningKey",
        pb.GetSigningKeyRequest(id="no-such-key"),
        pb.GetSigningKeyResponse,
        {**paced_md, "x-request-id": "trace-missing"},
    )
    assert isinstance(failed, GRPCError) and failed.status is Status.NOT_FOUND
    assert trailing["x-request-id"] == "trace-missing", "errors carry it in their trailers"
    assert trailing["error-type"] == "not_found"


async def test_a_watch_sends_its_request_id_with_its_first_event(
    paced_channel: Channel, paced_md: dict[str, str]
) -> None:
    async with watching(paced_channel, {**paced_md, "x-request-id": "watch-1"}) as stream:
        async with asyncio.timeout(WITHIN):
            await stream.recv_initial_metadata()
        assert stream.initial_metadata is not None
        assert stream.initial_metadata["x-request-id"] == "watch-1"
        assert (await next_event(stream, WITHIN)).kind == pb.WatchEventKind.SYNCED


async def test_a_message_refused_before_it_is_read_carries_the_request_id(
    paced: Server,
) -> None:
    """The size limit refuses a request from its length prefix (grpclib's error path)."""
    assert paced.grpc_port is not None
    (exchange,) = await asyncio.wait_for(
        _raw_call(
            paced.grpc_port,
            f"{SERVICE}/CreateSigningKey",
            struct.pack(">?I", False, 1_000_000) + b"a" * 1000,
            end_stream=False,
            headers=[(b"x-request-id", b"trace-too-big")],
        ),
        WITHIN,
    )
    assert exchange.grpc_status is Status.RESOURCE_EXHAUSTED, exchange
    assert exchange.headers["x-request-id"] == "trace-too-big"
