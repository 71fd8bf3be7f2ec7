"""Session lookups through a real Redis: after a start, the record is read from Redis (no
SELECT on chat_sessions), a turn stored by one service is seen by another, a delete removes
the record everywhere, another owner's id is a 404 from the cached record; the database
stays the authority (a miss reads it, a stale record is repaired, older writes never win)."""

from __future__ import annotations

import json

import pytest
import redis.asyncio as aioredis

from glassbox.errors import NotFound
from glassbox.principal import LOCAL, Principal
from glassbox.sessions.cache import SessionCache
from glassbox.sessions.service import SessionSettings

SETTINGS = SessionSettings(sampling={"temperature": 0.0, "max_tokens": 4})


@pytest.fixture
async def redis(redis_url: str):
    client = aioredis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_lookups_after_start_read_redis_not_the_database(
    services, redis_url, redis, session_reads
) -> None:
    sessions = services.service(redis_url)
    turn = await sessions.start(LOCAL, "u-1", "hello there", SETTINGS)
    sid = turn.session.session_id
    reads = session_reads(sessions)
    assert await sessions.get(LOCAL, sid) == turn.session
    messages = await sessions.history(LOCAL, sid)
    assert [m.sender for m in messages] == ["user", "assistant"]
    assert messages[1].content == turn.reply.content
    assert reads.statements == []
    key = SessionCache.key(sid)
    assert await redis.exists(key)
    record = json.loads(await redis.get(key))
    assert record["owner"] == LOCAL.tenant and record["message_count"] == 2
    assert 0 < await redis.ttl(key) <= 3600


async def test_a_turn_stored_by_one_service_is_seen_by_another(
    services, redis_url, session_reads
) -> None:
    one, two = services.service(redis_url), services.service(redis_url)
    first = await one.start(LOCAL, "u-2", "hello there", SETTINGS)
    sid = first.session.session_id
    reads = session_reads(two)
    assert await two.get(LOCAL, sid) == first.session
    second = await one.send(LOCAL, sid, "and then?")
    seen = await two.get(LOCAL, sid)
    assert seen == second.session
    assert seen.fence > first.session.fence and seen.message_count == 4
    assert seen.state_id == second.session.state_id != first.session.state_id
    assert [m.content for m in await two.history(LOCAL, sid)][::2] == ["hello there", "and then?"]
    assert reads.statements == []
    # and the other way round: the second stores a turn (its fence checked on the row)
    third = await two.send(LOCAL, sid, "one more")
    reads = session_reads(one)
    assert await one.get(LOCAL, sid) == third.session
    assert third.session.message_count == 6
    history = await one.history(LOCAL, sid)
    assert [m.sender for m in history] == ["user", "assistant"] * 3
    assert reads.statements == []


async def test_a_deleted_session_is_gone_from_redis_and_from_every_service(
    services, redis_url, redis
) -> None:
    one, two = services.service(redis_url), services.service(redis_url)
    turn = await one.start(LOCAL, "u-3", "hello there", SETTINGS)
    sid = turn.session.session_id
    assert await two.get(LOCAL, sid) == turn.session
    key = SessionCache.key(sid)
    assert await redis.exists(key)
    await one.delete(LOCAL, sid)
    assert not await redis.exists(key)
    for service in (one, two):
        with pytest.raises(NotFound):
            await service.get(LOCAL, sid)
        with pytest.raises(NotFound):
            await service.history(LOCAL, sid)
    with pytest.raises(NotFound):
        await two.send(LOCAL, sid, "still there?")
    assert not await redis.exists(key)  # a lookup of a deleted session fills nothing


async def test_another_owner_gets_404_from_the_cached_record(
    services, redis_url, session_reads
) -> None:
    sessions = services.service(redis_url)
    turn = await sessions.start(LOCAL, "u-4", "hello there", SETTINGS)
    sid = turn.session.session_id
    other = Principal("someone-else")
    reads = session_reads(sessions)
    for lookup in (sessions.get, sessions.history):
        with pytest.raises(NotFound) as raised:
            await lookup(other, sid)
        assert raised.value.code == "session_not_found"
    with pytest.raises(NotFound):
        await sessions.send(other, sid, "mine now")
    with pytest.raises(NotFound):
        await sessions.delete(other, sid)
    assert reads.statements == []  # the owner was checked on the record in Redis
    assert await sessions.get(LOCAL, sid) == turn.session  # untouched
    assert len(await sessions.history(LOCAL, sid)) == 2


async def test_a_miss_reads_the_database_once_and_fills_redis(
    services, redis_url, redis, session_reads
) -> None:
    sessions = services.service(redis_url)
    turn = await sessions.start(LOCAL, "u-5", "hello there", SETTINGS)
    sid = turn.session.session_id
    await redis.delete(SessionCache.key(sid))  # expired, or evicted
    reads = session_reads(sessions)
    assert await sessions.get(LOCAL, sid) == turn.session
    assert len(reads.statements) == 1
    assert await sessions.get(LOCAL, sid) == turn.session
    assert len(reads.statements) == 1  # filled by the first
    assert await redis.exists(SessionCache.key(sid))


async def test_a_record_that_missed_a_write_is_repaired_by_the_next_turn(
    services, redis_url, redis
) -> None:
    """A process that stopped between its commit and Redis left the record of the turn
    before: the next turn sees the message count disagree and reads the database, so it
    drops the right KV state and the record is current again."""
    sessions = services.service(redis_url)
    first = await sessions.start(LOCAL, "u-6", "hello there", SETTINGS)
    sid = first.session.session_id
    key = SessionCache.key(sid)
    stale = await redis.get(key)
    second = await sessions.send(LOCAL, sid, "and then?")
    await redis.set(key, stale)
    assert (await sessions.get(LOCAL, sid)).message_count == 2  # stale, as Redis has it
    third = await sessions.send(LOCAL, sid, "one more")
    assert third.session.message_count == 6
    assert await sessions.get(LOCAL, sid) == third.session
    with pytest.raises(NotFound):  # the second turn's state was the one replaced
        sessions.states.get(LOCAL, second.session.state_id)
    assert [m.sender for m in await sessions.history(LOCAL, sid)] == ["user", "assistant"] * 3


async def test_only_newer_records_are_written(redis) -> None:
    cache = SessionCache(redis)
    big = 1_700_000_000_000_000_001  # a nanosecond token: beyond a double's exact integers

    def record(fence: int) -> str:
        return json.dumps({"fence": str(fence)})

    assert await cache.put("s", record(big), big)
    assert not await cache.put("s", record(big - 1), big - 1)
    assert not await cache.put("s", record(5), 5)
    assert not await cache.put("s", record(big), big)
    assert json.loads(await cache.get("s"))["fence"] == str(big)
    assert await cache.put("s", record(big * 10), big * 10)
    await cache.delete("s")
    assert await cache.get("s") is None
    assert not await cache.put("s", record(big * 100), big * 100)  # deleted: kept out
    assert await cache.get("s") is None
