"""The embedding cache: a vector per (model, text, dimensions), so that a text embedded once is
not embedded again while it stays in the cache.

Two layers:

- memory: TTL + LRU in an OrderedDict (O(1) per key), at most `max_entries`, behind a lock
  (the embedder's threads and the event loop may both use it). An entry older than
  `ttl_seconds` is a miss and is dropped when met; the least recently used entry makes room.
- Redis (optional, shared by every process on it): asked for the memory's misses (one MGET per
  batch), filled on every put (one pipeline of SET PX). A Redis hit fills memory (its memory
  TTL starts then). Redis is a help, never a dependency: an error there is counted
  (`redis_errors`), logged, and the request goes on with what memory has.

Redis keys are `prefix` + the sha256 of (model, dimensions, text): a text, which may be
private, is never in a key. Values are the vector's raw float32 bytes, checked when read
(whole floats, the expected width, finite): a corrupt value is a miss (`redis_corrupt`).

Vectors come back read-only (views of immutable bytes): a caller cannot change what the
cache holds, and no copy is made per hit.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from glassbox.logs import get_logger

log = get_logger(__name__)

_SCAN_COUNT = 500  # keys per SCAN step (and per UNLINK) when clearing


class CacheKey(NamedTuple):
    model: str
    text: str
    dimensions: int | None


class EmbeddingCache:
    def __init__(
        self,
        max_entries: int = 10_000,
        ttl_seconds: float = 3600.0,
        *,
        redis: aioredis.Redis | None = None,
        redis_ttl_seconds: float | None = None,
        prefix: str = "glassbox:emb:",
        clock: Callable[[], float] = time.monotonic,
    ):
        """`redis`: a client that returns bytes (not `decode_responses`), with timeouts of
        its own (`socket_timeout`): a slow Redis slows every miss. `redis_ttl_seconds`
        defaults to `ttl_seconds`."""
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if redis is not None and redis.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("the embedding cache needs a Redis client without decode_responses")
        self.max_entries = max_entries
        self.ttl_seconds = ttl_seconds
        self.redis = redis
        self.redis_ttl_ms = max(1, int((redis_ttl_seconds or ttl_seconds) * 1000))
        self.prefix = prefix
        self.clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[CacheKey, tuple[float, np.ndarray]] = OrderedDict()
        self._widths: dict[tuple[str, int | None], int] = {}  # seen per (model, dimensions)
        self._counts = dict.fromkeys(
            ("hits", "misses", "evictions", "expired", "redis_hits", "redis_misses",
             "redis_errors", "redis_corrupt"),
            0,
        )  # fmt: skip

    def redis_key(self, key: CacheKey) -> str:
        digest = hashlib.sha256(
            json.dumps([key.model, key.dimensions, key.text], ensure_ascii=False).encode()
        ).hexdigest()
        return self.prefix + digest

    async def get_many(self, keys: list[CacheKey]) -> list[np.ndarray | None]:
        """Each key's vector (read-only float32), or None. `hits` and `misses` count keys
        answered by either layer and by neither."""
        found = self._memory_get(keys)
        missing = [i for i, vector in enumerate(found) if vector is None]
        if missing and self.redis is not None:
            filled = await self._redis_get([keys[i] for i in missing])
            for i, vector in zip(missing, filled, strict=True):
                found[i] = vector
            self._memory_put([(keys[i], found[i]) for i in missing if found[i] is not None])
        with self._lock:
            misses = sum(vector is None for vector in found)
            self._counts["misses"] += misses
            self._counts["hits"] += len(found) - misses
        return found

    async def put_many(self, items: list[tuple[CacheKey, np.ndarray]]) -> None:
        """Store each 1-D vector (a float32 copy) in memory, and in Redis when there is one."""
        stored = [(key, _frozen(vector)) for key, vector in items]
        self._memory_put(stored)
        with self._lock:
            for key, vector in stored:
                self._widths[(key.model, key.dimensions)] = vector.shape[0]
        if self.redis is None or not stored:
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key, vector in stored:
                    pipe.set(self.redis_key(key), vector.tobytes(), px=self.redis_ttl_ms)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self._redis_failed("put", exc)

    async def clear(self) -> None:
        """Empty memory and, with Redis, delete this cache's keys (those under `prefix`; other
        data in the same Redis stays). The counters keep counting."""
        with self._lock:
            self._entries.clear()
        if self.redis is None:
            return
        try:
            batch = []
            async for name in self.redis.scan_iter(match=self.prefix + "*", count=_SCAN_COUNT):
                batch.append(name)
                if len(batch) >= _SCAN_COUNT:
                    await self.redis.unlink(*batch)
                    batch = []
            if batch:
                await self.redis.unlink(*batch)
        except (RedisError, OSError) as exc:
            self._redis_failed("clear", exc)

    def stats(self) -> dict[str, Any]:
        """Counters since the start. With Redis: `redis_hits` and `redis_misses` count the keys
        that memory missed (the corrupt values, `redis_corrupt`, among the misses)."""
        with self._lock:
            stats: dict[str, Any] = {
                "hits": self._counts["hits"],
                "misses": self._counts["misses"],
                "size": len(self._entries),
                "evictions": self._counts["evictions"],
                "expired": self._counts["expired"],
                "max_entries": self.max_entries,
                "ttl_seconds": self.ttl_seconds,
            }
            if self.redis is not None:
                for name in ("redis_hits", "redis_misses", "redis_errors", "redis_corrupt"):
                    stats[name] = self._counts[name]
        return stats

    def _memory_get(self, keys: list[CacheKey]) -> list[np.ndarray | None]:
        found: list[np.ndarray | None] = []
        with self._lock:
            now = self.clock()
            for key in keys:
                entry = self._entries.get(key)
                if entry is not None and now - entry[0] >= self.ttl_seconds:
                    del self._entries[key]
                    self._counts["expired"] += 1
                    entry = None
                if entry is not None:
                    self._entries.move_to_end(key)
                found.append(None if entry is None else entry[1])
        return found

    def _memory_put(self, items: list[tuple[CacheKey, np.ndarray]]) -> None:
        with self._lock:
            now = self.clock()
            for key, vector in items:
                self._entries[key] = (now, vector)
                self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
                self._counts["evictions"] += 1

    async def _redis_get(self, keys: list[CacheKey]) -> list[np.ndarray | None]:
        assert self.redis is not None
        try:
            values = await self.redis.mget([self.redis_key(key) for key in keys])
        except (RedisError, OSError) as exc:
            self._redis_failed("get", exc)
            return [None] * len(keys)
        found = [self._decoded(key, value) for key, value in zip(keys, values, strict=True)]
        with self._lock:
            hits = sum(vector is not None for vector in found)
            self._counts["redis_hits"] += hits
            self._counts["redis_misses"] += len(found) - hits
        return found

    def _decoded(self, key: CacheKey, value: bytes | None) -> np.ndarray | None:
        """The vector in a Redis value, or None if there is none or it is corrupt."""
        if value is None:
            return None
        width = key.dimensions or self._widths.get((key.model, key.dimensions))
        whole = len(value) > 0 and len(value) % 4 == 0
        vector = np.frombuffer(value, dtype=np.float32) if whole else None
        if vector is None or (width and len(vector) != width) or not np.isfinite(vector).all():
            with self._lock:
                self._counts["redis_corrupt"] += 1
            log.warning("corrupt embedding in redis", key=self.redis_key(key), size=len(value))
            return None
        return vector

    def _redis_failed(self, operation: str, exc: BaseException) -> None:
        with self._lock:
            self._counts["redis_errors"] += 1
        log.warning("embedding cache redis error", operation=operation, error=repr(exc))


def _frozen(vector: np.ndarray) -> np.ndarray:
    """A read-only float32 copy that nobody can make writable again (it views bytes)."""
    array = np.asarray(vector, dtype=np.float32)
    if array.ndim != 1:
        raise ValueError(f"an embedding is a 1-D vector, not shape {array.shape}")
    return np.frombuffer(array.tobytes(), dtype=np.float32)
