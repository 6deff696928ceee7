"""Watch streams against one running service: one caller (access token) cannot take the
streams every caller shares."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from harness import LocalTopology
from service.server import Server
from service.settings import Settings
from tests.grpc.conftest import metadata
from tests.grpc.test_servicer import next_event, watching
from tests.support.service import TokenFactory, service_env

PER_CALLER = 3


@pytest.fixture
async def capped(migrated_topology: LocalTopology) -> AsyncIterator[Server]:
    env = service_env(migrated_topology, max_watch_streams_per_caller=str(PER_CALLER))
    async with Server(Settings.from_env(env)) as running:
        yield running


async def test_a_caller_past_its_watch_streams_is_refused_and_others_still_watch(
    capped: Server, environment: str
) -> None:
    """Before: the cap was the instance's (1,000 streams), which one caller could take."""
    greedy = metadata(await TokenFactory(capped)([environment]))
    polite = metadata(await TokenFactory(capped)([environment]))
    async with Channel("127.0.0.1", capped.grpc_port) as channel:
        async with contextlib.AsyncExitStack() as streams:
            for _ in range(PER_CALLER):
                stream = await streams.enter_async_context(watching(channel, greedy))
                assert (await next_event(stream)).position  # SYNCED: an empty environment
            async with watching(channel, greedy) as refused:
                with pytest.raises(GRPCError) as raised:
                    await next_event(refused)
            assert raised.value.status is Status.RESOURCE_EXHAUSTED
            assert raised.value.message is not None
            assert f"{PER_CALLER} watch streams open" in raised.value.message
            async with watching(channel, polite) as other:
                assert (await next_event(other)).position, "another caller still watches"
        # The greedy caller's streams are closed: once the server sees it, its places are free.
        async with asyncio.timeout(5):
            while capped.changes.open_streams:
                await asyncio.sleep(0.01)
        async with watching(channel, greedy) as again:
            assert (await next_event(again)).position
    limited = capped.registry.get_sample_value(
        "signing_keys_limited_total", {"limit": "watch_streams"}
    )
    assert limited == 1
