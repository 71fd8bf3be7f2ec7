"""Shared fixtures: a tiny random Llama served live by uvicorn, clients for it, and a
PostgreSQL server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from live_server import serve_in_thread
from tiny_model import build_tiny_model

from glassbox.app import create_app
from glassbox.config import Settings
from glassbox.engine.async_engine import AsyncLLMEngine
from glassbox.logs import configure_logging
from glassbox.runtime import load_engine

TINY_NAME = "tiny-llama"
TINY_ALIAS = "gpt-4o-mini"
TINY_MAX_LEN = 512

# JSON logs as the server writes them; tests that read log lines attach their own stream.
configure_logging("WARNING")


@dataclass
class LiveServer:
    base_url: str
    app: object
    engine: AsyncLLMEngine
    settings: Settings

    def wait_idle(self, baseline_blocks: int = 0, timeout: float = 1.0) -> dict[str, int]:
        """Poll the engine until nothing runs or waits and KV use is back to the baseline."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.engine.stats()
            idle = stats["running"] == 0 and stats["waiting"] == 0
            if idle and stats["kv_blocks_used"] == baseline_blocks:
                return stats
            if time.monotonic() > deadline:
                return stats
            time.sleep(0.01)


def pirate_variant(http: httpx.Client, session_id: str, value: float = 1.0) -> dict:
    """An inline (Ember JSON) variant nudging the feature /features/search ranks first for
    "pirate"."""
    r = http.post("/features/search", json={"query": "pirate", "session_id": session_id})
    assert r.status_code == 200, r.text
    f = r.json()[0]
    edit = {"feature_id": f["uuid"], "feature_label": f["label"],
            "index_in_sae": f["index_in_sae"], "value": value}  # fmt: skip
    return {"base_model": TINY_NAME, "edits": [edit], "scopes": []}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


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


def _live(settings: Settings, step_delay: float = 0.0) -> Iterator[LiveServer]:
    engine, _ = load_engine(settings)
    if step_delay:
        step = engine.step

        def slow_step():
            time.sleep(step_delay)
            return step()

        engine.step = slow_step
    aengine = AsyncLLMEngine(engine)
    app = create_app(settings, aengine)
    try:
        with serve_in_thread(app) as url:
            yield LiveServer(url, app, aengine, settings)
    finally:
        aengine.shutdown()


@contextmanager
def running(settings: Settings) -> Iterator[LiveServer]:
    """A live server of its own (own engine, cache and database) for the block's length."""
    yield from _live(settings)


@pytest.fixture(scope="session")
def tiny_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    yield from _live(tiny_settings(tiny_model_dir, tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def slow_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tiny model with 20 ms added to every engine step, so a generation of a few hundred
    tokens reliably outlasts a client that hangs up early."""
    settings = tiny_settings(tiny_model_dir, tmp_path_factory.mktemp("cache"))
    yield from _live(settings, step_delay=0.02)


@pytest.fixture
def client(tiny_server: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=tiny_server.base_url + "/v1", api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture
def aclient(tiny_server: LiveServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=tiny_server.base_url + "/v1", api_key="x", max_retries=0)


@pytest.fixture
def http(tiny_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=tiny_server.base_url, timeout=30) as c:
        yield c


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server of the test session's own (tests/pg_server.py): its URL."""
    from pg_server import running_postgres  # psycopg is imported only by tests that use it

    with running_postgres() as url:
        yield url
