"""The in-process cache of parsed public keys, bounded whatever callers send.

Positive entries hold the loaded ``cryptography`` key object beside its record, so a
verification costs one signature check and no parsing. They stay fresh because the change
feed applies every created or revoked key to them. Unknown ids are remembered briefly
(negative entries) and, while the cache holds *every* key of the database ("complete"), a miss
needs no database round trip at all: a key created since the last poll arrives with the next
one. Both maps are LRU/TTL-bounded, so a flood of random ``kid``s cannot grow the process.
"""

from __future__ import annotations

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


class KeyCache:
    """Parsed keys by id (LRU, ``size`` entries) and recently unknown ids (TTL)."""

    def __init__(
        self,
        *,
        size: int,
        negative_size: int,
        negative_ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keys: cachetools.LRUCache[str, CachedKey] = cachetools.LRUCache(maxsize=size)
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
        self._keys[key.id] = cached
        self._unknown.pop(key.id, None)
        return cached

    def put_all(self, keys: Iterable[SigningKey]) -> None:
        for key in keys:
            self.put(key)

    def mark_unknown(self, key_id: str) -> None:
        if self._negative_enabled:
            self._unknown[key_id] = True


def _is_older(candidate: SigningKey, cached: SigningKey) -> bool:
    if cached.status == "revoked" and candidate.status != "revoked":
        return True
    return candidate.updated_at < cached.updated_at
