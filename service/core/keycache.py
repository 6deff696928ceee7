"""The in-process cache of parsed public keys, bounded whatever callers send.

Positive entries hold the loaded ``cryptography`` key object beside its record, so a
verification costs one signature check and no parsing. They stay fresh because the change
feed applies every created or revoked key to them. Unknown ids are remembered briefly
(negative entries) and, while the cache holds *every* key of the database ("complete"), a miss
needs no database round trip at all: a key created since the last poll arrives with the next
one. Both maps are LRU/TTL-bounded, so a flood of random ``kid``s cannot grow the process.

Key reads (``GET`` of a key, its public key, an environment's JWK Set) are answered from here
too while the change feed is fresh, so the cache also indexes keys by environment and stamps
each environment with a *change stamp* that moves whenever one of its keys is added, changed
or evicted: whatever is derived from an environment's keys (its rendered JWK Set) stays valid
exactly as long as the stamp it was made at.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import cachetools

from service.core import crypto
from service.core.models import SigningKey


@dataclass(frozen=True, slots=True)
class CachedKey:
    """A stored key and its loaded public key; ``public_key`` is ``None`` when today's key
    rules refuse the stored one (:func:`~service.core.crypto.usable_key`): it verifies
    nothing, and costs nothing."""

    record: SigningKey
    public_key: crypto.PublicKey | None


class _Keys(cachetools.LRUCache[str, CachedKey]):
    """An LRU map that tells its owner which entry it evicts."""

    def __init__(self, maxsize: int, on_evict: Callable[[CachedKey], None]) -> None:
        super().__init__(maxsize=maxsize)
        self._on_evict = on_evict

    def popitem(self) -> tuple[str, CachedKey]:
        key_id, cached = super().popitem()
        self._on_evict(cached)
        return key_id, cached


class KeyCache:
    """Parsed keys by id (LRU, ``size`` entries) and recently unknown ids (TTL), and the
    cached keys of each environment with its change stamp."""

    def __init__(
        self,
        *,
        size: int,
        negative_size: int,
        negative_ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keys = _Keys(size, self._evicted)
        # The same entries by environment (no recency of their own: the LRU above decides).
        self._by_environment: dict[str, dict[str, CachedKey]] = {}
        # An environment's stamp: the number of the last change to its cached keys, from one
        # counter for all, so a stamp is never reused (0: never changed).
        self._stamps: dict[str, int] = {}
        self._changes = itertools.count(1)
        self._unknown: cachetools.TTLCache[str, bool] = cachetools.TTLCache(
            maxsize=negative_size, ttl=max(negative_ttl, 1e-6), timer=clock
        )
        self._negative_enabled = negative_ttl > 0
        self.complete = False

    def __repr__(self) -> str:
        return (
            f"<KeyCache keys={len(self._keys)}/{self._keys.maxsize} "
            f"unknown={len(self._unknown)}/{self._unknown.maxsize} complete={self.complete}>"
        )

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def capacity(self) -> int:
        return int(self._keys.maxsize)

    @property
    def unknown_count(self) -> int:
        return len(self._unknown)

    def get(self, key_id: str) -> CachedKey | None:
        return self._keys.get(key_id)

    def stamp(self, environment_id: str) -> int:
        """The environment's change stamp: equal stamps, equal cached keys."""
        return self._stamps.get(environment_id, 0)

    def environment_keys(self, environment_id: str) -> list[CachedKey]:
        """The environment's cached keys (every one of them while :attr:`complete`)."""
        return list(self._by_environment.get(environment_id, {}).values())

    def environment_items(self, environment_id: str) -> list[tuple[str, CachedKey]]:
        """The environment's cached keys by id, as :meth:`environment_keys`."""
        return list(self._by_environment.get(environment_id, {}).items())

    def is_known_unknown(self, key_id: str) -> bool:
        return key_id in self._unknown

    def put(self, key: SigningKey) -> CachedKey:
        """Add or refresh a key; an unchanged key keeps its parsed object.

        Never backwards: a record older than the cached one (a read answered by a lagging
        standby, racing the change feed) is ignored, and a revoked key never becomes active
        again — revocation is final.
        """
        current = self._keys.get(key.id)
        if current is not None and _is_older(key, current.record):
            return current
        if current is None and len(self._keys) >= self._keys.maxsize:
            self.complete = False  # an eviction follows: a miss no longer proves "unknown"
        if (
            current is not None
            and current.record.public_key == key.public_key
            and current.record.algorithm == key.algorithm
        ):
            cached = CachedKey(key, current.public_key)
        else:
            cached = CachedKey(key, crypto.usable_key(key.public_key, key.algorithm))
        self._keys[key.id] = cached  # may evict another key first
        self._unknown.pop(key.id, None)
        if current is None or current.record != key:
            if current is not None and current.record.environment_id != key.environment_id:
                self._forget(current)  # ids are unique; a move is a hand-made row's oddity
            self._by_environment.setdefault(key.environment_id, {})[key.id] = cached
            self._stamps[key.environment_id] = next(self._changes)
        else:
            self._by_environment[key.environment_id][key.id] = cached
        return cached

    def put_all(self, keys: Iterable[SigningKey]) -> None:
        for key in keys:
            self.put(key)

    def mark_unknown(self, key_id: str) -> None:
        if self._negative_enabled:
            self._unknown[key_id] = True

    def _evicted(self, cached: CachedKey) -> None:
        self._forget(cached)

    def _forget(self, cached: CachedKey) -> None:
        environment_id = cached.record.environment_id
        keys = self._by_environment.get(environment_id)
        if keys is None or keys.get(cached.record.id) is not cached:
            return
        del keys[cached.record.id]
        if not keys:
            del self._by_environment[environment_id]
        self._stamps[environment_id] = next(self._changes)


def _is_older(candidate: SigningKey, cached: SigningKey) -> bool:
    if cached.status == "revoked" and candidate.status != "revoked":
        return True
    return candidate.updated_at < cached.updated_at
