"""The credential table's rules, over in-memory token records: what a poll reads, what a
resync adds, and why a lagging region cannot take the table backwards."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime

import pytest

from service.core.auth import new_access_token
from service.core.credentials import CredentialTable
from service.core.metrics import CoreMetrics
from service.core.models import AccessToken, Scope
from service.core.ports import DEFAULT_PAGE_SIZE
from service.errors import RegionUnavailableError
from tests.support.memory import ManualClock, MemoryTokenRecords

RESYNC = 30.0


class Regions:
    """Token records read from whichever region a test points at (the primary, or a standby
    that has not replayed everything)."""

    def __init__(self, primary: MemoryTokenRecords) -> None:
        self.primary = primary
        self.current = primary

    async def insert(self, token: AccessToken, *, timeout: float | None = None) -> None:
        await self.primary.insert(token)

    async def get(self, token_id: str, *, timeout: float | None = None) -> AccessToken | None:
        return await self.current.get(token_id)

    async def pages(
        self,
        *,
        since: datetime | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        timeout: float | None = None,
        max_data_age: float | None = None,
    ) -> AsyncIterator[list[AccessToken]]:
        async for page in self.current.pages(
            since=since, page_size=page_size, max_data_age=max_data_age
        ):
            yield page


@pytest.fixture
def regions(tokens: MemoryTokenRecords) -> Regions:
    return Regions(tokens)


@pytest.fixture
def metrics() -> CoreMetrics:
    return CoreMetrics()


@pytest.fixture
def table(regions: Regions, clock: ManualClock, metrics: CoreMetrics) -> CredentialTable:
    return CredentialTable(
        regions,
        poll_interval=0.2,
        overlap=5.0,
        resync_interval=RESYNC,
        metrics=metrics,
        clock=clock.seconds,
    )


async def stored(records: MemoryTokenRecords) -> AccessToken:
    token, _ = new_access_token([Scope.READ], ["env-a"])
    await records.insert(token)
    found = await records.get(token.id)
    assert found is not None
    return found


async def test_the_first_poll_reads_every_record_and_later_ones_only_what_changed(
    table: CredentialTable, tokens: MemoryTokenRecords, clock: ManualClock, metrics: CoreMetrics
) -> None:
    first = [await stored(tokens) for _ in range(3)]
    await table.poll_once()
    assert len(table) == 3 and table.get(first[0].id) == first[0]
    clock.advance(60)  # far past the overlap: the unchanged records are not read again
    second = await stored(tokens)
    pages_before = tokens.calls["pages"]
    await table.poll_once()  # a resync is due: everything
    clock.advance(0.2)
    third = await stored(tokens)
    read: list[str] = []
    original = tokens.pages

    async def spy(**options: object) -> AsyncIterator[list[AccessToken]]:
        async for page in original(**options):  # type: ignore[arg-type]
            read.extend(token.id for token in page)
            yield page

    tokens.pages = spy  # type: ignore[method-assign]
    await table.poll_once()
    assert third.id in read and first[0].id not in read, "only what changed in the overlap"
    assert table.get(second.id) == second and table.get(third.id) == third
    assert tokens.calls["pages"] > pages_before
    assert metrics.value("signing_keys_credential_polls_total", outcome="ok") == 3
    assert table.staleness() == 0


async def test_a_token_issued_here_is_kept_until_a_read_returns_it(
    table: CredentialTable, regions: Regions, tokens: MemoryTokenRecords, clock: ManualClock
) -> None:
    await table.poll_once()
    lagging = MemoryTokenRecords(clock=clock)
    regions.current = lagging  # a standby the new token has not reached
    token, _ = new_access_token([Scope.READ], ["env-a"])
    await regions.insert(token)
    table.put(token)
    clock.advance(RESYNC)
    await table.poll_once()  # a resync from the standby: it has no such row (yet)
    assert table.get(token.id) == token
    regions.current = tokens
    clock.advance(0.2)
    await table.poll_once()
    found = table.get(token.id)
    assert found is not None and found.updated_at is not None, "the stored record replaces it"


async def test_a_lagging_region_cannot_take_the_table_backwards(
    table: CredentialTable, regions: Regions, tokens: MemoryTokenRecords, clock: ManualClock
) -> None:
    token = await stored(tokens)
    await table.poll_once()
    behind = MemoryTokenRecords(clock=clock)
    await behind.insert(token)  # the standby's copy, stamped before the revocation below
    clock.advance(1)
    tokens.revoke(token.id)
    clock.advance(0.2)
    await table.poll_once()
    revoked = table.get(token.id)
    assert revoked is not None and revoked.revoked_at is not None
    regions.current = behind
    clock.advance(0.2)
    await table.poll_once()  # a poll of changes on the standby
    clock.advance(RESYNC)
    await table.poll_once()  # and a resync
    assert table.get(token.id) == revoked, "revocation is final; older records lose"


async def test_an_older_record_does_not_replace_a_newer_one(
    table: CredentialTable, regions: Regions, tokens: MemoryTokenRecords, clock: ManualClock
) -> None:
    token = await stored(tokens)
    await table.poll_once()
    assert token.updated_at is not None
    older = MemoryTokenRecords(clock=clock)
    older._tokens[token.id] = replace(  # a region still holding a version stamped earlier
        token, name="old", updated_at=token.updated_at.replace(year=token.updated_at.year - 1)
    )
    regions.current = older
    clock.advance(RESYNC)
    await table.poll_once()
    assert table.get(token.id) == token


async def test_with_a_data_age_bound_polls_read_only_young_data_and_staleness_is_its_age(
    regions: Regions, tokens: MemoryTokenRecords, clock: ManualClock
) -> None:
    """As the change feed: a poll asks for data at most ``max_data_age`` old, the table is
    as stale as that data, and a poll that finds none young enough leaves it to age."""
    table = CredentialTable(
        regions,
        poll_interval=0.2,
        overlap=5.0,
        resync_interval=RESYNC,
        max_data_age=0.6,
        clock=clock.seconds,
    )
    token = await stored(tokens)
    await table.poll_once()
    assert table.get(token.id) == token
    assert table.staleness() == pytest.approx(0.6), "the data may be as old as the bound"
    assert table.is_fresh()
    tokens.data_age = 5.0  # only a region older than the bound answers now
    clock.advance(0.2)
    with pytest.raises(RegionUnavailableError):
        await table.poll_once()
    clock.advance(1.0)
    assert table.staleness() == pytest.approx(1.8)
    assert not table.is_fresh(), "1.8 s is past 0.6 s plus three polls of slack"
