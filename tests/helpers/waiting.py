"""Waiting for a condition the code exposes, with a generous bound that only catches a hang."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, poll: float = 0.01) -> bool:
    """Poll `condition` until it holds or `timeout` seconds pass; whether it held."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)
    return True


async def async_wait_until(
    condition: Callable[[], bool], timeout: float = 10.0, poll: float = 0.005
) -> bool:
    """`wait_until` for the event loop: it sleeps with asyncio between polls."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(poll)
    return True
