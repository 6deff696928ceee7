"""An environment's JWK Set, rendered once per change of its keys rather than per request.

While the change feed keeps the key cache current (:meth:`ChangeFeed.answers_reads`) and the
cache holds every key (``complete``), the document
comes from memory: each environment's rendered bytes and strong ETag are kept (an LRU bounded
in bytes) with the cache's *change stamp* of that environment at render time, and stay the
answer until the stamp moves (the feed, or this instance, added, revoked or evicted one of
its keys) or the first key it lists expires. A request then costs a dictionary look-up, and
a matching ``If-None-Match`` answers 304 without rendering anything.

A re-render reuses the JWK of every key it rendered before (the same public key DER and
algorithm under the same kid), so after one change it costs a walk over the environment's
keys, a join and a hash (about 10 ms for 10,000 keys). A first render converts every key (5
to 10 µs each, more on a busy machine: 60 ms for 10,000; loaded from the key's DER for the
render alone, so that the cache's small set of loaded keys stays with the keys that verify),
so a render gives the rest of the event loop a turn every :data:`RENDER_SLICE` seconds, and
concurrent requests for the same environment wait for one render instead of starting their
own.

Otherwise (the feed stale, the cache incomplete, or a request carrying a consistency token,
whose position the feed cannot vouch for) the document is read from the database and
rendered for that request alone, as before. So is the JWK Set of an environment with more
keys than the cache holds (the cache is then incomplete): it is read a page at a time and
only the JWKs are kept while it is rendered, so such a request costs about twice its
document's size, for as long as it runs, and is not kept.

>>> documents = JwksDocuments(records, cache, feed)
>>> document = await documents.get("env-1")
>>> document.matches(request.headers.get("If-None-Match"))
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

import cachetools
import structlog

from service.core import consistency, crypto, times
from service.core.changes import ChangeFeed
from service.core.keycache import CachedKey, KeyCache
from service.core.models import SigningKey
from service.core.ports import ChangeSource

log = structlog.get_logger(__name__)

# Rendered documents kept, in bytes of their bodies and JWKs: about 20 environments of
# 10,000 RSA keys, or 200 of 1,000 EdDSA keys.
DEFAULT_MAX_BYTES: Final = 128 * 1024 * 1024
# The longest a render holds the event loop before it gives the other tasks a turn.
RENDER_SLICE: Final = 0.005
# What an entry costs beyond its bytes (the objects around them), so small documents count.
_ENTRY_OVERHEAD: Final = 1024
_PER_KEY_OVERHEAD: Final = 100
# Sorted keys and no spaces: one spelling per document, hence one ETag on every instance.
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), sort_keys=True)
_ENTITY_TAG: Final = re.compile(r'(?:W/)?"([^"]*)"')


@dataclass(frozen=True, slots=True)
class JwksDocument:
    """A rendered JWK Set: its bytes, its strong ETag (quoted) and how many keys it lists."""

    body: bytes
    etag: str
    key_count: int

    def __repr__(self) -> str:
        return f"<JwksDocument {self.etag} keys={self.key_count} bytes={len(self.body)}>"

    def matches(self, if_none_match: str | None) -> bool:
        """Whether an ``If-None-Match`` header (its values joined by commas) names this
        document: ``*``, or any entity tag equal by the weak comparison RFC 9110 prescribes
        for it (``W/"x"`` matches ``"x"``). A header that parses as nothing matches nothing."""
        if not if_none_match:
            return False
        if if_none_match.strip() == "*":
            return True
        opaque = self.etag[1:-1]
        return any(tag == opaque for tag in _ENTITY_TAG.findall(if_none_match))


@dataclass(frozen=True, slots=True)
class _Rendered:
    """A document rendered from the cache, and what it was rendered from."""

    stamp: int  # the environment's change stamp when rendered
    valid_until: float  # the first expiry among the keys it lists (Unix seconds)
    document: JwksDocument
    # By kid: the key's DER and algorithm, and its JWK (None: today's key rules refuse it).
    jwks: dict[str, tuple[bytes, str, bytes | None]]
    size: int


class JwksDocuments:
    """Every environment's JWK Set, from memory when the cache can vouch for it."""

    def __init__(
        self,
        records: ChangeSource,
        cache: KeyCache,
        feed: ChangeFeed,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        render_slice: float = RENDER_SLICE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._records = records
        self._cache = cache
        self._feed = feed
        self._slice = render_slice
        self._clock = clock
        self._documents: cachetools.LRUCache[str, _Rendered] = cachetools.LRUCache(
            maxsize=max_bytes, getsizeof=lambda rendered: rendered.size
        )
        self._rendering: dict[str, tuple[int, asyncio.Task[_Rendered]]] = {}
        # For tests and curiosity: documents rendered from the cache, keys converted to JWKs.
        self.renders = 0
        self.converted = 0

    def __repr__(self) -> str:
        return (
            f"<JwksDocuments documents={len(self._documents)} "
            f"bytes={self._documents.currsize}/{self._documents.maxsize} renders={self.renders}>"
        )

    @property
    def kept_bytes(self) -> int:
        """What the kept documents count for against ``max_bytes``."""
        return int(self._documents.currsize)

    def from_memory(self) -> bool:
        """Whether documents may come from the cache now (not: they must be read)."""
        if not self._cache.complete or not self._feed.answers_reads():
            return False
        scope = consistency.current()
        return scope is None or scope.required is None

    async def get(self, environment_id: str) -> JwksDocument:
        """The environment's active, unexpired keys that verify here, as a JWK Set."""
        if not self.from_memory():
            return await self._from_records(environment_id)
        stamp = self._cache.stamp(environment_id)
        rendered = self._documents.get(environment_id)
        if (
            rendered is not None
            and rendered.stamp == stamp
            and self._clock() < rendered.valid_until
        ):
            return rendered.document
        return (await self._render_once(environment_id, stamp, rendered)).document

    async def _render_once(
        self, environment_id: str, stamp: int, previous: _Rendered | None
    ) -> _Rendered:
        """One render per environment and stamp, however many requests ask meanwhile; it
        runs to its end (and is kept) even when the request that started it goes away."""
        running = self._rendering.get(environment_id)
        if running is None or running[0] != stamp:
            task = asyncio.ensure_future(self._render(environment_id, stamp, previous))
            running = (stamp, task)
            self._rendering[environment_id] = running
            task.add_done_callback(lambda done: self._rendered(environment_id, done))
        return await asyncio.shield(running[1])

    def _rendered(self, environment_id: str, task: asyncio.Task[_Rendered]) -> None:
        running = self._rendering.get(environment_id)
        if running is not None and running[1] is task:
            del self._rendering[environment_id]
        if task.cancelled() or task.exception() is not None:
            return  # its waiters have the exception; the next request renders again
        rendered = task.result()
        current = self._documents.get(environment_id)
        if current is not None and current.stamp > rendered.stamp:
            return  # a render of a later change finished first
        try:
            self._documents[environment_id] = rendered
        except ValueError:  # larger than the whole budget: served, not kept
            log.warning("jwks_document_too_large_to_keep", environment_id=environment_id)

    async def _render(
        self, environment_id: str, stamp: int, previous: _Rendered | None
    ) -> _Rendered:
        self.renders += 1
        now = self._clock()
        known = previous.jwks if previous is not None else {}
        jwks: dict[str, tuple[bytes, str, bytes | None]] = {}
        valid_until = math.inf
        turn = time.perf_counter() + self._slice
        for kid, cached in sorted(self._cache.environment_items(environment_id), key=_first):
            record = cached.record
            if not record.is_active:
                continue
            if record.expires_at is not None:
                expiry = times.seconds(record.expires_at)
                if expiry <= now:
                    continue
                valid_until = min(valid_until, expiry)
            prior = known.get(kid)
            if prior is not None and prior[0] == record.public_key and prior[1] == record.algorithm:
                jwks[kid] = prior
            else:
                # Only what verifies here: no relying party is handed a key the rules refuse.
                public = crypto.usable_key(record.public_key, record.algorithm)
                jwk = None if public is None else _jwk(public, record)
                jwks[kid] = (record.public_key, record.algorithm, jwk)
                self.converted += 1
            if time.perf_counter() >= turn:
                await asyncio.sleep(0)
                turn = time.perf_counter() + self._slice
        document = _document(jwk for _, _, jwk in jwks.values() if jwk is not None)
        size = _ENTRY_OVERHEAD + 2 * len(document.body) + _PER_KEY_OVERHEAD * len(jwks)
        return _Rendered(stamp, valid_until, document, jwks, size)

    async def _from_records(self, environment_id: str) -> JwksDocument:
        """Read and render for this request alone (the database answers as the request's
        consistency scope requires). Each page is converted as it comes and only its JWKs
        are kept: an environment larger than the cache costs its document (twice, while it
        is joined), not a record per key besides."""
        listed: list[tuple[str, float, bytes]] = []  # kid, expiry, JWK
        turn = time.perf_counter() + self._slice
        async for page in self._records.pages(environment_id=environment_id, active_only=True):
            for key in page:
                expiry = math.inf if key.expires_at is None else times.seconds(key.expires_at)
                public = crypto.usable_key(key.public_key, key.algorithm)
                if public is not None:
                    listed.append((key.id, expiry, _jwk(public, key)))
                if time.perf_counter() >= turn:
                    await asyncio.sleep(0)
                    turn = time.perf_counter() + self._slice
        now = self._clock()
        listed.sort(key=lambda item: item[0])
        return _document(jwk for _, expiry, jwk in listed if expiry > now)


def _first(item: tuple[str, CachedKey]) -> str:
    return item[0]


def _jwk(public: crypto.PublicKey, key: SigningKey) -> bytes:
    return _ENCODER.encode(crypto.jwk_of(public, kid=key.id, algorithm=key.algorithm)).encode()


def _document(jwks: Iterable[bytes]) -> JwksDocument:
    listed = list(jwks)
    body = b'{"keys":[' + b",".join(listed) + b"]}"
    return JwksDocument(body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"', len(listed))
