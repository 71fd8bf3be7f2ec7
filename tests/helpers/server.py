"""A tiny random Llama served live by uvicorn in this process, and what tests do with it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from glassbox.app import create_app
from glassbox.config import Settings
from glassbox.engine.async_engine import AsyncLLMEngine
from glassbox.engine.llm_engine import LLMEngine
from glassbox.runtime import load_engine
from helpers.live_server import serve_in_thread
from helpers.waiting import wait_until

TINY_NAME = "tiny-llama"
TINY_ALIAS = "gpt-4o-mini"
TINY_MAX_LEN = 512


@dataclass
class LiveServer:
    base_url: str
    app: object
    engine: AsyncLLMEngine
    settings: Settings

    def wait_idle(self, baseline_blocks: int = 0, timeout: float = 10.0) -> dict[str, int]:
        """Wait until nothing runs or waits and KV use is back to the baseline; the engine's
        stats then (the caller asserts on them)."""

        def idle() -> bool:
            stats = self.engine.stats()
            quiet = stats["running"] == 0 and stats["waiting"] == 0
            return quiet and stats["kv_blocks_used"] == baseline_blocks

        wait_until(idle, timeout)
        return self.engine.stats()


def tiny_settings(model_dir: Path, cache_dir: Path) -> Settings:
    return Settings(
        model=str(model_dir),
        dtype="float32",
        served_model_name=TINY_NAME,
        model_aliases={TINY_ALIAS: TINY_NAME},
        max_model_len=TINY_MAX_LEN,
        kv_cache_bytes=32 * 1024 * 1024,
        cache_dir=cache_dir,
        warm_features=False,  # features load on first use: tests that need them pay for it
    )


def live(settings: Settings, step_delay: float = 0.0) -> Iterator[LiveServer]:
    def load() -> LLMEngine:
        engine, _ = load_engine(settings)
        if step_delay:
            step = engine.step

            def slow_step():
                time.sleep(step_delay)
                return step()

            engine.step = slow_step
        return engine

    aengine = AsyncLLMEngine(load)
    app = create_app(settings, aengine)
    try:
        with serve_in_thread(app) as url:
            yield LiveServer(url, app, aengine, settings)
    finally:
        aengine.shutdown()


@contextmanager
def running(settings: Settings) -> Iterator[LiveServer]:
    """A live server of its own (own engine, cache and database) for the block's length."""
    yield from live(settings)


def fail_after_first(monkeypatch, owner: object, name: str, error: Exception) -> None:
    """Make the live app's `owner.name` (an async generator method of a service) yield its
    first item, then raise `error`: an error raised by the live server mid-stream."""
    real = getattr(owner, name)

    async def failing(*args, **kwargs):
        async for item in real(*args, **kwargs):
            yield item
            raise error

    monkeypatch.setattr(owner, name, failing)
