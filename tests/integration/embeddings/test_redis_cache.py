"""EmbeddingCache's Redis layer against a real Redis (started on loopback by the test set-up):
shared between processes, corrupt values refused, clear by prefix, and a Redis that goes away
in the middle costs nothing but its share."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import numpy as np
import pytest
import redis.asyncio as aioredis
from helpers.redis_server import running_redis

from glassbox.embeddings.cache import CacheKey, EmbeddingCache


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with running_redis() as url:
        yield url


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    await client.flushdb()  # each test starts from an empty Redis
    yield client
    await client.aclose()


def key(text: str, dimensions: int | None = None) -> CacheKey:
    return CacheKey("all-MiniLM-L6-v2", text, dimensions)


def vector(seed: int, width: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(width).astype(np.float32)


async def test_two_processes_share_entries(client: aioredis.Redis, redis_url: str):
    other_client = aioredis.Redis.from_url(redis_url)  # the other process's own client
    one = EmbeddingCache(100, 60, redis=client)
    two = EmbeddingCache(100, 60, redis=other_client)
    try:
        await one.put_many([(key("a"), vector(1)), (key("b"), vector(2))])

        found = await two.get_many([key("a"), key("b"), key("c")])

        assert np.array_equal(found[0], vector(1)) and np.array_equal(found[1], vector(2))
        assert found[2] is None and not found[0].flags.writeable
        stats = two.stats()
        assert (stats["hits"], stats["misses"], stats["redis_hits"], stats["redis_misses"]) == (
            2, 1, 2, 1,
        )  # fmt: skip
        assert stats["size"] == 2  # the Redis hits filled memory: asked again, Redis is not
        await two.get_many([key("a"), key("b")])
        assert two.stats()["redis_hits"] == 2 and two.stats()["hits"] == 4
        raw = await client.get(one.redis_key(key("a")))
        assert raw == vector(1).tobytes()
        assert 0 < await client.pttl(one.redis_key(key("a"))) <= 60_000
    finally:
        await other_client.aclose()


async def test_the_text_is_never_in_a_key(client: aioredis.Redis):
    cache = EmbeddingCache(10, 60, redis=client)

    await cache.put_many([(key("my secret diagnosis"), vector(1))])

    names = [n.decode() async for n in client.scan_iter()]
    assert names == [cache.redis_key(key("my secret diagnosis"))]
    assert "secret" not in names[0]


async def test_a_corrupt_value_is_a_counted_miss(client: aioredis.Redis):
    writer = EmbeddingCache(10, 60, redis=client)
    await writer.put_many([(key("known width"), vector(1, width=4))])
    cache = EmbeddingCache(10, 60, redis=client)
    await cache.put_many([(key("seen"), vector(2, width=4))])  # the model's width: 4
    corrupt = {
        key("torn"): b"\x00\x00\x80",  # not whole floats
        key("short", dimensions=8): vector(3, width=4).tobytes(),  # 8 were asked for
        key("wide"): vector(4, width=6).tobytes(),  # the model's vectors have 4
        key("nan"): np.array([1, np.nan, 0, 0], dtype=np.float32).tobytes(),
        key("empty"): b"",
    }
    for k, value in corrupt.items():
        await client.set(cache.redis_key(k), value)

    found = await cache.get_many([*corrupt, key("known width")])

    assert found[:-1] == [None] * len(corrupt)
    assert np.array_equal(found[-1], vector(1, width=4))
    stats = cache.stats()
    assert (stats["redis_corrupt"], stats["redis_misses"], stats["redis_hits"]) == (5, 5, 1)


async def test_clear_deletes_only_this_caches_keys(client: aioredis.Redis):
    cache = EmbeddingCache(2000, 60, redis=client, prefix="glassbox:emb:")
    neighbour = EmbeddingCache(10, 60, redis=client, prefix="glassbox:emb2:")
    items = [(key(f"text {i}"), vector(i)) for i in range(1200)]  # more than one SCAN batch
    await cache.put_many(items)
    await neighbour.put_many([(key("text 0"), vector(0))])
    await client.set("glassbox:session:s1", "{}")

    await cache.clear()

    assert cache.stats()["size"] == 0
    assert await cache.get_many([key("text 0"), key("text 1199")]) == [None, None]
    remaining = sorted([n.decode() async for n in client.scan_iter()])
    assert remaining == sorted(["glassbox:session:s1", neighbour.redis_key(key("text 0"))])


async def test_a_stopped_redis_leaves_memory_to_answer():
    with running_redis() as url:  # a Redis of its own, to stop
        client = aioredis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        cache = EmbeddingCache(100, 60, redis=client)
        await cache.put_many([(key("a"), vector(1))])
        assert cache.stats()["redis_errors"] == 0
    try:
        found = await cache.get_many([key("a"), key("b")])  # b: memory misses, Redis is gone
        assert np.array_equal(found[0], vector(1)) and found[1] is None
        assert cache.stats()["redis_errors"] == 1

        await cache.put_many([(key("b"), vector(2))])  # kept in memory all the same
        assert cache.stats()["redis_errors"] == 2
        assert np.array_equal((await cache.get_many([key("b")]))[0], vector(2))

        await cache.clear()  # memory is cleared, Redis's failure counted
        assert cache.stats()["size"] == 0 and cache.stats()["redis_errors"] == 3
    finally:
        await client.aclose()


def test_a_client_that_decodes_responses_is_refused(redis_url: str):
    with pytest.raises(ValueError, match="decode_responses"):
        EmbeddingCache(redis=aioredis.Redis.from_url(redis_url, decode_responses=True))
