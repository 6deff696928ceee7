"""The access-log rule both transports follow: notable requests always, the rest by mode."""

from __future__ import annotations

import pytest

from service.logs import is_access_logged


@pytest.mark.parametrize("mode", ["off", "sampled", "all"])
def test_a_notable_request_is_logged_whatever_the_mode(mode: str) -> None:
    assert is_access_logged(mode, 0.0, notable=True)


@pytest.mark.parametrize(
    ("mode", "sample_rate", "logged"),
    [
        ("off", 1.0, False),
        ("all", 0.0, True),
        ("sampled", 0.0, False),
        ("sampled", 1.0, True),
    ],
)
def test_other_requests_are_logged_as_the_mode_says(
    mode: str, sample_rate: float, logged: bool
) -> None:
    assert is_access_logged(mode, sample_rate, notable=False) is logged
