"""Watch streams against the real database."""

from __future__ import annotations

import pytest

from service.core.changes import ChangeFeed, WatchLimits
from service.core.models import Principal, Scope
from service.core.requests import WatchRequest
from service.errors import PermissionDeniedError, TooManyWatchersError
from service.server import Server


async def test_watch_streams_are_bounded_and_need_the_read_scope(server: Server) -> None:
    feed = ChangeFeed(
        server.key_records,
        server.key_cache,
        poll_interval=0.2,
        overlap=5.0,
        limits=WatchLimits(streams=2),
    )
    reader = Principal(token_id="t", scopes=frozenset({Scope.READ}), environments=frozenset({"e"}))
    streams = [feed.watch(reader, WatchRequest(environment_id="e")) for _ in range(3)]
    try:
        for stream in streams[:2]:
            assert (await anext(stream)).kind == "synced", "an empty environment: synced at once"
        with pytest.raises(TooManyWatchersError):
            await anext(streams[2])
        verifier = Principal(
            token_id="v", scopes=frozenset({Scope.VERIFY}), environments=frozenset({"e"})
        )
        with pytest.raises(PermissionDeniedError, match="read"):
            await anext(feed.watch(verifier, WatchRequest(environment_id="e")))
    finally:
        for stream in streams:
            await stream.aclose()
    # Closed streams free their places.
    again = feed.watch(reader, WatchRequest(environment_id="e"))
    assert (await anext(again)).kind == "synced"
    await again.aclose()
