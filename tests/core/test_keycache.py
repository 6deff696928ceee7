"""The key cache is bounded and never goes backwards (pure, no database)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from service.core import crypto
from service.core.keycache import KeyCache
from service.core.models import SigningKey

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def key(key_id: str = "k1", *, status: str = "active", at: datetime = T0) -> SigningKey:
    pair = crypto.generate_key_pair("EdDSA")
    return SigningKey(
        id=key_id,
        environment_id="env",
        algorithm="EdDSA",
        public_key=pair.public_der,
        fingerprint=crypto.fingerprint(pair.public_der),
        status=status,  # type: ignore[arg-type]
        source="generated",
        name=None,
        created_at=T0,
        updated_at=at,
    )


def test_a_revoked_key_never_becomes_active_again() -> None:
    cache = KeyCache(size=10, negative_size=10, negative_ttl=1)
    active = key()
    revoked = replace(active, status="revoked", updated_at=T0 + timedelta(seconds=1))
    cache.put(revoked)
    cache.put(active)  # e.g. a read answered by a lagging standby, racing the change feed
    cached = cache.get("k1")
    assert cached is not None and cached.record.status == "revoked"
    later_but_active = replace(active, updated_at=T0 + timedelta(seconds=9))
    cache.put(later_but_active)
    assert cache.get("k1").record.status == "revoked"  # type: ignore[union-attr]


def test_an_older_record_is_ignored_and_a_newer_one_applied() -> None:
    cache = KeyCache(size=10, negative_size=10, negative_ttl=1)
    current = key(at=T0 + timedelta(seconds=5))
    cache.put(current)
    cache.put(replace(current, name="older", updated_at=T0))
    assert cache.get("k1").record.name is None  # type: ignore[union-attr]
    cache.put(replace(current, name="newer", updated_at=T0 + timedelta(seconds=6)))
    assert cache.get("k1").record.name == "newer"  # type: ignore[union-attr]


def test_the_cache_stays_within_its_bounds_and_knows_when_it_stops_being_complete() -> None:
    cache = KeyCache(size=3, negative_size=2, negative_ttl=60)
    cache.complete = True
    for i in range(3):
        cache.put(key(f"k{i}"))
    assert cache.complete
    cache.put(key("k3"))
    assert len(cache) == 3 and not cache.complete, "an eviction ends completeness"
    for i in range(10):
        cache.mark_unknown(f"nope{i}")
    assert cache.unknown_count == 2
    cache.put(key("nope9"))
    assert not cache.is_known_unknown("nope9"), "a key that appears clears its negative entry"


def test_an_environments_stamp_moves_with_every_change_to_its_cached_keys() -> None:
    cache = KeyCache(size=2, negative_size=2, negative_ttl=60)
    assert cache.stamp("env") == 0 and cache.environment_keys("env") == []
    first = key("k1")
    cache.put(first)
    stamps = [cache.stamp("env")]
    cache.put(first)  # the overlap's re-read: nothing changed
    assert cache.stamp("env") == stamps[-1]
    cache.put(replace(first, status="revoked", updated_at=T0 + timedelta(seconds=1)))
    stamps.append(cache.stamp("env"))
    cache.put(replace(first, updated_at=T0))  # older: ignored
    assert cache.stamp("env") == stamps[-1]
    other = replace(key("o1"), environment_id="other")
    cache.put(other)
    assert cache.stamp("env") == stamps[-1], "another environment's change"
    assert [c.record.id for c in cache.environment_keys("other")] == ["o1"]
    cache.put(replace(key("o2"), environment_id="other"))  # evicts k1, the least recent
    stamps.append(cache.stamp("env"))
    assert cache.environment_keys("env") == [], "the index follows evictions"
    assert len(set(stamps)) == len(stamps) and 0 not in stamps
    assert sorted(c.record.id for c in cache.environment_keys("other")) == ["o1", "o2"]


def test_a_cached_key_holds_its_der_and_loads_its_public_key_only_when_used() -> None:
    """Before: every cached key kept a loaded ``cryptography`` key (about 1 KB for RSA, 2 KB
    once it had verified). Now the loaded keys are a smaller LRU of their own, filled on use,
    and a key that left it is loaded again from its DER, the same key."""
    cache = KeyCache(size=10, negative_size=2, negative_ttl=60, loaded_keys=4)
    keys = [key(f"k{i}") for i in range(6)]
    cache.put_all(keys)
    loaded = cache.loaded_keys
    assert len(cache) == 6 and len(loaded) == 0, "nothing loaded by caching"
    for stored in keys:
        cached = cache.get(stored.id)
        assert cached is not None and cached.public_key is not None
        assert crypto.public_key_der(cached.public_key) == stored.public_key
    assert loaded.loads == 6 and len(loaded) <= 4, "the loaded keys stay within their bound"
    last = cache.get("k5")
    assert last is not None and last.public_key is not None
    assert loaded.loads == 6, "a key used lately is not loaded again"
    first = cache.get("k0")
    assert first is not None and first.public_key is not None
    assert crypto.public_key_der(first.public_key) == keys[0].public_key
    assert loaded.loads == 7, "one that left is loaded again from its DER, the same key"
    changed = cache.put(replace(keys[5], public_key=keys[0].public_key, updated_at=T0 + DAY))
    assert changed.public_key is not None
    assert crypto.public_key_der(changed.public_key) == keys[0].public_key, "never stale"


def test_a_key_todays_rules_refuse_has_no_public_key() -> None:
    cache = KeyCache(size=10, negative_size=2, negative_ttl=60)
    eddsa = key("k1")
    cached = cache.put(replace(eddsa, algorithm="RS256"))  # the DER is an Ed25519 key
    assert cached.public_key is None
    assert cache.put(replace(key("k2"), public_key=b"not DER")).public_key is None


def test_peeking_does_not_make_a_key_more_recent() -> None:
    cache = KeyCache(size=2, negative_size=2, negative_ttl=60)
    first, second = key("k1"), key("k2")
    cache.put_all([first, second])
    assert cache.peek("k1") == first and cache.peek("nope") is None
    cache.put(key("k3"))  # evicts the least recent: k1, peeked but not used
    assert cache.peek("k1") is None and cache.peek("k2") == second
    assert cache.get("k2") is not None
    cache.put(key("k4"))  # k2 was used: k3 goes
    assert cache.peek("k3") is None and cache.peek("k2") == second
