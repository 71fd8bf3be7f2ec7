"""One turn at a time per session: in this process (asyncio locks), or across every server
process that shares a Redis (`GLASSBOX_REDIS_URL`).

Each holder gets a fencing token, larger than every token handed out before for that
session. The session row keeps the largest token that stored a turn, and a turn whose token
is not larger is refused (`SessionService._store_turn`): a holder that stalled past its
lock's timeout (and lost the lock to another process) cannot write over a later turn.

The Redis lock is the usual single-instance one: `SET key token NX PX ttl` to take it, a
script that deletes the key only if it still holds our token to give it back, and the same
check to extend it while a turn runs (a turn may take longer than the timeout; a crashed
holder's lock expires after `ttl`). Tokens come from `INCR` on a per-session counter, taken
once the lock is held. The same client serves the session lookups (`cache.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import AsyncIterator

import redis.asyncio as aioredis

from glassbox.errors import Unavailable

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
_EXTEND = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""


class LocalLocks:
    """Sessions served by this process alone. Tokens are nanoseconds since the epoch (and
    then counted up), so they keep growing across restarts."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._tokens = itertools.count(time.time_ns())

    @contextlib.asynccontextmanager
    async def hold(self, session_id: str) -> AsyncIterator[int]:
        async with self._locks.setdefault(session_id, asyncio.Lock()):
            yield next(self._tokens)

    def forget(self, session_id: str) -> None:
        self._locks.pop(session_id, None)


class RedisLocks:
    """Sessions shared by every process that uses the same Redis."""

    def __init__(self, url: str, ttl: float = 60.0, wait: float = 600.0, poll: float = 0.02):
        self.client = aioredis.from_url(url)
        self.ttl_ms = int(ttl * 1000)
        self.wait = wait
        self.poll = poll

    @staticmethod
    def _key(session_id: str) -> str:
        return f"glassbox:session:{session_id}:lock"

    @contextlib.asynccontextmanager
    async def hold(self, session_id: str) -> AsyncIterator[int]:
        key = self._key(session_id)
        holder = uuid.uuid4().hex  # whose lock it is (to extend and give back only our own)
        deadline = time.monotonic() + self.wait
        while not await self.client.set(key, holder, nx=True, px=self.ttl_ms):
            if time.monotonic() > deadline:
                raise Unavailable(f"session '{session_id}' is busy; retry the message")
            await asyncio.sleep(self.poll)
        keeper = asyncio.create_task(self._extend(key, holder))
        try:
            # Counted once the lock is held: holders get growing tokens in the order they
            # hold the lock (a token taken while waiting could be passed by a later one).
            yield int(await self.client.incr(f"glassbox:session:{session_id}:fence"))
        finally:
            keeper.cancel()
            await self.client.eval(_RELEASE, 1, key, holder)

    async def _extend(self, key: str, holder: str) -> None:
        while True:
            await asyncio.sleep(self.ttl_ms / 3000)
            if not await self.client.eval(_EXTEND, 1, key, holder, self.ttl_ms):
                return  # lost it (expired): the fencing token keeps our late write out

    def forget(self, session_id: str) -> None:
        return None

    async def close(self) -> None:
        await self.client.aclose()
