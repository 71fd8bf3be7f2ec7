"""A task cancelled while it talks to Redis ends. glassbox stops tasks by cancelling them (the
job service's stats reader at shutdown, a session turn whose client left); redis-py 8.0 and
8.1 returned from about half of such commands as if the task had never been cancelled, and
the task ran on (a shutdown that waited for the stats reader hung for ever). pyproject.toml
pins the redis package below 8 for this."""

from __future__ import annotations

import asyncio
import random

import redis.asyncio as aioredis
from helpers.redis_server import running_redis

ATTEMPTS = 100


async def test_a_task_cancelled_during_a_redis_command_ends():
    async def read_for_ever(client: aioredis.Redis) -> None:
        while True:
            await client.xlen("glassbox:cancel-test")
            await asyncio.sleep(0)

    rng = random.Random(0)
    ran_on = 0
    with running_redis() as url:
        for _ in range(ATTEMPTS):
            client = aioredis.from_url(url)
            task = asyncio.create_task(read_for_ever(client))
            await asyncio.sleep(rng.random() * 0.003)  # somewhere inside a command
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=2)
            if not done:
                ran_on += 1
                task.cancel()
                await asyncio.wait({task}, timeout=2)
            await client.aclose()
    assert ran_on == 0, f"{ran_on} of {ATTEMPTS} cancelled tasks ran on"
