"""The consistency token: opaque, canonical, validated; and the request's scope."""

from __future__ import annotations

import asyncio
import base64
import struct

import pytest

from service.core import consistency
from service.core.consistency import CommitPosition, decode_token, encode_token, later
from service.errors import InvalidConsistencyTokenError, InvalidRequestError

POSITION = CommitPosition("7301234567890123456", 3, 0x1_2345_6789)


def test_a_token_names_its_position_and_nothing_else() -> None:
    token = encode_token(POSITION)
    assert decode_token(token) == POSITION
    assert len(token) == 28 and "=" not in token
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "garbage",
        "A" * 27,
        "A" * 29,
        "A" * 27 + "=",
        "A" * 27 + "+",  # standard base64, not base64url
        "A" * 27 + "é",
        encode_token(POSITION)[:-1] + ".",
        " " + encode_token(POSITION)[1:],
    ],
)
def test_anything_else_is_refused_with_its_own_type(bad: str) -> None:
    with pytest.raises(InvalidConsistencyTokenError) as caught:
        decode_token(bad)
    assert caught.value.type == "invalid_consistency_token"
    assert isinstance(caught.value, InvalidRequestError)  # 400 / INVALID_ARGUMENT
    if bad:
        assert bad not in str(caught.value)


@pytest.mark.parametrize(
    ("version", "system", "timeline", "lsn"),
    [(2, 1, 1, 1), (1, 1, 0, 1)],
    ids=["unknown-version", "timeline-zero"],
)
def test_well_formed_bytes_that_name_no_position_are_refused(
    version: int, system: int, timeline: int, lsn: int
) -> None:
    raw = struct.pack(">BQIQ", version, system, timeline, lsn)
    token = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    with pytest.raises(InvalidConsistencyTokenError):
        decode_token(token)


def test_the_later_position_wins_and_a_new_timeline_is_later() -> None:
    old = CommitPosition("9", 1, 5000)
    assert later(old, CommitPosition("9", 1, 4000)) == old
    assert later(old, CommitPosition("9", 2, 10)) == CommitPosition("9", 2, 10)
    assert later(None, old) == old and later(old, None) == old


async def test_a_request_scope_is_its_own_and_answers_the_token_of_its_write() -> None:
    async def request(token: str | None) -> consistency.Consistency:
        scope = consistency.bind(token)
        await asyncio.sleep(0)
        assert consistency.current() is scope
        return scope

    a, b = await asyncio.gather(request(encode_token(POSITION)), request(None))
    assert a.required == POSITION and b.required is None
    assert a.token() is None, "a request that wrote nothing answers no token"
    a.written = POSITION
    assert a.token() == encode_token(POSITION)
    assert consistency.current() is None, "no scope outside a request"
