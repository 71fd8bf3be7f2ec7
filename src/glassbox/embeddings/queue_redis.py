"""Redis Streams as the job pipeline's queue (scale-out mode).

Keys, under `glassbox:embedding-jobs`:
    :{stage}:{band}  a stream per stage (chunking, embedding, storage) and priority band
                     (high: priority > 0, normal: 0, low: < 0), each with the group "workers"
    :dead            the dead-letter stream

An entry's life: XADD -> XREADGROUP ">" gives it to one consumer of the group (it is then
pending with that consumer, delivered once) -> the stage's work is committed -> XACK and XDEL
(in one MULTI). A consumer that dies leaves its entries pending; once one has been idle for
the visibility timeout, XAUTOCLAIM hands it to a live consumer, which counts a delivery. An
entry delivered more than `max_deliveries` times is moved to the dead-letter stream (with its
stage, place and reason) instead of being run again.

Streams are first in, first out; priority is by band: a consumer reads the high band first,
then normal, then low (Redis cannot order one stream by priority).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

PREFIX = "glassbox:embedding-jobs"
GROUP = "workers"
BANDS = ("high", "normal", "low")


def band(priority: int) -> str:
    return "high" if priority > 0 else "normal" if priority == 0 else "low"


@dataclass(frozen=True)
class Entry:
    """A stream entry given to this consumer; `again`: a redelivery (XAUTOCLAIM), whose
    work may have been partly done by a consumer that died."""

    stream: str
    id: str
    fields: dict[str, bytes]
    again: bool = False


class RedisStages:
    def __init__(self, url: str, prefix: str = PREFIX):
        self.redis = aioredis.from_url(url)
        self.prefix = prefix
        self.dead_key = f"{prefix}:dead"

    def key(self, stage: str, band_name: str) -> str:
        return f"{self.prefix}:{stage}:{band_name}"

    async def ensure_groups(self, stages: tuple[str, ...]) -> None:
        """The group on every stream of the stages (created empty where missing)."""
        for stage in stages:
            for b in BANDS:
                try:
                    await self.redis.xgroup_create(self.key(stage, b), GROUP, id="0",
                                                   mkstream=True)  # fmt: skip
                except ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):  # the group exists already
                        raise

    async def add(self, stage: str, priority: int, fields: dict[str, bytes | str]) -> None:
        await self.redis.xadd(self.key(stage, band(priority)), fields)

    async def read(self, stage: str, consumer: str, block_ms: int) -> list[Entry]:
        """New entries for `consumer`, of the highest band that has one; else waits up to
        `block_ms` for any (at most one per band)."""
        for b in BANDS:
            got = await self.redis.xreadgroup(GROUP, consumer, {self.key(stage, b): ">"}, count=1)
            if got:
                return _entries(got)
        streams = {self.key(stage, b): ">" for b in BANDS}
        got = await self.redis.xreadgroup(GROUP, consumer, streams, count=1, block=block_ms)
        order = {self.key(stage, b): i for i, b in enumerate(BANDS)}
        return sorted(_entries(got or []), key=lambda e: order[e.stream])

    async def reclaim(
        self, stage: str, consumer: str, idle_ms: int, count: int
    ) -> list[tuple[Entry, int]]:
        """Entries idle longer than `idle_ms` (their consumer died, or failed them), now
        `consumer`'s, each with its number of deliveries (this one included)."""
        claimed: list[tuple[Entry, int]] = []
        for b in BANDS:
            key = self.key(stage, b)
            reply = await self.redis.xautoclaim(key, GROUP, consumer, idle_ms, "0-0", count=count)
            for entry_id, fields in reply[1]:
                if fields is None:  # deleted while pending (Redis 6.2 still lists it)
                    continue
                pending = await self.redis.xpending_range(
                    key, GROUP, min=entry_id, max=entry_id, count=1
                )
                deliveries = pending[0]["times_delivered"] if pending else 1
                claimed.append((_entry(key, entry_id, fields, again=True), deliveries))
        return claimed

    async def touch(self, entry: Entry, consumer: str) -> None:
        """Reset the entry's idle time: long work on it is still going on."""
        await self.redis.xclaim(entry.stream, GROUP, consumer, 0, [entry.id], justid=True)

    async def ack(self, entry: Entry) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(entry.stream, GROUP, entry.id)
            pipe.xdel(entry.stream, entry.id)
            await pipe.execute()

    async def dead_letter(self, entry: Entry, stage: str, deliveries: int, reason: str) -> None:
        """Move the entry to the dead-letter stream, with where it came from and why."""
        fields: dict[str, bytes | str] = {
            **entry.fields, "stage": stage, "stream": entry.stream, "entry": entry.id,
            "deliveries": str(deliveries), "reason": reason,
        }  # fmt: skip
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.dead_key, fields)
            pipe.xack(entry.stream, GROUP, entry.id)
            pipe.xdel(entry.stream, entry.id)
            await pipe.execute()

    async def dead_letters(self) -> int:
        """Entries in the dead-letter stream."""
        return await self.redis.xlen(self.dead_key)

    async def close(self) -> None:
        await self.redis.aclose()


def _entry(stream: str | bytes, entry_id: str | bytes, fields: dict, *, again: bool) -> Entry:
    def text(v: str | bytes) -> str:
        return v.decode() if isinstance(v, bytes) else v

    return Entry(text(stream), text(entry_id), {text(k): v for k, v in fields.items()}, again)


def _entries(reply: list) -> list[Entry]:
    return [
        _entry(stream, entry_id, fields, again=False)
        for stream, messages in reply
        for entry_id, fields in messages
    ]
