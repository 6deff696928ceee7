"""The shared lifecycle base: ``async with`` starts a resource and always closes it."""

from __future__ import annotations

import pytest

from service.lifecycle import AsyncResource


class Recorder(AsyncResource):
    def __init__(self) -> None:
        self.events: list[str] = []

    async def start(self) -> None:
        self.events.append("start")

    async def aclose(self) -> None:
        self.events.append("aclose")


async def test_async_with_starts_then_closes_and_yields_the_resource_itself() -> None:
    resource = Recorder()
    async with resource as entered:
        assert entered is resource
        assert resource.events == ["start"]
    assert resource.events == ["start", "aclose"]


async def test_an_error_in_the_block_still_closes_and_propagates() -> None:
    resource = Recorder()
    with pytest.raises(LookupError):
        async with resource:
            raise LookupError("in the block")
    assert resource.events == ["start", "aclose"]


def test_a_subclass_without_start_and_aclose_cannot_be_built() -> None:
    class Incomplete(AsyncResource):
        pass

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()  # type: ignore[abstract]
