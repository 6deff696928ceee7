"""Token buckets (pure, with a fake clock)."""

from __future__ import annotations

from service.core.ratelimit import KeyedBuckets, TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_rate_then_refills_with_time() -> None:
    clock = FakeClock()
    bucket = TokenBucket(5, clock=clock)
    assert [bucket.take() for _ in range(7)] == [True] * 5 + [False] * 2
    clock.now += 0.4  # two tokens' worth
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    clock.now += 100
    assert sum(bucket.take() for _ in range(20)) == 5, "never more than one second's worth"


def test_keyed_buckets_are_independent_and_bounded() -> None:
    clock = FakeClock()
    buckets = KeyedBuckets(2, size=3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [True, True, False]
    assert buckets.take("b"), "one caller's flood does not spend another's budget"
    for key in ("c", "d", "e"):
        buckets.take(key)
    assert buckets.take("a"), "forgotten past the size bound: a fresh bucket"


def test_wait_says_when_a_token_is_in_hand_without_spending_one() -> None:
    clock = FakeClock()
    bucket = TokenBucket(4, burst=2, clock=clock)
    assert bucket.wait() == 0
    assert [bucket.take() for _ in range(3)] == [True, True, False], "the burst, not the rate"
    assert bucket.wait() == 0.25
    clock.now += 0.1
    assert abs(bucket.wait() - 0.15) < 1e-9 and bucket.wait() > 0
    clock.now += 0.15
    assert bucket.wait() == 0 and bucket.take()


def test_keyed_buckets_wait_for_a_key_never_seen_is_zero() -> None:
    clock = FakeClock()
    buckets = KeyedBuckets(1, clock=clock)
    assert buckets.wait("new") == 0 and len(buckets) == 0, "asking creates nothing"
    buckets.take("a")
    assert buckets.wait("a") == 1.0
