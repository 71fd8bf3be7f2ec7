"""The per-session locks against a real Redis (started on loopback by the test set-up): one
holder at a time, fencing tokens that grow, a crashed holder's lock that expires."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from helpers.redis_server import running_redis

from glassbox.sessions.locks import LocalLocks, RedisLocks


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with running_redis() as url:
        yield url


async def _serialized(locks) -> list[tuple[str, int]]:
    """Two holders of one session: the second starts only when the first is done."""
    events: list[tuple[str, int]] = []

    async def turn(name: str) -> None:
        async with locks.hold("s1") as token:
            events.append((f"{name} in", token))
            await asyncio.sleep(0.05)
            events.append((f"{name} out", token))

    await asyncio.gather(turn("a"), turn("b"))
    return events


@pytest.mark.parametrize("kind", ["local", "redis"])
async def test_one_holder_at_a_time_with_growing_tokens(kind: str, redis_url: str) -> None:
    locks = LocalLocks() if kind == "local" else RedisLocks(redis_url)
    try:
        events = await _serialized(locks)
    finally:
        if kind == "redis":
            await locks.close()
    names = [e[0] for e in events]
    assert names in (["a in", "a out", "b in", "b out"], ["b in", "b out", "a in", "a out"])
    first, second = events[0][1], events[2][1]
    assert second > first


async def test_processes_sharing_a_redis_share_the_lock(redis_url: str) -> None:
    one, two = RedisLocks(redis_url), RedisLocks(redis_url)
    try:
        second = two.hold("shared")
        async with one.hold("shared") as first:
            waiting = asyncio.create_task(second.__aenter__())
            await asyncio.sleep(0.1)
            assert not waiting.done()  # the other "process" waits
        token = await asyncio.wait_for(waiting, 5)
        assert token > first
        await second.__aexit__(None, None, None)
        assert await two.client.get(two._key("shared")) is None  # given back
    finally:
        await one.close()
        await two.close()


async def test_a_crashed_holders_lock_expires(redis_url: str) -> None:
    crashed = RedisLocks(redis_url, ttl=0.3)
    later = RedisLocks(redis_url, ttl=5)
    try:
        # A holder that took the lock and its token, and died: nothing extends or releases it.
        await crashed.client.set(crashed._key("gone"), "dead", nx=True, px=crashed.ttl_ms)
        token = int(await crashed.client.incr("glassbox:session:gone:fence"))
        async with later.hold("gone") as newer:
            assert newer > token  # its late write would be refused by the fence
    finally:
        await crashed.close()
        await later.close()


def test_a_redis_that_lost_its_counters_does_not_lock_sessions_out(
    redis_url: str, tiny_server, http
) -> None:
    """Redis restarted without persistence: its tokens count from 1 again, far below the fence
    the database keeps (a time_ns token of the in-process locks here); turns still store."""
    sessions = tiny_server.app.state.sessions
    body = {"user_id": "reset", "initial_message": "hi", "temperature": 0, "max_tokens": 3}
    sid = http.post("/llm/chat/", json=body).json()["session_id"]
    local = sessions.locks
    # Its client connects in the server's event loop on first use; the Redis server stops
    # with this module, which closes those connections.
    sessions.locks = RedisLocks(redis_url)
    try:
        r = http.post(f"/llm/chat/{sid}/message/", json={"user_message": "again"})
        assert r.status_code == 200, r.text
        assert r.json()["session"]["message_count"] == 4
    finally:
        sessions.locks = local
