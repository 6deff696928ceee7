"""The in-process cache of public keys, bounded whatever callers send.

Positive entries hold a key's stored record, its public key once (the record's DER), and
nothing derived from it: the loaded ``cryptography`` key a verification needs comes from a
smaller bounded set of loaded keys (:class:`LoadedKeys`), filled on first use. A loaded RSA
key costs about 1 KB, and 1 KB more once it has verified (its Montgomery context), against
less than 1 KB for everything else a cached key holds: kept for every cached key, it would
double the cost of a large cache for the sake of the few keys that sign most tokens. A key
that left that set is loaded again from its DER when it next verifies (about 25 µs for RSA,
less than the signature check itself), so a verification still costs one full signature
check.

Cached keys stay fresh because the change feed applies every created or revoked key to them.
Unknown ids are remembered briefly (negative entries) and, while the cache holds *every*
key of the database ("complete"), a miss needs no database round trip at all: a key created
since the last poll arrives with the next one. Every map is LRU/TTL-bounded, so a flood of
random ``kid``s cannot grow the process.

Key reads (``GET`` of a key, its public key, an environment's JWK Set) are answered from here
too while the change feed is fresh, so the cache also indexes keys by environment and stamps
each environment with a *change stamp* that moves whenever one of its keys is added, changed
or evicted: whatever is derived from an environment's keys (its rendered JWK Set) stays valid
exactly as long as the stamp it was made at.
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Callable, Iterable
from typing import Final

import cachetools

from service.core import crypto
from service.core.models import SigningKey

# Loaded public keys kept for verification: the keys that sign most tokens. About 2 KB each
# for a 2048-bit RSA key that has verified (less for EdDSA and ES256): 8 MB at most.
DEFAULT_LOADED_KEYS: Final = 4096


class LoadedKeys:
    """The loaded public keys of recently used keys, at most ``size`` of them, and ``None``
    for a key today's key rules refuse (:func:`~service.core.crypto.usable_key`).

    Two generations rather than an exact LRU, because this sits on every verification: a
    hit in the young one is one dictionary look-up, with nothing to reorder. A key found in
    the old one moves to the young one; when the young one is full it becomes the old one
    and the old one is dropped. So a key used within the last ``size / 2`` loads stays.

    >>> loaded = LoadedKeys(size=4096)
    >>> loaded.get(record)  # loads it once, then reuses it
    """

    def __init__(self, size: int = DEFAULT_LOADED_KEYS) -> None:
        if size < 2:
            raise ValueError("LoadedKeys needs room for two keys at least")
        self._half = size // 2
        # By key id: its DER and algorithm (what was loaded) and the loaded key.
        self._young: dict[str, tuple[bytes, str, crypto.PublicKey | None]] = {}
        self._old: dict[str, tuple[bytes, str, crypto.PublicKey | None]] = {}
        self.loads = 0  # for tests and curiosity: DERs parsed

    def __repr__(self) -> str:
        return f"<LoadedKeys {len(self)}/{2 * self._half} loads={self.loads}>"

    def __len__(self) -> int:
        return len(self._young) + len(self._old)

    def get(self, record: SigningKey) -> crypto.PublicKey | None:
        der, algorithm = record.public_key, record.algorithm
        entry = self._young.get(record.id)
        if entry is not None and (entry[0] is der or entry[0] == der) and entry[1] == algorithm:
            return entry[2]
        entry = self._old.pop(record.id, None)
        if entry is None or entry[0] != der or entry[1] != algorithm:
            self.loads += 1
            entry = (der, algorithm, crypto.usable_key(der, algorithm))
        self._young[record.id] = entry
        if len(self._young) >= self._half:
            self._old, self._young = self._young, {}
        return entry[2]


class CachedKey:
    """A stored key, and its loaded public key on demand: ``public_key`` is ``None`` when
    today's key rules refuse the stored one (it verifies nothing)."""

    __slots__ = ("_loaded", "record")

    def __init__(self, record: SigningKey, loaded: LoadedKeys) -> None:
        self.record = record
        self._loaded = loaded

    def __repr__(self) -> str:
        return f"<CachedKey {self.record.id} {self.record.algorithm} {self.record.status}>"

    @property
    def public_key(self) -> crypto.PublicKey | None:
        return self._loaded.get(self.record)


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
        loaded_keys: int = DEFAULT_LOADED_KEYS,
    ) -> None:
        if size < 1:
            raise ValueError("KeyCache needs room for one key at least")
        self._size = size
        # One ordered map is both the index and the recency (least recent first): a
        # cachetools LRUCache keeps a dictionary and an ordered one beside it, 40 bytes more
        # per key.
        self._keys: collections.OrderedDict[str, CachedKey] = collections.OrderedDict()
        self._loaded = LoadedKeys(loaded_keys)
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
            f"<KeyCache keys={len(self._keys)}/{self._size} "
            f"unknown={len(self._unknown)}/{self._unknown.maxsize} complete={self.complete} "
            f"loaded={len(self._loaded)}>"
        )

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def capacity(self) -> int:
        return self._size

    @property
    def unknown_count(self) -> int:
        return len(self._unknown)

    @property
    def loaded_keys(self) -> LoadedKeys:
        """The loaded public keys behind :attr:`CachedKey.public_key`."""
        return self._loaded

    def get(self, key_id: str) -> CachedKey | None:
        cached = self._keys.get(key_id)
        if cached is not None:
            self._keys.move_to_end(key_id)
        return cached

    def peek(self, key_id: str) -> SigningKey | None:
        """The cached record of ``key_id``, without making it more recent (the change feed
        asks whether it has seen a change: that is no use of the key)."""
        cached = self._keys.get(key_id)
        return None if cached is None else cached.record

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

    def is_full(self) -> bool:
        """Whether one more key would evict another."""
        return len(self._keys) >= self._size

    def put(self, key: SigningKey) -> CachedKey:
        """Add or refresh a key; an unchanged key keeps its entry (and the record it holds).

        Never backwards: a record older than the cached one (a read answered by a lagging
        standby, racing the change feed) is ignored, and a revoked key never becomes active
        again — revocation is final.
        """
        current = self._keys.get(key.id)
        self._unknown.pop(key.id, None)
        if current is not None:
            self._keys.move_to_end(key.id)
            if is_later(current.record, key) or current.record == key:
                return current  # a re-read's copy is dropped: one record per key
        cached = CachedKey(key, self._loaded)
        self._keys[key.id] = cached
        if current is None and len(self._keys) > self._size:
            self.complete = False  # an eviction: a miss no longer proves "unknown"
            _, evicted = self._keys.popitem(last=False)
            self._forget(evicted)
        if current is not None and current.record.environment_id != key.environment_id:
            self._forget(current)  # ids are unique; a move is a hand-made row's oddity
        self._by_environment.setdefault(key.environment_id, {})[key.id] = cached
        self._stamps[key.environment_id] = next(self._changes)
        return cached

    def put_all(self, keys: Iterable[SigningKey]) -> None:
        for key in keys:
            self.put(key)

    def mark_unknown(self, key_id: str) -> None:
        if self._negative_enabled:
            self._unknown[key_id] = True

    def forget_unknown(self, key_id: str) -> None:
        """Drop a negative entry: ``key_id`` exists (the change feed read it) although it is
        not cached."""
        self._unknown.pop(key_id, None)

    def _forget(self, cached: CachedKey) -> None:
        environment_id = cached.record.environment_id
        keys = self._by_environment.get(environment_id)
        if keys is None or keys.get(cached.record.id) is not cached:
            return
        del keys[cached.record.id]
        if not keys:
            del self._by_environment[environment_id]
        self._stamps[environment_id] = next(self._changes)


def is_later(candidate: SigningKey, known: SigningKey) -> bool:
    """Whether ``candidate`` is a later state of ``known``'s key. Revocation is final: a
    revoked record is later than an active one whatever their stamps (one stamped earlier
    comes from another clock, after a failover that lost the write stamped later), and an
    active one never later than a revoked one. Otherwise the later stamp."""
    if (candidate.status == "revoked") != (known.status == "revoked"):
        return candidate.status == "revoked"
    return candidate.updated_at > known.updated_at
