"""EmbeddingCache's memory layer: properties over random sequences of puts, gets and clock
steps (hypothesis), and the stats, evictions and clear. (Its Redis layer: the integration
test against a real Redis.)"""

from __future__ import annotations

import hashlib
from collections.abc import Coroutine
from typing import Any

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from glassbox.embeddings.cache import CacheKey, EmbeddingCache


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def done(coro: Coroutine[Any, Any, Any]) -> Any:
    """The result of a coroutine that must not wait for anything: without Redis the cache
    answers from memory without suspending, so the state machine drives it without a loop."""
    try:
        coro.send(None)
    except StopIteration as finished:
        return finished.value
    raise AssertionError("the memory layer suspended")


def vector_of(key: CacheKey) -> np.ndarray:
    """A vector that encodes its key: another key's vector differs from it."""
    digest = hashlib.sha256(repr(tuple(key)).encode()).digest()
    return np.frombuffer(digest, dtype=np.uint32).astype(np.float32) / 2**32


keys = st.builds(
    CacheKey,
    model=st.sampled_from(["m1", "m2"]),
    text=st.text(alphabet="ab ", max_size=3),
    dimensions=st.sampled_from([None, 4, 8]),
)
TTL = 10.0


class CacheMachine(RuleBasedStateMachine):
    """Random puts, gets and clock steps against a small cache."""

    @initialize(max_entries=st.integers(1, 6))
    def start(self, max_entries: int) -> None:
        self.clock = FakeClock()
        self.cache = EmbeddingCache(max_entries, TTL, clock=self.clock)
        self.put_at: dict[CacheKey, float] = {}

    @rule(batch=st.lists(keys, max_size=4))
    def put(self, batch: list[CacheKey]) -> None:
        done(self.cache.put_many([(key, vector_of(key)) for key in batch]))
        for key in batch:
            self.put_at[key] = self.clock.now
        if batch:  # the last key put is there at once
            (found,) = done(self.cache.get_many([batch[-1]]))
            assert found is not None and np.array_equal(found, vector_of(batch[-1]))

    @rule(batch=st.lists(keys, max_size=4))
    def get(self, batch: list[CacheKey]) -> None:
        for key, found in zip(batch, done(self.cache.get_many(batch)), strict=True):
            if found is None:
                continue
            assert key in self.put_at
            assert np.array_equal(found, vector_of(key)), "another key's vector"
            assert self.clock.now - self.put_at[key] < TTL, "an expired entry was returned"
            assert not found.flags.writeable

    @rule(seconds=st.sampled_from([0.5, 3.0, 9.99, 10.0, 25.0]))
    def tick(self, seconds: float) -> None:
        self.clock.now += seconds

    @invariant()
    def within_bound(self) -> None:
        assert self.cache.stats()["size"] <= self.cache.max_entries


TestCacheProperties = CacheMachine.TestCase
TestCacheProperties.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def key(text: str, model: str = "m", dimensions: int | None = None) -> CacheKey:
    return CacheKey(model, text, dimensions)


async def test_a_hit_is_a_read_only_copy():
    cache = EmbeddingCache(4, 60)
    vector = np.array([1.0, 2.0, 3.0], dtype=np.float64)
    await cache.put_many([(key("a"), vector)])
    vector[0] = 99.0  # the caller's array is not the cache's

    (found,) = await cache.get_many([key("a")])

    assert found.dtype == np.float32 and found.tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError):
        found[0] = 5.0
    with pytest.raises(ValueError):
        found.setflags(write=True)


async def test_only_1d_vectors_are_stored():
    cache = EmbeddingCache(4, 60)
    with pytest.raises(ValueError, match="1-D"):
        await cache.put_many([(key("a"), np.zeros((2, 3), dtype=np.float32))])


async def test_stats_count_hits_misses_and_lru_evictions():
    cache = EmbeddingCache(2, 60)
    await cache.put_many([(key("a"), np.ones(3)), (key("b"), np.ones(3))])
    await cache.get_many([key("a")])  # a is now the most recently used
    await cache.put_many([(key("c"), np.ones(3))])  # evicts b, the least recently used

    found = await cache.get_many([key("a"), key("b"), key("c"), key("d")])

    assert [f is not None for f in found] == [True, False, True, False]
    assert cache.stats() == {
        "hits": 3,
        "misses": 2,
        "size": 2,
        "evictions": 1,
        "expired": 0,
        "max_entries": 2,
        "ttl_seconds": 60,
    }


async def test_model_and_dimensions_are_part_of_the_key():
    cache = EmbeddingCache(8, 60)
    await cache.put_many([(key("a", "m1", None), np.ones(2))])

    found = await cache.get_many([key("a", "m2", None), key("a", "m1", 2), key("a", "m1", None)])

    assert [f is not None for f in found] == [False, False, True]


async def test_an_expired_entry_is_a_miss_and_is_dropped():
    clock = FakeClock()
    cache = EmbeddingCache(4, 5.0, clock=clock)
    await cache.put_many([(key("a"), np.ones(2))])
    clock.now += 4.9
    assert (await cache.get_many([key("a")]))[0] is not None
    clock.now += 0.1  # 5 s after the put: expired

    assert await cache.get_many([key("a")]) == [None]
    assert cache.stats()["expired"] == 1 and cache.stats()["size"] == 0


async def test_a_put_again_refreshes_the_entry():
    clock = FakeClock()
    cache = EmbeddingCache(4, 5.0, clock=clock)
    await cache.put_many([(key("a"), np.ones(2))])
    clock.now += 4
    await cache.put_many([(key("a"), np.full(2, 2.0))])
    clock.now += 4

    (found,) = await cache.get_many([key("a")])

    assert found.tolist() == [2.0, 2.0]


async def test_clear_empties_memory_and_keeps_the_counts():
    cache = EmbeddingCache(4, 60)
    await cache.put_many([(key("a"), np.ones(2)), (key("b"), np.ones(2))])
    await cache.get_many([key("a")])

    await cache.clear()

    assert await cache.get_many([key("a"), key("b")]) == [None, None]
    stats = cache.stats()
    assert (stats["size"], stats["hits"], stats["misses"]) == (0, 1, 2)
    assert "redis_errors" not in stats  # the Redis counters only with Redis


def test_redis_keys_hide_the_text_and_tell_keys_apart():
    cache = EmbeddingCache(4, 60, prefix="p:")
    names = {
        cache.redis_key(k)
        for k in [key("secret"), key("secret", "m2"), key("secret", dimensions=8), key("other")]
    }
    assert len(names) == 4
    assert all(n.startswith("p:") and "secret" not in n and len(n) == 2 + 64 for n in names)
