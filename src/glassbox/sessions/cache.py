"""Session records in Redis: the lookups of every process that shares a Redis
(`GLASSBOX_REDIS_URL`) are served from there, and the database is read only on a miss.

One key per session, `glassbox:session:<id>`, holds the session's record as JSON (what
`SessionService.get` returns, with its owner), for `ttl` seconds from its last use (a read
refreshes it: `GETEX`). It is filled on a miss (read-through) and written after every
database write that changes the session (write-through: the start, each stored turn);
deleting the session removes it.

The database stays the authority, and a record in Redis is never newer than it: it is
written only after the database transaction committed. Writes are ordered by the session's
fencing token (`locks.py`; every change of the row raises it): a write whose fence is not
larger than the cached one's is dropped, so a late fill from an older read (a lookup that
read the row before a turn stored) cannot hide the turn. A deleted session leaves a
tombstone, `glassbox:session:<id>:deleted`, for `tombstone_ttl` seconds, which every write
respects: a lookup that read the row just before the delete cannot bring it back.

Fences are kept as decimal strings in the JSON (Lua numbers are doubles, which cannot hold
a nanosecond token exactly), and compared as such by the script.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from glassbox.errors import Unavailable

# KEYS[1]: the record, KEYS[2]: the tombstone; ARGV: the record's JSON, its fence (decimal
# digits), the TTL in seconds. 1 if written, 0 if dropped (deleted, or not newer).
_PUT = """
if redis.call('exists', KEYS[2]) == 1 then return 0 end
local current = redis.call('get', KEYS[1])
if current then
  local fence = cjson.decode(current)['fence']
  if #fence > #ARGV[2] or (#fence == #ARGV[2] and fence >= ARGV[2]) then return 0 end
end
redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[3])
return 1
"""


class SessionCache:
    """The records, on the Redis client of the session locks (one client per process)."""

    def __init__(self, client: aioredis.Redis, ttl: float = 3600.0, tombstone_ttl: float = 600.0):
        self.client = client
        self.ttl = max(int(ttl), 1)
        self.tombstone_ttl = max(int(tombstone_ttl), 1)

    @staticmethod
    def key(session_id: str) -> str:
        return f"glassbox:session:{session_id}"

    @staticmethod
    def _tombstone(session_id: str) -> str:
        return f"glassbox:session:{session_id}:deleted"

    async def get(self, session_id: str) -> str | None:
        """The record's JSON (its TTL starts again), or None on a miss."""
        try:
            found = await self.client.getex(self.key(session_id), ex=self.ttl)
        except RedisError as exc:
            raise _unreachable(exc) from exc
        return found.decode() if isinstance(found, bytes) else found

    async def put(self, session_id: str, record: str, fence: int) -> bool:
        """Store `record` (JSON whose "fence" is `str(fence)`) unless the session was deleted
        or Redis holds a record at least as new; whether it was written."""
        keys = (self.key(session_id), self._tombstone(session_id))
        try:
            return bool(await self.client.eval(_PUT, 2, *keys, record, str(fence), self.ttl))
        except RedisError as exc:
            raise _unreachable(exc) from exc

    async def forget(self, session_id: str) -> None:
        """Drop the record, so that the next lookup reads the database."""
        try:
            await self.client.delete(self.key(session_id))
        except RedisError as exc:
            raise _unreachable(exc) from exc

    async def delete(self, session_id: str) -> None:
        """The session is gone: its record goes, and its tombstone keeps late writes out."""
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.set(self._tombstone(session_id), "1", ex=self.tombstone_ttl)
                pipe.delete(self.key(session_id))
                await pipe.execute()
        except RedisError as exc:
            raise _unreachable(exc) from exc


def _unreachable(exc: RedisError) -> Unavailable:
    return Unavailable(f"the session store (Redis) failed: {exc}; retry the request")
